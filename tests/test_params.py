"""`params.yaml`, read and validated: `pipeline.plumbing.yamlio` reads YAML 1.2 exactly as DVC
reads it (so the value a stage validates is the value `dvc.lock`, `dvc params diff` and
`dvc exp show` record) and `pipeline.plumbing.config` checks it. The default params validate;
each bad value, unreadable file or oversized document is refused by one message that names the
file, the dotted key and what is allowed, in-process and from a stage's command line."""

from __future__ import annotations

import copy
import io
import json
import math
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from ruamel.yaml import YAML

from pipeline.plumbing.config import (
    MNIST_TEST_IMAGES,
    MNIST_TRAIN_IMAGES,
    Params,
    ParamsError,
    load_params,
    parse_params,
)
from pipeline.plumbing.errors import PipelineError
from pipeline.plumbing.yamlio import (
    MAX_DEPTH,
    MAX_VALUES,
    YAMLFileError,
    parse_yaml,
    read_yaml,
)
from tests.helpers import (
    DELETE,
    ROOT,
    dvc,
    git,
    new_project,
    repro,
    run,
    run_stage,
    set_dotted,
)

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


# ---------------------------------------------------------------- valid params


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


# ---------------------------------------------------------------- bad values, each named


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
            f"Allowed keys: {', '.join(Params.model_fields)}",
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


def test_yaml_nan_and_inf_from_a_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(
        DEFAULT_TEXT.replace("std: 0.5 ", "std: .nan ")
        .replace("lr: 0.003", "lr: .inf")
        .replace("lr: 0.004", "lr: .inf")
    )
    message = load_refusal(path)
    assert "noise.std: Input should be a finite number (got NaN)" in message
    assert "dae.lr: Input should be a finite number (got inf)" in message
    assert "vae.lr: Input should be a finite number (got inf)" in message


def shared_lists(levels: int) -> list[Any]:
    """Nine references to one list of nine references to ...: 9**levels ones, built at once
    (what a YAML alias bomb reads as)."""
    value: list[Any] = [1] * 9
    for _ in range(levels - 1):
        value = [value] * 9
    return value


def holding_itself() -> list[Any]:
    """A list whose one item is itself (what `a: &a [*a]` reads as)."""
    value: list[Any] = []
    value.append(value)
    return value


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("changes", "key"),
    [
        pytest.param({"dae.lr": shared_lists(9)}, "dae.lr", id="bomb-for-a-number"),
        pytest.param({"dae": shared_lists(9)}, "dae", id="bomb-for-a-section"),
        pytest.param({"noise.kind": shared_lists(9)}, "noise.kind", id="bomb-for-a-choice"),
        pytest.param({"data.mirrors": [shared_lists(9)]}, "data.mirrors[0]", id="bomb-in-a-list"),
        pytest.param({"device": holding_itself()}, "device", id="list-holding-itself"),
        pytest.param({"seed": 10**400}, "seed", id="400-digit-integer"),
        pytest.param({"noise.kind": "x" * 1_000_000}, "noise.kind", id="long-string"),
    ],
)
def test_bad_value_is_shown_cut_short_not_expanded(changes: dict[str, Any], key: str) -> None:
    message = refusal(changed(changes))  # repr() of the bomb would take minutes and gigabytes
    line = next(line for line in message.splitlines() if line.startswith(f"  - {key}: "))
    assert "..." in line and len(line) < 200, line
    shown = line.split("got ", 1)[1].removesuffix(")")
    assert len(shown) <= 80, shown


def test_small_bad_values_are_shown_whole() -> None:
    message = refusal(changed({"dae": [1, [2.5, math.nan], {"a": None}], "noise.kind": "x" * 60}))
    assert "dae: expected a section (a mapping of keys), got [1, [2.5, NaN], {'a': None}]" in (
        message
    )
    assert f"(got {'x' * 60!r})" in message


# ---------------------------------------------------------------- YAML 1.2, as DVC reads it

