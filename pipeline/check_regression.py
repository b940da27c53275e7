"""Regression gate: workspace metrics vs a git revision, within the tolerances of regression.yaml.

`python -m pipeline.check_regression [--rev main] [--tolerances FILE] [--summary FILE]` reads the
metrics through DVC (as `dvc metrics diff` does), prints a markdown table and exits 0 when no
watched metric is worse by more than max(abs, rel * |old|), 1 when one is, 2 on a usage problem.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

OK, REGRESSED, USAGE = 0, 1, 2
WORKSPACE = "workspace"


class UsageError(Exception):
    """The gate cannot compare: bad tolerance file, unknown revision, missing metric."""


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
        """Worse by more than :meth:`allowed` (a NaN on either side counts as a regression)."""
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
    """Read and validate the tolerance file; raise :class:`UsageError` naming every bad entry."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"tolerance file {path} not found") from None
    except yaml.YAMLError as e:
        raise UsageError(f"tolerance file {path} is not valid YAML: {e}") from None
    if not raw:
        raise UsageError(f"tolerance file {path} watches no metrics")
    try:
        return TOLERANCES.validate_python(raw)
    except ValidationError as e:
        problems = "\n".join(
            f"  - {': '.join(map(str, err['loc'])) or '<top level>'}: {err['msg']}"
            for err in e.errors()
        )
        raise UsageError(f"tolerance file {path} has invalid entries:\n{problems}") from None


def read_metrics(rev: str, files: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """({file: data} at `rev`, {file: data} in the workspace), read by DVC."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    if rev == WORKSPACE:
        raise UsageError("--rev must be a git revision, not the workspace")
    try:
        with Repo() as repo:
            targets = [os.path.join(repo.root_dir, f) for f in files]
            shown = repo.metrics.show(targets=targets, revs=[rev], hide_workspace=False)
    except DvcException as e:
        raise UsageError(f"cannot read metrics at revision {rev!r}: {e}") from None
    at_rev = [name for name in shown if name != WORKSPACE]  # DVC names it as it resolved it
    if not at_rev:
        raise UsageError(f"revision {rev!r} holds no DVC project")
    data: dict[str, dict[str, Any]] = {rev: {}, WORKSPACE: {}}
    for side, result in ((rev, shown[at_rev[0]]), (WORKSPACE, shown[WORKSPACE])):
        if "error" in result:
            raise UsageError(f"cannot load metrics at {side}: {result['error']}")
        found = {os.path.normpath(path): r for path, r in result["data"].items()}
        for file in files:
            entry = found.get(os.path.normpath(file), {})
            if "data" not in entry:
                err = entry.get("error")
                gone = err is None or isinstance(err, FileNotFoundError)
                raise UsageError(f"metrics file {file} at {side}: {'not found' if gone else err}")
            data[side][file] = entry["data"]
    return data[rev], data[WORKSPACE]


def lookup(data: Any, key: str) -> float | None:
    """The number at dotted `key` in nested mappings, or None when absent or not a number."""
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
            values = {side: lookup(d[file], key) for side, d in ((rev, old), (WORKSPACE, new))}
            gone = [side for side, value in values.items() if value is None]
            missing += [f"{file}: {key} is missing or not a number at {side}" for side in gone]
            if not gone:
                rows.append(Row(f"{file}: {key}", tolerance, values[rev], values[WORKSPACE]))
    if missing:
        raise UsageError("\n  ".join(["cannot compare:", *missing]))
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
        status = "❌" if row.regressed else "✅"
        lines.append(f"| {metric} | {old:.5g} | {new:.5g} | {change} | {allowed} | {status} |")
    failed = sum(row.regressed for row in rows)
    return "\n".join([*lines, "", f"{failed} of {len(rows)} watched metrics regressed."])


def main(argv: list[str] | None = None) -> int:
    """Run the gate; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", default="main", help="git revision to compare with (main)")
    parser.add_argument("--tolerances", type=Path, default=Path("regression.yaml"))
    parser.add_argument("--summary", type=Path, help="also append the table to this file")
    args = parser.parse_args(argv)
    try:
        tolerances = load_tolerances(args.tolerances)
        rows = compare(tolerances, *read_metrics(args.rev, list(tolerances)), args.rev)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    report = render(rows, args.rev)
    print(report)
    if args.summary:
        with args.summary.open("a") as f:
            f.write(report + "\n\n")
    return REGRESSED if any(row.regressed for row in rows) else OK


if __name__ == "__main__":
    sys.exit(main())
