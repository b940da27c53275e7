"""What the report pages share: number formats, markdown tables and figure files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

# Two-sided 95% Student-t quantiles by degrees of freedom, for intervals over a few seeds (one
# quantile does not justify scipy as a dependency); past 30, the normal's 1.96.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip


def t95(df: int) -> float:
    """The 95% t quantile for `df` degrees of freedom (the nearest tabulated df below: wider)."""
    return T95[max(k for k in T95 if k <= df)] if df <= 30 else 1.96


def num(x: float, digits: int = 4) -> str:
    """A metric as the pages print it: `digits` significant figures."""
    return f"{x:.{digits}g}" if abs(x) >= 1e-4 or x == 0 else f"{x:.2e}"


def interval(mean: float, lo: float, hi: float, digits: int = 4) -> str:
    return f"{num(mean, digits)} [{num(lo, digits)}, {num(hi, digits)}]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table, the first column left-aligned and the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]  # fmt: skip
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def parse_table(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the first table after the line `heading` (what the tests read back)."""
    lines = markdown.splitlines()
    start = lines.index(heading)
    block: list[str] = []
    for ln in lines[start + 1 :]:
        if ln.startswith("|"):
            block.append(ln)
        elif block:
            break
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in block[2:]]


def save_png(fig: Figure, path: Path) -> None:
    """Write a PNG without metadata that would differ between runs."""
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
