"""Open the built HTML book in a real headless browser and check what a reader would see.

    python ci/browser_check.py book/_build/html

For every page in the table of contents: it loads, it contains no traceback or error output,
every image in it is present and decoded (non-zero natural size), each chapter page shows at
least one figure and every figure a chapter's cells output has a caption and alt text for a reader
who cannot see it (not the image's file name), no markdown table is
shown as text (pipes and dashes) instead of a table, pages that embed widget state render the widgets, and moving a slice
viewer's slider changes its image (no kernel behind it). A screenshot of each
page goes to book/_build/screenshots/. Debian's chromium and chromedriver are installed with
apt-get when missing; without a browser (and no way to install one) the check is skipped with a
clear message and exit status 0, unless --require-browser is given.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # selenium is imported where it is used: without it, main says so
    from selenium.webdriver.chrome.webdriver import WebDriver as ChromeDriver
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDGET_WAIT_S = 20.0

PAGE_PROBE = r"""
const main = document.querySelector('main') || document.body;
// External images (the Colab badge) cannot load offline; only the book's own are checked.
const images = Array.from(main.querySelectorAll('img')).filter(i => i.src.startsWith(location.origin)).map(i => ({
  src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}));
return {
  title: document.title,
  images: images,
  tracebacks: main.querySelectorAll('.output.traceback, .output.error').length,
  tracebackText: main.innerText.includes('Traceback (most recent call last)'),
  stderr: main.querySelectorAll('.output.stderr').length,
  widgetState: document.querySelectorAll('script[type="application/vnd.jupyter.widget-state+json"]').length,
  widgetViews: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
  renderedWidgets: document.querySelectorAll('.jupyter-widgets, .widget-slider, .lm-Widget').length,
  tables: main.querySelectorAll('table').length,
  // A markdown table that was not parsed shows as a paragraph of pipes and dashes.
  pipeTablesAsText: Array.from(main.querySelectorAll('p, pre, .output.text_plain'))
    .filter(e => /^\s*\|.*\|\s*$/m.test(e.innerText) && /\|\s*:?-{3,}/.test(e.innerText))
    .map(e => e.innerText.slice(0, 80)),
  // Every output figure of a chapter sits in a numbered, captioned figure (myst-nb glue or figure).
  // (a slice viewer's frames are interactive widgets, not figures)
  uncaptioned: Array.from(main.querySelectorAll('.cell_output img'))
    .filter(i => !i.closest('.jupyter-widgets, .lm-Widget'))
    .filter(i => !i.closest('figure') || !i.closest('figure').querySelector('figcaption'))
    .map(i => i.getAttribute('src')),
  // A figure's alt text describes it (myst-nb's cell metadata mystnb.image.alt); by default it is the file's path.
  withoutAlt: Array.from(main.querySelectorAll('figure .cell_output img, .cell_output figure img'))
    .filter(i => !i.alt || /\.(png|jpe?g|svg)$/i.test(i.alt.trim()))
    .map(i => i.getAttribute('src')),
};
"""


def ensure_browser() -> bool:
    """Install Debian's chromium and chromedriver when missing; True when both are there."""
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return True
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return False
    print("[browser] installing chromium and chromium-driver with apt-get", flush=True)
    install = ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL)
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1 (a free port) for the duration of the block."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def make_driver(user_data_dir: str) -> ChromeDriver:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Background-networking flags: this machine's network is closed, and Chromium's own
    # connections would otherwise be refused many at a time.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--no-first-run", "--window-size=1280,2000",
                 f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def toc_pages(html: Path) -> list[Path]:
    pages = [html / "book" / "intro.html"]
    pages += sorted((html / "book" / "chapters").glob("*.html"))
    pages += [p for p in (html / "book").glob("*.html") if p.name != "intro.html"]
    return [p for p in pages if p.exists()]


VISIBLE_WIDGET_IMAGES = """
return Array.from(document.querySelectorAll('.widget-image')).filter(i => i.offsetParent !== null).map(i => i.src);
"""


