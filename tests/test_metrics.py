"""Image metrics: PSNR against its formula, LPIPS only where AlexNet can see the image."""

from __future__ import annotations

import math

import torch

from mclnf_city import metrics


def test_psnr_and_ssim_of_known_images():
    gt = torch.full((32, 40, 3), 0.5)
    out = metrics.image_metrics(gt + 0.1, gt)
    assert math.isclose(out["psnr"], 20.0, abs_tol=1e-4)  # mse 0.01
    assert metrics.image_metrics(gt, gt)["ssim"] > 0.999


def test_colour_error_sees_darkening_not_blur():
    torch.manual_seed(0)
    gt = torch.rand(32, 40, 3) * 0.8 + 0.1
    blurred = torch.nn.functional.avg_pool2d(gt.permute(2, 0, 1)[None], 5, stride=1, padding=2, count_include_pad=False)[0].permute(1, 2, 0)
    assert metrics.image_metrics(blurred, gt)["colour_error"] < 0.01  # blur: colour kept
    darker = gt.clone()
    darker[..., 2] *= 0.85  # the blue channel 15 % too dark
    assert math.isclose(metrics.image_metrics(darker, gt)["colour_error"], 0.15, abs_tol=1e-4)
    assert math.isclose(metrics.colour_error(torch.zeros_like(gt), gt), 1.0)  # a black view


def test_without_weights_lpips_is_unavailable_and_nothing_is_downloaded(monkeypatch):
    monkeypatch.setattr(metrics, "_LPIPS", None)
    monkeypatch.setattr(metrics, "_LPIPS_CHECKED", False)
    gt = torch.rand(48, 64, 3)
    assert "lpips_alex" not in metrics.image_metrics(gt, gt)
    assert metrics.lpips_status().startswith("unavailable") and not metrics.lpips_weights_path().exists()


def test_with_weights_lpips_is_scored_on_images_alexnet_can_see(lpips_weights):
    torch.manual_seed(0)
    gt = torch.rand(48, 64, 3)
    same, noisy = metrics.image_metrics(gt, gt), metrics.image_metrics((gt + 0.3 * torch.randn_like(gt)).clamp(0, 1), gt)
    assert same["lpips_alex"] < 1e-6 < noisy["lpips_alex"]
    side = metrics.LPIPS_MIN_SIDE
    assert "lpips_alex" in metrics.image_metrics(torch.rand(side, side, 3), torch.rand(side, side, 3))
    small = metrics.image_metrics(torch.rand(side - 1, 64, 3), torch.rand(side - 1, 64, 3))
    assert "lpips_alex" not in small and "psnr" in small
    assert metrics.lpips_status(side - 1).startswith("skipped") and metrics.lpips_status(side) == "available"
    mixed = metrics.mean_metrics([noisy, small])
    assert mixed["lpips_alex"] == noisy["lpips_alex"] and math.isclose(mixed["psnr"], (noisy["psnr"] + small["psnr"]) / 2)
