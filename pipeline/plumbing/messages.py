"""Error messages about params: one line per bad key, naming what is allowed, and a bounded
preview of a bad value (a YAML alias bomb must not be expanded to describe it)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel


def describe(err: dict[str, Any], root: type[BaseModel]) -> str:
    """One line for a pydantic error of validating `root`: the dotted key, what is wrong and
    what is allowed."""
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]  # list indexes dropped
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(root, loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f" Did you mean '{'.'.join([*loc[:-1], close[0]])}'?" if close else ""
        return f"{key}: unknown key.{hint} Allowed keys: {', '.join(allowed)}"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "value_error":  # a validator's own message, which names the keys involved
        text = str(err.get("ctx", {}).get("error", err["msg"]))
        return f"{key}: {text}" if key else text
    if kind == "model_type":
        return f"{key}: expected a section (a mapping of keys), got {_preview(value)}"
    return f"{key}: {err['msg']} (got {_preview(value)}){_number_hint(kind, value)}"


PREVIEW_CHARS = 80  # the most of a bad value an error message shows


def _preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """`value` as `repr` writes it (NaN as `NaN`), cut to `limit` characters ending in `...`.

    Built piece by piece by a walk with a budget, never by `repr` of a whole container: a
    value shared many times over (a YAML alias bomb) or holding itself costs only what is
    shown."""
    pieces: list[str] = []
    size = 0
    stack: list[Iterator[tuple[bool, Any]]] = [iter([(False, value)])]
    while stack and size <= limit:
        is_text, item = next(stack[-1], (True, None))
        if is_text and item is None:  # this container is done
            stack.pop()
        elif is_text:
            pieces.append(item)
            size += len(item)
        elif isinstance(item, dict | list | tuple | set | frozenset):
            stack.append(_parts(item))
        else:
            text = _scalar(item, limit)
            pieces.append(text)
            size += len(text)
    text = "".join(pieces)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parts(container: Any) -> Iterator[tuple[bool, Any]]:
    """The pieces of a container's repr, one level down: (True, text) or (False, an item)."""
    if isinstance(container, dict):
        yield True, "{"
        for i, (key, item) in enumerate(container.items()):
            if i:
                yield True, ", "
            yield False, key
            yield True, ": "
            yield False, item
        yield True, "}"
        return
    ends = {list: "[]", tuple: "()"}.get(type(container), "{}")  # sets: {...}
    yield True, ends[0]
    for i, item in enumerate(container):
        if i:
            yield True, ", "
        yield False, item
    yield True, ends[1]


def _scalar(value: Any, limit: int) -> str:
    """repr of a scalar, of at most its first `limit` characters for a string or bytes."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, str | bytes):
        return repr(value[: limit + 1])  # longer than `limit` once quoted: it will be cut
    return repr(value)


def _number_hint(kind: str, value: Any) -> str:
    """Why a number was read as a string: it was quoted (YAML 1.2, as DVC reads it, takes
    `1e-3`, `010` and `.5` as numbers)."""
    if kind not in ("int_type", "float_type") or not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    return "; write the number without quotes" if math.isfinite(number) else ""


def _allowed_keys(root: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the section at `loc` (a path of field names from `root`)."""
    model = root
    for name in loc:
        annotation = model.model_fields[name].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
