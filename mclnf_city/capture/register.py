"""New photos registered into an existing capture's city frame (`mclnf-process NEW OUT --register-into CAPTURE`).

A city trained on CAPTURE grows with photos of a neighbouring area, or of a block taken
again. For that the new cameras must land in CAPTURE's frame while CAPTURE's own cameras
keep their poses exactly (the trained blocks were fitted to them). With pycolmap:

1. A fresh database holds CAPTURE's cameras, rigs, frames and images under the ids of its
   COLMAP model (`colmap/sparse/0`), then the new photos (a camera of their own; CAPTURE's
   intrinsics are never refined). SIFT is extracted for every image. When the keypoints of
   CAPTURE's images come out identical to those its model was built from (the usual case:
   same files, same extractor), the model's 3D points are kept as they are; otherwise they
   are triangulated again from CAPTURE's co-visible image pairs, with every pose held fixed.
2. Pairs matched: new x new, new x CAPTURE (and, only for the re-triangulation, CAPTURE's
   co-visible pairs).
3. Incremental mapping continues CAPTURE's model with its frames and cameras held fixed:
   the new images register against its points (absolute pose), new points are triangulated,
   bundle adjustment moves only the new cameras and the points. Retried with other seeds
   (`--mapping-attempts`) until every new image registers.

The output is CAPTURE grown: its files (hard-linked when possible) with its frames unchanged
in `transforms.json` (same file, pose and intrinsics; intrinsics move into each frame when the
new photos have their own camera), the new frames appended with `"capture": k` (k = 1 for the
first growth), a `"captures"` list, the grown COLMAP model (CAPTURE's poses copied back bit for
bit) and sparse points. Written beside OUT and renamed at the end; on any error nothing is left.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from mclnf_city.capture.checks import CaptureError, name_list, read_json
from mclnf_city.capture.images import check_sizes, gather_input
from mclnf_city.capture.output import camera_intrinsics, opengl_camera_to_world, publish_with_summary, staged, write_sparse_ply
from mclnf_city.capture.progress import ProcessSummary, Reporter, print_summary
from mclnf_city.capture.sfm import configure_colmap_logging
from mclnf_city.files import link_or_copy


MIN_SHARED_POINTS = 15  # co-visible CAPTURE pairs (re-triangulation only): at least this many shared 3D points
INTRINSIC_KEYS = ("w", "h", "fl_x", "fl_y", "cx", "cy", "k1", "k2", "k3", "k4", "p1", "p2", "distortion_params")


# --------------------------------------------------------------------------- the existing capture


def load_existing(capture: Path):
    """CAPTURE's transforms.json and COLMAP model, checked against each other.

    Returns (meta, reconstruction, {frame file name: frame}); raises CaptureError naming the file.
    """
    import pycolmap

    capture = Path(capture)
    transforms = capture / "transforms.json"
    sparse = capture / "colmap" / "sparse" / "0"
    if not capture.is_dir():
        raise CaptureError(f"{capture}: --register-into capture not found")
    if not transforms.exists():
        raise CaptureError(f"{transforms}: missing; --register-into needs a capture made by mclnf-process")
    meta = read_json(transforms)
    if not any((sparse / f"cameras{ext}").exists() for ext in (".bin", ".txt")):
        raise CaptureError(
            f"{sparse}: no COLMAP model here; registration continues the model mclnf-process writes "
            "(colmap/sparse/0), so the capture must come from mclnf-process"
        )
    try:
        rec = pycolmap.Reconstruction(str(sparse))
    except Exception as e:  # noqa: BLE001 - pycolmap raises several types on broken files
        raise CaptureError(f"{sparse}: cannot read the COLMAP model ({e})") from e
    by_name = {rec.image(i).name: rec.image(i) for i in rec.reg_image_ids()}
    frames = {}
    for frame in meta.get("frames", []):
        name = Path(frame["file_path"]).name
        if name not in by_name:
            raise CaptureError(f"{transforms}: frame {frame['file_path']} is not a registered image of {sparse}")
        if not (capture / frame["file_path"]).exists():
            raise CaptureError(f"{capture / frame['file_path']}: image file missing")
        ours = np.asarray(frame["transform_matrix"], dtype=np.float64)[:3]
        if not np.allclose(ours, opengl_camera_to_world(by_name[name])[:3], atol=1e-6):
            raise CaptureError(
                f"{transforms}: the pose of {frame['file_path']} differs from {sparse} (was one of them edited?); "
                "registration needs the two to agree"
            )
        frames[name] = frame
    if len(frames) < 2:
        raise CaptureError(f"{transforms}: {len(frames)} frame(s); registration needs a capture of at least 2 posed images")
    return meta, rec, frames


# --------------------------------------------------------------------------- database and matching


def seed_database(database: Path, rec) -> None:
    """CAPTURE's cameras, rigs, frames and images, written under their model ids."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        for camera in rec.cameras.values():
            db.write_camera(camera, use_camera_id=True)
        for rig in rec.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for frame in rec.frames.values():
            db.write_frame(frame, use_frame_id=True)
        for image in rec.images.values():
            db.write_image(image, use_image_id=True)
    finally:
        db.close()


