"""Face crops: the one definition of the crop box and of the crop <-> image mapping.

A crop box is an integer pixel square ``[x0, y0, side]``: the crop covers image pixels
``x0 .. x0 + side - 1`` (likewise y), resampled to ``size x size``. Pixel centres sit on
integers (0-based) in both frames, so a point maps as

    p_crop = (p_img - origin + 0.5) * size / side - 0.5
    p_img  = (p_crop + 0.5) * side / size - 0.5 + origin

The standard box (3DDFA's ``benchmarkCrop.m``, used by every AFLW2000-3D benchmark and by our
training crops) is computed from 68 landmarks: their bounding box -> the square of side
``max(w, h)`` on its centre -> side enlarged by sqrt(2) -> rounded. Outside the image the crop is
zero-padded (the box is never clipped).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

__all__ = ["CropBox", "box_from_landmarks", "crop_image", "to_image", "to_crop", "camera_to_image", "camera_to_crop"]

#: Default side (pixels) of the regressor's input crop.
CROP_SIZE = 120


@dataclass(frozen=True)
class CropBox:
    """An integer square crop box: top-left pixel ``(x0, y0)`` and ``side`` pixels."""

    x0: int
    y0: int
    side: int

    def as_array(self) -> np.ndarray:
        """[x0, y0, x1, y1] with x1 = x0 + side (exclusive end), pixels."""
        return np.array([self.x0, self.y0, self.x0 + self.side, self.y0 + self.side])


def box_from_landmarks(points: np.ndarray, enlarge: float = math.sqrt(2.0)) -> CropBox:
    """The standard crop box from landmarks (L, 2) in image pixels (0-based; NaN rows ignored)."""
    pts = np.asarray(points, dtype=np.float64)[:, :2]
    pts = pts[np.isfinite(pts).all(1)]
    if len(pts) < 2:
        raise ValueError("need at least two finite landmarks to place a crop box")
    lo, hi = pts.min(0), pts.max(0)
    c = (lo + hi) / 2.0
    side = max(float((hi - lo).max()) * enlarge, 4.0)
    x0, y0 = int(round(c[0] - side / 2.0)), int(round(c[1] - side / 2.0))
    return CropBox(x0, y0, int(round(side)))


def box_from_rect(x0: float, y0: float, x1: float, y1: float, scale: float = 1.5, shift_y: float = 0.1) -> CropBox:
    """A crop box from a detector rectangle (pixels): a square of ``scale * mean(w, h)`` centred
    ``shift_y * h`` below the rectangle centre (detector boxes sit high on the face)."""
    w, h = x1 - x0, y1 - y0
    side = max(scale * (w + h) / 2.0, 4.0)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0 + shift_y * h
    return CropBox(int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(side)))


def crop_image(image: np.ndarray, box: CropBox, size: int = CROP_SIZE) -> np.ndarray:
    """Cut ``box`` out of ``image`` (H, W[, C]), zero-padding outside, and resample to (size, size[, C]).

    Shrinking uses area averaging, enlarging bilinear interpolation; the pixel mapping is exactly
    :func:`to_crop` in both cases.
    """
    H, W = image.shape[:2]
    x0, y0, s = box.x0, box.y0, box.side
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + s, W), min(y0 + s, H)
    out = np.zeros((s, s) + image.shape[2:], dtype=image.dtype)
    if xb > xa and yb > ya:
        out[ya - y0: yb - y0, xa - x0: xb - x0] = image[ya:yb, xa:xb]
    if s == size:
        return out
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return cv2.resize(out, (size, size), interpolation=interp)


def _origin_scale(boxes, like: torch.Tensor, size: int):
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 3), dtype=like.dtype, device=like.device)
    return b[:, :2], b[:, 2] / size  # origin (B, 2), pixels per crop pixel k (B,)


def to_image(points_crop: torch.Tensor, boxes, size: int = CROP_SIZE) -> torch.Tensor:
    """Crop pixels (B, L, 2) -> image pixels, for boxes (B, 3) = [x0, y0, side] (or CropBox list)."""
    o, k = _origin_scale(_as_rows(boxes), points_crop, size)
    return (points_crop + 0.5) * k[:, None, None] - 0.5 + o[:, None, :]


def to_crop(points_img: torch.Tensor, boxes, size: int = CROP_SIZE) -> torch.Tensor:
    """Image pixels (B, L, 2) -> crop pixels, inverse of :func:`to_image`."""
    o, k = _origin_scale(_as_rows(boxes), points_img, size)
    return (points_img - o[:, None, :] + 0.5) / k[:, None, None] - 0.5


def camera_to_image(scale: torch.Tensor, translation: torch.Tensor, boxes, size: int = CROP_SIZE):
    """Weak-perspective (scale (B,), translation (B, 2)) of the crop frame -> of the image frame."""
    o, k = _origin_scale(_as_rows(boxes), translation, size)
    return scale * k, (translation + 0.5) * k[:, None] - 0.5 + o


def camera_to_crop(scale: torch.Tensor, translation: torch.Tensor, boxes, size: int = CROP_SIZE):
    """Inverse of :func:`camera_to_image`."""
    o, k = _origin_scale(_as_rows(boxes), translation, size)
    return scale / k, (translation - o + 0.5) / k[:, None] - 0.5


def _as_rows(boxes):
    if isinstance(boxes, CropBox):
        return [[boxes.x0, boxes.y0, boxes.side]]
    if isinstance(boxes, (list, tuple)) and boxes and isinstance(boxes[0], CropBox):
        return [[b.x0, b.y0, b.side] for b in boxes]
    if isinstance(boxes, torch.Tensor):
        return boxes.detach().cpu().numpy()
    return boxes