# (as written by hand, as YAML 1.2 and DVC read it); PyYAML (YAML 1.1) reads each differently
VALUES = [
    pytest.param("010", 10, id="leading-zero"),  # 1.1: octal 8
    pytest.param("08", 8, id="leading-zero-8"),  # 1.1: the string '08'
    pytest.param("1:30", "1:30", id="sexagesimal"),  # 1.1: 90
    pytest.param("1e-3", 0.001, id="exponent-no-dot"),  # 1.1: the string '1e-3'
    pytest.param("1E3", 1000.0, id="exponent-upper"),  # 1.1: the string '1E3'
    pytest.param("on", "on", id="on"),  # 1.1: True
    pytest.param("off", "off", id="off"),  # 1.1: False
    pytest.param("yes", "yes", id="yes"),  # 1.1: True
    pytest.param("no", "no", id="no"),  # 1.1: False
    pytest.param("0o10", 8, id="octal-0o"),  # 1.1: the string '0o10'
    pytest.param(".5", 0.5, id="dot-five"),
    pytest.param("1_000", 1000, id="underscores"),  # ruamel (and so DVC) keeps 1.1's digit groups
    pytest.param("true", True, id="true"),
    pytest.param("~", None, id="tilde"),
]


@pytest.mark.parametrize(("written", "expected"), VALUES)
def test_values_read_as_yaml_1_2(written: str, expected: Any) -> None:
    value = parse_yaml(f"key: {written}\n", "test.yaml")["key"]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "written",
    [p.values[0] for p in VALUES] + ["0x1F", "2024-01-01", ".nan", "-.inf", "'1e-3'", "[1, 2]"],
)
def test_values_read_exactly_as_dvc_reads_params(tmp_path: Path, written: str) -> None:
    from dvc.utils.serialize import load_yaml  # what dvc.lock and `dvc params diff` use

    path = tmp_path / "params.yaml"
    path.write_text(f"key: {written}\nsection:\n  inner: {written}\n")
    ours, dvcs = read_yaml(path), load_yaml(str(path))
    assert repr(ours) == repr(dvcs)  # repr: NaN != NaN
    assert type(ours["key"]) is type(dvcs["key"])


