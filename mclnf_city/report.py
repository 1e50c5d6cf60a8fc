"""Evaluation of the city: per-block metrics, the forgetting check, and the city report.

Each block is scored on the test views that look at it (`look_blocks`), when it finishes and
at the end of the stream. Zero forgetting is checked byte for byte: a finished block renders
its test views *alone* (its region and its far field, no other block), and those renders'
hash must be the same at the end as when it finished. The report (`<store>/report/`) holds
`metrics.json` and every test view rendered at full resolution beside its photo.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from nerfstudio.utils.rich_utils import CONSOLE

from mclnf_city.files import atomic_write_bytes, write_png
from mclnf_city.metrics import image_metrics, lpips_status, mean_metrics
from mclnf_city.partition import BlockPartition, look_blocks
from mclnf_city.store import CityStore, sha256


class CityReport:
    """Scores the model's blocks on the data manager's test views and writes the report."""

    def __init__(self, model, datamanager, partition: BlockPartition, store: CityStore, block_eval_max_pixels: int,
                 report_max_pixels: int = 0):
        self.model, self.datamanager, self.partition, self.store = model, datamanager, partition, store
        self.block_eval_max_pixels, self.report_max_pixels = block_eval_max_pixels, report_max_pixels

    def test_views_by_block(self) -> Dict[int, List[int]]:
        """Test views grouped by the block they look at."""
        cams = self.datamanager.eval_dataset.cameras
        homes = look_blocks(self.partition, cams.camera_to_worlds).tolist()
        groups: Dict[int, List[int]] = {}
        for i, b in enumerate(homes):
            groups.setdefault(b, []).append(i)
        return groups

    @torch.no_grad()
    def render_test_view(self, i: int, max_pixels: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """Test view i and its photo, both downscaled (area average) to at most max_pixels when it is > 0."""
        dataset = self.datamanager.eval_dataset
        camera = dataset.cameras[i : i + 1].to(self.model.device)
        gt = dataset[i]["image"][..., :3]
        height, width = gt.shape[:2]
        if 0 < max_pixels < height * width:
            camera.rescale_output_resolution(math.sqrt(max_pixels / (height * width)))
            size = (int(camera.height.item()), int(camera.width.item()))
            gt = torch.nn.functional.interpolate(gt.permute(2, 0, 1)[None].float(), size=size, mode="area")[0].permute(1, 2, 0)
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.for_evaluation():
                outputs = self.model.get_outputs_for_camera(camera)
        finally:
            self.model.train(was_training)
        return outputs["rgb"], gt.to(outputs["rgb"])

    def evaluate_blocks(self, blocks: Sequence[int]) -> Dict[int, Dict[str, float]]:
        """Mean PSNR/SSIM (LPIPS when available) of each block's test views, rendered now (at
        most `block_eval_max_pixels`), and the hash of the block's renders alone."""
        groups = self.test_views_by_block()
        result: Dict[int, Dict[str, Any]] = {}
        for b in blocks:
            views = groups.get(b, [])
            if not views:
                continue
            per_view = [image_metrics(*self.render_test_view(i, self.block_eval_max_pixels)) for i in views]
            result[b] = mean_metrics(per_view)
            result[b]["num_views"] = float(len(views))
            result[b]["solo_render_sha256"] = sha256(self.render_block_alone(b, views).numpy().tobytes())
        return result

    @torch.no_grad()
    def render_block_alone(self, b: int, views: List[int]) -> torch.Tensor:
        """Test views rendered by finished block b alone (its region and far field): [V, H, W, 3].

        Its bytes must never change once b is finished: zero forgetting, checked every run.
        """
        self.model.solo_block = b
        try:
            return torch.stack([self.render_test_view(i, self.block_eval_max_pixels)[0].cpu() for i in views])
        finally:
            self.model.solo_block = None

    def write(self, order: Sequence[int]) -> Path:
        """Per-block metrics at finish and at the end of the stream (forgetting), plus test renders."""
        report = self.store.root / "report"
        (report / "renders").mkdir(parents=True, exist_ok=True)
        at_end = self.evaluate_blocks(order)
        blocks: Dict[str, Any] = {}
        for b in order:
            entry = self.store.block(b)
            finish = entry.get("metrics", {}).get("at_finish", {})
            end = at_end.get(b, {})
            self.store.update_metrics(b, "at_end", end)
            blocks[str(b)] = {
                # City renders: at finish, later blocks are still empty; at the end, all are trained.
                "at_finish": finish,
                "at_end": end,
                "psnr_change": (end["psnr"] - finish["psnr"]) if "psnr" in finish and "psnr" in end else None,
                # Forgetting: the block's own renders, compared byte for byte.
                "renders_alone_bit_identical": (
                    finish.get("solo_render_sha256") == end.get("solo_render_sha256") if "psnr" in end else None
                ),
                "seconds": entry.get("seconds"),
            }
        per_view, smallest = [], None
        for i in range(len(self.datamanager.eval_dataset)):
            rgb, gt = self.render_test_view(i, self.report_max_pixels)
            per_view.append(image_metrics(rgb, gt))
            smallest = min(rgb.shape[:2]) if smallest is None else min(smallest, *rgb.shape[:2])
            pair = torch.cat([gt, rgb.clamp(0, 1)], dim=1)
            write_png(report / "renders" / f"test_{i:04d}.png", (pair.cpu().numpy() * 255).round().astype(np.uint8))
        mean = mean_metrics(per_view)
        summary = {
            "method": "mclnf-city",
            "test_views": len(per_view),
            "mean": mean,
            "lpips": lpips_status(smallest),
            "blocks": blocks,
            "stream_order": list(order),
        }
        atomic_write_bytes(report / "metrics.json", json.dumps(summary, indent=1).encode())
        CONSOLE.print(f"[bold green]city report[/bold green]: {report / 'metrics.json'}  renders: {report / 'renders'}")
        if mean:
            CONSOLE.print("test views: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
        return report
