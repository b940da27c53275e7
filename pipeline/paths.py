"""Where each stage's inputs and outputs live: the same paths as `dvc.yaml`, relative to the
project root (stages run there)."""

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
DATA_DIR = Path("data")  # torchvision layout: data/MNIST/raw
MNIST_DIR = DATA_DIR / "MNIST"
NOISY_DIR = DATA_DIR / "noisy"  # train.pt, val.pt, test.pt
PARAMS_OK = DATA_DIR / "params.ok"  # the `validate` stage's output
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
TRAIN_LOG_DIR = METRICS_DIR / "train"  # dvclive folders, one per model
PLOTS_DIR = Path("plots")
