"""One reading of YAML, the same as DVC's: `pipeline.yamlio` reads YAML 1.2 exactly as DVC reads
`params.yaml` (so the value a stage validates is the value `dvc.lock`, `dvc params diff` and
`dvc exp show` record), rejects duplicate keys and names the file of every problem."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import ParamsError, load_params
from pipeline.errors import PipelineError
from pipeline.yamlio import YAMLFileError, parse_yaml, read_yaml
from tests.helpers import ROOT, dvc, new_project, repro, run

DEFAULT_TEXT = (ROOT / "params.yaml").read_text()

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


# ------------------------------------------------------------------------- problems, named


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
def test_unreadable_files_are_named(tmp_path: Path, content: Any, fragment: str) -> None:
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


def test_loader_is_light_and_the_only_yaml_reader() -> None:
    code = "import sys, pipeline.yamlio, pipeline.config; print(sorted(sys.modules))"
    modules = run([sys.executable, "-c", code], ROOT).stdout
    for heavy in ("torch", "'dvc'", "'yaml'"):
        assert heavy not in modules
    for source in (ROOT / "pipeline").glob("*.py"):
        text = source.read_text()
        assert "import yaml" not in text and "from yaml" not in text, source


# ------------------------------------------------------------------------ end to end, with DVC


def stage_reading(repo: Path) -> dict[str, Any] | str:
    """What a stage validates in `repo`: the params as dotted keys, or the refusal message."""
    code = (
        "import json\n"
        "from pipeline.config import ParamsError, load_params\n"
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
    # values a stage accepts: it must use exactly what DVC records
    hand_edit(
        repo,
        [
            ("seed: 2024\n", "seed: 010\n"),
            ("  lr: 0.003\n", "  lr: 1e-3\n"),  # dae comes before vae
            ("n_digits: 10\n", "n_digits: 0o10\n"),
            ("  batch_size: 64\n  blur_sigma: 1.0\n", "  batch_size: 1_000\n  blur_sigma: .5\n"),
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
    repro(repo, "train_dae", mirror=mnist_mirror[0])
    lock = dvc_lock_params(repo)
    assert lock["make_noisy"]["seed"] == lock["train_dae"]["seed"] == 10
    assert lock["train_dae"]["dae"]["lr"] == 0.001

    # YAML 1.1 spellings are strings for DVC and for the stage, which refuses them by value
    hand_edit(
        repo,
        [
            ("timeout_s: 30\n", "timeout_s: 1:30\n"),
            ("clip: true\n", "clip: off\n"),
            ("kind: gaussian\n", "kind: yes\n"),
            ("device: auto\n", "device: on\n"),
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
