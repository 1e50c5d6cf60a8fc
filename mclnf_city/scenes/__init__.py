"""Synthetic captures with known geometry: the demo city, the bundled priors' training cities,
test captures and the benchmarks' scenes.

Two generators, written apart so that the method meets captures it was not shaped around:

- the city generator (`mclnf-make-city`, `generate_city`): box buildings on a grid of streets,
  a drone lawnmower and street-level walks. Its parts, one module each: `options` (CityOptions
  and the style presets), `noise`, `textures`, `layout` (blocks, buildings, ground-truth mesh),
  `flight` (camera paths, pinhole model), `raycast`, `render`, `coverage`, and `make_city`
  (the capture on disk, and the command line);
- the capture zoo (`mclnf-scene-zoo`, `generate_scene`, `ZOO`): named scenes of other
  buildings, flights, skies, scales and orientations, in `zoo`.

`check_bounds` (`mclnf-check-bounds`) measures the city box against the visible geometry of
generated captures. Every module with a command line also runs as `python -m mclnf_city.scenes.<name>`.
"""

from __future__ import annotations

import importlib

__all__ = ["CityOptions", "generate_city", "generate_scene", "SceneOptions", "ZOO"]

# Loaded on first use: imported here, a module would already be in sys.modules when
# `python -m mclnf_city.scenes.<name>` runs it, and would run twice.
_LAZY = {"CityOptions": "options", "generate_city": "make_city", "generate_scene": "zoo", "SceneOptions": "zoo", "ZOO": "zoo"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
