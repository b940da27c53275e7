"""`pipeline.config`: the default params validate; each bad value is refused by a message that
names its dotted key and what is allowed, both in-process and from a stage's command line."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.config import (
    MNIST_TEST_IMAGES,
    MNIST_TRAIN_IMAGES,
    Params,
    ParamsError,
    load_params,
    parse_params,
)
from pipeline.yamlio import parse_yaml
from tests.helpers import DELETE, ROOT, set_dotted

DEFAULT_TEXT = (ROOT / "params.yaml").read_text()
DEFAULT = parse_yaml(DEFAULT_TEXT, "params.yaml")


def changed(changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the default params with dotted keys set (or removed with DELETE)."""
    return set_dotted(copy.deepcopy(DEFAULT), changes)


def refusal(raw: Any) -> str:
    """The message of the ParamsError that `parse_params(raw)` raises."""
    with pytest.raises(ParamsError) as info:
        parse_params(raw, source="params.yaml")
    return str(info.value)


def load_refusal(path: Path) -> str:
    """The message of the ParamsError that `load_params(path)` raises."""
    with pytest.raises(ParamsError) as info:
        load_params(path)
    return str(info.value)


def test_default_params_yaml_validates() -> None:
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.vae.latent_dim == DEFAULT["vae"]["latent_dim"]
    assert params.data.mirrors == DEFAULT["data"]["mirrors"]
    assert params.evaluate.noise_levels == DEFAULT["evaluate"]["noise_levels"]
    assert params.data.train_size + params.data.val_size <= MNIST_TRAIN_IMAGES


def test_params_are_immutable() -> None:
    params = parse_params(DEFAULT)
    with pytest.raises(ValidationError):
        params.dae.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kind", "expected"), [("gaussian", "std"), ("speckle", "std"), ("salt_pepper", "amount")]
)
def test_noise_level_is_the_key_of_the_chosen_kind(kind: str, expected: str) -> None:
    params = parse_params(changed({"noise.kind": kind, "noise.std": 0.3, "noise.amount": 0.1}))
    assert params.noise.level == {"std": 0.3, "amount": 0.1}[expected]


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"dae.lr": 1}, id="int-where-float"),
        pytest.param({"noise.std": 0.0}, id="std-zero"),
        pytest.param({"noise.amount": 1.0}, id="amount-one"),
        pytest.param({"vae.kl_warmup_epochs": 0}, id="no-warmup"),
        pytest.param({"data.train_size": 59_000, "data.val_size": 1_000}, id="all-60000"),
        pytest.param({"data.train_size": 128, "dae.batch_size": 128}, id="one-batch"),
        pytest.param({"data.test_size": MNIST_TEST_IMAGES}, id="all-test"),
        pytest.param({"data.mirrors": ["file:///srv/mnist", "../shared/mnist"]}, id="folders"),
        pytest.param({"evaluate.noise_levels": [0.0]}, id="one-level"),
    ],
)
def test_boundary_values_are_accepted(changes: dict[str, Any]) -> None:
    params = parse_params(changed(changes))
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        assert getattr(getattr(params, section), key) == value


