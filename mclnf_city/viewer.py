"""The city in nerfstudio's viewer: block boxes coloured by status, stream progress, and
which blocks are shown.

`CityViewer` is a nerfstudio `ViewerControl` held by the pipeline: nerfstudio's viewer finds
it there and calls `_setup` when it starts (`ns-train --vis viewer...`, `ns-viewer`). Without
a viewer it is never set up and every method returns at once, so runs without a viewer
(tensorboard, ns-eval, ns-render, ns-export) do not change.

What it shows:
- every block's region as a wireframe box in the viewer's world frame (the dataparser frame
  scaled by nerfstudio's `VISER_NERFSTUDIO_SCALE_RATIO`), coloured by its status in the
  `CityStore`: done green, active orange, waiting grey, empty dim;
- a "City blocks" panel: blocks done / total, the active block and its step, each block's
  PSNR at finish, and a checkbox per block (plus "Show all"). Unticking a block hides its box
  and leaves it out of rendered images (`CityModel.hidden_blocks`); training and evaluation
  always use every block.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Dict, Optional, Tuple

import numpy as np
import torch

from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO
from nerfstudio.viewer.viewer_elements import ViewerControl

from mclnf_city.partition import BlockPartition
from mclnf_city.store import ACTIVE, DONE, EMPTY, WAITING

if TYPE_CHECKING:
    from nerfstudio.viewer.viewer import Viewer


Colour = Tuple[int, int, int]
STATUS_COLOURS: Dict[str, Colour] = {
    DONE: (40, 200, 80),  # green
    ACTIVE: (255, 150, 20),  # orange
    WAITING: (150, 150, 150),  # grey
    EMPTY: (70, 70, 70),  # dim: nothing to train there
}
LINE_WIDTHS: Dict[str, float] = {DONE: 3.0, ACTIVE: 4.0, WAITING: 2.0, EMPTY: 1.0}

# A path through the 8 corners (index = x + 2y + 4z, 0 = min, 1 = max) that draws all 12
# edges of a box as one line (3 edges are drawn twice: a cube has no path using each once).
BOX_PATH = [0, 1, 3, 2, 0, 4, 5, 7, 6, 4, 5, 1, 3, 7, 6, 2]
PANEL_UPDATE_SECONDS = 1.0  # the step counter in the panel is refreshed at most this often


def status_colour(status: str) -> Colour:
    return STATUS_COLOURS.get(status, STATUS_COLOURS[WAITING])


def box_corners_viewer(partition: BlockPartition) -> np.ndarray:
    """[B, 8, 3] corners of every block's region in the viewer's world frame.

    Corner i takes the max of the box on axis k when bit k of i is set (x = bit 0, y = 1, z = 2).
    City frame -> dataparser frame (p = R^T p_city + origin) -> viewer (x the scale ratio).
    """
    regions = partition.regions().double()  # [B, 2, 3] (min, max) in the city frame
    bits = torch.tensor([[(i >> k) & 1 for k in range(3)] for i in range(8)], dtype=torch.bool)
    corners = torch.where(bits[None], regions[:, None, 1], regions[:, None, 0])  # [B, 8, 3]
    world = corners @ partition.rotation.double() + partition.origin.double()
    return (world * VISER_NERFSTUDIO_SCALE_RATIO).numpy()


def box_outline(corners: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """One box's edges as a cubic Bézier path with straight segments (control points on the
    segments): viser 0.2.7 has no line-segment primitive, and a mesh wireframe draws diagonals."""
    points = corners[BOX_PATH]
    a, b = points[:-1], points[1:]
    controls = np.stack([a + (b - a) / 3, a + 2 * (b - a) / 3], axis=1).reshape(-1, 3)
    return points, controls


def progress_markdown(pipeline, step: Optional[int]) -> str:
    """The stream's progress: blocks done / total, the active block and its step, PSNR at finish."""
    store, stream = pipeline.store, pipeline.stream
    done = sum(store.status(b) == DONE for b in stream)
    lines = [f"**{done} / {len(stream)} blocks done**"]
    active = [b for b in stream if store.status(b) == ACTIVE]
    if active and step is not None:
        spb, b = pipeline.config.steps_per_block, active[0]
        position = stream.index(b)
        # Training step s belongs to block stream[s // spb]; `step` is the last step trained, so a
        # block that just started has trained none of its steps yet.
        trained = step - position * spb + 1 if step // spb == position else 0
        lines.append(f"training block {b} ({position + 1} of {len(stream)}): step {trained} / {spb}")
    elif active:
        lines.append(f"block {active[0]} was being trained (not finished)")
    rows = ["| block | status | PSNR at finish |", "|---:|:---|---:|"]
    empty = [b for b in range(pipeline.partition.num_blocks) if b not in stream]
    for b in list(stream) + empty:
        psnr = store.block(b).get("metrics", {}).get("at_finish", {}).get("psnr")
        rows.append(f"| {b} | {store.status(b)} | {'' if psnr is None else f'{psnr:.2f} dB'} |")
    return "  \n".join(lines) + "\n\n" + "\n".join(rows)


