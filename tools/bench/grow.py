"""Growing a city, measured: registration on real photos, and a generated city grown by a neighbouring area.

door (real photos, ground truth): a city capture is made from lund_door's DSC_0001-0008
(`mclnf-process`), DSC_0009-0012 are registered into it (`--register-into`); all twelve poses
are compared with the ground-truth model after a similarity fit (as tools/bench/process.py does),
and the capture's own eight are checked to be unchanged.

city (generated, 3x2 blocks): the cameras west of a street are the old capture, the whole city is
the grown one (eastern frames marked capture 1, as --register-into marks them). The old city is
trained, then grown (`--pipeline.grow-city`). Recorded: which blocks were added, the old block
files' SHA-256 before and after, old blocks' solo renders on their test views (bit for bit), test
PSNR of the old and the grown city on every test view of the grown capture (split into views of
the old and of the new photos), and wall times. --from-scratch trains the grown capture as one new
city instead (the baseline: every block, all photos from the start).

The test views are chosen once, every 8th frame of the whole city by file name, and written into
both captures' transforms.json as nerfstudio's explicit split lists: the old capture holds the
ones among its photos. No run (old, grown, from scratch) trains on any of them, and every run is
scored on the same images; the script checks both and records the lists under "split".

--smoke (city only; door needs tens of seconds of SfM on real photos, so it is not covered):
fewer cameras of 40x30, a few steps per block, fewer rays and samples; seconds, run by the test
suite to check that the benchmark's code paths still run, not to measure anything.

    python tools/bench/grow.py door --out tools/bench/results/grow_door.json
    python tools/bench/grow.py city --steps-per-block 200 --out tools/bench/results/grow_city.json
    python tools/bench/grow.py city --steps-per-block 200 --from-scratch --out tools/bench/results/grow_scratch.json
    python tools/bench/grow.py city --smoke --out /tmp/bench_grow_smoke.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from mclnf_city.metrics import image_metrics
from mclnf_city.pose_accuracy import compare_poses, fit_similarity, pose_error, poses_from_colmap, poses_from_transforms, scene_extent
from mclnf_city.capture.process import ProcessOptions, process
from mclnf_city.scenes.make_city import generate_city
from mclnf_city.splits import check_split, choose_test_files, image_names, split_lists
from mclnf_city.trainer import preset_config, setup_trainer

from common import default_data_dir, write_json

# fewer cameras too (32 drone photos instead of 201): rendering the test views is most of a smoke run
SMOKE = dict(width=40, height=30, steps_per_block=2, rays=128, samples=8, cameras=dict(drone_step=30.0, drone_line_spacing=45.0, street_paths="none"))


def door(args) -> Dict:
    data = (args.data or default_data_dir()) / "lund_door"
    work = Path(tempfile.mkdtemp(prefix="bench_grow_door_"))
    try:
        old_photos, new_photos = work / "old_photos", work / "new_photos"
        old_photos.mkdir()
        new_photos.mkdir()
        for p in sorted((data / "images").glob("*.JPG")):
            shutil.copy(p, (old_photos if int(p.stem[-4:]) <= 8 else new_photos) / p.name)
        start = time.perf_counter()
        city = process(ProcessOptions(input=old_photos, output=work / "city", max_size=args.max_size, threads=args.threads))
        city_seconds = time.perf_counter() - start
        start = time.perf_counter()
        grown = process(ProcessOptions(input=new_photos, output=work / "grown", max_size=args.max_size, threads=args.threads,
                                       register_into=work / "city"))
        grown_seconds = time.perf_counter() - start
        truth = poses_from_colmap(data / "sparse" / "0")
        ours = poses_from_transforms(work / "grown" / "transforms.json")
        before = poses_from_transforms(work / "city" / "transforms.json")
        unchanged = all(np.array_equal(before[n][0], ours[n][0]) and np.array_equal(before[n][1], ours[n][1]) for n in before)
        all_twelve = compare_poses(ours, truth)
        new_names = sorted(p.name for p in new_photos.iterdir())
        result = {
            "max_size": args.max_size,
            "city": {"registered": city.registered, "images_in": city.images_in, "seconds": city_seconds,
                     "accuracy": {k: v for k, v in compare_poses(before, truth).items() if k != "per_image"}},
            "registration": {"registered": grown.registered, "images_in": grown.images_in, "seconds": grown_seconds,
                             "stage_seconds": grown.stage_seconds, "mean_reprojection_error": grown.mean_reprojection_error,
                             "mapping": grown.mapping},
            "old_poses_unchanged_bit_for_bit": unchanged,
            "accuracy_all": {k: v for k, v in all_twelve.items() if k != "per_image"},
            "accuracy_new": {
                "max_rotation_deg": max(all_twelve["per_image"][n]["rotation_deg"] for n in new_names if n in all_twelve["per_image"]),
                "max_centre_error_fraction": max(all_twelve["per_image"][n]["centre_error_fraction"] for n in new_names if n in all_twelve["per_image"]),
            },
            # the city frame is fixed by the capture's own cameras: align on them only, measure the new ones
            "accuracy_new_aligned_on_old": aligned_on(ours, truth, sorted(before), new_names),
            "per_image": all_twelve["per_image"],
        }
        print(json.dumps({k: v for k, v in result.items() if k != "per_image"}, indent=1))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def aligned_on(ours, truth, fit_names, test_names) -> Dict:
    """Errors of `test_names` after a similarity fitted on `fit_names` only (centres, Umeyama)."""
    similarity, extent = fit_similarity(ours, truth, fit_names), scene_extent(truth)
    out = {n: pose_error(ours[n], truth[n], similarity, extent) for n in test_names}
    return {"max_rotation_deg": max(v["rotation_deg"] for v in out.values()),
            "max_centre_error_fraction": max(v["centre_error_fraction"] for v in out.values()), "per_image": out}


def render(pipe, cam, solo=None):
    """RGB of one camera rendered as the city's metrics see it (every block), or by block `solo` alone."""
    pipe.model.eval()
    pipe.model.solo_block = solo
    try:
        with torch.no_grad(), pipe.model.for_evaluation():
            return pipe.model.get_outputs_for_camera(cam)["rgb"].cpu()
    finally:
        pipe.model.solo_block = None


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def city(args) -> Dict:
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_grow_city_"))
    try:
        return city_in(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def city_in(args, work: Path) -> Dict:
    full = generate_city(work / "full", seed=args.seed, progress=False, verbose=False, blocks_x=3, blocks_y=2,
                         image_width=args.width, image_height=args.height, **(SMOKE["cameras"] if args.smoke else {}))
    meta = json.loads((full / "transforms.json").read_text())
    frames = meta.pop("frames")
    west = [f for f in frames if f["transform_matrix"][0][3] < args.split_x]
    # chosen on the whole city, so the old capture's test views are the grown one's among the old photos
    test_paths = choose_test_files([f["file_path"] for f in frames])
    test_files = [Path(p).name for p in test_paths]

    def capture(name, chosen, keep_x=None):
        dst = work / name
        (dst / "images").mkdir(parents=True)
        for f in chosen:
            os.link(full / f["file_path"], dst / f["file_path"])
        from plyfile import PlyData, PlyElement

        vertex = PlyData.read(str(full / "sparse_pc.ply"))["vertex"].data
        keep = vertex if keep_x is None else vertex[vertex["x"] < keep_x]
        PlyData([PlyElement.describe(keep, "vertex")]).write(str(dst / "sparse_pc.ply"))
        split = split_lists([f["file_path"] for f in chosen], test_paths)
        (dst / "transforms.json").write_text(json.dumps({**meta, **split, "frames": chosen}, indent=1))
        return dst

    old = capture("old", west, keep_x=args.split_x)
    grown = capture("grown", [f if f in west else {**f, "capture": 1} for f in frames])
    new_names = {Path(f["file_path"]).name for f in frames if f not in west}

    def train(data, **pipeline):
        config = preset_config("mclnf-city-tiny", data, work / "runs", args.steps_per_block, rays=args.rays, **pipeline)
        if args.smoke:
            config.pipeline.model.num_coarse_samples = config.pipeline.model.num_fine_samples = SMOKE["samples"]
        start = time.perf_counter()
        trainer = setup_trainer(config)
        trainer.train()
        return trainer, time.perf_counter() - start

    if args.from_scratch:
        return from_scratch(args, grown, new_names, test_files, train)
    old_trainer, old_seconds = train(old)
    old_pipe = old_trainer.pipeline
    old_store = old_pipe.store.root
    files_before = {p.relative_to(old_store).as_posix(): _sha(p) for p in sorted(old_store.rglob("*.pt"))}

    def camera(pipe, name):
        for ds in (pipe.datamanager.eval_dataset, pipe.datamanager.train_dataset):
            names = image_names(ds)
            if name in names:
                i = names.index(name)
                return ds.cameras[i : i + 1]
        raise KeyError(name)

    eval_names = image_names(old_pipe.datamanager.eval_dataset)
    groups = {b: [eval_names[i] for i in v] for b, v in old_pipe.report.test_views_by_block().items()}
    solo_before = {(b, n): render(old_pipe, camera(old_pipe, n), b) for b in old_pipe.store.done_blocks() for n in groups.get(b, [])}

    grown_trainer, grown_seconds = train(grown, grow_city=old_store)
    grown_pipe = grown_trainer.pipeline
    split = check_split({"old_city": old_pipe, "grown_city": grown_pipe}, test_files)
    manifest = grown_pipe.store.manifest
    files_after = {p.relative_to(old_store).as_posix(): _sha(p) for p in sorted(old_store.rglob("*.pt"))}
    linked_same = all(_sha(grown_pipe.store.root / rel) == sha for rel, sha in files_before.items())
    grown_pipe.model.frozen._blocks.clear()
    solo_same = all(torch.equal(render(grown_pipe, camera(grown_pipe, n), b), before) for (b, n), before in solo_before.items())

    # every test view of the grown capture, rendered by the old city and by the grown one
    rows = test_view_psnr({"old_city": old_pipe, "grown_city": grown_pipe}, grown_pipe, new_names, test_files)

    def mean(key, new):
        values = [r[key] for r in rows if r["new_photo"] == new]
        return float(np.mean(values)) if values else None

    result = {
        "command": " ".join(sys.argv),
        "smoke": args.smoke,
        "capture": {"seed": args.seed, "blocks": [3, 2], "image_size": [args.width, args.height], "frames": len(frames),
                    "old_frames": len(west), "new_frames": len(frames) - len(west)},
        "steps_per_block": args.steps_per_block, "rays_per_step": args.rays,
        "old_city": {"blocks": old_pipe.partition.num_blocks, "trained": len(old_pipe.stream), "seconds": old_seconds},
        "grown_city": {"blocks": grown_pipe.partition.num_blocks, "new_blocks": manifest["grow"]["new_blocks"],
                       "trained": list(grown_pipe.stream), "seconds": grown_seconds,
                       "iterations": grown_trainer.config.max_num_iterations},
        "old_store_unchanged": files_before == files_after,
        "old_blocks_linked_byte_identical": linked_same,
        "old_blocks_solo_renders_bit_identical": solo_same,
        "old_solo_views_checked": len(solo_before),
        "test_views": {"old_photos": sum(not r["new_photo"] for r in rows), "new_photos": sum(r["new_photo"] for r in rows)},
        "psnr_old_photos": {"old_city": mean("old_city", False), "grown_city": mean("grown_city", False)},
        "psnr_new_photos": {"old_city": mean("old_city", True), "grown_city": mean("grown_city", True)},
        "per_view": rows,
        "split": split,
    }
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_view", "split")}, indent=1))
    return result


def test_view_psnr(models, pipe, new_names, test_files):
    """PSNR of every test view of `pipe`'s capture for each of `models` (name -> pipeline); they must be
    exactly `test_files`, so that every run compared is scored on the same images."""
    ds = pipe.datamanager.eval_dataset
    names = image_names(ds)
    assert sorted(names) == sorted(test_files), f"scored on {sorted(set(names) ^ set(test_files))} against the chosen test views"
    rows = []
    for i, name in enumerate(names):
        cam, gt = ds.cameras[i : i + 1], ds[i]["image"][..., :3]
        row = {"view": name, "new_photo": name in new_names}
        for key, model in models.items():
            row[key] = image_metrics(render(model, cam).to(gt), gt)["psnr"]
        rows.append(row)
    return rows


def from_scratch(args, grown: Path, new_names, test_files, train) -> Dict:
    """The baseline: the grown capture trained as one city from the start (every block)."""
    trainer, seconds = train(grown, grid=tuple(args.scratch_grid))
    pipe = trainer.pipeline
    split = check_split({"scratch": pipe}, test_files)
    rows = test_view_psnr({"scratch": pipe}, pipe, new_names, test_files)
    mean = lambda new: float(np.mean([r["scratch"] for r in rows if r["new_photo"] == new]))  # noqa: E731
    result = {"command": " ".join(sys.argv), "smoke": args.smoke, "steps_per_block": args.steps_per_block, "rays_per_step": args.rays,
              "from_scratch": {"grid": list(args.scratch_grid), "blocks": pipe.partition.num_blocks, "trained": len(pipe.stream), "seconds": seconds,
                               "iterations": trainer.config.max_num_iterations},
              "psnr_old_photos": mean(False), "psnr_new_photos": mean(True), "per_view": rows, "split": split}
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_view", "split")}, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("door", "city"))
    parser.add_argument("--out", type=Path, required=True, help="JSON written here")
    parser.add_argument("--data", type=Path, default=None, help="door: folder holding lund_door/ (default: the shared data)")
    parser.add_argument("--max-size", type=int, default=800, help="door: long side of the photos")
    parser.add_argument("--threads", type=int, default=-1, help="door: pycolmap threads")
    parser.add_argument("--seed", type=int, default=900, help="city: make_city seed")
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--height", type=int, default=72)
    parser.add_argument("--split-x", type=float, default=26.0, help="city: cameras west of this x (m) are the old capture")
    parser.add_argument("--steps-per-block", type=int, default=200)
    parser.add_argument("--rays", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=None, help="city: keep the captures and runs here")
    parser.add_argument("--from-scratch", action="store_true", help="city: instead, train the grown capture as one new city (the baseline)")
    parser.add_argument("--scratch-grid", type=int, nargs=2, default=(3, 3),
                        help="--from-scratch: its grid (3 3 = 9 blocks, as many as the grown city trains in all)")
    parser.add_argument("--smoke", action="store_true",
                        help="city: seconds, to check that the benchmark runs (32 drone photos of 40x30, 2 steps per block, 128 rays, 8+8 samples; "
                             "overrides --width, --height, --steps-per-block and --rays). Not for door, whose SfM takes tens of seconds")
    args = parser.parse_args()
    if args.smoke:
        if args.part == "door":
            parser.error("--smoke covers the city benchmark only (door needs tens of seconds of SfM on real photos)")
        args.width, args.height, args.steps_per_block, args.rays = (SMOKE[k] for k in ("width", "height", "steps_per_block", "rays"))
    result = door(args) if args.part == "door" else city(args)
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