def test_params_read_by_a_stage_are_yaml_1_2(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(
        DEFAULT_TEXT.replace("seed: 2024 ", "seed: 010 ")
        .replace("lr: 0.003", "lr: 1e-3", 1)
        .replace("timeout_s: 30 ", "timeout_s: 1_000 ")
        .replace("n_digits: 10 ", "n_digits: 0o10 ")
    )
    params = load_params(path)
    assert params.seed == 10
    assert params.dae.lr == 0.001
    assert params.data.timeout_s == 1000
    assert params.plot.n_digits == 8


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("timeout_s: 30 ", "timeout_s: 1:30 ", "data.timeout_s: Input should be a valid number"),
        ("clip: true", "clip: off", "noise.clip: Input should be a valid boolean (got 'off')"),
        ("clip: true", "clip: yes", "noise.clip: Input should be a valid boolean (got 'yes')"),
        ("device: auto ", "device: on ", "device: Input should be 'auto', 'cpu' or 'cuda'"),
    ],
)
def test_yaml_1_1_spellings_are_strings_and_refused(
    tmp_path: Path, old: str, new: str, fragment: str
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(DEFAULT_TEXT.replace(old, new, 1))
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert fragment in str(info.value), str(info.value)
    assert "1.0e-3" not in str(info.value)  # the YAML 1.1 hint is gone


def test_loader_is_light_and_the_only_yaml_reader() -> None:
    code = (
        "import sys, pipeline.plumbing.yamlio, pipeline.plumbing.config; print(sorted(sys.modules))"
    )
    modules = run([sys.executable, "-c", code], ROOT).stdout
    for heavy in ("torch", "'dvc'", "'yaml'"):
        assert heavy not in modules
    for source in (ROOT / "pipeline").rglob("*.py"):  # plumbing/ too
        text = source.read_text()
        assert "import yaml" not in text and "from yaml" not in text, source


# ---------------------------------------------------------------- unreadable files, named


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
def test_unreadable_params_file_is_refused_naming_it(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    message = load_refusal(path)
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_missing_params_file_asks_to_run_from_the_project_root(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    message = load_refusal(path)
    assert message == f"{path} not found (run from the project root)"


def test_binary_params_file_is_refused_as_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    message = load_refusal(path)
    assert message.startswith(f"{path} cannot be read as UTF-8 text")


def test_directory_in_place_of_params_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.mkdir()
    message = load_refusal(path)
    assert message.startswith(f"{path} cannot be read")


def yaml_error(path: Path) -> str:
    with pytest.raises(YAMLFileError) as info:
        read_yaml(path)
    assert isinstance(info.value, PipelineError)
    return str(info.value)


def test_duplicate_keys_are_refused_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("a: 1\nb:\n  c: 2\n  c: 3\n")
    message = yaml_error(path)
    assert message.startswith(f"{path} is not valid YAML: line 4, column 3: ")
    assert "duplicate key 'c'" in message
    assert "\n" not in message


def test_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("a: [1\nb: 2\n")
    message = yaml_error(path)
    assert message.startswith(f"{path} is not valid YAML: line 2, column 2: ")
    assert "line 1, column 4" in message  # where the unclosed flow sequence started


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(None, "not found", id="missing"),
        pytest.param("dir", "is a directory", id="directory"),
        pytest.param(b"\xff\xfe\x00\x01garbage", "cannot be read as UTF-8 text", id="binary"),
        pytest.param("seed: café\n".encode("latin-1"), "UTF-8", id="latin-1"),
        pytest.param(b"\x00\x01\x02", "", id="control-chars"),
    ],
)
def test_unreadable_yaml_file_is_named_on_one_line(
    tmp_path: Path, content: Any, fragment: str
) -> None:
    path = tmp_path / "x.yaml"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    message = yaml_error(path)
    assert message.startswith(str(path)) and fragment in message
    assert "\n" not in message


def test_empty_document_reads_as_none() -> None:
    assert parse_yaml("", "x.yaml") is None
    assert parse_yaml("# only a comment\n", "x.yaml") is None


# ---------------------------------------------------------------- documents too big or too deep


def alias_bomb(levels: int = 9) -> str:
    """YAML anchors `a`, `b`, ... each a list of nine aliases of the one before: a few hundred
    bytes that expand to 9**levels values ("billion laughs"); `*i` is the biggest."""
    names = "abcdefghijklmnopqrstuvwxyz"[:levels]
    lines = [f"{names[0]}: &{names[0]} [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"{new}: &{new} [{', '.join([f'*{old}'] * 9)}]" for old, new in pairwise(names)]
    return "\n".join(lines) + "\n"


def nested(levels: int, kind: str) -> str:
    """`levels` flow lists (`[[...]]`) or mappings (`{a: {a: 1}}`), one inside the other."""
    if kind == "lists":
        return "[" * levels + "]" * levels
    return "{a: " * levels + "1" + "}" * levels


BOMB_PARAMS = alias_bomb() + DEFAULT_TEXT.replace("  lr: 0.003\n", "  lr: *i\n", 1)
TOO_BIG = f"expands to more than {MAX_VALUES} values (YAML aliases?)"
TOO_DEEP = f"nests more than {MAX_DEPTH} levels of lists and mappings"


@pytest.mark.timeout(30)
def test_alias_bomb_in_params_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(BOMB_PARAMS)
    assert MAX_VALUES == 100_000
    assert load_refusal(path) == f"{path} expands to more than 100000 values (YAML aliases?)"


@pytest.mark.timeout(30)
def test_alias_bomb_is_refused_in_any_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "regression.yaml"
    path.write_text(alias_bomb())
    assert yaml_error(path) == f"{path} {TOO_BIG}"


@pytest.mark.timeout(30)
def test_values_reached_through_aliases_count_up_to_the_limit() -> None:
    # [&a [270 zeros], *a x m]: 1 + (m + 1) * (270 + 1) values, aliases expanded
    def document(aliases: int) -> str:
        return f"[&a [{', '.join(['0'] * 270)}]{', *a' * aliases}]"

    assert MAX_VALUES == 1 + 369 * 271
    assert len(parse_yaml(document(368), "x.yaml")) == 369
    with pytest.raises(YAMLFileError, match=r"^x\.yaml expands to more than 100000 values"):
        parse_yaml(document(369), "x.yaml")


@pytest.mark.parametrize("kind", ["lists", "mappings"])
def test_nesting_up_to_the_limit_is_read(kind: str) -> None:
    assert MAX_DEPTH == 64
    value = parse_yaml(nested(MAX_DEPTH, kind), "x.yaml")
    for _ in range(MAX_DEPTH - 1):
        value = value[0] if kind == "lists" else value["a"]
    assert value == ([] if kind == "lists" else {"a": 1})


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "text",
    [
        pytest.param(nested(MAX_DEPTH + 1, "lists"), id="65-lists"),
        pytest.param(nested(MAX_DEPTH + 1, "mappings"), id="65-mappings"),
        pytest.param(nested(10_000, "lists"), id="10000-lists"),  # a RecursionError in ruamel
        pytest.param(nested(10_000, "mappings"), id="10000-mappings"),
        pytest.param("a: &a [*a]\n", id="list-holding-itself"),
        pytest.param("a: &a {b: *a}\n", id="mapping-holding-itself"),
    ],
)
def test_deeper_nesting_is_refused_on_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    assert yaml_error(path) == f"{path} {TOO_DEEP}"


# ---------------------------------------------------------------- stages on the command line


@pytest.mark.slow
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
            "train vae",
            DEFAULT_TEXT.replace("latent_dim: 16", "latent_dims: 16"),
            ["vae.latent_dims", "Did you mean 'vae.latent_dim'?"],
            id="train-vae-typo",
        ),
        pytest.param(
            "make_noisy",
            "seed: [1\n",
            ["params.yaml is not valid YAML", "line 2"],
            id="make_noisy-syntax",
        ),
        pytest.param("train dae", None, ["params.yaml not found"], id="train-dae-no-file"),
    ],
)
def test_stage_with_bad_params_fails_cleanly_and_writes_nothing(
    tmp_path: Path, stage: str, text: str | None, fragments: list[str]
) -> None:
    if text is not None:
        (tmp_path / "params.yaml").write_text(text)
    before = sorted(tmp_path.iterdir())
    module, *args = stage.split()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", f"pipeline.{module}", *args],
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


