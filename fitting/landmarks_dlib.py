"""68 iBUG landmarks from dlib's shape predictor (optional extra: ``pip install -e ".[dlib]"``).

The predictor is dlib's ``shape_predictor_68_face_landmarks.dat`` (an ensemble of regression
trees, Kazemi & Sullivan 2014) shipped in the ``face-recognition-models`` sdist; ``dlib-bin``
provides the ``dlib`` module. Both work offline. **Licence**: the 68-point model was trained on
iBUG 300-W, whose licence excludes commercial use (NOTES §5); the package's CC0/MIT labels do
not cover it.

The points are 2D, 300-W style: the jaw (0-16) follows the visible silhouette, so fit them with
``FitOptions(contour="2d")``. Coordinates are image pixels, 0-based, pixel centres on integers.

The predictor starts from a mean shape placed in a face rectangle and is sensitive to how that
rectangle sits on the face: it was trained on dlib's HOG detector boxes. :func:`box_from_landmarks`
turns rough 68 landmarks (e.g. the regressor's) into such a rectangle; the loose, sqrt(2)-enlarged
crop box of :mod:`morphable.crop` is *not* one (measured on ``faces68``: 4-39 % NME with the
crop box versus 1-4 % with :func:`box_from_landmarks`).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

import numpy as np

from morphable.errors import InputError, MorphableError

__all__ = ["DlibLandmarks", "box_from_landmarks", "dlib_available", "predictor_path", "INSTALL_HINT"]

INSTALL_HINT = 'pip install -e ".[dlib]"  (dlib-bin + face-recognition-models, ~100 MB; non-commercial 68-point model)'

#: dlib HOG-detector rectangle relative to the bounding box of the 68 iBUG points minus the jaw
#: (points 17-67: brows, nose, eyes, mouth), in units of that box's longer side ``s``: the square's
#: centre is the box centre shifted by (dx, dy) * s, its side ``k * s``. Medians over the 3,340
#: ytf68/train frames where ``dlib.get_frontal_face_detector()`` (upsample 1) found the face:
#: dx -0.02, dy +0.01, k 1.34 (the spread of the detector's own boxes is about 0.065 s in position
#: and 10 % in size). Inner points are used because the jaw points move with yaw and with the
#: landmark style (2D silhouette vs 3D contour); the inner-box centre is close to the detector's.
BOX_CALIB = (0.0, 0.0, 1.34)

_ENV = "MORPHABLE_DLIB_PREDICTOR"
_MODEL_FILE = "shape_predictor_68_face_landmarks.dat"


def dlib_available() -> bool:
    """True if the ``dlib`` module and the 68-point model file can both be found."""
    if importlib.util.find_spec("dlib") is None:
        return False
    try:
        predictor_path()
    except MorphableError:
        return False
    return True


def predictor_path() -> Path:
    """Path of ``shape_predictor_68_face_landmarks.dat``: ``$MORPHABLE_DLIB_PREDICTOR`` if set, else
    the copy inside the installed ``face_recognition_models`` package.

    The package is located without importing it: ``face_recognition_models/__init__.py`` imports
    ``pkg_resources``, which setuptools >= 81 no longer ships (``pose_predictor_model_location()``
    then fails with ModuleNotFoundError although the file is there).

    Raises:
        MorphableError: the file cannot be found (with the install command).
    """
    env = os.environ.get(_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise MorphableError(f"${_ENV} = {env} is not a file")
        return p
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None:
        for root in spec.submodule_search_locations or []:
            p = Path(root) / "models" / _MODEL_FILE
            if p.is_file():
                return p
        try:  # a layout we do not know: ask the package itself
            import face_recognition_models  # type: ignore

            p = Path(face_recognition_models.pose_predictor_model_location())
            if p.is_file():
                return p
        except Exception:  # noqa: BLE001 - any failure means "not found" here
            pass
    raise MorphableError(f"dlib's 68-point landmark model ({_MODEL_FILE}) was not found; install it with "
                         f"{INSTALL_HINT}, or set ${_ENV} to the .dat file")


def box_from_landmarks(points: np.ndarray) -> np.ndarray:
    """dlib-detector-like face rectangles from rough 68 iBUG landmarks.

    Args:
        points: (68, 2) or (K, 68, 2) image px (any 68-point estimate: a regressor's landmark head,
            a previous prediction, annotations). Jaw points are ignored; NaN rows are ignored.

    Returns:
        (4,) or (K, 4) float ``[x0, y0, x1, y1]`` (exclusive ends), the input of
        :meth:`DlibLandmarks.predict`.
    """
    P = np.asarray(points, dtype=np.float64)
    single = P.ndim == 2
    P = P.reshape(-1, 68, 2)[:, 17:]
    if not np.isfinite(P).any(-1).any(-1).all():
        raise InputError("box_from_landmarks: a face has no finite landmark among points 17-67")
    lo, hi = np.nanmin(P, 1), np.nanmax(P, 1)
    s = np.maximum((hi - lo).max(-1), 2.0)
    dx, dy, k = BOX_CALIB
    c = (lo + hi) / 2.0 + np.stack([dx * s, dy * s], -1)
    half = (k * s / 2.0)[:, None]
    out = np.concatenate([c - half, c + half], -1)
    return out[0] if single else out


class DlibLandmarks:
    """dlib's 68-point shape predictor, loaded on first use.

    Args:
        model_path: the ``.dat`` file (default :func:`predictor_path`).

    Example::

        lm = DlibLandmarks()
        pts = lm.predict(image, boxes)            # boxes from dlib's detector or box_from_landmarks
        pts = lm.predict_from_landmarks(image, rough_points)
    """

    def __init__(self, model_path: Optional[str] = None):
        self.model_path = model_path
        self._predictor = None

    def load(self) -> "DlibLandmarks":
        """Load the model now (raises :class:`MorphableError` naming the install command if absent)."""
        if self._predictor is None:
            try:
                import dlib  # type: ignore
            except ImportError as e:
                raise MorphableError(f"dlib landmarks need the 'dlib' module ({e}); install with {INSTALL_HINT}") from e
            path = Path(self.model_path) if self.model_path else predictor_path()
            if not path.is_file():
                raise MorphableError(f"dlib landmark model {path} does not exist; install with {INSTALL_HINT}")
            self._dlib = dlib
            self._predictor = dlib.shape_predictor(str(path))
        return self

    def predict(self, image: np.ndarray, boxes) -> np.ndarray:
        """68 landmarks per face box.

        Args:
            image: (H, W, 3) uint8 RGB (the full image; boxes may extend beyond it).
            boxes: (K, 4) ``[x0, y0, x1, y1]`` image px, exclusive ends: face rectangles in the
                convention of dlib's HOG detector (see :func:`box_from_landmarks`).

        Returns:
            (K, 68, 2) float64 image px, 0-based, iBUG-68 order (2D jaw).

        Raises:
            InputError: wrong image type/shape or bad boxes.
            MorphableError: dlib or the model is not installed.
        """
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"DlibLandmarks.predict: need an (H, W, 3) uint8 RGB image, got "
                             f"{type(image).__name__} {getattr(image, 'shape', None)} {getattr(image, 'dtype', '')}")
        b = np.asarray(boxes, dtype=np.float64)
        if b.ndim == 1 and b.size == 4:
            b = b[None]
        if b.ndim != 2 or b.shape[1] != 4:
            raise InputError(f"DlibLandmarks.predict: boxes must be (K, 4) [x0, y0, x1, y1], got shape {b.shape}")
        if not np.isfinite(b).all() or ((b[:, 2] - b[:, 0]) < 2).any() or ((b[:, 3] - b[:, 1]) < 2).any():
            raise InputError("DlibLandmarks.predict: boxes must be finite with x1 - x0 >= 2 and y1 - y0 >= 2")
        self.load()
        dlib = self._dlib
        img = np.ascontiguousarray(image)
        out = np.empty((len(b), 68, 2), dtype=np.float64)
        for i, (x0, y0, x1, y1) in enumerate(b):
            # dlib rectangles are inclusive: pixels left..right
            r = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1)
            shape = self._predictor(img, r)
            out[i] = [(p.x, p.y) for p in shape.parts()]
        return out

    def predict_from_landmarks(self, image: np.ndarray, landmarks, passes: int = 1) -> np.ndarray:
        """68 landmarks per face from rough 68-point estimates (e.g. a regressor's landmark head).

        The face rectangle is :func:`box_from_landmarks` of the estimate; with ``passes > 1`` it is
        placed again on the previous prediction and the predictor re-run.

        Args:
            image: (H, W, 3) uint8 RGB.
            landmarks: (K, 68, 2) image px.
            passes: predictor runs per face (>= 1).
        """
        if passes < 1:
            raise InputError(f"passes must be >= 1, got {passes}")
        pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 68, 2)
        for _ in range(passes):
            pts = self.predict(image, box_from_landmarks(pts))
        return pts
