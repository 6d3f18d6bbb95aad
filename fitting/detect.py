"""Face detection: where are the faces in an image?

Every detector follows the :class:`Detector` protocol: ``detect(image) -> Detections`` for an
(H, W, 3) uint8 RGB image. :class:`Detections` holds boxes ``(K, 4)`` ``[x0, y0, x1, y1]`` in image
pixels (0-based, ``x1``/``y1`` exclusive ends, so ``w = x1 - x0``) and scores ``(K,)`` in [0, 1],
best face first. Boxes of the built-in detectors are calibrated to approximate the **bounding box
of the 68 iBUG landmarks** (brows to chin, jaw side to jaw side), whatever the detector's own
notion of a face box is, so :meth:`Detections.crop_boxes` can apply the standard crop rule of
:func:`morphable.crop.box_from_landmarks` (square of side sqrt(2) * max(w, h) on the box centre).

Detectors:

* default (:func:`make_detector` ``"auto"``): :class:`BlazeFaceDetector`, MediaPipe's BlazeFace
  short- and full-range models (read into torch, run by onnxruntime: a few ms per photo, profiles
  included), and for the
  photos where it finds nothing today's slower pair: dlib's MMOD CNN plus the Haar cascades for
  faces smaller than its working size (:class:`FallbackDetector` of :class:`CombinedDetector`).
* :class:`DlibCNNDetector`: dlib's MMOD CNN (``dlib-bin``; the public-domain model file ships
  in ``fitting/models``).
* :class:`OpenCVDetector` (no dlib needed, the fallback): OpenCV's Haar cascades, frontal
  (``alt2``) plus the profile cascade on the image and on its mirror image (the profile cascade
  only knows one side), merged by non-maximum suppression. Fast and offline; weak on strong
  in-plane rotation, occlusion and small faces.
* :class:`BoxesDetector`: boxes the user already has (from another detector or by hand).
* :class:`MediapipeDetector`: mediapipe's BlazeFace (full range) if ``mediapipe==0.10.21`` is
  installed (not a dependency of morphable; the legacy ``mp.solutions`` API was removed later).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol, Sequence, runtime_checkable

import cv2
import numpy as np

from morphable.crop import CropBox
from morphable.errors import InputError, MorphableError

__all__ = ["Detections", "Detector", "OpenCVDetector", "DlibCNNDetector", "CombinedDetector", "BoxesDetector",
           "BlazeFaceDetector", "FallbackDetector", "BLAZEFACE_CALIB", "BLAZEFACE_FLOOR", "MediapipeDetector",
           "DETECTORS", "make_detector", "default_detector", "nms", "box_iou", "mediapipe_available",
           "dlib_detector_available"]


@dataclass
class Detections:
    """Faces found in one image, best first.

    Attributes:
        boxes: (K, 4) float64 ``[x0, y0, x1, y1]``, image pixels, exclusive ends; for the built-in
            detectors an approximation of the 68-landmark bounding box.
        scores: (K,) float64 confidences in [0, 1] (comparable within one detector only).
        sources: K short strings naming what found each box (e.g. ``"frontal"``, ``"profile"``).
    """

    boxes: np.ndarray
    scores: np.ndarray
    sources: list = field(default_factory=list)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if len(self.scores) != len(self.boxes):
            raise InputError(f"Detections: {len(self.boxes)} boxes but {len(self.scores)} scores")
        if not self.sources:
            self.sources = ["given"] * len(self.boxes)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, idx) -> "Detections":
        idx = np.atleast_1d(np.arange(len(self))[idx])
        return Detections(self.boxes[idx], self.scores[idx], [self.sources[i] for i in idx])

    def crop_boxes(self, enlarge: float = math.sqrt(2.0)) -> list[CropBox]:
        """The standard crop box of every face: the square of side ``enlarge * max(w, h)`` on the
        box centre, rounded, never clipped (the rule of :func:`morphable.crop.box_from_landmarks`
        applied to a landmark-like box)."""
        out = []
        for x0, y0, x1, y1 in self.boxes:
            c = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
            side = max(max(x1 - x0, y1 - y0) * enlarge, 4.0)
            out.append(CropBox(int(round(c[0] - side / 2.0)), int(round(c[1] - side / 2.0)), int(round(side))))
        return out


@runtime_checkable
class Detector(Protocol):
    """Anything with ``detect(image (H, W, 3) uint8 RGB) -> Detections``."""

    def detect(self, image: np.ndarray) -> Detections:  # pragma: no cover - protocol
        ...


# --------------------------------------------------------------------------- box helpers
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (A, B) of boxes a (A, 4) and b (B, 4), ``[x0, y0, x1, y1]``."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def _ios(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over the smaller box's area (A, B): catches a box nested inside another."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(np.minimum(area(a)[:, None], area(b)[None, :]), 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.3, containment: float = 0.7) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first.

    A box is dropped if it overlaps a kept one by IoU > ``iou`` or lies mostly inside it
    (intersection over the smaller area > ``containment``).
    """
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    keep: list[int] = []
    for i in order:
        if keep:
            k = np.array(keep)
            if (box_iou(boxes[i:i + 1], boxes[k]) > iou).any() or (_ios(boxes[i:i + 1], boxes[k]) > containment).any():
                continue
        keep.append(int(i))
    return np.array(keep, dtype=np.int64)


