"""Render `dvc plots show` / `dvc plots diff` in headless Chromium and save PNG screenshots.

A look at the charts the way a person sees them; not part of CI. DVC's page loads vega,
vega-lite and vega-embed from a CDN, so offline it shows only the images. This script runs
DVC, installs those three npm packages (the versions the page names) once into
`dvc_plots/.vendor/`, copies them beside the page, points the page at the copies and takes a
screenshot of it. It fails if a chart does not render.

Needs (once; Debian/Ubuntu as root):

    apt-get update && apt-get install -y chromium npm

Run from the project root (`dvc` from .venv/bin or PATH):

    python scripts/render_plots.py show                  # -> dvc_plots/show/index.html, show.png
    python scripts/render_plots.py diff main             # main vs workspace -> dvc_plots/diff/
    python scripts/render_plots.py diff HEAD~1 HEAD --targets mse_vs_noise per_digit_mse
    python scripts/render_plots.py page dvc_plots/index.html   # screenshot a page DVC wrote

Options: --repo DIR (project to run DVC in), --out DIR (page folder), --png FILE, --width PX
(window width: charts flow side by side as wide as it allows).
Everything it writes is under dvc_plots/ unless told otherwise (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CDN = re.compile(r'<script src="https://cdn\.jsdelivr\.net/npm/([\w-]+)@([\w.-]+)"></script>')
BUILDS = {"vega": "vega.min.js", "vega-lite": "vega-lite.min.js", "vega-embed": "vega-embed.min.js"}
# Wraps vegaEmbed to count rendered charts and errors, then reports them and the page size in
# the title, which `--dump-dom` prints.
PROBE = """<script>
window.__done = 0; window.__errors = [];
const __embed = window.vegaEmbed;
window.vegaEmbed = (el, spec, opt) => __embed(el, spec, opt)
  .then(() => { window.__done += 1; })
  .catch((e) => { window.__errors.push(el + ": " + e); });
window.addEventListener("load", () => setTimeout(() => {
  document.title = "probe:" + JSON.stringify({
    done: window.__done, errors: window.__errors,
    width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight,
  });
}, 1000));
</script>"""


def dvc_bin() -> str:
    local = ROOT / ".venv" / "bin" / "dvc"
    return str(local) if local.exists() else (shutil.which("dvc") or "dvc")


def chromium_bin() -> str:
    names = [os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"]
    for name in filter(None, names):
        if found := shutil.which(name):
            return found
    sys.exit("no Chromium found: apt-get install -y chromium (or set CHROMIUM=/path/to/it)")


def vendor(packages: dict[str, str], cache: Path) -> dict[str, Path]:
    """The minified build of each npm package@version, installed into `cache` if missing."""
    wanted = {
        name: cache / f"{name}@{ver}" / "node_modules" / name for name, ver in packages.items()
    }
    for name, folder in wanted.items():
        if not (folder / "build" / BUILDS[name]).exists():
            prefix = folder.parents[1]
            prefix.mkdir(parents=True, exist_ok=True)
            # --legacy-peer-deps: the page pins vega 5.20.2, older than vega-lite 5.2.0's peer.
            cmd = ["npm", "install", "--prefix", str(prefix), "--no-save", "--no-audit"]
            cmd += ["--no-fund", "--legacy-peer-deps", f"{name}@{packages[name]}"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return {name: folder / "build" / BUILDS[name] for name, folder in wanted.items()}


def localise(page: Path, cache: Path) -> None:
    """Point the page's CDN scripts at local copies and add the probe."""
    html = page.read_text()
    packages = dict(CDN.findall(html))
    if not packages:
        if "./js/vega.min.js" in html:
            return  # already done
        sys.exit(f"{page}: no vega scripts from the CDN found (does it hold any chart?)")
    js = page.parent / "js"
    js.mkdir(exist_ok=True)
    for build in vendor(packages, cache).values():
        shutil.copyfile(build, js / build.name)
    html = CDN.sub(lambda m: f'<script src="./js/{BUILDS[m.group(1)]}"></script>', html)
    page.write_text(html.replace("</head>", PROBE + "\n</head>", 1))


def chromium(args: list[str], page: Path, width: int, height: int, timeout: int = 120) -> str:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium_bin(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        cmd += [f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        cmd += ["--virtual-time-budget=20000", "--force-device-scale-factor=1", *args]
        proc = subprocess.run(
            [*cmd, page.resolve().as_uri()], capture_output=True, text=True, timeout=timeout
        )
    if proc.returncode != 0:
        sys.exit(f"chromium failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def screenshot(page: Path, png: Path, width: int) -> dict:
    """Render `page` twice: once to read its size and chart count, once to save the PNG."""
    dom = chromium(["--dump-dom"], page, width, 800)
    match = re.search(r"<title>probe:(.*?)</title>", dom)
    if not match:
        sys.exit(f"{page}: the page did not finish loading (no probe result)")
    probe = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    probe["charts"] = page.read_text().count("vegaEmbed('#")
    if probe["errors"] or probe["done"] != probe["charts"]:
        sys.exit(f"{page}: {probe['done']} of {probe['charts']} charts rendered: {probe['errors']}")
    png.parent.mkdir(parents=True, exist_ok=True)
    chromium([f"--screenshot={png.resolve()}"], page, width, probe["height"] + 16)
    return probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["show", "diff", "page"])
    parser.add_argument("revs", nargs="*", help="diff: revisions; page: the HTML file")
    parser.add_argument("--targets", nargs="+", default=[], help="plot ids or files")
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument("--out", type=Path, help="page folder (default dvc_plots/<command>)")
    parser.add_argument("--png", type=Path, help="screenshot (default <out>/../<command>.png)")
    parser.add_argument("--width", type=int, default=1300)
    args = parser.parse_args()

    repo = args.repo.resolve()
    if args.command == "page":
        if len(args.revs) != 1:
            parser.error("page takes one HTML file")
        page = Path(args.revs[0]).resolve()
    else:
        out = (args.out or repo / "dvc_plots" / args.command).resolve()
        out.mkdir(parents=True, exist_ok=True)  # DVC makes only the last folder
        cmd = [dvc_bin(), "plots", args.command, *args.revs, "-o", str(out)]
        if args.targets:
            cmd += (["--targets"] if args.command == "diff" else []) + args.targets
        subprocess.run(cmd, cwd=repo, check=True, stdout=subprocess.DEVNULL)
        page = out / "index.html"
    default_png = (
        page.with_suffix(".png") if args.command == "page" else page.parent.with_suffix(".png")
    )
    png = (args.png or default_png).resolve()
    localise(page, repo / "dvc_plots" / ".vendor")
    probe = screenshot(page, png, args.width)
    print(f"{page}: {probe['done']} charts rendered -> {png}")


if __name__ == "__main__":
    main()
