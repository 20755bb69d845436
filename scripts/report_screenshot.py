"""A PNG screenshot of an HTML report, small enough for the repository (docs/report.png).

    python scripts/report_screenshot.py report.html docs/report.png [--width 1200] [--most 4200]

Headless chromium draws the page into a tall window (its own --screenshot, no driver needed);
the blank space below the page is cut off, the picture is cut at --most pixels and reduced to
a 256-colour palette, which keeps plots and drawings sharp at a fraction of the size.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageChops

# The same switches as the browser tests: on a closed network chromium otherwise waits on its
# update and sync services.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--most", type=int, default=4200, help="cut the picture at this height (pixels)")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "raw.png"
        subprocess.run([chromium, *FLAGS, f"--user-data-dir={scratch}/profile", f"--screenshot={raw}",
                        f"--window-size={args.width},{args.most + 400}", args.page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
        image = Image.open(raw).convert("RGB")
    # Everything below the page's last pixel that differs from the white background goes.
    content = ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox()
    bottom = min(content[3] + 20 if content else image.height, args.most)
    image = image.crop((0, 0, image.width, bottom)).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    image.save(args.out, optimize=True)
    print(f"{args.out}: {image.width} x {image.height}, {args.out.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