# (changes, fragments the message must contain: the dotted key, then what is expected/allowed)
BAD_CONFIGS = [
    pytest.param(
        {"noise.std": -0.1}, ["noise.std", "greater than or equal to 0", "-0.1"], id="std-negative"
    ),
    pytest.param({"noise.std": math.nan}, ["noise.std", "finite number", "NaN"], id="std-nan"),
    pytest.param({"noise.std": math.inf}, ["noise.std", "finite number", "inf"], id="std-inf"),
    pytest.param(
        {"vae.latent_dim": 0}, ["vae.latent_dim", "greater than 0", "got 0"], id="latent-zero"
    ),
    pytest.param(
        {"vae.latent_dim": 2.5}, ["vae.latent_dim", "valid integer", "2.5"], id="latent-float"
    ),
    pytest.param({"dae.epochs": 0}, ["dae.epochs", "greater than 0"], id="epochs-zero"),
    pytest.param({"dae.lr": 0}, ["dae.lr", "greater than 0"], id="lr-zero"),
    pytest.param({"vae.lr": -0.001}, ["vae.lr", "greater than 0", "-0.001"], id="lr-negative"),
    pytest.param(
        {"dae.batch_size": 501, "data.train_size": 500},
        ["dae.batch_size = 501", "data.train_size = 500"],
        id="batch-over-train",
    ),
    pytest.param(
        {"vae.batch_size": 1024, "data.train_size": 1000},
        ["vae.batch_size = 1024", "data.train_size = 1000"],
        id="vae-batch-over-train",
    ),
    pytest.param(
        {"data.train_size": 58_000, "data.val_size": 3_000},
        ["data.train_size + data.val_size = 58000 + 3000 = 61000", str(MNIST_TRAIN_IMAGES)],
        id="train-plus-val",
    ),
    pytest.param(
        {"data.train_size": 60_001},
        ["data.train_size", "less than or equal to 60000"],
        id="train-over-mnist",
    ),
    pytest.param(
        {"data.test_size": 10_001},
        ["data.test_size", "less than or equal to 10000", "10001"],
        id="test-over-mnist",
    ),
    pytest.param(
        {"noise.kind": "poisson"},
        ["noise.kind", "'gaussian'", "'salt_pepper'", "'speckle'", "'poisson'"],
        id="noise-kind",
    ),
    pytest.param(
        {"noise.std": "0.5"},
        ["noise.std", "valid number", "'0.5'", "without quotes"],
        id="quoted-number",
    ),
    pytest.param(
        {"dae.lr": "1e-3"}, ["dae.lr", "valid number", "'1e-3'", "without quotes"], id="quoted-exp"
    ),
    pytest.param({"dae.epochs": True}, ["dae.epochs", "valid integer", "True"], id="bool-for-int"),
    pytest.param(
        {"noise.clip": "yes"}, ["noise.clip", "valid boolean", "'yes'"], id="string-for-bool"
    ),
    pytest.param(
        {"vae.latent_dim": DELETE, "vae.latent_dims": 16},
        [
            "vae.latent_dims: unknown key",
            "Did you mean 'vae.latent_dim'?",
            "vae.latent_dim: required key is missing",
        ],
        id="typo-key",
    ),
    pytest.param(
        {"trainer": {"epochs": 3}},
        [
            "trainer: unknown key",
            "Allowed keys: seed, device, data, noise, dae, vae, evaluate, plot",
        ],
        id="unknown-section",
    ),
    pytest.param({"vae": DELETE}, ["vae: required key is missing"], id="missing-section"),
    pytest.param({"dae.lr": DELETE}, ["dae.lr: required key is missing"], id="missing-key"),
    pytest.param({"vae": None}, ["vae: expected a section", "got None"], id="section-null"),
    pytest.param({"data.mirrors": []}, ["data.mirrors", "at least 1 item"], id="mirrors-empty"),
    pytest.param(
        {"data.mirrors": "https://example.org/mnist/"},
        ["data.mirrors", "valid list"],
        id="mirrors-string",
    ),
    pytest.param(
        {"data.mirrors": ["  "]}, ["data.mirrors[0]", "at least 1 character"], id="mirror-blank"
    ),
    pytest.param(
        {"data.mirrors": ["https://ok.example/", "ftp://x.example/"]},
        ["data.mirrors[1]", "unsupported scheme 'ftp'", "http(s)://, file:// or a folder"],
        id="mirror-scheme",
    ),
    pytest.param(
        {"device": "gpu"}, ["device", "'auto', 'cpu' or 'cuda'", "'gpu'"], id="device-gpu"
    ),
    pytest.param(
        {"dae.arch": "resnet"}, ["dae.arch", "'unet' or 'reference'", "'resnet'"], id="dae-arch"
    ),
    pytest.param(
        {"vae.arch": "unet"}, ["vae.arch", "'conv' or 'reference'", "'unet'"], id="vae-arch"
    ),
    pytest.param(
        {"noise.amount": 1.5},
        ["noise.amount", "less than or equal to 1", "1.5"],
        id="amount-over-one",
    ),
    pytest.param({"data.timeout_s": 0}, ["data.timeout_s", "greater than 0"], id="timeout-zero"),
    pytest.param(
        {"evaluate.noise_levels": []},
        ["evaluate.noise_levels", "at least 1 item"],
        id="levels-empty",
    ),
    pytest.param(
        {"evaluate.noise_levels": [0.1, -0.2]},
        ["evaluate.noise_levels[1]", "greater than or equal to 0", "-0.2"],
        id="level-negative",
    ),
    pytest.param(
        {"evaluate.noise_levels": [0.5, math.nan]},
        ["evaluate.noise_levels[1]", "finite number", "NaN"],
        id="level-nan",
    ),
    pytest.param(
        {"noise.kind": "salt_pepper", "evaluate.noise_levels": [0.5, 1.5]},
        ["evaluate.noise_levels [1.5]", "<= 1", "salt_pepper"],
        id="salt-pepper-level-over-one",
    ),
    pytest.param({"plot.n_digits": 0}, ["plot.n_digits", "greater than 0"], id="n-digits-zero"),
    pytest.param({"seed": -1}, ["seed", "greater than or equal to 0", "-1"], id="seed-negative"),
    pytest.param(
        {"evaluate.blur_sigma": 0}, ["evaluate.blur_sigma", "greater than 0"], id="blur-zero"
    ),
]


