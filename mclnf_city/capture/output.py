"""The capture written: nerfstudio's transforms.json from a COLMAP model, sparse_pc.ply, and the
staged folder published with its process_summary.json; and the check that an output folder
may be written at all."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np

from mclnf_city.capture.checks import CaptureError
from mclnf_city.capture.progress import ProcessSummary, Reporter
from mclnf_city.capture.sfm import CAMERA_MODELS
from mclnf_city.files import publish, staging_dir, write_ply


# --------------------------------------------------------------------------- transforms.json and points


def camera_intrinsics(camera) -> Dict:
    """nerfstudio intrinsics for a COLMAP camera (OPENCV when there is distortion)."""
    model, p = camera.model_name, [float(v) for v in camera.params]
    out = {"w": int(camera.width), "h": int(camera.height)}
    if model == "SIMPLE_PINHOLE":
        out.update(fl_x=p[0], fl_y=p[0], cx=p[1], cy=p[2], camera_model="PINHOLE")
    elif model == "PINHOLE":
        out.update(fl_x=p[0], fl_y=p[1], cx=p[2], cy=p[3], camera_model="PINHOLE")
    elif model == "SIMPLE_RADIAL":
        out.update(fl_x=p[0], fl_y=p[0], cx=p[1], cy=p[2], k1=p[3], k2=0.0, p1=0.0, p2=0.0, camera_model="OPENCV")
    elif model == "RADIAL":
        out.update(fl_x=p[0], fl_y=p[0], cx=p[1], cy=p[2], k1=p[3], k2=p[4], p1=0.0, p2=0.0, camera_model="OPENCV")
    elif model == "OPENCV":
        out.update(fl_x=p[0], fl_y=p[1], cx=p[2], cy=p[3], k1=p[4], k2=p[5], p1=p[6], p2=p[7], camera_model="OPENCV")
    else:
        raise CaptureError(f"camera model {model} is not supported; use one of {', '.join(CAMERA_MODELS)}")
    return out


def opengl_camera_to_world(image) -> np.ndarray:
    """4x4 camera-to-world in nerfstudio's convention (camera looks along -z, y up).

    COLMAP stores world-to-camera with the camera looking along +z and y down: invert,
    then flip the camera's y and z axes.
    """
    c2w = np.eye(4)
    c2w[:3, :] = image.cam_from_world().inverse().matrix()
    c2w[:3, 1:3] *= -1
    return c2w


def build_transforms(rec, image_prefix: str = "images") -> Dict:
    """transforms.json content: shared intrinsics at the top if there is one camera."""
    images = sorted((rec.image(i) for i in rec.reg_image_ids()), key=lambda im: im.name)
    camera_ids = {im.camera_id for im in images}
    meta: Dict = {}
    if len(camera_ids) == 1:
        meta.update(camera_intrinsics(rec.camera(next(iter(camera_ids)))))
    frames = []
    for im in images:
        frame = {
            "file_path": f"{image_prefix}/{im.name}",
            "transform_matrix": opengl_camera_to_world(im).tolist(),
            "colmap_im_id": int(im.image_id),
        }
        if len(camera_ids) > 1:
            frame.update(camera_intrinsics(rec.camera(im.camera_id)))
        frames.append(frame)
    meta["frames"] = frames
    return meta


def write_sparse_ply(rec, path: Path) -> int:
    """Sparse points with colours as a binary PLY (what nerfstudio's load_3D_points reads)."""
    pts = list(rec.points3D.values())
    xyz = np.array([p.xyz for p in pts]).reshape(-1, 3)
    rgb = np.array([p.color for p in pts]).reshape(-1, 3)
    write_ply(path, xyz, rgb)
    return len(pts)


# --------------------------------------------------------------------------- the output folder


def check_output(output: Path, inputs: List[Tuple[str, Path]], overwrite: bool) -> None:
    """Refuse, before anything is touched, an output that publishing would break: one that is,
    holds or lies inside an input (replacing it would delete the input), or an existing folder
    that is not a capture this tool wrote (--overwrite replaces only those)."""
    out = output.resolve()
    for label, path in inputs:
        src = Path(path).resolve()
        relation = "is" if out == src else "contains" if out in src.parents else "lies inside" if src in out.parents else None
        if relation:
            raise CaptureError(f"{output}: the output {relation} the {label} {path}; choose an output folder apart from it")
    if not output.exists():
        return
    if not overwrite:
        raise CaptureError(f"{output}: already exists; pass --overwrite to replace it")
    if not output.is_dir() or (any(output.iterdir()) and not (output / "process_summary.json").is_file()):
        raise CaptureError(f"{output}: exists and is not a capture mclnf-process wrote (no process_summary.json); "
                           "--overwrite replaces only those: choose another output")


@contextmanager
def staged(output: Path) -> Iterator[Path]:
    """A fresh staging folder beside `output`, removed when the body fails: a failed run never
    leaves a half-written capture. The body ends with `publish_with_summary`."""
    tmp = staging_dir(output)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_with_summary(tmp: Path, output: Path, summary: ProcessSummary, reporter: Reporter, overwrite: bool) -> None:
    """Write process_summary.json (with the stage times) into the staged output, then publish it."""
    summary.stage_seconds = dict(reporter.seconds)
    (tmp / "process_summary.json").write_text(json.dumps(summary.to_json(), indent=2))
    try:
        publish(tmp, output, overwrite)
    except FileExistsError as e:
        raise CaptureError(str(e)) from None