@pytest.mark.slow
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(BOMB_PARAMS, TOO_BIG, id="alias-bomb"),
        pytest.param(
            DEFAULT_TEXT.replace("  lr: 0.003\n", f"  lr: {nested(10_000, 'lists')}\n", 1),
            TOO_DEEP,
            id="10000-lists",
        ),
        pytest.param(
            DEFAULT_TEXT.replace("  lr: 0.003\n", f"  lr: {nested(10_000, 'mappings')}\n", 1),
            TOO_DEEP,
            id="10000-mappings",
        ),
    ],
)
def test_validate_refuses_an_oversized_document_on_one_error_line(
    tmp_path: Path, text: str, problem: str
) -> None:
    (tmp_path / "params.yaml").write_text(text)
    proc = run_stage(tmp_path, "validate", timeout=25)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr == f"error: params.yaml {problem}\n", proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(tmp_path.iterdir()) == [tmp_path / "params.yaml"]  # no data/params.ok


# ---------------------------------------------------------------- end to end, with DVC


def stage_reading(repo: Path) -> dict[str, Any] | str:
    """What a stage validates in `repo`: the params as dotted keys, or the refusal message."""
    code = (
        "import json\n"
        "from pipeline.plumbing.config import ParamsError, load_params\n"
        "try:\n"
        "    print(json.dumps(load_params().model_dump()))\n"
        "except ParamsError as e:\n"
        "    print(json.dumps(str(e)))\n"
    )
    out = json.loads(run([sys.executable, "-c", code], repo).stdout)
    return out if isinstance(out, str) else flatten(out)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def dvc_reading(repo: Path) -> dict[str, Any]:
    """{dotted key: new value} of `dvc params diff --json` (workspace vs HEAD)."""
    diff = json.loads(dvc(repo, "params", "diff", "--json").stdout)["params.yaml"]
    return {key: change["new"] for key, change in diff.items()}


