"""Regression gate: workspace metrics vs a git revision, within the tolerances of regression.yaml.

`python -m pipeline.check_regression [--rev main] [--tolerances FILE] [--summary FILE]` reads the
metrics through DVC (as `dvc metrics diff` does), prints a markdown table and exits 0 when no
watched metric is worse by more than max(abs, rel * |old|), 1 when one is, 2 on a usage problem
(explained on one `error:` line; the arguments and the tolerance file are checked before any
metric is read) and 3 when the gate itself fails unexpectedly (a bug, never a regression).

A watched metric that is not a finite number (NaN, Infinity or -Infinity, which DVC reads from
JSON) on either side counts as a regression, exit 1, and is marked in its table row: a model
whose metric overflowed or diverged is worse than any finite result, and a non-finite value on
the old side leaves nothing to compare with (an infinite "improvement" never passes). A metric
that is missing, not a number, or an integer too large for a float (beyond about 1.8e308) is a
usage problem, exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from pipeline.plumbing.yamlio import YAMLFileError, one_line, read_yaml

OK, REGRESSED, USAGE, INTERNAL = 0, 1, 2, 3
WORKSPACE = "workspace"


class UsageError(Exception):
    """The gate cannot compare: bad argument or tolerance file, unknown revision, missing metric.

    Its message is one line.
    """


class Tolerance(BaseModel):
    """One watched metric: which way is better and how much worse it may get."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    direction: Literal["lower", "higher"]
    abs: float = Field(default=0.0, ge=0)
    rel: float = Field(default=0.0, ge=0)

    def allowed(self, old: float) -> float:
        """The largest worsening that still passes: max(abs, rel * |old|)."""
        return max(self.abs, self.rel * math.fabs(old))

    def regressed(self, old: float, new: float) -> bool:
        """Worse by more than :meth:`allowed`; a non-finite value (NaN, inf, -inf) on either
        side counts as a regression."""
        if not (math.isfinite(old) and math.isfinite(new)):
            return True
        worsening = new - old if self.direction == "lower" else old - new
        return not worsening <= self.allowed(old)


Tolerances = dict[str, dict[str, Tolerance]]  # metrics file -> dotted key -> tolerance
TOLERANCES = TypeAdapter(dict[str, Annotated[dict[str, Tolerance], Field(min_length=1)]])


class Row(NamedTuple):
    metric: str
    tolerance: Tolerance
    old: float
    new: float

    @property
    def regressed(self) -> bool:
        return self.tolerance.regressed(self.old, self.new)


def load_tolerances(path: Path) -> Tolerances:
    """Read (as YAML 1.2, like params.yaml) and validate the tolerance file; raise
    :class:`UsageError` naming every bad entry."""
    try:
        raw = read_yaml(path)
    except YAMLFileError as e:
        raise UsageError(f"tolerance file {e}") from None
    if not raw:
        raise UsageError(f"tolerance file {path} watches no metrics")
    try:
        return TOLERANCES.validate_python(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{': '.join(map(str, err['loc'])) or '<top level>'}: {err['msg']}"
            for err in e.errors()
        )
        raise UsageError(
            f"tolerance file {path} has {e.error_count()} invalid entries: {problems}"
        ) from None


