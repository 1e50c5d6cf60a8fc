"""Captures: photos or a video made into a nerfstudio capture, and checks on a capture before training.

Modules in import order (each imports only those above it); processing runs
images -> sfm -> frame -> output:
- checks: CaptureError and the checks on a capture's files and poses
- progress: stage lines, progress bars and the run's summary
- images: input photos or video frames, checked and copied; a capture's image for training
- frame: the city frame (up, heading, GPS scale) of a reconstruction
- sfm: pycolmap features, matching and mapping (models scored against GPS with frame)
- output: transforms.json, sparse_pc.ply, the output folder checked and published
- register: new photos registered into an existing capture (--register-into)
- process: the `mclnf-process` command
"""

from mclnf_city.capture.checks import CaptureError, check_cameras, check_capture, check_transforms_json
from mclnf_city.capture.images import load_image_uint8

__all__ = ["CaptureError", "check_cameras", "check_capture", "check_transforms_json", "load_image_uint8"]