def block_style(repo: Path) -> None:
    """Rewrite `repo/params.yaml` (JSON, as `new_project` writes it) in block style, as a person
    writes it (one `key: value` a line, written by ruamel: YAML 1.2), and commit it."""
    path = repo / "params.yaml"
    writer = YAML(typ="safe")
    writer.default_flow_style = False
    text = io.StringIO()
    writer.dump(read_yaml(path), text)
    path.write_text(text.getvalue())
    git(repo, "commit", "-q", "-am", "params.yaml in block style")


def hand_edit(repo: Path, edits: list[tuple[str, str]]) -> None:
    """Replace text in `repo/params.yaml` (each `old` must occur): edits as a person makes them."""
    path = repo / "params.yaml"
    text = path.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_text(text)


@pytest.mark.e2e
def test_stage_and_dvc_read_hand_written_params_alike(
    tmp_path: Path, mnist_mirror: tuple[Path, bool]
) -> None:
    repo = new_project(tmp_path / "repo", mnist_mirror)
    block_style(repo)
    # values a stage accepts: it must use exactly what DVC records
    hand_edit(
        repo,
        [
            ("seed: 2024\n", "seed: 010\n"),
            ("  lr: 0.003\n", "  lr: 1e-3\n"),  # dae comes before vae
            ("n_digits: 10\n", "n_digits: 0o10\n"),
            ("  batch_size: 20\n  blur_sigma: 1.0\n", "  batch_size: 1_000\n  blur_sigma: .5\n"),
        ],
    )
    recorded, used = dvc_reading(repo), stage_reading(repo)
    assert isinstance(used, dict), used
    assert recorded == {
        "seed": 10,
        "dae.lr": 0.001,
        "plot.n_digits": 8,
        "evaluate.batch_size": 1000,
        "evaluate.blur_sigma": 0.5,
    }
    assert {key: used[key] for key in recorded} == recorded

    # a hand-written `lr: 1e-3` runs, and dvc.lock records what the stages used
    repro(repo, "train@dae", mirror=mnist_mirror[0])
    lock = dvc_lock_params(repo)
    assert lock["make_noisy"]["seed"] == lock["train@dae"]["seed"] == 10
    assert lock["train@dae"]["dae"]["lr"] == 0.001

    # YAML 1.1 spellings are strings for DVC and for the stage, which refuses them by value
    hand_edit(
        repo,
        [
            ("timeout_s: 30\n", "timeout_s: 1:30\n"),
            ("clip: true\n", "clip: off\n"),
            ("kind: gaussian\n", "kind: yes\n"),
            ("device: cpu\n", "device: on\n"),
        ],
    )
    recorded, refusal = dvc_reading(repo), stage_reading(repo)
    assert isinstance(refusal, str), refusal
    assert recorded["data.timeout_s"] == "1:30"
    for key in ("data.timeout_s", "noise.clip", "noise.kind", "device"):
        assert isinstance(recorded[key], str)
        line = next(line for line in refusal.splitlines() if line.startswith(f"  - {key}:"))
        assert line.endswith(f"(got {recorded[key]!r})"), line


def dvc_lock_params(repo: Path) -> dict[str, dict[str, Any]]:
    """{stage: params.yaml params} as dvc.lock records them (read the way DVC reads it)."""
    lock = read_yaml(repo / "dvc.lock")
    stages = lock["stages"].items()
    return {name: stage.get("params", {}).get("params.yaml", {}) for name, stage in stages}
