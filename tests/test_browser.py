"""What a learner clicks works: JupyterLab in a real headless Chromium runs notebook 00 and its widget responds.

Needs Debian's `chromium` package (`sudo apt-get install chromium`); Playwright drives it, nothing is downloaded.
`.ci/run` installs Chromium when it is missing; elsewhere the test is skipped with a message saying how to enable it.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from course_lib.data import PROJECT_ROOT
from course_lib.notebooks import NOTEBOOK_DIR

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=(
    "the real-browser test needs Chromium: install it (Debian/Ubuntu: `sudo apt-get install chromium`) and run "
    "`make test` again"))

SCREENSHOT = PROJECT_ROOT / "artefacts" / "browser" / "00_welcome.png"
# Chromium flags for a closed network: no background connections, no sandbox when run as root (containers, CI)
CHROMIUM_ARGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"] + (["--no-sandbox"] if os.geteuid() == 0 else [])
RUN_ALL_LIMIT_MS = 240_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on a free local port with a token, serving a copy of notebook 00 (autosave never touches the
    committed notebook), with lab settings and workspaces of its own and the course's settings overrides."""
    shutil.copy(NOTEBOOK_DIR / "00_welcome.ipynb", tmp_path / "00_welcome.ipynb")
    # render every cell, not only those scrolled into view, so that every prompt can be read
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"windowingMode": "none"}')
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--ServerApp.port_retries=0"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"),
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, token
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click()
    page.locator(".lm-Menu-itemLabel").get_by_text(item, exact=True).first.click()


# Run All queues every cell at once ("[*]:"); it is done when no cell waits and the last one has its number.
DONE_PROMPTS = """() => {
    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
    return prompts.length > 0 && !prompts.some(t => t.includes('*')) && /\\d/.test(prompts[prompts.length - 1]);
}"""
BLANK_PROMPTS = """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                      .every(p => !/\\d/.test(p.textContent))"""


def test_notebook_00_runs_in_a_real_browser_and_its_slider_responds(lab):
    from playwright.sync_api import sync_playwright

    url, token = lab
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                _run_notebook_00(page, url, token)
            except Exception:
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOT.with_name("failure.png")))
                raise
        finally:
            browser.close()


def _run_notebook_00(page, url, token) -> None:
    """Open notebook 00, clear it, run every cell, then move the prediction browser's slider by one."""
    page.goto(f"{url}/lab/tree/00_welcome.ipynb?token={token}")
    page.locator(".jp-NotebookPanel").first.wait_for(timeout=60_000)
    page.get_by_text("Python 3 (compression course)").first.wait_for(timeout=60_000)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=60_000)

    _menu(page, "Edit", "Clear Outputs of All Cells")  # prompts go blank: "[ ]:"
    page.wait_for_function(BLANK_PROMPTS, timeout=30_000)
    _menu(page, "Run", "Run All Cells")
    page.wait_for_function(DONE_PROMPTS, timeout=RUN_ALL_LIMIT_MS, polling=1000)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert errors.count() == 0, errors.first.inner_text()[:2000]
    assert page.get_by_text("✅ Exercise 0.3 passed").count() == 1
    assert page.get_by_text("official Jupyter news").count() == 0, "the news pop-up is switched off"

    widget = page.locator(".widget-vbox").filter(has=page.locator(".widget-slider")).first
    widget.scroll_into_view_if_needed()
    readout = widget.locator(".widget-readout").first
    figure = widget.locator(".widget-output img").first
    figure.wait_for(timeout=30_000)
    before = (readout.inner_text(), figure.evaluate("img => img.src"))
    widget.locator(".noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function(  # the output is cleared and drawn again: look up the figure afresh each time
        "([box, old]) => { const img = box.querySelector('.widget-output img'); return img && img.src !== old; }",
        arg=[widget.element_handle(), before[1]], timeout=30_000)
    after = (readout.inner_text(), figure.evaluate("img => img.src"))
    assert before[0].strip() == "0" and after[0].strip() == "1"
    assert after[1] != before[1], "moving the slider redraws the figure"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000
