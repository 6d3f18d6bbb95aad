"""Expression weights of a blendshape model (ICT-FaceKit) as ARKit blendshape curves in a CSV.

ICT-FaceKit's 53 expression components are ARKit-style FACS shapes named in camelCase with
``_L``/``_R`` suffixes (``eyeBlink_L``, ``jawOpen``, ...; ``model.info.expression_names``).
Apple ARKit has 52 (``ARFaceAnchor.BlendShapeLocation``); face-capture apps export them as
PascalCase CSV columns (``EyeBlinkLeft``, ``JawOpen``, ...). :data:`ARKIT_NAMES` is that
column order, the one Epic's Live Link Face iOS app writes in its CSV takes (the order of the
ARKit enum in the ``FaceBlendShape`` indices of its UDP stream differs: there ``JawLeft`` and
``MouthLeft`` come before ``JawRight`` and ``MouthRight``). The order was checked against the
``Timecode,BlendShapeCount,EyeBlinkLeft,...`` header as reproduced by several open-source Live
Link Face importers (Blender add-ons, a Flutter animation loader), not against an export from the
app itself or Apple's documentation.

:func:`arkit_mapping` builds the (52, Ke) matrix from a model's expression names (rules in its
docstring); :func:`write_arkit_csv` writes one row per video frame in the Live Link Face CSV
layout (:func:`timecode` for the first column) and :func:`read_arkit_csv` reads such a file back.
Frames without a face (NaN weights or angles) are written as empty fields, never as invented
numbers.
"""
from __future__ import annotations

import csv
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from morphable.errors import InputError

__all__ = ["ARKIT_NAMES", "HEAD_NAMES", "arkit_mapping", "to_arkit", "timecode", "parse_timecode",
           "write_arkit_csv", "read_arkit_csv"]

#: The 52 ARKit blendshapes in Live Link Face CSV column order (PascalCase, as the app exports them).
ARKIT_NAMES: tuple[str, ...] = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft", "EyeSquintLeft",
    "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight", "JawForward", "JawRight", "JawLeft", "JawOpen", "MouthClose", "MouthFunnel",
    "MouthPucker", "MouthRight", "MouthLeft", "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft",
    "MouthFrownRight", "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight",
    "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper", "MouthPressLeft", "MouthPressRight",
    "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft", "MouthUpperUpRight", "BrowDownLeft",
    "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft",
    "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut",
)
#: The head-rotation columns written after the blendshapes (degrees).
HEAD_NAMES: tuple[str, ...] = ("HeadYaw", "HeadPitch", "HeadRoll")
_WEIGHT_DECIMALS = 6
_ANGLE_DECIMALS = 4
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_TIMECODE = re.compile(r"^(\d{2,}):(\d{2}):(\d{2}):(\d{2,})(?:\.(\d+))?$")


def _arkit_style(name: str) -> str:
    """``eyeBlink_L`` -> ``EyeBlinkLeft``: ``_L``/``_R`` suffix to ``Left``/``Right``, first letter upper."""
    n = str(name).strip()
    if n.endswith("_L"):
        n = n[:-2] + "Left"
    elif n.endswith("_R"):
        n = n[:-2] + "Right"
    return n[:1].upper() + n[1:]


def arkit_mapping(expression_names: Sequence[str]) -> np.ndarray:
    """The (52, Ke) matrix ``M`` with ``arkit = M @ weights`` for a model's expression weights.

    Rules, for each ARKit name ``A`` of :data:`ARKIT_NAMES` (names compared case-insensitively
    after turning a ``_L``/``_R`` suffix into ``Left``/``Right`` and upper-casing the first letter):

    * a component named ``A`` -> ``M[A, k] = 1`` (``eyeBlink_L`` -> ``EyeBlinkLeft``);
    * else components ``A + "Left"`` and ``A + "Right"`` (ARKit has one shape where the model has
      a pair: ``BrowInnerUp``, ``CheekPuff``) -> 0.5 each, the mean of the two;
    * else a zero row (``TongueOut``: ICT-FaceKit has no tongue).

    Args:
        expression_names: (Ke,) the model's expression component names, in weight order.

    Returns:
        (52, Ke) float64.

    Raises:
        InputError: two components map to the same ARKit name, or fewer than half of the ARKit
            shapes are found (the expression basis is not a named blendshape rig, e.g. PCA
            components ``exp00``, ``exp01``, ...).
    """
    if isinstance(expression_names, str):
        raise InputError("arkit_mapping: expression_names must be a list of names, not one string")
    names = [_arkit_style(n) for n in expression_names]
    index: dict[str, int] = {}
    for k, n in enumerate(names):
        key = n.lower()
        if key in index:
            raise InputError(f"arkit_mapping: expression components {index[key]} ({expression_names[index[key]]!r}) "
                             f"and {k} ({expression_names[k]!r}) both map to the ARKit name {n!r}; "
                             "give every component a distinct name")
        index[key] = k
    M = np.zeros((len(ARKIT_NAMES), len(names)))
    for a, A in enumerate(ARKIT_NAMES):
        key = A.lower()
        if key in index:
            M[a, index[key]] = 1.0
        elif key + "left" in index and key + "right" in index:
            M[a, index[key + "left"]] = M[a, index[key + "right"]] = 0.5
    found = int((M != 0).any(1).sum())
    if 2 * found < len(ARKIT_NAMES):
        shown = ", ".join(map(str, list(expression_names)[:4])) + (", ..." if len(names) > 4 else "")
        raise InputError(f"arkit_mapping: only {found} of the {len(ARKIT_NAMES)} ARKit blendshapes match the model's "
                         f"{len(names)} expression names ({shown or 'none'}): this is not an ARKit-style blendshape "
                         "model (e.g. a PCA expression basis); fit with a blendshape model such as ICT-FaceKit")
    return M