@pytest.mark.parametrize(("changes", "fragments"), BAD_CONFIGS)
def test_bad_value_is_refused_naming_key_and_allowed(
    changes: dict[str, Any], fragments: list[str]
) -> None:
    message = refusal(changed(changes))
    assert message.startswith("params.yaml has ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_every_bad_value_is_reported_at_once() -> None:
    message = refusal(changed({"noise.std": -1, "dae.epochs": 0, "device": "gpu"}))
    assert message.startswith("params.yaml has 3 invalid value(s)")
    assert all(key in message for key in ("noise.std", "dae.epochs", "device"))


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param(
            "seed: 1\ndata:\n  mirrors: [a\n  x: 1\n",
            ["not valid YAML", "line 4, column 4", "line 3"],
            id="syntax-error",
        ),
        pytest.param("seed: 1\n  device: cpu\n", ["not valid YAML", "line 2"], id="bad-indent"),
        pytest.param(
            DEFAULT_TEXT.replace("dae:\n", "dae:\n  lr: 0.1\n", 1),
            ["not valid YAML", "duplicate key 'lr'", "line "],
            id="duplicate-key",
        ),
        pytest.param(
            DEFAULT_TEXT + "\nseed: 7\n",
            ["not valid YAML", "duplicate key 'seed'"],
            id="duplicate-section",
        ),
        pytest.param("", ["is empty", "seed, device, data"], id="empty-file"),
        pytest.param("# nothing but a comment\n", ["is empty"], id="comment-only"),
        pytest.param(
            "- seed\n- device\n", ["expected a mapping of sections, got list"], id="top-level-list"
        ),
        pytest.param(
            "just a string\n", ["expected a mapping of sections, got str"], id="top-level-scalar"
        ),
    ],
)
def test_unreadable_file_is_refused_naming_it(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    message = load_refusal(path)
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_yaml_nan_and_inf_from_a_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(
        DEFAULT_TEXT.replace("std: 0.5 ", "std: .nan ").replace("lr: 0.003", "lr: .inf")
    )
    message = load_refusal(path)
    assert "noise.std: Input should be a finite number (got NaN)" in message
    assert "dae.lr: Input should be a finite number (got inf)" in message
    assert "vae.lr: Input should be a finite number (got inf)" in message


def test_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    message = load_refusal(path)
    assert message == f"{path} not found (run from the project root)"


def test_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    message = load_refusal(path)
    assert message.startswith(f"{path} cannot be read as UTF-8 text")


def test_directory_in_place_of_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.mkdir()
    message = load_refusal(path)
    assert message.startswith(f"{path} cannot be read")


# ---------------------------------------------------------------- stages on the command line


@pytest.mark.parametrize(
    ("stage", "text", "fragments"),
    [
        pytest.param(
            "make_noisy",
            DEFAULT_TEXT.replace("std: 0.5 ", "std: -0.5 "),
            ["noise.std", "-0.5"],
            id="make_noisy-std",
        ),
        pytest.param(
            "train_vae",
            DEFAULT_TEXT.replace("latent_dim: 16", "latent_dims: 16"),
            ["vae.latent_dims", "Did you mean 'vae.latent_dim'?"],
            id="train_vae-typo",
        ),
        pytest.param(
            "make_noisy",
            "seed: [1\n",
            ["params.yaml is not valid YAML", "line 2"],
            id="make_noisy-syntax",
        ),
        pytest.param("train_vae", None, ["params.yaml not found"], id="train_vae-no-file"),
    ],
)
def test_stage_with_bad_params_fails_cleanly_and_writes_nothing(
    tmp_path: Path, stage: str, text: str | None, fragments: list[str]
) -> None:
    if text is not None:
        (tmp_path / "params.yaml").write_text(text)
    before = sorted(tmp_path.iterdir())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", f"pipeline.{stage}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in proc.stderr, f"{fragment!r} not in:\n{proc.stderr}"
    assert sorted(tmp_path.iterdir()) == before  # no data/noisy, models or metrics
