"""The project's one YAML reader: YAML 1.2, exactly as DVC reads `params.yaml`.

DVC reads params files (for `dvc.lock`, `dvc params diff`, `dvc exp show`) with
`dvc.utils.serialize.parse_yaml`, i.e. ``ruamel.yaml.YAML(typ="safe").load(text)`` on the file
read as UTF-8 text. This module uses that same configuration, so a stage validates the very
value DVC records: `1e-3` is 0.001, `010` is 10, `0o10` is 8, `1_000` is 1000, while `yes`,
`on`, `off` and `1:30` are strings (PyYAML, YAML 1.1, reads each of these differently).
Duplicate keys are refused (ruamel's default), and every problem is a :class:`YAMLFileError`
whose one-line message names the file, and the line and column of a syntax error.

The one difference from DVC: an empty document reads as None here (DVC turns any false-y
document into ``{}``), so callers can say the file is empty. Importing this module loads
ruamel.yaml only (some 30 ms), neither DVC nor torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.reader import ReaderError

from pipeline.errors import PipelineError


class YAMLFileError(PipelineError):
    """A YAML file is missing, not a file, not UTF-8 text or not valid YAML."""

    def __init__(self, source: str | Path, problem: str) -> None:
        super().__init__(f"{source} {problem}")
        self.source = str(source)
        self.problem = problem


class YAMLFileNotFoundError(YAMLFileError):
    """The file does not exist."""


def read_yaml(path: Path | str) -> Any:
    """The document in `path`, read as DVC reads params files (None when it is empty)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")  # as DVC: UTF-8, universal newlines
    except FileNotFoundError:
        raise YAMLFileNotFoundError(path, "not found") from None
    except IsADirectoryError:
        raise YAMLFileError(path, "cannot be read: it is a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise YAMLFileError(
            path,
            f"cannot be read as UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start} "
            f"({e.reason}); is it a binary file?",
        ) from None
    except OSError as e:
        raise YAMLFileError(path, f"cannot be read: {e.strerror or e}") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> Any:
    """Parse `text` (from `source`, named in errors) as YAML 1.2, the way DVC does."""
    try:
        return YAML(typ="safe").load(text)
    except YAMLError as e:
        raise YAMLFileError(source, f"is not valid YAML: {_problem(e)}") from None
    except (ValueError, TypeError, OverflowError) as e:  # a constructor's, e.g. `2024-13-45`
        raise YAMLFileError(source, f"is not valid YAML: {_one_line(str(e))}") from None


def _problem(e: YAMLError) -> str:
    """`line L, column C: problem (context at line L', column C')`, 1-based like editors."""
    if isinstance(e, ReaderError):
        return f"unacceptable character #x{e.character:04x} at offset {e.position}: {e.reason}"
    if not isinstance(e, MarkedYAMLError) or e.problem_mark is None:
        return _one_line(str(e))
    problem = e.problem or ""
    if isinstance(e, DuplicateKeyError):  # ruamel adds the values, which can be whole sections
        found = re.match(r'found duplicate key "(.*?)" with value ', problem, re.DOTALL)
        problem = f"found duplicate key {found.group(1)!r}" if found else problem
    mark = e.problem_mark
    text = f"line {mark.line + 1}, column {mark.column + 1}: {_one_line(problem)}"
    if e.context and e.context_mark is not None and e.context_mark != e.problem_mark:
        where = f"line {e.context_mark.line + 1}, column {e.context_mark.column + 1}"
        text += f" ({_one_line(e.context)} at {where})"
    return text


def _one_line(text: str) -> str:
    return " ".join(text.split())
