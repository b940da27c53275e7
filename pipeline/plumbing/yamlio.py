"""The project's one YAML reader: YAML 1.2, exactly as DVC reads `params.yaml`.

DVC reads params files (for `dvc.lock`, `dvc params diff`, `dvc exp show`) with
`dvc.utils.serialize.parse_yaml`, i.e. ``ruamel.yaml.YAML(typ="safe").load(text)`` on the file
read as UTF-8 text. This module uses that same configuration, so a stage validates the very
value DVC records: `1e-3` is 0.001, `010` is 10, `0o10` is 8, `1_000` is 1000, while `yes`,
`on`, `off` and `1:30` are strings (PyYAML, YAML 1.1, reads each of these differently).
Duplicate keys are refused (ruamel's default), and every problem is a :class:`YAMLFileError`
whose one-line message names the file, and the line and column of a syntax error.

A document is also refused when it is too big once its aliases are expanded (more than
:data:`MAX_VALUES` values: a "billion laughs" alias bomb is a few hundred bytes) or nests
containers more than :data:`MAX_DEPTH` levels deep, so no caller ever walks, prints or
validates such a value (DVC itself reads either without complaint).

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

from pipeline.plumbing.errors import PipelineError

MAX_VALUES = 100_000  # values in a document, aliases expanded (params.yaml holds about 100)
MAX_DEPTH = 64  # containers nested in one another (params.yaml: 3)


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
    """Parse `text` (from `source`, named in errors) as YAML 1.2, the way DVC does; refuse a
    document too big or too deep (see :func:`check_size`)."""
    try:
        document = YAML(typ="safe").load(text)
    except RecursionError:  # ruamel composes nested nodes recursively
        raise YAMLFileError(source, _too_deep()) from None
    except YAMLError as e:
        raise YAMLFileError(source, f"is not valid YAML: {_problem(e)}") from None
    except (ValueError, TypeError, OverflowError) as e:  # a constructor's, e.g. `2024-13-45`
        raise YAMLFileError(source, f"is not valid YAML: {one_line(str(e))}") from None
    check_size(document, source)
    return document


def check_size(document: Any, source: str) -> None:
    """Raise :class:`YAMLFileError` when `document` holds more than :data:`MAX_VALUES` values
    or nests containers more than :data:`MAX_DEPTH` deep, counted as a reader that expands
    every alias sees them (a shared or self-referencing node counts each time it is reached).

    The walk is iterative and counts the values of a container before visiting them, so it
    stops after at most :data:`MAX_VALUES` steps, whatever the document."""
    count = 1
    stack: list[tuple[Any, int]] = [(document, 1)]  # (value, containers around it, itself too)
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = (*value, *value.values())
        elif isinstance(value, list | tuple | set | frozenset):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            raise YAMLFileError(source, _too_deep())
        count += len(children)
        if count > MAX_VALUES:
            raise YAMLFileError(source, f"expands to more than {MAX_VALUES} values (YAML aliases?)")
        stack.extend((child, depth + 1) for child in children)


def _too_deep() -> str:
    return f"nests more than {MAX_DEPTH} levels of lists and mappings"


def _problem(e: YAMLError) -> str:
    """`line L, column C: problem (context at line L', column C')`, 1-based like editors."""
    if isinstance(e, ReaderError):
        return f"unacceptable character #x{e.character:04x} at offset {e.position}: {e.reason}"
    if not isinstance(e, MarkedYAMLError) or e.problem_mark is None:
        return one_line(str(e))
    problem = e.problem or ""
    if isinstance(e, DuplicateKeyError):  # ruamel adds the values, which can be whole sections
        found = re.match(r'found duplicate key "(.*?)" with value ', problem, re.DOTALL)
        problem = f"found duplicate key {found.group(1)!r}" if found else problem
    mark = e.problem_mark
    text = f"line {mark.line + 1}, column {mark.column + 1}: {one_line(problem)}"
    if e.context and e.context_mark is not None and e.context_mark != e.problem_mark:
        where = f"line {e.context_mark.line + 1}, column {e.context_mark.column + 1}"
        text += f" ({one_line(e.context)} at {where})"
    return text


def one_line(text: str) -> str:
    """`text` on one line: every run of whitespace (newlines too) becomes one space."""
    return " ".join(text.split())
