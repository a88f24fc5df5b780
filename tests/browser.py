"""Start the real server and drive it with Playwright in Debian's chromium (shared by browser tests)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(env: dict[str, str] | None = None, timeout: float = 90, log: Path | None = None,
           port: int | None = None) -> Iterator[str]:
    """Run ``streamlit run app.py`` on a free loopback port; yields its URL; always stops it.

    ``log``: write the server's output there (else to a temporary file, shown only if the start fails). Never
    a pipe: nobody reads it while the server runs, and a full pipe (64 KiB of warnings) blocks the server.
    """
    port = port or free_port()
    tmp = None
    if log is None:
        tmp = tempfile.TemporaryDirectory(prefix="nnlab-server-")
        log = Path(tmp.name) / "server.log"
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    out = open(log, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server.proc = proc  # type: ignore[attr-defined] - tests that kill the server on purpose
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
            if proc.poll() is not None:
                text = Path(log).read_text(errors="replace")
                raise RuntimeError(f"server exited: {text[-2000:]}")
        else:
            raise RuntimeError("server did not become healthy")
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        out.close()
        if tmp is not None:
            tmp.cleanup()


@contextlib.contextmanager
def browser_page() -> Iterator:
    """A Playwright page in headless Debian chromium (fails, never skips, when chromium is missing)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            yield page
        finally:
            b.close()


def require_chromium() -> None:
    """Browser tests are part of the suite: a missing browser is a failure with a clear message, not a skip."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian's chromium is not installed at {CHROMIUM}: `make test` installs it (apt-get install "
                    "chromium); the browser tests cannot run without it", pytrace=False)


def no_exception(page) -> None:
    """Assert that no Streamlit exception element is on the page."""
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()


# true while no script run is in progress in the page and no element is drawn stale (from before the latest run)
SETTLED = """() => {
  const s = document.querySelector('[data-testid="stStatusWidget"]');
  return (!s || !/Running/i.test(s.innerText)) && !document.querySelector('[data-stale="true"]');
}"""


# true once SETTLED has held at every poll for the last 500 ms (a click's rerun, or the one more run a job's
# result starts, shows within that window): one condition instead of fixed sleeps around repeated checks
STABLE = """() => {
  const ok = (%s)();
  const now = performance.now();
  if (!ok) { window.__settledSince = null; return false; }
  if (window.__settledSince == null) window.__settledSince = now;
  return now - window.__settledSince >= 500;
}""" % SETTLED


def settle(page, where: str = "", timeout_ms: int = 240_000) -> None:
    """Wait until the page has stayed settled (no script run, nothing stale) for 500 ms, polled every 50 ms."""
    try:
        page.evaluate("() => { window.__settledSince = null; }")
        page.wait_for_function(STABLE, timeout=timeout_ms, polling=50)
    except Exception as exc:
        raise AssertionError(f"{where or 'the page'} kept running for {timeout_ms / 60_000:g} minutes") from exc


def choose(page, select, option, tries: int = 3, wait_ms: int = 15_000) -> None:
    """Open the selectbox ``select`` (a locator) and click its ``option`` (a locator).

    A rerun that redraws the sidebar closes a list opened just before it; so wait until the page has settled,
    open the list, and open it again (at most ``tries`` times) when the option does not show.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(tries):
        page.wait_for_function(SETTLED)
        select.click()
        try:
            option.wait_for(timeout=wait_ms)
            break
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise
    option.click()


def pick_image_folder(page, folder: Path) -> None:
    """In the sidebar: Dataset = ImageFolder, then type ``folder``'s path (the draft; the caller waits as it needs)."""
    import re

    choose(page, page.locator(".st-key-dataset"), page.get_by_role("option", name=re.compile("^ImageFolder")))
    box = page.locator(".st-key-dataset_path input")
    box.wait_for()
    box.fill(str(folder))
    box.press("Enter")


def navigate(page, link: str, shows, tries: int = 3, wait_ms: int = 40_000) -> None:
    """Click the sidebar link ``link`` until ``shows`` (text or regex) is visible.

    A click that lands while the page is still finishing a rerun can be dropped by the frontend; the user would
    click again, and so do we (at most ``tries`` times), instead of waiting out the whole default timeout.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(tries):
        page.get_by_role("link", name=link).first.click()
        try:
            page.get_by_text(shows).first.wait_for(timeout=wait_ms)
            return
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise
