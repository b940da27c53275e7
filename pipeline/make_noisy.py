"""Stage `make_noisy`: seeded train/val/test splits of MNIST with `noise.kind` noise added.

Reads params `seed`, `data.train_size`, `data.val_size`, `data.test_size`, `noise`; data/MNIST.
Writes data/noisy/{train,val,test}.pt (clean uint8, noisy float16, labels uint8). The
validation images are a seeded sample of MNIST's training set, disjoint from `train`; `test`
is the first `data.test_size` official test images. Same params, byte-identical files.
"""

import torch

from pipeline.cli import stage
from pipeline.config import MNIST_TRAIN_IMAGES, load_params
from pipeline.data import add_noise, load_mnist, save_split
from pipeline.paths import DATA_DIR, NOISY_DIR
from pipeline.runtime import publish

SPLITS = ("train", "val", "test")  # position + 1 offsets each split's noise seed


@stage
def main() -> None:
    params = load_params()
    data, noise = params.data, params.noise
    with publish(NOISY_DIR) as (tmp,):
        images, labels = load_mnist(DATA_DIR, train=True)
        test_images, test_labels = load_mnist(DATA_DIR, train=False)
        gen = torch.Generator().manual_seed(params.seed)
        perm = torch.randperm(MNIST_TRAIN_IMAGES, generator=gen)
        val_idx, train_idx = perm[: data.val_size], perm[data.val_size :][: data.train_size]
        chosen = {
            "train": (images[train_idx], labels[train_idx]),
            "val": (images[val_idx], labels[val_idx]),
            "test": (test_images[: data.test_size], test_labels[: data.test_size]),
        }
        tmp.mkdir()
        for offset, name in enumerate(SPLITS, start=1):
            clean, split_labels = chosen[name]
            gen = torch.Generator().manual_seed(params.seed + offset)
            noisy = add_noise(clean.float() / 255, noise.kind, noise.level, noise.clip, gen)
            save_split(tmp / f"{name}.pt", clean, noisy, split_labels)
            print(f"{name}: {len(clean)} images, {noise.kind} noise at level {noise.level}")


if __name__ == "__main__":
    main()
