"""Options of the synthetic city generator: the style presets and `CityOptions`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np


# Each style is a palette + height/lot statistics.  Colours are display-space RGB
# in [0, 1].  Kept as plain dicts so a meta-learning sampler can read them.
STYLES: Dict[str, Dict[str, Any]] = {
    "downtown": dict(
        heights=(10.0, 30.0),
        height_skew=1.3,  # >1 favours lower buildings, a few tall ones
        lots=(1, 3),
        empty_prob=0.12,
        setback=(0.0, 2.5),
        tower_prob=0.3,
        shop_prob=0.7,
        walls=[(0.62, 0.62, 0.60), (0.52, 0.56, 0.62), (0.72, 0.67, 0.58),
               (0.44, 0.48, 0.54), (0.80, 0.78, 0.74), (0.58, 0.50, 0.45)],
        glass=[(0.14, 0.22, 0.32), (0.22, 0.32, 0.40), (0.10, 0.13, 0.17), (0.25, 0.30, 0.30)],
        roofs=[(0.42, 0.42, 0.41), (0.30, 0.31, 0.33), (0.55, 0.53, 0.49)],
        yards=dict(plaza=0.5, parking=0.3, grass=0.2),
        floor_h=(3.2, 3.9),
        win_spacing=(1.8, 3.0),
        win_w=(0.5, 0.8),
        win_h=(0.5, 0.72),
        asphalt=0.27,
        centre_line=(0.92, 0.78, 0.20),
        sun=(150.0, 55.0),  # azimuth (deg from +x towards +y), elevation (deg)
        zenith=(0.30, 0.48, 0.78),
        horizon=(0.75, 0.83, 0.92),
        field_colors=[(0.36, 0.50, 0.22), (0.55, 0.55, 0.28), (0.45, 0.40, 0.28), (0.30, 0.45, 0.25)],
    ),
    "oldtown": dict(
        heights=(7.0, 18.0),
        height_skew=1.0,
        lots=(2, 4),
        empty_prob=0.08,
        setback=(0.0, 0.8),
        tower_prob=0.05,
        shop_prob=0.5,
        walls=[(0.88, 0.80, 0.62), (0.82, 0.62, 0.42), (0.90, 0.86, 0.76), (0.74, 0.50, 0.40),
               (0.80, 0.74, 0.55), (0.66, 0.70, 0.62)],
        glass=[(0.16, 0.16, 0.18), (0.20, 0.22, 0.25), (0.28, 0.24, 0.20)],
        roofs=[(0.62, 0.30, 0.20), (0.52, 0.26, 0.18), (0.45, 0.34, 0.28), (0.70, 0.40, 0.26)],
        yards=dict(plaza=0.55, grass=0.35, parking=0.10),
        floor_h=(3.0, 3.5),
        win_spacing=(2.2, 3.2),
        win_w=(0.35, 0.5),
        win_h=(0.5, 0.65),
        asphalt=0.33,
        centre_line=(0.95, 0.95, 0.93),
        sun=(200.0, 42.0),
        zenith=(0.36, 0.52, 0.80),
        horizon=(0.86, 0.84, 0.80),
        field_colors=[(0.50, 0.55, 0.25), (0.65, 0.58, 0.30), (0.40, 0.50, 0.24), (0.55, 0.45, 0.30)],
    ),
    "suburb": dict(
        heights=(4.0, 10.0),
        height_skew=1.0,
        lots=(2, 3),
        empty_prob=0.15,
        setback=(2.0, 4.5),
        tower_prob=0.0,
        shop_prob=0.1,
        walls=[(0.92, 0.91, 0.88), (0.80, 0.86, 0.90), (0.90, 0.84, 0.70), (0.66, 0.42, 0.34),
               (0.78, 0.82, 0.72), (0.88, 0.76, 0.74)],
        glass=[(0.18, 0.22, 0.26), (0.12, 0.15, 0.18)],
        roofs=[(0.30, 0.28, 0.27), (0.45, 0.30, 0.24), (0.36, 0.38, 0.42), (0.55, 0.50, 0.44)],
        yards=dict(grass=0.75, plaza=0.10, parking=0.15),
        floor_h=(2.8, 3.2),
        win_spacing=(2.5, 3.8),
        win_w=(0.35, 0.5),
        win_h=(0.45, 0.6),
        asphalt=0.30,
        centre_line=(0.95, 0.95, 0.95),
        sun=(120.0, 50.0),
        zenith=(0.28, 0.50, 0.85),
        horizon=(0.78, 0.86, 0.94),
        field_colors=[(0.32, 0.52, 0.22), (0.42, 0.56, 0.26), (0.28, 0.44, 0.20), (0.50, 0.52, 0.30)],
    ),
}
YARD_TYPES = ("grass", "plaza", "parking")


@dataclass
class CityOptions:
    """All generation parameters (the CLI flags map 1:1 onto these fields)."""

    # layout
    blocks_x: int = 3
    blocks_y: int = 3
    block_size: float = 40.0
    street_width: float = 12.0
    sidewalk_width: float = 3.0
    style: str = "downtown"
    min_height: Optional[float] = None
    max_height: Optional[float] = None
    ground_margin: float = 80.0
    # rendering
    image_width: int = 128
    image_height: int = 96
    fov_deg: float = 60.0
    supersample: int = 2
    shadows: bool = True
    # drone lawnmower
    drone: bool = True
    drone_altitude: Optional[float] = None
    drone_altitude_factor: float = 1.7
    drone_line_spacing: Optional[float] = None
    drone_step: Optional[float] = None
    drone_margin: Optional[float] = None
    drone_pitch_min: float = 40.0
    drone_pitch_max: float = 55.0
    drone_rotate: bool = True
    # street level
    street_paths: str = "all"
    street_step: float = 20.0
    street_headings: Tuple[float, ...] = (0.0, 90.0, -90.0)
    street_height: float = 1.8
    street_pitch_forward: float = 3.0
    street_pitch_side: float = 18.0
    # outputs
    num_points: int = 5000
    write_depth: bool = False
    image_format: str = "png"

    def validate(self) -> None:
        """Raise ValueError with a readable message on any bad value."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        for name in ("blocks_x", "blocks_y"):
            v = getattr(self, name)
            need(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1,
                 f"{name} must be an integer >= 1 (number of city blocks), got {v!r}")
        need(self.street_width > 0, f"street_width must be > 0 m, got {self.street_width}")
        need(self.sidewalk_width >= 0, f"sidewalk_width must be >= 0 m, got {self.sidewalk_width}")
        need(self.block_size - 2 * self.sidewalk_width >= 6.0,
             f"block_size ({self.block_size}) must exceed 2*sidewalk_width + 6 m so buildings fit")
        need(self.style in STYLES or self.style == "random",
             f"style must be one of {sorted(STYLES) + ['random']}, got {self.style!r}")
        if self.min_height is not None:
            need(self.min_height >= 1.0, f"min_height must be >= 1 m, got {self.min_height}")
        if self.max_height is not None:
            need(self.max_height >= 1.0, f"max_height must be >= 1 m, got {self.max_height}")
        if self.min_height is not None and self.max_height is not None:
            need(self.min_height <= self.max_height,
                 f"min_height ({self.min_height}) must be <= max_height ({self.max_height})")
        need(self.ground_margin >= 0, f"ground_margin must be >= 0, got {self.ground_margin}")
        need(self.image_width >= 8 and self.image_height >= 8,
             f"image size must be at least 8x8, got {self.image_width}x{self.image_height}")
        need(0 < self.fov_deg < 170, f"fov_deg must be in (0, 170), got {self.fov_deg}")
        need(1 <= self.supersample <= 8, f"supersample must be in 1..8, got {self.supersample}")
        if self.drone_altitude is not None:
            need(self.drone_altitude > 0, f"drone_altitude must be > 0, got {self.drone_altitude}")
        need(self.drone_altitude_factor > 1.0,
             f"drone_altitude_factor must be > 1 (fly above the tallest building), got {self.drone_altitude_factor}")
        for name in ("drone_line_spacing", "drone_step"):
            v = getattr(self, name)
            need(v is None or v > 0, f"{name} must be > 0 m, got {v}")
        need(self.drone_margin is None or self.drone_margin >= 0, f"drone_margin must be >= 0, got {self.drone_margin}")
        need(0 < self.drone_pitch_min <= self.drone_pitch_max < 90,
             f"need 0 < drone_pitch_min <= drone_pitch_max < 90 (degrees below horizon), "
             f"got {self.drone_pitch_min}, {self.drone_pitch_max}")
        need(self.street_paths in ("all", "interior", "none"),
             f"street_paths must be all|interior|none, got {self.street_paths!r}")
        need(self.street_step > 0, f"street_step must be > 0 m, got {self.street_step}")
        need(len(self.street_headings) >= 1, "street_headings needs at least one heading")
        need(0.3 <= self.street_height < self.street_width * 10, f"street_height out of range: {self.street_height}")
        need(self.drone or self.street_paths != "none", "no cameras: enable the drone or some street paths")
        need(self.image_format in ("png", "jpg"), f"image_format must be png or jpg, got {self.image_format!r}")
        need(self.num_points >= 0, f"num_points must be >= 0, got {self.num_points}")

    def to_json(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["street_headings"] = [float(h) for h in self.street_headings]
        return d


# The city of the demo capture (seed 0, downtown), of the bundled priors' training cities and of
# the benchmarks' generated captures: 2x2 blocks, 96x72 images, a sparser flight than the defaults.
STANDARD_CITY: Dict[str, Any] = dict(blocks_x=2, blocks_y=2, block_size=40.0, street_width=12.0, image_width=96, image_height=72,
                                     drone_line_spacing=24.0, drone_step=14.0, street_step=30.0)
