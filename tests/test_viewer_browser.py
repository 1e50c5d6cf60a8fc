"""ns-viewer on a trained city, in a real (headless) Chromium: the scene renders, block boxes and
the progress panel are there, and unticking a block hides it.

Chromium is driven through the DevTools protocol. A render is known to have arrived when the
viewer's "Resolution: WxHpx" line shows a full-size render: nerfstudio sends the image, then that
line, on the same websocket. The screenshot is then checked (not a blank page, not the empty
background, box colours present) and kept in $MCLNF_ARTIFACTS or tests/artifacts/.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, FAST, ROOT, run
from mclnf_city.store import DONE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (tools/setup.sh installs it)")

ARTIFACTS = Path(os.environ.get("MCLNF_ARTIFACTS") or ROOT / "tests" / "artifacts")
FULL_RENDER_WIDTH = 200  # nerfstudio's moving renders are ~50 px wide, its still ones up to --max-res (512)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Kill a process we started in its own session, with everything it spawned, and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def _wait(what: str, condition, timeout: float, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol (websocket)."""

    def __init__(self, tmp: Path):
        import websockets.sync.client

        self.profile = Path(tempfile.mkdtemp(dir=tmp, prefix="chromium-"))
        args = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={self.profile}",
            "--window-size=1280,800",
            "--enable-unsafe-swiftshader",  # software WebGL without a GPU (no longer a silent fallback)
            "--remote-debugging-port=0", "about:blank",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = self.profile / "DevToolsActivePort"  # chromium writes its debugging port here
            port = _wait("chromium's DevTools port", lambda: port_file.exists() and port_file.read_text().split()[:1], 30)
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port[0]}/json/list", timeout=10))
            page = next(t for t in targets if t["type"] == "page")
            self.ws = websockets.sync.client.connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        except BaseException:
            _stop(self.proc)
            raise
        self._id = 0

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:  # skip events, wait for our answer
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            _stop(self.proc)


@pytest.fixture(scope="module")
def trained_city(tiny_capture, tmp_path_factory):
    out = tmp_path_factory.mktemp("viewer_cli")
    run(["ns-train", "mclnf-city-tiny", "--data", str(tiny_capture), "--output-dir", str(out),
         "--timestamp", "run", "--pipeline.steps-per-block", "6", *FAST])
    return out / "cli" / "mclnf-city-tiny" / "run"


