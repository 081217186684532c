"""The notebooks' ipywidgets, driven in a real browser (marker ``browser``).

A JupyterLab server on a free local port serves copies of notebooks 04 and 01 whose parameters
(papermill's injected-parameters cell) say ``smoke=True`` and ``out_dir=<a fresh run folder>``;
headless Chromium (Debian's ``chromium``, driven through Playwright; no browser is downloaded)
opens each one, runs all cells from the Run menu, checks that no cell shows an error, moves the
widget's slider one step with the keyboard and checks, by comparing screenshots, that the
displayed frame changed:

* notebook 04: the step slider (:func:`skinlib.augment.generate.step_slider`); its frame is the
  ``widgets.Image`` showing the animation frame;
* notebook 01: the crop browser (:func:`skinlib.viz.crop_browser`); its frame is the
  ``widgets.Output`` showing the crop's figure.

The kernels run WITHOUT ``SKINLIB_HEADLESS`` (which the test session sets, and which makes the
notebooks skip their widgets), ``SKINLIB_SMOKE`` and ``MPLBACKEND``, as in a user's JupyterLab.
Screenshots and the server's log go to ``$SKINLIB_ARTIFACTS/browser`` (default
``tests/artifacts/browser``); their paths are listed at the end of the pytest run
(tests/conftest.py). Without Chromium, Playwright or JupyterLab the tests skip and say what to
install; ``SKINLIB_REQUIRE_BROWSER=1`` (set by .ci/run) turns that skip into a failure.
"""
from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
RUN_ALL_TIMEOUT_S = 600       # the smoke notebooks take ~1 min on a busy 2-core machine
FRAME_TIMEOUT_S = 30          # widget round trip: slider -> kernel callback -> new frame
WAIT_MS = 30_000              # for an element that is already there or follows a key press
ERROR_TEXT = re.compile(r"Traceback|\w*Error\b")
KERNEL_ONLY_ENV = ("SKINLIB_HEADLESS", "SKINLIB_SMOKE", "MPLBACKEND")   # set by the test session only
JS_PANEL = "window.jupyterapp?.shell?.currentWidget"   # JupyterLab app (expose_app_in_browser)
# JupyterLab user settings: every cell stays in the DOM (so all prompts and outputs can be read),
# and no news/update toast covers the outputs.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        '{"fetchNews": "false", "checkForUpdates": false, "doNotDisturbMode": true}',
}