def to_arkit(weights: np.ndarray, expression_names: Sequence[str]) -> np.ndarray:
    """ARKit curves from expression weights: ``clip(weights @ M.T, 0, 1)`` with ``M`` of :func:`arkit_mapping`.

    Args:
        weights: (T, Ke) or (Ke,) expression weights (unitless, [0, 1] for ICT-FaceKit); a frame
            with any NaN (no face) gives a frame of NaN.
        expression_names: (Ke,) the model's expression names.

    Returns:
        (T, 52) or (52,) float64 in [0, 1] (NaN kept).
    """
    M = arkit_mapping(expression_names)
    W = np.asarray(weights, dtype=np.float64)
    if W.ndim not in (1, 2) or W.shape[-1] != M.shape[1]:
        raise InputError(f"to_arkit: weights must be (T, {M.shape[1]}) (one column per expression name), "
                         f"got shape {W.shape}")
    A = W @ M.T
    A[np.isnan(W).any(-1)] = np.nan  # also the zero rows (TongueOut) of a frame without a face
    return np.clip(A, 0.0, 1.0)


def timecode(t: float, fps: float) -> str:
    """Live Link Face style timecode ``HH:MM:SS:FF.mmm`` of time ``t``.

    ``HH:MM:SS`` are the whole hours, minutes and seconds of ``t`` (hours not wrapped at 24,
    two digits at least); ``FF.mmm`` is the position within the second as a decimal frame
    number at ``fps`` to three decimals: ``FF`` the whole frames (two digits at least), ``mmm``
    the sub-frame fraction in thousandths of a frame (not milliseconds of time). Rounding is
    to the nearest thousandth of a frame, carrying into the seconds.

    Examples: ``timecode(0, 25) == "00:00:00:00.000"``; ``timecode(61.5, 25) ==
    "00:01:01:12.500"`` (0.5 s = 12.5 frames); ``timecode(3723.04, 25) == "01:02:03:01.000"``.

    Args:
        t: time, seconds (finite, >= 0).
        fps: frames per second (finite, > 0).
    """
    t, fps = float(t), float(fps)
    if not math.isfinite(t) or t < 0:
        raise InputError(f"timecode: time t={t!r} s must be finite and >= 0")
    if not math.isfinite(fps) or fps <= 0:
        raise InputError(f"timecode: fps={fps!r} must be finite and > 0")
    s = math.floor(t)
    milli = round((t - s) * fps * 1000.0)  # thousandths of a frame within the second
    if milli >= round(fps * 1000.0):  # rounds up to the next second
        s, milli = s + 1, 0
    frames, sub = divmod(milli, 1000)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{sec:02d}:{frames:02d}.{sub:03d}"


def parse_timecode(tc: str, fps: float) -> float:
    """Seconds of a ``HH:MM:SS:FF[.fff]`` timecode at ``fps``: ``3600 HH + 60 MM + SS + FF.fff / fps``.

    The inverse of :func:`timecode` (to a thousandth of a frame).
    """
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise InputError(f"parse_timecode: fps={fps!r} must be finite and > 0")
    m = _TIMECODE.match(str(tc).strip())
    if m is None:
        raise InputError(f"parse_timecode: {tc!r} is not a timecode HH:MM:SS:FF or HH:MM:SS:FF.fff")
    h, mi, s, f = (int(m[i]) for i in range(1, 5))
    frac = float("0." + m[5]) if m[5] else 0.0
    return 3600.0 * h + 60.0 * mi + s + (f + frac) / fps


def _field(v: float, decimals: int) -> str:
    return "" if math.isnan(v) else f"{v:.{decimals}f}"