@pytest.fixture
def viewer_url(trained_city, tmp_path):
    """ns-viewer serving the trained city on a free port (killed, with its children, afterwards)."""
    port = _free_port()
    log = open(tmp_path / "ns-viewer.log", "w")
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([str(BIN / "ns-viewer"), "--load-config", str(trained_city / "config.yml"),
                             "--viewer.websocket-port", str(port),
                             # Without depth compositing the boxes are drawn whole: how much of them
                             # the scene hides depends on the depth a few training steps give.
                             "--viewer.default-composite-depth", "False"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def serving():
        assert proc.poll() is None, (tmp_path / "ns-viewer.log").read_text()[-3000:]
        try:
            return b"<html" in urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().lower()
        except OSError:
            return False

    try:
        _wait("ns-viewer to serve its page", serving, 120)
        yield f"http://localhost:{port}"
    finally:
        _stop(proc)
        log.close()


@pytest.fixture
def browser(tmp_path):
    browser = Browser(tmp_path)
    try:
        yield browser
    finally:
        browser.close()


def _render_width(browser: Browser) -> int:
    match = re.search(r"Resolution: (\d+)x(\d+)px", browser.evaluate("document.body.innerText") or "")
    return int(match.group(1)) if match else 0


def _scene_pixels(browser: Browser, png: bytes) -> np.ndarray:
    """The 3D view of a screenshot (the canvas, without the control panel on its right)."""
    from PIL import Image

    rect = browser.evaluate(
        "(() => { const r = document.querySelector('canvas').getBoundingClientRect();"
        " return [r.left, r.top, r.right, r.bottom]; })()"
    )
    panel = browser.evaluate(
        "(() => { const e = [...document.querySelectorAll('*')].find(e => e.innerText === 'Pause Training');"
        " return e ? e.getBoundingClientRect().left : null; })()"
    )
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)
    left, top, right, bottom = (int(v) for v in rect)
    right = min(right, int(panel) - 20) if panel else right - 340
    return image[top + 5 : bottom - 5, left + 5 : right]


def _green_pixels(pixels: np.ndarray) -> int:
    """Pixels of a strong green, the done-block boxes' colour (the browser shades it: hue, not value)."""
    return int((pixels[..., 1] - np.maximum(pixels[..., 0], pixels[..., 2]) > 60).sum())


def _dark_fraction(pixels: np.ndarray) -> float:
    return float((pixels.max(axis=-1) < 30).mean())


def _check_scene(pixels: np.ndarray) -> str:
    """'' when the view shows a rendered scene with done-block boxes, else what is missing."""
    flat = pixels.reshape(-1, 3)
    background = np.median(flat[: len(flat) // 50], axis=0)  # whatever fills the top rows
    if flat.std(axis=0).mean() < 8:
        return f"the 3D view is (nearly) uniform: std {flat.std(axis=0).mean():.1f}"
    dark = (flat.max(axis=-1) < 40).mean()  # viser's empty dark-mode background
    if dark > 0.3:
        return f"{dark:.0%} of the 3D view is the empty dark background: no render shown"
    if len(np.unique(flat // 8, axis=0)) < 50:
        return "too few distinct colours for a rendered scene"
    green = _green_pixels(pixels)
    if green < 300:
        return f"only {green} pixels of the done blocks' green: boxes not drawn? (background {background})"
    return ""


def test_viewer_shows_the_rendered_city_with_block_boxes(trained_city, viewer_url, browser):
    manifest = json.loads((trained_city / "city" / "manifest.json").read_text())
    stream = manifest["stream_order"]
    stream = [b for b in stream if manifest["blocks"][str(b)]["status"] == DONE]
    browser.call("Page.navigate", url=viewer_url)

    _wait("a full-size render in the browser", lambda: _render_width(browser) >= FULL_RENDER_WIDTH, 90)
    # The image is on the page once its resolution line is; give the canvas a few frames to draw it.
    problem, shot = "no screenshot", b""
    deadline = time.time() + 15
    while time.time() < deadline:
        time.sleep(0.5)
        shot = browser.screenshot()
        problem = _check_scene(_scene_pixels(browser, shot))
        if not problem:
            break
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "viewer_city.png").write_bytes(shot)
    assert not problem, f"{problem} (screenshot: {ARTIFACTS / 'viewer_city.png'})"

    text = browser.evaluate("document.body.innerText")
    assert "City blocks" in text and f"{len(stream)} / {len(stream)} blocks done" in text
    for b in stream:
        assert f"block {b} (done)" in text  # the box labels

    # Untick the first block: its box and label go, and its region renders as empty space:
    # rays through it meet no density and, leaving the city there, no far field either (black).
    b = stream[0]
    before = _scene_pixels(browser, shot)
    dark_before = _dark_fraction(before)
    clicked = browser.evaluate(f"""(() => {{
        for (const box of document.querySelectorAll('input[type=checkbox]')) {{
            let row = box;
            while (row && row.innerText.trim() === '') row = row.parentElement;
            if (row && row.innerText.trim() === 'block {b}') {{ box.click(); return true; }}
        }}
        return false; }})()""")
    assert clicked, f"no checkbox for block {b} in the panel"
    _wait(f"block {b}'s label to disappear", lambda: f"block {b} (done)" not in browser.evaluate("document.body.innerText"), 20)

    def full_render_with_a_hole():
        png = browser.screenshot()
        hole = _dark_fraction(_scene_pixels(browser, png)) > dark_before + 0.01
        return png if hole and _render_width(browser) >= FULL_RENDER_WIDTH else None

    shot = _wait(f"a full-size render with block {b}'s region empty", full_render_with_a_hole, 60, interval=1.0)
    (ARTIFACTS / "viewer_city_block_hidden.png").write_bytes(shot)
    after = _scene_pixels(browser, shot)
    assert _green_pixels(after) < _green_pixels(before)  # its box is gone
