"""Start the real server and drive it with Playwright in Debian's chromium (shared by browser tests)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
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

    ``log``: write the server's output there (else it is kept in a pipe and shown only if the start fails).
    """
    port = port or free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    out = open(log, "wb") if log is not None else subprocess.PIPE
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
                text = proc.stdout.read().decode() if proc.stdout else Path(log).read_text()
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
        if log is not None:
            out.close()


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
