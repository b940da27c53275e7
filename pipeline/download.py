"""Stage `download`: the official MNIST files into data/MNIST/raw, MD5-checked.

Reads params `data.mirrors` and `data.timeout_s`; the environment variable MNIST_MIRROR (an
http(s) URL or a folder holding the four `.gz` files) is tried first when set.
Writes data/MNIST/raw/ (the four `.gz` files and their parsed forms).
"""

import os

from pipeline.cli import stage
from pipeline.config import load_params
from pipeline.data import DownloadError, fetch_mnist, load_mnist
from pipeline.errors import PipelineError
from pipeline.paths import MNIST_DIR
from pipeline.runtime import publish

MIRROR_ENV = "MNIST_MIRROR"


@stage
def main() -> None:
    params = load_params()
    override = os.environ.get(MIRROR_ENV, "").strip()
    mirrors = [override, *params.data.mirrors] if override else list(params.data.mirrors)
    with publish(MNIST_DIR) as (tmp,):
        try:
            fetch_mnist(tmp.parent, mirrors, params.data.timeout_s)
        except DownloadError as e:
            raise PipelineError(
                f"{e}\nTo use another copy, set {MIRROR_ENV} to an http(s) URL or a local "
                f"folder holding the four MNIST .gz files, e.g. {MIRROR_ENV}=../shared/mnist"
            ) from None
        for train in (True, False):  # parse both splits before publishing the folder
            load_mnist(tmp.parent, train)
    print(f"MNIST ready in {MNIST_DIR / 'raw'}")


if __name__ == "__main__":
    main()
