"""The user docs stay true: README's results table equals the committed metrics, every relative
link resolves, README stays short, and user pages keep history out (it goes to docs/LOG.md).

After a new committed run, regenerate the table in place with
    python tests/test_readme.py --write
(or print it with `python tests/test_readme.py`), then update the caption under the table.
No torch import: these tests take well under a second.
"""

import json
import re
import sys
from pathlib import Path

import pandas as pd

from pipeline.report import METHODS, cell, headline
from pipeline.report import METRICS as REPORT_METRICS
from pipeline.study_report import findings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CPU_METRICS = ROOT / "metrics" / "test.json"  # the committed default run
GPU_METRICS = ROOT / "results" / "gpu-h100" / "test.json"  # the GPU configuration's run
STUDY_SUMMARY = ROOT / "metrics" / "study" / "summary.json"  # the committed study run
STUDY_CROSS = ROOT / "metrics" / "study" / "cross.csv"
BEGIN = "<!-- results:begin (generated: python tests/test_readme.py --write) -->"
END = "<!-- results:end -->"
MAX_README_LINES = 200

# the report page's rows and formats (pipeline/report.py), so both tables print alike
METRICS = [(metric, fmt) for metric, _, fmt, _ in REPORT_METRICS]
GPU_COLUMNS = METRICS[:3]
HEADER = [
    "| method | MSE | PSNR (dB) | SSIM | read right | feature distance "
    "| MSE, GPU config | PSNR, GPU config | SSIM, GPU config |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
]


def render_table(cpu_path: Path = CPU_METRICS, gpu_path: Path = GPU_METRICS) -> list[str]:
    """The results table's lines, rendered from the two metrics files."""
    cpu = json.loads(cpu_path.read_text())
    gpu = json.loads(gpu_path.read_text())
    rows = []
    for label, key in METHODS:
        if key in cpu:
            cells = [cell(cpu[key], m, fmt) for m, fmt in METRICS]
            cells += [cell(gpu.get(key, {}), m, fmt) for m, fmt in GPU_COLUMNS]
            rows.append("| " + " | ".join([label, *cells]) + " |")
    return HEADER + rows


def render_block() -> list[str]:
    """The README's generated block: the table, the report's headline (from metrics/test.json)
    and the study's findings (from its summary)."""
    cpu = json.loads(CPU_METRICS.read_text())
    study = json.loads(STUDY_SUMMARY.read_text())
    return [*render_table(), "", *headline(cpu), *findings(study, pd.read_csv(STUDY_CROSS))]


def readme_table(text: str) -> list[str]:
    """The lines between the markers in README.md."""
    assert BEGIN in text and END in text, f"README.md lacks the markers {BEGIN!r} ... {END!r}"
    inner = text.split(BEGIN, 1)[1].split(END, 1)[0]
    return [line for line in inner.strip().splitlines()]


def write_table() -> None:
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + BEGIN + "\n" + "\n".join(render_block()) + "\n" + END + tail)


def user_pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def without_code(text: str) -> str:
    """Markdown without fenced code blocks and inline code (no links live there)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_results_table_and_findings_match_committed_metrics():
    assert readme_table(README.read_text()) == render_block(), (
        "README's results differ from metrics/test.json, results/gpu-h100/test.json or "
        "metrics/study/summary.json: run `python tests/test_readme.py --write`"
    )


def test_render_table_shows_each_metric_to_its_digits(tmp_path):
    run = {k: {"mse": 0.123456, "psnr": 12.345, "ssim": 0.98765} for _, k in METHODS}
    run["dae"] |= {"accuracy": 0.97456, "accuracy_lo": 0.9712, "accuracy_hi": 0.978, "fd": 15.0474}
    (tmp_path / "a.json").write_text(json.dumps(run))
    rows = render_table(tmp_path / "a.json", tmp_path / "a.json")[len(HEADER) :]
    assert len(rows) == len(METHODS)
    dae = rows[[key for _, key in METHODS].index("dae")]
    assert dae == (
        "| **DAE** | 0.12346 | 12.35 | 0.988 | 97.46% [97.12%, 97.80%] | 15.047 "
        "| 0.12346 | 12.35 | 0.988 |"
    )


def anchors(page: Path) -> set[str]:
    """GitHub's ids of the page's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    titles = re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", t.lower()).replace(" ", "-") for t in titles}


def test_relative_links_resolve():
    broken = []
    for page in user_pages():
        for target in LINK.findall(without_code(page.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # a URL
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines, at most {MAX_README_LINES}"


def test_user_pages_keep_history_in_the_log():
    words = re.compile(
        r"target (?:is |was )?(?:not )?met|\bnot met\b|scratch (?:script|test)", re.I
    )
    found = [
        f"{page.relative_to(ROOT)}: {m.group(0)!r}"
        for page in user_pages()
        if page.name != "LOG.md"
        for m in words.finditer(page.read_text())
    ]
    assert not found, "history belongs in docs/LOG.md:\n" + "\n".join(found)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_table()
    else:
        print("\n".join(render_block()))
