"""Lattice value noise for the city's procedural textures; integer hashing keeps it bit-exact."""

from __future__ import annotations

import numpy as np


def hash01(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Integer lattice hash -> float in [0, 1).  Integer-only (uint32 wraps) so it is bit-exact."""
    h = (ix.astype(np.int64).astype(np.uint32) * np.uint32(0x9E3779B1)
         + iy.astype(np.int64).astype(np.uint32) * np.uint32(0x85EBCA77)
         + np.uint32((salt * 0xC2B2AE3D) & 0xFFFFFFFF))
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return h.astype(np.float64) * (1.0 / 4294967296.0)


def vnoise(x: np.ndarray, y: np.ndarray, salt: int) -> np.ndarray:
    """Smooth 2D value noise in [0, 1]."""
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    ix = x0.astype(np.int64)
    iy = y0.astype(np.int64)
    sx = fx * fx * (3.0 - 2.0 * fx)
    sy = fy * fy * (3.0 - 2.0 * fy)
    a = hash01(ix, iy, salt)
    b = hash01(ix + 1, iy, salt)
    c = hash01(ix, iy + 1, salt)
    d = hash01(ix + 1, iy + 1, salt)
    return (a + (b - a) * sx) * (1.0 - sy) + (c + (d - c) * sx) * sy


def fbm(x: np.ndarray, y: np.ndarray, salt: int, freq: float, octaves: int = 3) -> np.ndarray:
    """Fractal value noise, roughly in [0, 1], centred on 0.5."""
    acc = np.zeros_like(x, dtype=np.float64)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        acc += amp * vnoise(x * freq, y * freq, salt + 101 * o)
        norm += amp
        amp *= 0.5
        freq *= 2.03  # non-integer ratio hides lattice alignment
    return acc / norm


def mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t


def frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)