class CityViewer(ViewerControl):
    """Block boxes, stream progress and block visibility in nerfstudio's viewer (see module doc)."""

    def __init__(self, pipeline):  # the CityPipeline that holds this control
        self.pipeline = pipeline
        self.viser_server = None  # set by `_setup` when a viewer starts; None: no viewer, do nothing
        self._lock = threading.Lock()  # the training thread and viser's threads both update
        self._drawn: Dict[int, str] = {}  # status each box was last drawn with
        self._boxes: Dict[int, object] = {}
        self._labels: Dict[int, object] = {}
        self._checkboxes: Dict[int, object] = {}
        self._step: Optional[int] = None
        self._panel_updated_at = 0.0

    # ----- called by nerfstudio's viewer
    def _setup(self, viewer: "Viewer") -> None:
        super()._setup(viewer)
        partition = self.pipeline.partition
        self._corners = box_corners_viewer(partition)
        with self.viser_server.gui.add_folder("City blocks"):
            self._panel = self.viser_server.gui.add_markdown(progress_markdown(self.pipeline, None))
            for b in range(partition.num_blocks):
                if b not in self.pipeline.stream:
                    continue  # empty blocks render nothing: nothing to show or hide
                box = self.viser_server.gui.add_checkbox(f"block {b}", initial_value=True)
                box.on_update(self._apply_visibility)
                self._checkboxes[b] = box
            self.viser_server.gui.add_button("Show all blocks").on_click(self._show_all)
        self.refresh()
        self.viser_server.on_client_connect(self._frame_city)

    # ----- called by the pipeline
    def refresh(self) -> None:
        """Redraw boxes whose status changed and the progress panel (a block started or finished)."""
        if self.viser_server is None:
            return
        with self._lock:
            hidden = self.pipeline.model.hidden_blocks
            for b in range(self.pipeline.partition.num_blocks):
                status = self.pipeline.store.status(b)
                if self._drawn.get(b) != status:
                    self._draw_box(b, status, visible=b not in hidden)
            self._panel.content = progress_markdown(self.pipeline, self._step)
            self._panel_updated_at = time.time()

    def on_step(self, step: int) -> None:
        """Training callback: keep the active block's step in the panel current (throttled)."""
        if self.viser_server is None:
            return
        self._step = step
        if time.time() - self._panel_updated_at >= PANEL_UPDATE_SECONDS:
            with self._lock:
                self._panel.content = progress_markdown(self.pipeline, step)
                self._panel_updated_at = time.time()

    # ----- drawing
    def _draw_box(self, b: int, status: str, visible: bool) -> None:
        points, controls = box_outline(self._corners[b])
        # The same name replaces the old box: that is how a box changes colour.
        self._boxes[b] = self.viser_server.scene.add_spline_cubic_bezier(
            f"/city_blocks/block_{b:03d}", points, controls,
            line_width=LINE_WIDTHS.get(status, 2.0), color=status_colour(status), visible=visible,
        )
        top = self._corners[b].reshape(2, 2, 2, 3)[1].mean(axis=(0, 1))  # middle of the top face
        self._labels[b] = self.viser_server.scene.add_label(
            f"/city_blocks/label_{b:03d}", f"block {b} ({status})", position=top, visible=visible,
        )
        self._drawn[b] = status

    def _frame_city(self, client) -> None:
        """Start each browser looking down at the whole city, obliquely, with the city's up."""
        rotation = self.pipeline.partition.rotation.double().numpy()  # rows: city x, y, up
        corners = self._corners.reshape(-1, 3)
        centre = (corners.min(0) + corners.max(0)) / 2
        radius = np.linalg.norm(corners.max(0) - corners.min(0)) / 2
        direction = -0.5 * rotation[0] - 0.7 * rotation[1] + 0.9 * rotation[2]
        with client.atomic():  # position before look_at: the browser moves the target along with the camera
            client.camera.up_direction = rotation[2]
            client.camera.position = centre + 2.2 * radius * direction / np.linalg.norm(direction)
            client.camera.look_at = centre

    # ----- visibility
    def _apply_visibility(self, _event=None) -> None:
        """Hide the unticked blocks' boxes and leave them out of rendered images."""
        with self._lock:
            hidden = frozenset(b for b, box in self._checkboxes.items() if not box.value)
            self.pipeline.model.hidden_blocks = hidden
            for b in self._boxes:
                self._boxes[b].visible = b not in hidden
                self._labels[b].visible = b not in hidden
        self.viewer._trigger_rerender()  # nerfstudio's own re-render (as its GUI elements use)

    def _show_all(self, _event=None) -> None:
        for box in self._checkboxes.values():
            box.value = True  # its callback runs later, on viser's thread pool
        self._apply_visibility()