def write_arkit_csv(path: Union[str, os.PathLike], times: np.ndarray, weights: np.ndarray,
                    expression_names: Sequence[str], head_ypr_deg: Optional[np.ndarray], fps: float) -> Path:
    """Write expression weights and head angles as a Live Link Face style ARKit CSV.

    Columns: ``Timecode`` (:func:`timecode` of ``times`` at ``fps``), ``BlendShapeCount``, the 52
    :data:`ARKIT_NAMES` (:func:`to_arkit` of the weights: clipped to [0, 1], six decimals), then
    ``HeadYaw, HeadPitch, HeadRoll`` (degrees as given, four decimals). ``BlendShapeCount`` is 55,
    the number of value columns that follow it (52 shapes + 3 head angles; Live Link Face writes
    61 because its takes also carry six eye angles). A frame without a face (NaN weights or NaN
    angles) gets empty fields there. One row per frame, written with the :mod:`csv` module to a
    temporary file in the same folder then renamed (a crash never leaves half a file); the folder
    is created if missing.

    Args:
        path: the CSV file to write.
        times: (T,) frame times, seconds (finite, >= 0, strictly increasing).
        weights: (T, Ke) expression weights of a blendshape model, NaN rows for frames without a face.
        expression_names: (Ke,) the model's expression names (``model.info.expression_names``).
        head_ypr_deg: (T, 3) head yaw, pitch, roll in degrees, or None (empty head fields).
            Written as given: no change of angle convention or sign.
        fps: the video's frame rate (for the timecodes' frame field).

    Returns:
        the written path.
    """
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise InputError(f"write_arkit_csv: times must be a non-empty (T,) array of seconds, got shape {t.shape}")
    if not np.isfinite(t).all() or (t < 0).any() or (np.diff(t) <= 0).any():
        raise InputError("write_arkit_csv: times must be finite, >= 0 and strictly increasing seconds, one per frame")
    T = t.shape[0]
    W = np.asarray(weights, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != T:
        raise InputError(f"write_arkit_csv: weights must be (T, Ke) = ({T}, Ke), one row per time, got shape {W.shape}")
    A = to_arkit(W, expression_names)
    H = np.full((T, 3), np.nan) if head_ypr_deg is None else np.asarray(head_ypr_deg, dtype=np.float64)
    if H.shape != (T, 3):
        raise InputError(f"write_arkit_csv: head_ypr_deg must be (T, 3) = ({T}, 3) yaw/pitch/roll degrees, "
                         f"got shape {H.shape}")
    if np.isinf(H).any():
        raise InputError("write_arkit_csv: head_ypr_deg has inf values; use NaN for frames without a face")
    codes = [timecode(ti, fps) for ti in t]  # validates fps
    count = str(len(ARKIT_NAMES) + len(HEAD_NAMES))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["Timecode", "BlendShapeCount", *ARKIT_NAMES, *HEAD_NAMES])
            for i in range(T):
                w.writerow([codes[i], count, *(_field(v, _WEIGHT_DECIMALS) for v in A[i]),
                            *(_field(v, _ANGLE_DECIMALS) for v in H[i])])
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_arkit_csv(path: Union[str, os.PathLike], fps: Optional[float] = None) -> dict:
    """Read an ARKit CSV (this module's or a Live Link Face take); columns are found by header name.

    Args:
        path: the CSV file.
        fps: the take's frame rate; when given, ``times`` are computed from the timecodes.

    Returns:
        a dict with ``timecodes`` (list of T str), ``times`` ((T,) seconds from
        :func:`parse_timecode`, or None without ``fps``), ``names`` (:data:`ARKIT_NAMES`),
        ``weights`` ((T, 52) float64 in :data:`ARKIT_NAMES` order, NaN for empty fields and
        missing columns) and ``head_ypr_deg`` ((T, 3) float64, NaN likewise). Extra columns
        (``BlendShapeCount``, eye angles) are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"read_arkit_csv: {path} does not exist or is not a file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0] or rows[0][0].strip() != "Timecode":
        raise InputError(f"read_arkit_csv: {path} does not start with a 'Timecode,...' header; "
                         "it is not an ARKit blendshape CSV")
    col = {h.strip().lower(): j for j, h in enumerate(rows[0])}
    wanted = [col.get(n.lower()) for n in (*ARKIT_NAMES, *HEAD_NAMES)]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    V = np.full((len(body), len(wanted)), np.nan)
    for i, r in enumerate(body):
        for k, j in enumerate(wanted):
            if j is None or j >= len(r) or not r[j].strip():
                continue
            try:
                V[i, k] = float(r[j])
            except ValueError:
                raise InputError(f"read_arkit_csv: {path} row {i + 2} column {rows[0][j]!r}: {r[j]!r} is not a number")
    codes = [r[0].strip() for r in body]
    times = np.array([parse_timecode(c, fps) for c in codes]) if fps is not None else None
    n = len(ARKIT_NAMES)
    return {"timecodes": codes, "times": times, "names": ARKIT_NAMES, "weights": V[:, :n], "head_ypr_deg": V[:, n:]}