def import_images(database: Path, image_dir: Path, names: Sequence[str], camera_model: str, camera_mode: str) -> None:
    """The new photos into the database, on camera(s) of their own (EXIF focal length as the prior)."""
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    mode = pycolmap.CameraMode.SINGLE if camera_mode == "single" else pycolmap.CameraMode.PER_IMAGE
    pycolmap.import_images(str(database), str(image_dir), camera_mode=mode, image_names=list(names), options=reader)


def extract_only(database: Path, image_dir: Path, names: Sequence[str], threads: int, reporter) -> None:
    """SIFT for images already in the database (they keep their cameras), image by image for a progress bar."""
    import pycolmap

    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = threads
    with reporter.progress("SIFT features", total=len(names)) as advance:
        for name in names:
            pycolmap.extract_features(str(database), str(image_dir), image_names=[name],
                                      extraction_options=extraction, device=pycolmap.Device.cpu)
            advance(1)


def keypoints_match_model(database: Path, rec) -> bool:
    """Whether every registered image's keypoints are exactly the 2D points of the model."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        for image_id in rec.reg_image_ids():
            points = rec.image(image_id).points2D
            keypoints = db.read_keypoints(image_id)[:, :2].astype(np.float64)
            xy = np.array([p.xy for p in points]) if len(points) else np.zeros((0, 2))
            if keypoints.shape != xy.shape or not np.array_equal(keypoints, xy):
                return False
        return True
    finally:
        db.close()


def covisible_pairs(rec, min_shared: int = MIN_SHARED_POINTS) -> List[Tuple[str, str]]:
    """Pairs of registered images sharing at least `min_shared` 3D points of the model."""
    counts: Counter = Counter()
    for point in rec.points3D.values():
        ids = sorted({el.image_id for el in point.track.elements})
        counts.update(itertools.combinations(ids, 2))
    return [(rec.image(a).name, rec.image(b).name) for (a, b), n in counts.items() if n >= min_shared]


def match_pairs(database: Path, pairs: Sequence[Tuple[str, str]], pairs_file: Path, threads: int) -> int:
    """Match and verify the listed pairs; returns the verified pairs in the database."""
    import pycolmap

    pairs_file.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = str(pairs_file)
    pycolmap.match_image_pairs(str(database), matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu)
    db = pycolmap.Database.open(str(database))
    try:
        return int(db.num_verified_image_pairs())
    finally:
        db.close()


def retriangulate(rec, database: Path, image_dir: Path, out: Path, threads: int):
    """CAPTURE's 3D points from the new database's keypoints, every pose and camera fixed."""
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads
    out.mkdir(parents=True, exist_ok=True)
    return pycolmap.triangulate_points(rec, str(database), str(image_dir), str(out), clear_points=True, options=options)


def continue_mapping(database: Path, image_dir: Path, model_dir: Path, work: Path, old_cameras, threads: int, seed: int):
    """Incremental mapping from CAPTURE's model with its frames and cameras held fixed."""
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads
    options.random_seed = seed
    options.fix_existing_frames = True
    options.constant_cameras = set(old_cameras)
    options.multiple_models = False  # only the model that holds CAPTURE
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    models = pycolmap.incremental_mapping(str(database), str(image_dir), str(work), options=options, input_path=str(model_dir))
    return models


# --------------------------------------------------------------------------- transforms.json


