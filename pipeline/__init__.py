"""denoise-pipeline: MNIST denoising with a DAE and a VAE, as DVC stages (`python -m pipeline`)."""

import sys

if sys.argv[:1] == ["-m"]:  # `python -m pipeline.<stage>`, before the stage imports torch
    from pipeline.plumbing.cli import install_early_handlers

    install_early_handlers()