def slider_changes_image(driver: WebDriver) -> bool:
    """Press the right arrow on the first slider handle: the visible widget image must change.

    This proves the viewer works with no kernel behind it (the slider and the image stack are
    linked in the browser).
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    handles = driver.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle")
    if not handles:
        return True
    before = driver.execute_script(VISIBLE_WIDGET_IMAGES)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", handles[0])
    handles[0].send_keys(Keys.ARROW_RIGHT if handles[0].get_attribute("aria-valuenow") != handles[0].get_attribute("aria-valuemax") else Keys.ARROW_LEFT)
    time.sleep(0.5)
    return bool(before) and driver.execute_script(VISIBLE_WIDGET_IMAGES) != before


def check_page(driver: WebDriver, url: str, relative: str, screenshots: Path) -> list[str]:
    driver.get(url)
    is_chapter = "/chapters/" in relative

    def settled(probe: dict) -> bool:
        # A page counts as loaded once it is this URL, complete, its images decoded and its
        # widgets drawn; until then (or the deadline) look again, so a slow page is not a failure.
        return (driver.execute_script("return document.readyState") == "complete"
                and driver.current_url == url
                and (probe["images"] or not is_chapter)
                and all(i["complete"] for i in probe["images"])
                and (not probe["widgetViews"] or probe["renderedWidgets"]))

    probe = driver.execute_script(PAGE_PROBE)
    deadline = time.monotonic() + WIDGET_WAIT_S
    while not settled(probe) and time.monotonic() < deadline:
        time.sleep(0.5)
        probe = driver.execute_script(PAGE_PROBE)
    problems = []
    if probe["renderedWidgets"] and not slider_changes_image(driver):
        problems.append("moving a widget slider does not change the image it controls")
    if probe["tracebacks"] or probe["tracebackText"]:
        problems.append("shows error output / a traceback")
    broken = [i["src"] for i in probe["images"] if not i["complete"] or i["width"] == 0 or i["height"] == 0]
    if broken:
        problems.append(f"{len(broken)} image(s) missing or empty: {broken[:3]}")
    if is_chapter and not probe["images"]:
        problems.append("a chapter page without a single figure")
    if probe["pipeTablesAsText"]:
        problems.append(f"{len(probe['pipeTablesAsText'])} markdown table(s) shown as text, not as a table: "
                        f"{probe['pipeTablesAsText'][0]!r}")
    if is_chapter and probe["uncaptioned"]:
        problems.append(f"{len(probe['uncaptioned'])} figure(s) without a caption: {probe['uncaptioned'][:3]}")
    if is_chapter and probe["withoutAlt"]:
        problems.append(f"{len(probe['withoutAlt'])} figure(s) without alt text: {probe['withoutAlt'][:3]}")
    if probe["widgetViews"] and not probe["renderedWidgets"]:
        problems.append(f"{probe['widgetViews']} widget(s) embedded but none rendered within {WIDGET_WAIT_S:.0f} s")
    shot = screenshots / (relative.replace("/", "__").removesuffix(".html") + ".png")
    driver.save_screenshot(str(shot))
    widgets = f", widgets {probe['renderedWidgets']} rendered" if probe["widgetViews"] else ""
    stderr = f", {probe['stderr']} stderr output(s)" if probe["stderr"] else ""
    status = "FAIL" if problems else "ok"
    print(f"[browser] {status:4} {relative}: {len(probe['images'])} image(s), {probe['tables']} table(s)"
          f"{widgets}{stderr} -> {shot.name}", flush=True)
    for problem in problems:
        print(f"[browser]      {problem}", flush=True)
    return [f"{relative}: {p}" for p in problems]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html", type=Path, help="the built HTML folder (book/_build/html)")
    parser.add_argument("--require-browser", action="store_true", help="fail instead of skipping without a browser")
    args = parser.parse_args(argv)
    html = args.html.resolve()
    if not (html / "index.html").exists():
        print(f"[browser] {html} has no index.html: build the book first (ci/book)", file=sys.stderr)
        return 1
    if not ensure_browser():
        print("[browser] SKIPPED: no chromium/chromedriver here and apt-get could not install them")
        return 1 if args.require_browser else 0
    try:
        import selenium  # noqa: F401
    except ImportError:
        print("[browser] selenium is not installed (it is in covidlib[test])", file=sys.stderr)
        return 1
    screenshots = html.parent / "screenshots"
    screenshots.mkdir(exist_ok=True)
    pages = toc_pages(html)
    problems: list[str] = []
    with serve(html) as base, tempfile.TemporaryDirectory() as profile:
        driver = make_driver(profile)
        try:
            for page in pages:
                relative = page.relative_to(html).as_posix()
                problems += check_page(driver, f"{base}/{relative}", relative, screenshots)
        finally:
            driver.quit()
    print(f"[browser] {len(pages)} page(s) checked, screenshots in {screenshots}")
    if problems:
        print("[browser] problems:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