def artifacts_dir() -> Path:
    """Folder kept by CI as test artefacts: ``$SKINLIB_ARTIFACTS/browser`` or tests/artifacts/browser."""
    root = Path(os.environ["SKINLIB_ARTIFACTS"]) if os.environ.get("SKINLIB_ARTIFACTS") else REPO / "tests" / "artifacts"
    path = root / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _missing_browser_tools() -> list[str]:
    missing = []
    if shutil.which("chromium") is None:
        missing.append("Chromium (`chromium` not on PATH; Debian/Ubuntu: `apt-get install -y chromium`)")
    for module, package in (("playwright.sync_api", "playwright"), ("jupyterlab", "jupyterlab")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the Python package {package} (`pip install -r requirements.txt`)")
    return missing


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of Debian's Chromium; skips (fails under SKINLIB_REQUIRE_BROWSER=1) when a tool is missing."""
    missing = _missing_browser_tools()
    if missing:
        reason = "browser test needs " + "; ".join(missing) + " (.ci/run installs them)"
        if os.environ.get("SKINLIB_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + "; SKINLIB_REQUIRE_BROWSER=1 forbids skipping")
        pytest.skip(reason)
    return shutil.which("chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_with_parameters(name: str, dest: Path, params: dict) -> None:
    """notebooks/<name> with papermill's injected-parameters cell, written to ``dest``."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = parameterize_notebook(load_notebook_node(str(REPO / "notebooks" / name)), params)
    nbformat.write(nb, str(dest))


@pytest.fixture(scope="module")
def lab(chromium, tmp_path_factory) -> dict:
    """A JupyterLab server serving the parameterised notebook copies; terminated afterwards."""
    tmp = tmp_path_factory.mktemp("lab")
    root, out_dir = tmp / "root", tmp / "run"
    root.mkdir()
    for name in ("01_data_cropping.ipynb", "04_glide_inpainting.ipynb"):
        _copy_with_parameters(name, root / name, {"smoke": True, "out_dir": str(out_dir)})
    for rel, text in LAB_SETTINGS.items():
        (tmp / "settings" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "settings" / rel).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_ONLY_ENV}
    env.update(JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
               JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_DATA_DIR=str(tmp / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), IPYTHONDIR=str(tmp / "ipython"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    port, token = _free_port(), secrets.token_hex(16)
    log_path = artifacts_dir() / "jupyter-server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {server.returncode} before answering; log: {log_path}")
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer on {base} within 120 s; log: {log_path}")
                time.sleep(0.5)
        yield {"base": base, "token": token}
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def browser(chromium):
    """Headless Debian Chromium through Playwright (``executable_path``: nothing is downloaded)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True)
        yield b
        b.close()


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def _differ(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or bool((a != b).any())


def _settled(locator, previous: bytes | None = None, timeout_s: float = FRAME_TIMEOUT_S) -> bytes:
    """PNG screenshot of ``locator`` once two screenshots 0.5 s apart show the same pixels (and, with
    ``previous``, other pixels than it); after ``timeout_s`` the last screenshot, whatever it shows."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        now = locator.screenshot(animations="disabled")
        settled = last is not None and not _differ(_pixels(now), _pixels(last))
        if (settled and (previous is None or _differ(_pixels(now), _pixels(previous)))) \
                or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.5)


def _run_all_cells(page, lab: dict, notebook: str) -> None:
    """Open ``notebook``, wait for its kernel, Run > Run All Cells, wait until the run ends."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(f"{lab['base']}/lab/tree/{notebook}?token={lab['token']}&reset")
    page.wait_for_function(f"""() => {{ const k = {JS_PANEL}?.sessionContext?.session?.kernel;
        return k && k.connectionStatus === 'connected' && k.status === 'idle'; }}""", timeout=120_000)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    # done: no cell queued or running ([*]) and the kernel idle, and either every cell ran or one
    # wrote to stderr (a failed cell does; JupyterLab then leaves the later cells unrun)
    try:
        page.wait_for_function(f"""() => {{
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
            const stderr = document.querySelector('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]');
            return prompts.length > 0 && !prompts.some(p => p.includes('*'))
                && {JS_PANEL}?.sessionContext?.session?.kernel?.status === 'idle'
                && (prompts.every(p => /\\[\\d+\\]/.test(p)) || stderr !== null); }}""",
                               timeout=RUN_ALL_TIMEOUT_S * 1000, polling=500)
    except PlaywrightTimeout:
        shot = artifacts_dir() / f"{Path(notebook).stem}_timeout.png"
        page.screenshot(path=str(shot))
        prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
        pytest.fail(f"{notebook}: Run All Cells did not finish within {RUN_ALL_TIMEOUT_S} s in the browser "
                    f"(cell prompts {prompts}; screenshot {shot})")


def _errors_shown(page) -> list[str]:
    """Texts of error outputs (tracebacks, ``...Error``) and of widgets that failed to render."""
    stderr = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
    widgets = page.locator(".jupyter-widgets").all_inner_texts()
    return ([t[:2000] for t in stderr if ERROR_TEXT.search(t)]
            + [t[:300] for t in widgets if "Error displaying widget" in t])


def _check_slider_moves_frame(browser, lab: dict, notebook: str, frame_selector: str, picture_selector: str,
                              stem: str, record_property) -> None:
    """Run ``notebook`` in the browser, then move its one slider from 0 to 1 and assert that the
    element ``frame_selector`` of that cell's output (showing an ``<img>``, ``picture_selector``)
    shows a different picture."""
    from playwright.sync_api import expect

    out = artifacts_dir()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        _run_all_cells(page, lab, notebook)
        page.screenshot(path=str(out / f"{stem}_page.png"))
        record_property("screenshot", str(out / f"{stem}_page.png"))
        errors = _errors_shown(page)
        assert not errors, f"{notebook}: cells show errors in the browser:\n" + "\n---\n".join(errors)
        cell = page.locator(".jp-CodeCell").filter(has=page.locator(".widget-slider"))
        expect(cell).to_have_count(1, timeout=WAIT_MS)
        output, frame = cell.locator(".jp-Cell-outputArea"), cell.locator(frame_selector)
        expect(frame).to_have_count(1, timeout=WAIT_MS)
        expect(cell.locator(picture_selector)).to_be_visible(timeout=WAIT_MS)
        readout = cell.locator(".widget-slider .widget-readout")
        expect(readout).to_have_text("0", timeout=WAIT_MS)
        before = _settled(frame)
        (out / f"{stem}_frame_before.png").write_bytes(before)
        (out / f"{stem}_output_before.png").write_bytes(output.screenshot())

        cell.locator(".widget-slider .noUi-handle").focus()
        page.keyboard.press("ArrowRight")
        expect(readout).to_have_text("1", timeout=WAIT_MS)   # the slider moved; the kernel's callback must redraw
        after = _settled(frame, previous=before)
        (out / f"{stem}_frame_after.png").write_bytes(after)
        (out / f"{stem}_output_after.png").write_bytes(output.screenshot())
        for name in ("output_before", "output_after", "frame_before", "frame_after"):
            record_property("screenshot", str(out / f"{stem}_{name}.png"))
        changed = _differ(_pixels(after), _pixels(before))
        assert changed, (
            f"{notebook}: the slider moved to 1 but the displayed frame ({frame_selector}) did not change "
            f"within {FRAME_TIMEOUT_S} s: the slider's callback does not update the output "
            f"(screenshots {out / (stem + '_frame_before.png')}, {out / (stem + '_frame_after.png')})")
        errors = _errors_shown(page)
        assert not errors, f"{notebook}: errors after moving the slider:\n" + "\n---\n".join(errors)
    finally:
        page.close()


def test_step_slider_of_notebook_04_changes_the_frame(browser, lab, record_property):
    _check_slider_moves_frame(browser, lab, "04_glide_inpainting.ipynb", "img.widget-image", "img.widget-image",
                              "04_step_slider", record_property)


def test_crop_browser_of_notebook_01_changes_the_crop(browser, lab, record_property):
    _check_slider_moves_frame(browser, lab, "01_data_cropping.ipynb", ".widget-output", ".widget-output img",
                              "01_crop_browser", record_property)
