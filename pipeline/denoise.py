"""`denoise`: clean up your own 28x28 grayscale digit images with a trained model.

    python -m pipeline.denoise --model dae|vae [--rev REV] INPUT... -o OUT

INPUT: PNG files, folders of PNGs, or `.npy` arrays of 28x28 images (N x 28 x 28, uint8 0-255
or floats in [0, 1]). OUT: a folder (created; it must not hold files yet) that gets one
denoised PNG per image, or a `.npy` file that gets them all (N x 28 x 28 float32 in [0, 1]).
The model is the workspace's models/<model>.pt; `--rev` (a tag, branch or commit) reads the
one committed there through `dvc.api` (from the DVC cache or remote). Every input is checked
before anything is written; a bad one is an `error:` line and exit code 1.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipeline.data import IMAGE_SHAPE
from pipeline.metrics import denoise_all
from pipeline.models import Denoiser
from pipeline.plumbing.cli import stage
from pipeline.plumbing.config import load_params
from pipeline.plumbing.errors import PipelineError
from pipeline.plumbing.publish import publish
from pipeline.registry import load_model

MAX_INPUT_BYTES = 2**30  # a .npy of about a million images: anything larger is refused


def arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", type=Path)
    parser.add_argument("--model", choices=["dae", "vae"], required=True)
    parser.add_argument("--rev", help="git revision whose committed model to use")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="OUT")


@stage(arguments=arguments)
def main(inputs: list[Path], model: str, rev: str | None, out: Path) -> None:
    images, names = read_inputs(inputs)
    check_out(out)
    net = load_denoiser(model, rev)
    denoised = denoise_all(net, images)[:, 0]
    if out.suffix == ".npy":
        with publish("denoise", files={"out": out}) as tmp:
            np.save(tmp.out, denoised.numpy().astype(np.float32))
    else:
        with publish("denoise", folders={"out": out}) as tmp:
            for name, image in zip(names, denoised, strict=True):
                pixels = (image * 255).round().to(torch.uint8).numpy()
                Image.fromarray(pixels, mode="L").save(tmp.out / f"{name}.png", format="PNG")
    print(f"denoise: {len(images)} image(s) with the {model} of {rev or 'the workspace'} -> {out}")


def read_inputs(inputs: list[Path]) -> tuple[torch.Tensor, list[str]]:
    """Every image as N x 1 x 28 x 28 floats in [0, 1], and a name for each output PNG."""
    images, names = [], []
    for path in inputs:
        if not path.exists():
            raise PipelineError(f"{path}: no such file or folder")
        files = sorted(path.glob("*.png")) if path.is_dir() else [path]
        if not files:
            raise PipelineError(f"{path}: the folder holds no .png files")
        for file in files:
            if file.suffix == ".npy":
                array = read_npy(file)
                images.append(array)
                names += [f"{file.stem}-{i}" for i in range(len(array))]
            elif file.suffix.lower() == ".png":
                images.append(read_png(file))
                names.append(file.stem)
            else:
                raise PipelineError(f"{file}: expected a .png or .npy file")
    if len(set(names)) < len(names):
        raise PipelineError("two inputs would write the same output name; rename one")
    return torch.cat(images).unsqueeze(1), names


def read_png(path: Path) -> torch.Tensor:
    """A 1 x 28 x 28 image from an 8-bit grayscale PNG (Pillow, which torchvision uses)."""
    try:
        with Image.open(path, formats=["PNG"]) as image:
            image.load()
            mode, pixels = image.mode, np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise PipelineError(f"{path}: not a readable PNG ({e})") from None
    if mode != "L":
        raise PipelineError(f"{path}: a PNG of mode {mode}; expected 8-bit grayscale (mode L)")
    check_shape(path, pixels.shape)
    return torch.from_numpy(pixels.copy()).float().div_(255).unsqueeze(0)


def read_npy(path: Path) -> torch.Tensor:
    """N x 28 x 28 images from a .npy array (one 28 x 28 image or a stack; N x 1 x 28 x 28)."""
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise PipelineError(f"{path}: larger than {MAX_INPUT_BYTES:,} bytes")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise PipelineError(f"{path}: not a readable .npy array ({e})") from None
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise PipelineError(f"{path}: an array of shape {array.shape}; expected N x 28 x 28")
    check_shape(path, array.shape[1:])
    if array.dtype == np.uint8:
        return torch.from_numpy(array).float() / 255
    if (
        array.dtype.kind != "f"
        or not np.isfinite(array).all()
        or array.min() < 0
        or array.max() > 1
    ):
        raise PipelineError(f"{path}: {array.dtype} values must be uint8, or floats in [0, 1]")
    return torch.from_numpy(array.astype(np.float32))


def check_shape(path: Path, shape: tuple[int, ...]) -> None:
    if tuple(shape) != IMAGE_SHAPE:
        found = "x".join(map(str, shape))
        raise PipelineError(f"{path}: a {found} image; the models take 28x28 (resize it first)")


def check_out(out: Path) -> None:
    """A .npy file, or a folder that does not exist yet or is empty (nothing is overwritten)."""
    if out.suffix != ".npy" and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PipelineError(f"{out}: exists and is not an empty folder; choose another -o")


def load_denoiser(kind: str, rev: str | None) -> Denoiser:
    """models/<kind>.pt of the workspace, or of git revision `rev` through dvc.api."""
    path = Path(load_params().paths.models) / f"{kind}.pt"
    if rev is None:
        if not path.is_file():
            raise PipelineError(f"{path} is missing: `dvc pull {path}` or `dvc repro train@{kind}`")
        return load_model(path, kind)
    import dvc.api  # only for --rev: a second to import
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    try:
        data = dvc.api.read(path.as_posix(), rev=rev, mode="rb")
    except (DvcException, SCMError, FileNotFoundError) as e:
        raise PipelineError(f"cannot read {path} at revision {rev!r}: {e}") from None
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        copy.write_bytes(data)
        return load_model(copy, kind)


if __name__ == "__main__":
    main()