def _order(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Best-first order: by score x sqrt(area) (big, confident faces first; ties by position)."""
    if not len(boxes):
        return np.zeros(0, np.int64)
    side = np.sqrt(np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0, None))
    return np.lexsort((boxes[:, 1], boxes[:, 0], -(scores * side)))


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise InputError(f"detect: need an (H, W, 3) uint8 RGB image, got {type(image).__name__} {shape}; "
                         "load it with fitting.images.load_image")
    return image


# --------------------------------------------------------------------------- OpenCV Haar
#: Raw Haar rectangle -> 68-landmark bounding box, per cascade: (dx, dy, sw, sh) meaning centre
#: shift (dx * w, dy * h) and size (sw * w, sh * h). ``dx`` is for the profile cascade's own
#: orientation and is negated on the mirror image. Medians over 1,200 ytf68/train frames (the
#: Haar box sits ~17 % of its height above the landmark box and is ~7 % larger).
_CALIB = {
    "frontal": (0.0, 0.172, 0.94, 0.91),
    "profile": (-0.105, 0.178, 0.905, 0.875),
}


class OpenCVDetector:
    """OpenCV Haar cascades: frontal (alt2) + profile on the image and its mirror, merged by NMS.

    Args:
        min_face: smallest face to find, as a fraction of the image's shorter side (the
            landmark-box width); never below ``min_face_px`` pixels.
        min_face_px: absolute floor of the smallest face, pixels.
        scale_factor: pyramid step of ``detectMultiScale``.
        min_neighbors: raw detections a face needs (frontal, profile); higher = fewer false alarms.
        profile: also run the profile cascade (both sides).
        fallback_rotations: in-plane angles (degrees) tried, with ``fallback_min_neighbors``, only
            when the upright pass finds nothing (tilted heads); ``()`` disables the fallback.
        max_faces: keep at most this many faces (None: all).

    The image is downscaled so that the smallest wanted face is about 24 pixels for the cascade
    (window 20 x 20): the cost stays ~0.1-0.2 s per image on this class of CPU whatever the
    photo's resolution (more when the fallback runs).
    """

    def __init__(self, min_face: float = 0.1, min_face_px: int = 24, scale_factor: float = 1.1,
                 min_neighbors: Sequence[int] = (4, 5), profile: bool = True,
                 fallback_rotations: Sequence[float] = (-30.0, 30.0), fallback_min_neighbors: Sequence[int] = (3, 3),
                 max_faces: Optional[int] = None, equalize: bool = True, nms_iou: float = 0.3):
        self.min_face = float(min_face)
        self.min_face_px = int(min_face_px)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = tuple(int(n) for n in min_neighbors)
        self.profile = bool(profile)
        self.fallback_rotations = tuple(float(a) for a in fallback_rotations)
        self.fallback_min_neighbors = tuple(int(n) for n in fallback_min_neighbors)
        self.max_faces = max_faces
        self.equalize = bool(equalize)
        self.nms_iou = float(nms_iou)
        self._frontal = _cascade("haarcascade_frontalface_alt2.xml")
        self._profile = _cascade("haarcascade_profileface.xml") if profile else None

    def _prepare(self, image: np.ndarray):
        image = _check_image(image)
        H, W = image.shape[:2]
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        min_face = max(self.min_face * min(H, W), float(self.min_face_px))
        f = min(1.0, 24.0 / min_face)
        if f < 1.0:
            grey = cv2.resize(grey, (max(1, round(W * f)), max(1, round(H * f))), interpolation=cv2.INTER_AREA)
        if self.equalize:
            grey = cv2.equalizeHist(grey)
        ms = int(max(20, round(min_face * f * 0.8)))  # Haar boxes are ~0.9x the landmark box
        return grey, (W / grey.shape[1], H / grey.shape[0]), ms

    def _pass(self, grey: np.ndarray, ms: int, angle: float, min_neighbors: Sequence[int]):
        """One pass of every cascade on ``grey`` rotated by ``angle`` degrees (counter-clockwise
        on screen); boxes in the (unrotated) working image."""
        Hg, Wg = grey.shape
        A = None
        if angle:
            c = (Wg / 2.0, Hg / 2.0)
            A = cv2.getRotationMatrix2D(c, angle, 1.0)
            cos, sin = abs(A[0, 0]), abs(A[0, 1])
            Wr, Hr = int(math.ceil(Wg * cos + Hg * sin)), int(math.ceil(Wg * sin + Hg * cos))
            A[:, 2] += ((Wr - Wg) / 2.0, (Hr - Hg) / 2.0)
            grey = cv2.warpAffine(grey, A, (Wr, Hr), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            Ainv = cv2.invertAffineTransform(A)
        jobs = [("frontal", self._frontal, False, min_neighbors[0])]
        if self._profile is not None:
            jobs += [("profile", self._profile, False, min_neighbors[1]),
                     ("profile", self._profile, True, min_neighbors[1])]
        out = []
        W = grey.shape[1]
        for name, casc, mirror, mn in jobs:
            g = np.ascontiguousarray(grey[:, ::-1]) if mirror else grey
            rects, counts = casc.detectMultiScale2(g, scaleFactor=self.scale_factor, minNeighbors=mn, minSize=(ms, ms))
            for (x, y, w, h), n in zip(np.asarray(rects, dtype=float).reshape(-1, 4), np.asarray(counts).reshape(-1)):
                if mirror:
                    x = W - x - w
                if A is not None:
                    # the face box is upright in the rotated frame: map its centre back and
                    # keep its size (an axis-aligned approximation of the rotated square)
                    cx, cy = Ainv @ np.array([x + w / 2.0, y + h / 2.0, 1.0])
                    x, y = cx - w / 2.0, cy - h / 2.0
                out.append((x, y, x + w, y + h, int(n), name, mirror, angle))
        return out

    def raw(self, image: np.ndarray):
        """Un-merged, un-calibrated detections in image pixels:
        list of (x0, y0, x1, y1, neighbours, cascade, mirrored, angle).

        The upright pass keeps detections with at least ``min_neighbors``; if there are none it
        settles for ``fallback_min_neighbors`` (same pass, no extra cost), and if there are still
        none it tries the ``fallback_rotations``.
        """
        grey, (fx, fy), ms = self._prepare(image)
        strict, relaxed = self.min_neighbors, self.fallback_min_neighbors
        lowest = tuple(min(a, b) for a, b in zip(strict, relaxed))
        allp = self._pass(grey, ms, 0.0, lowest)
        thr = lambda d, t: d[4] >= (t[0] if d[5] == "frontal" else t[1])  # noqa: E731
        out = [d for d in allp if thr(d, strict)] or [d for d in allp if thr(d, relaxed)]
        if not out:
            for a in self.fallback_rotations:
                out += self._pass(grey, ms, a, relaxed)
        return [(x0 * fx, y0 * fy, x1 * fx, y1 * fy, n, nm, mir, a) for x0, y0, x1, y1, n, nm, mir, a in out]

    def detect(self, image: np.ndarray) -> Detections:
        raw = self.raw(image)
        if not raw:
            return Detections(np.zeros((0, 4)), np.zeros(0), [])
        boxes, scores, sources = [], [], []
        for x0, y0, x1, y1, n, name, mirror, angle in raw:
            boxes.append(_calibrate((x0, y0, x1, y1), name, mirror, angle))
            # profile and rotated detections are less reliable than upright frontal ones
            w = (1.0 if name == "frontal" else 0.85) * (1.0 if angle == 0 else 0.8)
            scores.append((1.0 - math.exp(-n / 12.0)) * w)
            sources.append(name + ("-mirror" if mirror else "") + (f"@{angle:g}" if angle else ""))
        boxes, scores = np.array(boxes), np.array(scores)
        keep = nms(boxes, scores, self.nms_iou)
        boxes, scores = boxes[keep], scores[keep]
        sources = [sources[i] for i in keep]
        order = _order(boxes, scores)
        if self.max_faces is not None:
            order = order[: self.max_faces]
        return Detections(boxes[order], scores[order], [sources[i] for i in order])


def _apply_calib(box, calib):
    """Raw detector box -> 68-landmark box with ``calib`` = (dx, dy, sw, sh) (see ``_CALIB``)."""
    x0, y0, x1, y1 = box
    dx, dy, sw, sh = calib
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2 + dx * w, (y0 + y1) / 2 + dy * h
    return (cx - sw * w / 2, cy - sh * h / 2, cx + sw * w / 2, cy + sh * h / 2)


def _calibrate(box, name: str, mirror: bool, angle: float = 0.0):
    x0, y0, x1, y1 = box
    dx, dy, sw, sh = _CALIB[name]
    if mirror:
        dx = -dx
    w, h = x1 - x0, y1 - y0
    ox, oy = dx * w, dy * h
    if angle:  # the shift is in the face's own (rotated) frame; cv2 angles are counter-clockwise
        a = math.radians(angle)
        ox, oy = ox * math.cos(a) + oy * math.sin(a), -ox * math.sin(a) + oy * math.cos(a)
    cx, cy = (x0 + x1) / 2 + ox, (y0 + y1) / 2 + oy
    return (cx - sw * w / 2, cy - sh * h / 2, cx + sw * w / 2, cy + sh * h / 2)


_CASCADES: dict = {}


def _cascade(fname: str) -> "cv2.CascadeClassifier":
    if fname not in _CASCADES:
        base = getattr(getattr(cv2, "data", None), "haarcascades", "")
        c = cv2.CascadeClassifier(base + fname) if base else None
        if c is None or c.empty():
            raise MorphableError(f"OpenCV Haar cascade {fname} not found (cv2.data.haarcascades={base!r}); "
                                 "install opencv-python-headless<5 (OpenCV 5 wheels ship no cascades) "
                                 "or pass your own boxes with BoxesDetector")
        _CASCADES[fname] = c
    return _CASCADES[fname]


# --------------------------------------------------------------------------- given boxes
class BoxesDetector:
    """Boxes the caller already has: ``(K, 4)`` ``[x0, y0, x1, y1]`` pixels (ideally the
    68-landmark bounding box, see the module docstring), returned as they are for every image.

    Args:
        boxes: (K, 4) or (4,) boxes.
        scores: optional (K,) scores (default 1).
        fmt: ``"xyxy"`` (default) or ``"xywh"`` (``[x, y, w, h]``).
    """

    def __init__(self, boxes, scores=None, fmt: str = "xyxy"):
        b = np.asarray(boxes, dtype=np.float64)
        if b.size == 0:
            b = b.reshape(0, 4)
        if b.ndim == 1:
            b = b[None]
        if b.ndim != 2 or b.shape[1] != 4:
            raise InputError(f"boxes must be (K, 4) [x0, y0, x1, y1], got shape {b.shape}")
        if not np.isfinite(b).all():
            raise InputError("boxes contain NaN or inf; give finite pixel coordinates")
        if fmt == "xywh":
            b = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1)
        elif fmt != "xyxy":
            raise InputError(f"box format must be 'xyxy' or 'xywh', got {fmt!r}")
        if (b[:, 2] <= b[:, 0]).any() or (b[:, 3] <= b[:, 1]).any():
            raise InputError("every box needs x1 > x0 and y1 > y0 ([x0, y0, x1, y1]); use fmt='xywh' for [x, y, w, h]")
        s = np.ones(len(b)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(s) != len(b):
            raise InputError(f"{len(b)} boxes but {len(s)} scores")
        self.boxes, self.scores = b, s

    def detect(self, image: np.ndarray) -> Detections:
        return Detections(self.boxes.copy(), self.scores.copy(), ["given"] * len(self.boxes))


# --------------------------------------------------------------------------- dlib MMOD CNN
#: The vendored model file (public domain, see fitting/models/README.md).
MMOD_MODEL = Path(__file__).resolve().parent / "models" / "mmod_human_face_detector.dat"
#: Raw MMOD rectangle -> 68-landmark bounding box, (dx, dy, sw, sh) as for ``_CALIB``: medians over
#: 300 ytf68/test frames (dy 0.153, sw 1.012, sh 1.007; dx 0.052 measured, set to 0 because the
#: detector and the faces are mirror-symmetric on average and the pipeline re-crops anyway).
MMOD_CALIB = (0.0, 0.153, 1.012, 1.007)
#: The same for the torch backend (:mod:`fitting.mmod`): on the first 300 ytf68 test frames its raw
#: boxes gave medians (dx 0.047, dy 0.155, sw 1.074, sh 1.008) where dlib's gave (0.066, 0.167,
#: 1.012, 1.007); the dlib calibration shifted by those differences.
MMOD_CALIB_TORCH = (0.0, 0.141, 1.074, 1.008)
_MMOD_WINDOW = 80  # px: the smallest face the model finds without upsampling


def dlib_detector_available() -> bool:
    """True if ``dlib`` imports (``dlib-bin``, a dependency of morphable)."""
    try:
        import dlib  # noqa: F401

        return hasattr(dlib, "cnn_face_detection_model_v1")
    except Exception:  # noqa: BLE001 - any import failure means unavailable
        return False


class DlibCNNDetector:
    """dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``, shipped with morphable).

    Unlike the Haar cascades it finds profile faces: on the 300 AFLW2000-3D dev images the best
    box overlapped the landmark box (IoU >= 0.5) on 98.0 % of the faces and 95.7 % of those beyond
    60 degrees of yaw with the torch backend (84 ms per image on one core), 98.7 % and 95.7 % with
    dlib itself (728 ms), against 28 % of the profiles for the Haar cascades (``benchmarks.detectors``).

    Args:
        min_face: smallest face to find, as a fraction of the image's shorter side. The image is
            resized so that this size is the model's 80 px window (the cost grows with the square
            of 1 / ``min_face``).
        threshold: minimum detection confidence (dlib's own margin; 0 is its default cut).
        max_faces: keep at most this many faces (None: all).
        model_path: another MMOD ``.dat`` file.
        nms_iou: a second suppression of the calibrated boxes (after the model's own).
        backend: ``"torch"`` (default: the same network run by :mod:`fitting.mmod`, about 9x
            faster than the pip build of dlib on this project's CPU) or ``"dlib"`` (dlib itself).
    """

    def __init__(self, min_face: float = 0.25, threshold: float = 0.0, max_faces: Optional[int] = None,
                 model_path: Optional[str] = None, nms_iou: float = 0.3, backend: str = "torch"):
        if not 0.0 < float(min_face) <= 1.0:
            raise InputError(f"DlibCNNDetector: min_face must be in (0, 1] (a fraction of the image side), got {min_face}")
        if backend not in ("torch", "dlib"):
            raise InputError(f"DlibCNNDetector: backend must be 'torch' or 'dlib', got {backend!r}")
        path = Path(model_path) if model_path else MMOD_MODEL
        if not path.is_file():
            raise MorphableError(f"MMOD model file {path} not found; reinstall morphable or pass model_path=")
        self.backend = backend
        if backend == "dlib":
            if not dlib_detector_available():
                raise MorphableError("DlibCNNDetector(backend='dlib') needs dlib: pip install dlib-bin "
                                     "(or use the default backend='torch')")
            import dlib

            self._net = dlib.cnn_face_detection_model_v1(str(path))
        else:
            from fitting.mmod import load_mmod

            self._net = load_mmod(path)
        self.min_face = float(min_face)
        self.threshold = float(threshold)
        self.max_faces = max_faces
        self.nms_iou = float(nms_iou)

    def min_face_px(self, image: np.ndarray) -> float:
        """The smallest face (px of ``image``) this detector can find in it."""
        return self.min_face * min(image.shape[:2])

    def raw(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model's own detections before calibration: boxes (N, 4) xyxy px of ``image``
        (dlib's window, right/bottom exclusive) and dlib's margins (N,), best first."""
        image = _check_image(image)
        H, W = image.shape[:2]
        f = _MMOD_WINDOW / self.min_face_px(image)
        small = np.ascontiguousarray(cv2.resize(image, (max(1, round(W * f)), max(1, round(H * f))),
                                                interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR))
        fx, fy = W / small.shape[1], H / small.shape[0]
        if self.backend == "dlib":
            dets = [d for d in self._net(small, 0) if d.confidence >= self.threshold]
            boxes = np.array([[d.rect.left(), d.rect.top(), d.rect.right() + 1, d.rect.bottom() + 1] for d in dets],
                             float).reshape(-1, 4)
            margins = np.array([d.confidence for d in dets], float)
        else:
            boxes, margins = self._net.windows(small, self.threshold)
            keep = nms(boxes, margins, self._net.nms_iou, containment=1.01)  # dlib's rule: IoU only
            boxes, margins = boxes[keep], margins[keep]
        return boxes * np.array([fx, fy, fx, fy]), margins

    def detect(self, image: np.ndarray) -> Detections:
        raw, margins = self.raw(image)
        if not len(raw):
            return Detections(np.zeros((0, 4)), np.zeros(0), [])
        calib = MMOD_CALIB if self.backend == "dlib" else MMOD_CALIB_TORCH
        boxes = np.array([_apply_calib(tuple(b), calib) for b in raw])
        scores = 1.0 / (1.0 + np.exp(-2.0 * margins))  # dlib's margin -> (0, 1)
        keep = nms(boxes, scores, self.nms_iou)
        boxes, scores = boxes[keep], scores[keep]
        order = _order(boxes, scores)
        if self.max_faces is not None:
            order = order[: self.max_faces]
        return Detections(boxes[order], scores[order], ["mmod"] * len(order))


class CombinedDetector:
    """A primary detector plus a complement for the faces it cannot see.

    The primary's faces come first (in its order); the complement's faces are added after them
    only if they overlap none of the primary's, are smaller than ``primary.min_face_px(image)``
    times ``margin`` and score at least ``min_score`` (e.g. the Haar cascades for faces too small
    for the MMOD detector's working size: a large or weak Haar box the MMOD detector did not
    confirm is more likely a false alarm).
    """

    def __init__(self, primary, complement, margin: float = 1.25, min_score: float = 0.5,
                 max_faces: Optional[int] = None):
        self.primary, self.complement = primary, complement
        self.margin = float(margin)
        self.min_score = float(min_score)
        self.max_faces = max_faces

    def detect(self, image: np.ndarray) -> Detections:
        a = self.primary.detect(image)
        limit = self.primary.min_face_px(image) * self.margin if hasattr(self.primary, "min_face_px") else math.inf
        b = self.complement.detect(image)
        extra = []
        for i in range(len(b)):
            bb = b.boxes[i:i + 1]
            side = math.sqrt(max(float((bb[0, 2] - bb[0, 0]) * (bb[0, 3] - bb[0, 1])), 0.0))
            if side >= limit or b.scores[i] < self.min_score:
                continue
            if len(a) and ((box_iou(bb, a.boxes) > 0.2).any() or (_ios(bb, a.boxes) > 0.5).any()):
                continue
            extra.append(i)
        boxes = np.concatenate([a.boxes, b.boxes[extra]]) if extra else a.boxes
        scores = np.concatenate([a.scores, b.scores[extra]]) if extra else a.scores
        sources = list(a.sources) + [b.sources[i] for i in extra]
        if self.max_faces is not None:
            boxes, scores, sources = boxes[: self.max_faces], scores[: self.max_faces], sources[: self.max_faces]
        return Detections(boxes, scores, sources)


# --------------------------------------------------------------------------- BlazeFace (default)
#: BlazeFace box -> 68-landmark bounding box, per model: ``(dx, dy, sw, sh, gx, gy)``. The centre
#: moves by ``(dx * w, dy * h)`` plus ``(gx, gy)`` times the nose tip's offset from the box centre
#: (the full-range box drifts toward the nose on turned heads); the size is ``(sw * w, sh * h)``.
#: Fitted on the 300-W training photos (AFW, HELEN and LFPW train, 2,007 faces, never AFLW2000-3D):
#: medians of the size ratios, least squares for the centre (``python -m benchmarks.detector_calibration``).
BLAZEFACE_CALIB = {
    "short": (0.0, 0.045, 0.938, 0.921, 0.056, 0.368),  # median IoU with the landmark box 0.806 -> 0.875
    "full": (0.017, 0.075, 0.882, 0.865, -0.825, 0.259),  # 0.682 -> 0.845
}
#: Smallest face (68-landmark box width, fraction of the image's longer side) one whole-image pass
#: finds reliably: short range 100 %, full range 98 % of 40 HELEN-train faces pasted at that size
#: into 1280 x 720 frames (at 0.10: short 2 %, full 75 %).
BLAZEFACE_FLOOR = {"short": 0.20, "full": 0.16}


def _blazeface_calibrate(out, name: str) -> np.ndarray:
    """Calibrated 68-landmark boxes (K, 4) of a :class:`fitting.blazeface.BlazeFaceOutput`."""
    dx, dy, sw, sh, gx, gy = BLAZEFACE_CALIB[name]
    b = out.boxes
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    c = (b[:, :2] + b[:, 2:]) / 2.0
    nose = out.keypoints[:, 2] + 0.5  # pixel centre -> the boxes' edge frame
    cx = c[:, 0] + dx * w + gx * (nose[:, 0] - c[:, 0])
    cy = c[:, 1] + dy * h + gy * (nose[:, 1] - c[:, 1])
    return np.stack([cx - sw * w / 2, cy - sh * h / 2, cx + sw * w / 2, cy + sh * h / 2], 1)


def _tiles(W: int, H: int, side: float) -> list[tuple[int, int, int, int]]:
    """Square windows ``(x0, y0, x1, y1)`` of ``side`` px every ``side / 2`` px covering a W x H image
    (clipped to it; the last row/column flush with the far edge)."""
    side = int(math.ceil(side))
    step = max(1, side // 2)
    xs = list(range(0, max(W - side, 0) + 1, step))
    ys = list(range(0, max(H - side, 0) + 1, step))
    if xs[-1] + side < W:
        xs.append(W - side)
    if ys[-1] + side < H:
        ys.append(H - side)
    return [(x, y, min(x + side, W), min(y + side, H)) for y in ys for x in xs]


class BlazeFaceDetector:
    """MediaPipe's BlazeFace (:mod:`fitting.blazeface`), the default detector: a few ms per photo.

    The short-range model runs on the whole image (letterboxed to 128 x 128); the full-range model
    (192 x 192) runs too when the short one finds nothing or when ``min_face`` asks for faces
    smaller than the short one's floor (:data:`BLAZEFACE_FLOOR`), and on overlapping square tiles
    when ``min_face`` is below the full-range floor as well (tiles of ``min_face`` / floor, every
    half tile, doubling in size up to the whole image). Boxes are calibrated to the 68-landmark
    box (:data:`BLAZEFACE_CALIB`); boxes of a later pass overlapping an earlier one are dropped.

    Args:
        min_face: smallest face to find, as a fraction of the image's shorter side (the
            68-landmark box's larger side); smaller faces are dropped. None: whatever one pass
            finds (faces of about 20 % of the longer side and up; 14 % when the full-range pass runs).
        threshold: minimum BlazeFace score (MediaPipe's default 0.5).
        max_faces: keep at most this many faces (None: all).
        max_tiles: at most this many tiles per image (the tiles grow to stay within it).
    """

    def __init__(self, min_face: Optional[float] = None, threshold: float = 0.5, max_faces: Optional[int] = None,
                 max_tiles: int = 64):
        from fitting.blazeface import BlazeFace

        if min_face is not None and not 0.0 < float(min_face) <= 1.0:
            raise InputError(f"BlazeFaceDetector: min_face must be in (0, 1] (a fraction of the image side), got {min_face}")
        self.min_face = None if min_face is None else float(min_face)
        self.max_faces = max_faces
        self.max_tiles = int(max_tiles)
        self._nets = {k: BlazeFace(k, threshold=threshold) for k in ("short", "full")}

    def min_face_px(self, image: np.ndarray) -> float:
        """The smallest face (px of ``image``, 68-landmark box side) this detector looks for."""
        L = max(image.shape[:2])
        return self.min_face * min(image.shape[:2]) if self.min_face is not None else BLAZEFACE_FLOOR["short"] * L

    def _passes(self, image: np.ndarray):
        """(name, boxes (K, 4) calibrated, scores (K,)) of every pass, short range first."""
        H, W = image.shape[:2]
        L = max(H, W)
        small = self.min_face * min(H, W) if self.min_face is not None else None
        out = [("short", self._nets["short"](image))]
        if len(out[0][1]) and (small is None or small >= BLAZEFACE_FLOOR["short"] * L):
            return [(n, _blazeface_calibrate(o, n), o.scores) for n, o in out]
        out.append(("full", self._nets["full"](image)))
        res = [(n, _blazeface_calibrate(o, n), o.scores) for n, o in out]
        if small is not None and small < BLAZEFACE_FLOOR["full"] * L:
            side = small / BLAZEFACE_FLOOR["full"]
            while side < L:
                tiles = _tiles(W, H, side)
                while len(tiles) > self.max_tiles:
                    side *= 1.25
                    tiles = _tiles(W, H, side)
                for x0, y0, x1, y1 in tiles:
                    o = self._nets["full"](np.ascontiguousarray(image[y0:y1, x0:x1]))
                    if len(o):
                        o.boxes += (x0, y0, x0, y0)
                        o.keypoints += (x0, y0)
                        res.append(("full", _blazeface_calibrate(o, "full"), o.scores))
                side *= 2
        return res

    def detect(self, image: np.ndarray) -> Detections:
        image = _check_image(image)
        boxes, scores, sources = np.zeros((0, 4)), np.zeros(0), []
        for name, b, sc in self._passes(image):
            for i in range(len(b)):
                bb = b[i:i + 1]
                if len(boxes) and ((box_iou(bb, boxes) > 0.3).any() or (_ios(bb, boxes) > 0.5).any()):
                    continue
                boxes, scores = np.concatenate([boxes, bb]), np.append(scores, sc[i])
                sources.append("blazeface-" + name)
        if self.min_face is not None and len(boxes):
            keep = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= self.min_face * min(image.shape[:2])
            boxes, scores, sources = boxes[keep], scores[keep], [s for s, k in zip(sources, keep) if k]
        order = _order(boxes, scores)
        if self.max_faces is not None:
            order = order[: self.max_faces]
        return Detections(boxes[order], scores[order], [sources[i] for i in order])


class FallbackDetector:
    """A fast detector, and a slower one for the images where the fast one finds nothing.

    ``detect`` returns the primary's faces when it finds any, else the fallback's (e.g.
    :class:`BlazeFaceDetector` first, then MMOD + Haar for the rare photo BlazeFace misses: the
    cost of MMOD is paid only there).
    """

    def __init__(self, primary, fallback, max_faces: Optional[int] = None):
        self.primary, self.fallback = primary, fallback
        self.max_faces = max_faces

    def min_face_px(self, image: np.ndarray) -> float:
        return min(getattr(d, "min_face_px", lambda im: math.inf)(image) for d in (self.primary, self.fallback))

    def detect(self, image: np.ndarray) -> Detections:
        d = self.primary.detect(image)
        if not len(d):
            d = self.fallback.detect(image)
        return d[: self.max_faces] if self.max_faces is not None and len(d) > self.max_faces else d


# --------------------------------------------------------------------------- mediapipe
def mediapipe_available() -> bool:
    """True if ``mediapipe`` with the legacy ``solutions.face_detection`` (<= 0.10.21) imports."""
    try:
        import mediapipe as mp  # noqa: F401

        return hasattr(mp, "solutions") and hasattr(mp.solutions, "face_detection")
    except Exception:
        return False


class MediapipeDetector:
    """mediapipe BlazeFace full-range detector (optional; needs ``mediapipe==0.10.21``).

    mediapipe's box spans roughly brows-to-chin like the 68-landmark box; it is used as is.
    """

    def __init__(self, min_confidence: float = 0.5, max_faces: Optional[int] = None):
        if not mediapipe_available():
            raise MorphableError("MediapipeDetector needs mediapipe==0.10.21 (later versions dropped "
                                 "mp.solutions): pip install mediapipe==0.10.21, or use OpenCVDetector")
        import mediapipe as mp

        self._fd = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=min_confidence)
        self.max_faces = max_faces

    def detect(self, image: np.ndarray) -> Detections:
        image = _check_image(image)
        H, W = image.shape[:2]
        res = self._fd.process(image)
        boxes, scores = [], []
        for d in res.detections or []:
            r = d.location_data.relative_bounding_box
            boxes.append((r.xmin * W, r.ymin * H, (r.xmin + r.width) * W, (r.ymin + r.height) * H))
            scores.append(float(d.score[0]) if d.score else 0.0)
        if not boxes:
            return Detections(np.zeros((0, 4)), np.zeros(0), [])
        boxes, scores = np.array(boxes), np.array(scores)
        order = _order(boxes, scores)
        if self.max_faces is not None:
            order = order[: self.max_faces]
        return Detections(boxes[order], scores[order], ["mediapipe"] * len(order))


#: Names accepted by :func:`make_detector` (and ``morphable fit --detector``).
DETECTORS = ("auto", "blazeface", "mmod", "mmod-dlib", "haar", "mediapipe")


def make_detector(name: str = "auto", max_faces: Optional[int] = None, min_face: Optional[float] = None) -> Detector:
    """A detector by name.

    * ``"auto"`` (default): :class:`BlazeFaceDetector` (a few ms), and for the photos where it finds
      nothing the MMOD CNN (profiles included) with the Haar cascades for faces below its minimum
      size (:class:`FallbackDetector` of the two).
    * ``"blazeface"``: :class:`BlazeFaceDetector` only. ``"mmod"``: :class:`DlibCNNDetector` only
      (run by torch). ``"mmod-dlib"``: the same model run by dlib itself (slower; needs dlib).
      ``"haar"``: :class:`OpenCVDetector` (frontal and half-profile faces of any size down to
      ``min_face``; weak on profiles). ``"mediapipe"``: :class:`MediapipeDetector` (needs
      mediapipe==0.10.21).

    ``min_face`` (fraction of the shorter image side) goes to BlazeFace and to the MMOD detector
    (None: their defaults).
    """
    mk = {} if min_face is None else {"min_face": min_face}
    if name == "auto":
        return FallbackDetector(BlazeFaceDetector(max_faces=max_faces, **mk),
                                CombinedDetector(DlibCNNDetector(**mk), OpenCVDetector()), max_faces=max_faces)
    if name == "blazeface":
        return BlazeFaceDetector(max_faces=max_faces, **mk)
    if name == "mmod":
        return DlibCNNDetector(max_faces=max_faces, **mk)
    if name == "mmod-dlib":
        return DlibCNNDetector(max_faces=max_faces, backend="dlib", **mk)
    if name == "haar":
        return OpenCVDetector(max_faces=max_faces)
    if name == "mediapipe":
        return MediapipeDetector(max_faces=max_faces)
    raise InputError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")


def default_detector() -> Detector:
    """The detector ``fit`` uses when none is given: ``make_detector("auto")``."""
    return make_detector("auto")