def check_summary(path: Path | None) -> None:
    """Raise :class:`UsageError` unless the report can be appended to `path` (None: no file)."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"--summary {path} is a directory, not a file")
    folder = path.parent
    if not folder.exists():
        raise UsageError(f"--summary {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise UsageError(f"--summary {path}: {folder} is not a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"--summary {path} is not writable")
    if not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--summary {path}: folder {folder} is not writable")


def read_metrics(rev: str, files: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """({file: data} at `rev`, {file: data} in the workspace), read by DVC."""
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo() as repo:
            targets = [os.path.join(repo.root_dir, f) for f in files]
            shown = repo.metrics.show(targets=targets, revs=[rev], hide_workspace=False)
    except NotDvcRepoError as e:
        raise UsageError(f"no DVC project here: {one_line(str(e))}") from None
    except DvcException as e:
        raise UsageError(f"cannot read metrics at revision {rev!r}: {one_line(str(e))}") from None
    at_rev = [name for name in shown if name != WORKSPACE]  # DVC names it as it resolved it
    if not at_rev:
        raise UsageError(f"revision {rev!r} holds no DVC project")
    data: dict[str, dict[str, Any]] = {rev: {}, WORKSPACE: {}}
    for side, result in ((rev, shown[at_rev[0]]), (WORKSPACE, shown[WORKSPACE])):
        if "error" in result:
            raise UsageError(f"cannot load metrics at {side}: {one_line(str(result['error']))}")
        found = {os.path.normpath(path): r for path, r in result["data"].items()}
        for file in files:
            entry = found.get(os.path.normpath(file), {})
            if "data" not in entry:
                err = entry.get("error")
                gone = err is None or isinstance(err, FileNotFoundError)
                problem = "not found" if gone else unreadable(err)
                raise UsageError(f"metrics file {file} at {side}: {problem}")
            data[side][file] = entry["data"]
    return data[rev], data[WORKSPACE]


def unreadable(err: BaseException) -> str:
    """Why DVC could not read a metrics file, without the path it puts in its message.

    DVC's `ParseError` names the file relative to the working directory as seen from the root
    of its repository filesystem ('../../../metrics/test.json'); the caller names the file.
    """
    from dvc.utils.serialize import ParseError

    text = str(err)
    if isinstance(err, ParseError):
        prefix = f"unable to read: '{err.path}', "
        reason = text.removeprefix(prefix) if text.startswith(prefix) else text
        cause = f" ({err.__cause__})" if err.__cause__ else ""
        text = f"cannot be parsed: {reason}{cause}"
    return one_line(text)


def lookup(data: Any, key: str) -> float | None:
    """The number at dotted `key` in nested mappings, or None when absent or not a number;
    OverflowError for an integer too large for a float."""
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return float(data) if isinstance(data, int | float) and not isinstance(data, bool) else None


def compare(tolerances: Tolerances, old: dict, new: dict, rev: str) -> list[Row]:
    """One row per watched metric; raise :class:`UsageError` listing every missing value."""
    rows, missing = [], []
    for file, keys in tolerances.items():
        for key, tolerance in keys.items():
            values: dict[str, float | None] = {}
            for side, data in ((rev, old), (WORKSPACE, new)):
                try:
                    values[side] = lookup(data[file], key)
                except OverflowError:
                    values[side] = None
                    missing.append(
                        f"{file}: {key} at {side} is an integer too large to compare "
                        "(beyond the float range, about 1.8e308)"
                    )
                    continue
                if values[side] is None:
                    missing.append(f"{file}: {key} is missing or not a number at {side}")
            if None not in values.values():
                rows.append(Row(f"{file}: {key}", tolerance, values[rev], values[WORKSPACE]))
    if missing:
        raise UsageError("cannot compare: " + "; ".join(missing))
    return rows


def render(rows: list[Row], rev: str) -> str:
    """A markdown report: heading, one table row per metric, a count of regressions."""
    lines = [
        f"### Regression gate: workspace vs `{rev}`",
        "",
        f"| metric | old ({rev}) | new (workspace) | change | tolerance | status |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for row in rows:
        metric, tol, old, new = row
        change = f"{new - old:+.4g}" + (f" ({(new - old) / math.fabs(old):+.1%})" if old else "")
        allowed = f"{tol.allowed(old):.3g} ({tol.direction} is better)"
        finite = math.isfinite(old) and math.isfinite(new)
        status = ("❌" if finite else "❌ not a finite number") if row.regressed else "✅"
        lines.append(f"| {metric} | {old:.5g} | {new:.5g} | {change} | {allowed} | {status} |")
    failed = sum(row.regressed for row in rows)
    return "\n".join([*lines, "", f"{failed} of {len(rows)} watched metrics regressed."])


def gate(rev: str, tolerance_file: Path, summary: Path | None) -> int:
    """Check every argument, then compare; print the report and return 0 or 1."""
    if rev == WORKSPACE:
        raise UsageError("--rev must be a git revision, not the workspace")
    check_summary(summary)
    tolerances = load_tolerances(tolerance_file)
    rows = compare(tolerances, *read_metrics(rev, list(tolerances)), rev)
    report = render(rows, rev)
    if summary is not None:
        try:
            with summary.open("a", encoding="utf-8") as f:
                f.write(report + "\n\n")
        except OSError as e:
            raise UsageError(f"--summary {summary} cannot be written: {e.strerror or e}") from None
    print(report)
    return REGRESSED if any(row.regressed for row in rows) else OK


def main(argv: list[str] | None = None) -> int:
    """Run the gate; return the exit code (0, 1 regressed, 2 usage problem, 3 internal error)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", default="main", help="git revision to compare with (main)")
    parser.add_argument("--tolerances", type=Path, default=Path("regression.yaml"))
    parser.add_argument("--summary", type=Path, help="also append the table to this file")
    args = parser.parse_args(argv)  # exits 2 on a bad argument
    try:
        return gate(args.rev, args.tolerances, args.summary)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    except Exception:  # a bug must not read as a regression (Python would exit 1)
        traceback.print_exc()
        print("error: the gate failed unexpectedly (a bug, not a regression)", file=sys.stderr)
        return INTERNAL


if __name__ == "__main__":
    sys.exit(main())
