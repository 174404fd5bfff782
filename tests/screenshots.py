"""Screenshots of a run's HTML pages in headless Chromium at desktop width (`make screenshots`).

The reports are read by people in a browser, so they are checked in one: this renders
RUN/report.html and RUN/validate/validation.html at 1280 px and writes PNGs beside them
under RUN/screenshots/, to look at before a change to the pages is merged.

    python tests/screenshots.py [RUN]     # default runs/latest; needs /usr/bin/chromium
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTH = 1280
PAGES = {"report": "report.html", "validation": "validate/validation.html"}


def screenshot(page: Path, png: Path, width: int = WIDTH, height: int = 2400) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("error: no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:  # no state shared with a desktop browser
        done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                               "--hide-scrollbars", f"--user-data-dir={profile}",
                               f"--window-size={width},{height}", f"--screenshot={png}",
                               page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not png.is_file():
        sys.exit(f"error: chromium could not render {page}: {done.stderr.strip()[-400:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="runs/latest", help="pipeline run directory")
    args = parser.parse_args(argv)
    run = Path(args.run)
    out = run / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    found = {name: run / rel for name, rel in PAGES.items() if (run / rel).is_file()}
    if not found:
        print(f"error: {run}: no report.html or validate/validation.html (run make run first)",
              file=sys.stderr)
        return 2
    for name, page in found.items():
        screenshot(page, out / f"{name}.png")
        print(f"wrote {out / f'{name}.png'} ({WIDTH} px wide)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
