"""Stage `download`: the official MNIST files into data/MNIST/raw, MD5-checked.

Mirrors come from `data.mirrors`; the environment variable MNIST_MIRROR (an http(s) URL or a
folder holding the four `.gz` files) is tried first when set.
"""

import os

from pipeline.config import DATA_DIR, load_params
from pipeline.data import DownloadError, fetch_mnist, load_mnist
from pipeline.runtime import PipelineError, atomic_path, stage

MIRROR_ENV = "MNIST_MIRROR"


@stage
def main() -> None:
    params = load_params()
    override = os.environ.get(MIRROR_ENV, "").strip()
    mirrors = [override, *params.data.mirrors] if override else list(params.data.mirrors)
    with atomic_path(DATA_DIR / "MNIST") as tmp:
        try:
            fetch_mnist(tmp.parent, mirrors, params.data.timeout_s)
        except DownloadError as e:
            raise PipelineError(
                f"{e}\nTo use another copy, set {MIRROR_ENV} to an http(s) URL or a local "
                f"folder holding the four MNIST .gz files, e.g. {MIRROR_ENV}=../shared/mnist"
            ) from None
        for train in (True, False):  # parse both splits before publishing the folder
            load_mnist(tmp.parent, train)
    print(f"MNIST ready in {DATA_DIR / 'MNIST' / 'raw'}")


if __name__ == "__main__":
    main()