def grown_transforms(meta: Dict, rec, old_frames: Dict[str, Dict], new_names: Sequence[str], capture_index: int,
                     capture_record: Dict, old_camera_ids) -> Dict:
    """CAPTURE's transforms.json with the new frames appended (see the module docstring)."""
    out = json.loads(json.dumps(meta))  # a deep copy
    frames = out["frames"]
    by_name = {rec.image(i).name: rec.image(i) for i in rec.reg_image_ids()}
    new_frames = []
    for name in new_names:
        image = by_name[name]
        intrinsics = camera_intrinsics(rec.camera(image.camera_id))
        intrinsics.pop("camera_model")  # nerfstudio reads the camera model at the top only
        new_frames.append({
            "file_path": f"images/{name}",
            "transform_matrix": opengl_camera_to_world(image).tolist(),
            "colmap_im_id": int(image.image_id),
            **intrinsics,
            "capture": capture_index,
        })
    shared = {k: out[k] for k in INTRINSIC_KEYS if k in out}
    if shared:
        # The new photos have their own camera: every frame carries its intrinsics (same values
        # for CAPTURE's frames), since nerfstudio applies top-level intrinsics to all frames.
        for key in shared:
            del out[key]
        for frame in frames:
            for key, value in shared.items():
                frame.setdefault(key, value)
    out["frames"] = frames + new_frames
    captures = out.get("captures") or [{"capture": 0, "frames": len(frames), "source": capture_record.get("registered_into")}]
    out["captures"] = captures + [capture_record]
    out["ply_file_path"] = "sparse_pc.ply"
    return out


def next_capture_index(meta: Dict) -> int:
    return 1 + max([int(f.get("capture", 0)) for f in meta.get("frames", [])] + [int(c.get("capture", 0)) for c in meta.get("captures", [])])


# --------------------------------------------------------------------------- driver


