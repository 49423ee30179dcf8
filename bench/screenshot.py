"""A screenshot of a job's dashboard page (its Pareto plot and models), for the README.

Run by hand against a running service (never from the tests):

    python bench/screenshot.py --server http://127.0.0.1:8000 --job 1 --out docs/dashboard-job.png

Drives headless Chromium with playwright; the browser is /usr/bin/chromium unless VITPRUNE_CHROMIUM
names another. The page is captured once its plot is drawn and the job's data has stopped loading.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("VITPRUNE_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 900}


def screenshot(server: str, job: int, out: Path, *, full_page: bool = False, timeout_s: float = 30) -> list[str]:
    """Saves the job page as a PNG at `out`; returns the browser's console errors (empty when all went well)."""
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            # A device scale of 2 keeps text sharp when the README shows the image scaled down.
            page = browser.new_page(viewport=VIEWPORT, device_scale_factor=2)
            page.set_default_timeout(timeout_s * 1000)
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.on("pageerror", lambda error: errors.append(str(error)))
            response = page.goto(f"{server.rstrip('/')}/jobs/{job}")
            if response is None or response.status != 200:
                raise RuntimeError(f"{server}/jobs/{job} answered {response and response.status}")
            page.wait_for_function("() => document.getElementById('front')?.data !== undefined")
            page.wait_for_selector("#job-status .badge")  # the first refresh has filled the page
            page.wait_for_load_state("networkidle")
            page.mouse.move(0, 0)  # no hover label in the picture
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=full_page)
        finally:
            browser.close()
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="the service's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--job", required=True, type=int, help="the job id")
    parser.add_argument("--out", required=True, type=Path, help="where to write the PNG")
    parser.add_argument("--full-page", action="store_true", help="the whole page, not only the first 900 px")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        parser.error(f"no Chromium at {CHROMIUM}; set VITPRUNE_CHROMIUM to its path")
    try:
        errors = screenshot(args.server, args.job, args.out, full_page=args.full_page)
    except (PlaywrightError, RuntimeError) as error:
        print(f"screenshot failed: {error}", file=sys.stderr)
        return 1
    for error in errors:
        print(f"browser console: {error}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
