"""Stage `make_noisy`: seeded train/val/test splits of MNIST with `noise.kind` noise added.

Reads params `seed`, `data.train_size`, `data.val_size`, `data.test_size`, `noise`, `paths`;
data/MNIST. Writes data/noisy/{train,val,test}.pt (clean uint8, noisy float16, labels uint8).
The validation images are a seeded sample of MNIST's training set, disjoint from `train`;
`test` is the first `data.test_size` official test images. Same params, byte-identical files.
"""

from pathlib import Path

from pipeline.data import add_noise, load_mnist, save_split, split_indices
from pipeline.plumbing.cli import stage
from pipeline.plumbing.config import load_params
from pipeline.plumbing.publish import publish
from pipeline.runtime import generator


@stage
def main() -> None:
    params = load_params()
    data, noise, paths = params.data, params.noise, params.paths
    with publish("make_noisy", folders={"noisy": paths.noisy}) as out:
        images, labels = load_mnist(Path(paths.mnist), train=True)
        test_images, test_labels = load_mnist(Path(paths.mnist), train=False)
        val_idx, train_idx = split_indices(params.seed, data.val_size, data.train_size)
        chosen = {
            "train": (images[train_idx], labels[train_idx]),
            "val": (images[val_idx], labels[val_idx]),
            "test": (test_images[: data.test_size], test_labels[: data.test_size]),
        }
        for name, (clean, split_labels) in chosen.items():
            gen = generator(params.seed, "noise", name)
            noisy = add_noise(clean.float() / 255, noise.kind, noise.level, noise.clip, gen)
            save_split(out.noisy / f"{name}.pt", clean, noisy, split_labels)
            print(f"{name}: {len(clean)} images, {noise.kind} noise at level {noise.level}")


if __name__ == "__main__":
    main()