def register_into(options) -> ProcessSummary:
    """`mclnf-process NEW OUT --register-into CAPTURE`: see the module docstring."""
    capture = Path(options.register_into)
    output = Path(options.output)
    if options.matching != "auto":
        raise CaptureError("--matching does not apply with --register-into: new photos are matched with each other and with every photo of the capture")
    reporter = Reporter(quiet=options.quiet)
    configure_colmap_logging(options.verbose)
    with reporter.stage("check the existing capture"):
        meta, rec, old_frames = load_existing(capture)
        old_names = sorted(old_frames)
        old_cameras = sorted({rec.image(i).camera_id for i in rec.reg_image_ids()})
        reporter.line(f"    {capture}: {len(old_names)} posed images, {rec.num_points3D()} points")
    summary = ProcessSummary(output=str(output))
    with staged(output) as tmp:
        for item in capture.iterdir():  # CAPTURE's files; ours are rewritten below
            if item.name in ("colmap", "transforms.json", "sparse_pc.ply", "process_summary.json"):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name, copy_function=link_or_copy)
            else:
                link_or_copy(item, tmp / item.name)
        image_dir = tmp / "images"
        incoming = tmp / ".new_images"
        names, sizes, summary.video = gather_input(options, incoming, reporter)
        stored = {n: f"{options.name_prefix}{n}" for n in names}
        taken = set(p.name for p in image_dir.iterdir()) if image_dir.is_dir() else set()
        clash = [f"{Path(options.input) / n} (as {stored[n]})" for n in names if stored[n] in taken]
        if clash:
            raise CaptureError(
                f"{capture / 'images'} already holds image(s) named like the new photos: {name_list(clash)}; "
                "pass --name-prefix to store the new photos under other names"
            )
        image_dir.mkdir(exist_ok=True)
        for n in names:
            (incoming / n).rename(image_dir / stored[n])
        shutil.rmtree(incoming)
        new_names = [stored[n] for n in names]
        sizes = {stored[n]: s for n, s in sizes.items()}
        summary.images_in = len(new_names)
        if not new_names:
            raise CaptureError(f"{options.input}: no new images")
        summary.camera_mode = check_sizes(sizes, options.mixed_sizes)

        colmap_dir = tmp / "colmap"
        colmap_dir.mkdir()
        database = colmap_dir / "database.db"
        with reporter.stage("features"):
            seed_database(database, rec)
            import_images(database, image_dir, new_names, options.camera_model, summary.camera_mode)
            extract_only(database, image_dir, old_names + new_names, options.threads, reporter)
            reuse = keypoints_match_model(database, rec)
            reporter.line(
                "    the capture's keypoints are those of its model: its 3D points are kept"
                if reuse else "    the capture's keypoints differ from its model's: its 3D points are triangulated again (poses fixed)"
            )
        pairs = list(itertools.combinations(new_names, 2)) + [(a, b) for a in new_names for b in old_names]
        if not reuse:
            pairs += covisible_pairs(rec)
        summary.matching, summary.matching_reason = "pairs", "new x new, new x capture" + ("" if reuse else ", capture's co-visible pairs")
        with reporter.stage("matching"):
            verified = match_pairs(database, pairs, colmap_dir / "pairs.txt", options.threads)
            reporter.line(f"    {len(pairs)} pairs, {verified} verified")
        model_dir = capture / "colmap" / "sparse" / "0"
        if not reuse:
            with reporter.stage("triangulate the capture again"):
                retriangulate(pycolmap_copy(rec), database, image_dir, colmap_dir / "triangulated", options.threads)
                model_dir = colmap_dir / "triangulated"
        with reporter.stage("registration"):
            grown, record = None, []
            for attempt in range(max(1, options.mapping_attempts)):
                seed = options.seed + attempt
                models = continue_mapping(database, image_dir, model_dir, colmap_dir / "models", old_cameras, options.threads, seed)
                candidates = [m for m in models.values() if all(m.exists_image(i) and m.image(i).has_pose for i in rec.reg_image_ids())]
                if not candidates:
                    record.append({"seed": seed, "registered": 0})
                    continue
                model = candidates[0]
                registered = {model.image(i).name for i in model.reg_image_ids()} & set(new_names)
                record.append({"seed": seed, "registered": len(registered)})
                reporter.line(f"    attempt {attempt + 1} (seed {seed}): {len(registered)} of {len(new_names)} new images registered")
                key = (len(registered), -model.compute_mean_reprojection_error())
                if grown is None or key > grown[0]:
                    grown = (key, model)
                if len(registered) == len(new_names):
                    break
            shutil.rmtree(colmap_dir / "models", ignore_errors=True)
            registered = [] if grown is None else sorted({grown[1].image(i).name for i in grown[1].reg_image_ids()} & set(new_names))
            missing = [n for n in new_names if n not in registered]
            need = min(options.min_registered, len(new_names))
            if len(registered) < need:
                raise CaptureError(
                    f"{options.input}: only {len(registered)} of {len(new_names)} new image(s) registered into {capture} "
                    f"(at least {need} needed, --min-registered); not registered: {name_list(missing)}. "
                    "Do the new photos overlap the capture's, and are they sharp and textured?"
                )
            grown = grown[1]
        with reporter.stage("export"):
            restore_existing(grown, rec, old_cameras)
            for image_id in list(grown.reg_image_ids()):
                if grown.image(image_id).name in missing:
                    grown.deregister_frame(grown.image(image_id).frame_id)
            for name in missing:
                (image_dir / name).unlink()
            index = next_capture_index(meta)
            capture_record = {
                "capture": index,
                "source": str(options.input),
                "registered_into": str(capture),
                "frames": len(registered),
                "dropped": missing,
            }
            out_meta = grown_transforms(meta, grown, old_frames, registered, index, capture_record, old_cameras)
            summary.registered = len(registered)
            summary.dropped = missing
            summary.mean_reprojection_error = float(grown.compute_mean_reprojection_error())
            summary.points = write_sparse_ply(grown, tmp / "sparse_pc.ply")
            sparse = colmap_dir / "sparse" / "0"
            sparse.mkdir(parents=True)
            grown.write(str(sparse))
            for leftover in ("pairs.txt", "triangulated"):
                path = colmap_dir / leftover
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            if not options.keep_database:
                database.unlink()
            summary.city_frame = meta.get("city_frame", {})
            summary.mapping = {"attempts": record, "kept_capture_points": reuse, "registered_into": str(capture), "capture": index}
            (tmp / "transforms.json").write_text(json.dumps(out_meta, indent=2))
        publish_with_summary(tmp, output, summary, reporter, options.overwrite)
    print_summary(summary, reporter)
    return summary


def pycolmap_copy(rec):
    import pycolmap

    return pycolmap.Reconstruction(rec)


def restore_existing(grown, rec, old_cameras) -> None:
    """CAPTURE's frames and cameras exactly as they were (bundle adjustment held them fixed; this
    removes the last bits of round-off, ~1e-15, so the grown model agrees with transforms.json)."""
    for image_id in rec.reg_image_ids():
        frame_id = rec.image(image_id).frame_id
        grown.frame(frame_id).rig_from_world = rec.frame(frame_id).rig_from_world
    for camera_id in old_cameras:
        camera = grown.camera(camera_id)
        if not np.array_equal(np.asarray(camera.params), np.asarray(rec.camera(camera_id).params)):
            raise CaptureError(f"internal error: camera {camera_id} of the capture changed during registration")
