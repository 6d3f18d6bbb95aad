"""300-W / iBUG ``.pts`` landmark files: ``version: 1``, ``n_points: 68``, then the points in braces.

300-W's files are MATLAB 1-based pixels; the library's frame is 0-based with pixel centres on
integers (:mod:`morphable.geometry`), so :func:`read_pts` moves them by -1 unless told the file is
already 0-based. This is the one place that conversion happens for ``.pts`` files.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["read_pts"]


def read_pts(path: str | os.PathLike, one_based: bool = True, n_points: int = 68) -> np.ndarray:
    """The points of a ``.pts`` file.

    Args:
        path: the file.
        one_based: the file holds MATLAB 1-based pixels (300-W's convention): subtract 1.
        n_points: how many points the file must hold.

    Returns:
        (n_points, 2) float64, image pixels, 0-based, y down.

    Raises:
        InputError: a missing file, or one that is not a ``.pts`` file of ``n_points`` numbers pairs.
    """
    path = Path(path)
    try:
        text = path.read_text()
        body = text.split("{", 1)[1].split("}", 1)[0]
        pts = np.asarray(body.split(), dtype=np.float64).reshape(-1, 2)
    except OSError as e:
        raise InputError(f"{path}: cannot read the landmark file ({e.strerror or e})") from None
    except (IndexError, ValueError):
        raise InputError(f"{path}: not a .pts landmark file (expected numbers between '{{' and '}}')") from None
    if pts.shape != (n_points, 2):
        raise InputError(f"{path}: expected {n_points} points, got {pts.shape[0]}")
    return pts - 1.0 if one_based else pts
