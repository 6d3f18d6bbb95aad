"""Yaw calibration of the pseudo-labels against aflw21's annotated yaw.

The aflw21 crops carry a yaw column from 3DDFA (``../shared/NOTES.md`` §2). Our label fits read a
smaller |yaw| than that column: on the aflw21 *training* rows of labels v5, the median of
``(annotated - fitted) * sign(fitted)`` is +3 deg for |fitted yaw| in 10-30 deg and falls off on
either side.

What the column is (measured in session 18, training rows only). It is AFLW's own database yaw, not
a Basel fit's: binned at 30 and 60 deg, its 19,045 rows plus the 2,000 AFLW2000-3D images binned
"according to AFLW labels" (3DDFA's ``benchmark_aflw2000.py``: 1,306 / 462 / 232) give 11,579 /
5,446 / 4,020, the paper's AFLW split of 21,080 faces (11,596 / 5,457 / 4,027) less the 35 other
crops left out (17 / 11 / 7); the fitted poses bin AFLW2000-3D as 1,312 / 383 / 305 instead. Its
excess over our fits follows the ear points: +2.0 to +4.9 deg (median, per |yaw| bin) on faces with
exactly one annotated ear, 0.0 to +1.2 deg below 30 deg of yaw with none, -1.0 to -3.9 deg with
both. A Basel keypoint fit to our 3D-style labels reads |yaw| 0.2-2.2 deg *smaller* than our labels
below 60 deg, not larger. So the column is not the ``Pose_Para`` convention, and labels calibrated
to it (v6) were not shipped.

This module learns that offset as a function of |fitted yaw| (:class:`YawCalibration`, binned
medians on training rows only) and re-expresses every label in it (:func:`recalibrate_labels`):
the yaw of the label's rotation becomes ``yaw + sign(yaw) * offset(|yaw|)`` (Euler angles of
:mod:`morphable.geometry`, model frame); the same face is turned to it and moved so that its
annotated points keep their mean. The stored landmarks are the turned face's projections, an exact
face of the model, so the LM of the pipeline recovers the new yaw from them. The price: the
annotated points move off the annotations by about 0.15-0.2 % of face size on average.

CLI::

    python -m regressors.label_yaw --labels labels_v5.npz --out labels_v6.npz [--json cal.json]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from morphable.errors import InputError
from morphable.geometry import angles_to_rotmat, project, rotmat_to_angles, rotmat_to_rotvec, rotvec_to_rotmat

#: |fitted yaw| bin edges of the calibration, degrees.
DEFAULT_EDGES: tuple[float, ...] = tuple(float(e) for e in range(0, 100, 10))
#: Annotated yaws beyond this are not used (NOTES §2: |yaw| > 90 is unreliable; a cut at 90 would
#: bias the last bins, so the cut is wider).
MAX_ANNOTATED_DEG = 120.0


@dataclass(frozen=True)
class YawCalibration:
    """An odd, continuous map of yaw (degrees): ``y -> y + sign(y) * offset(|y|)``.

    Attributes:
        centres: (K,) |yaw| bin centres, degrees, increasing.
        offsets: (K,) median of ``(annotated - fitted) * sign(fitted)`` in each bin, degrees.
        counts: (K,) training rows per bin.
    The offset is interpolated linearly between ``(0, 0)`` and the centres and held beyond the last.
    """

    centres: tuple[float, ...]
    offsets: tuple[float, ...]
    counts: tuple[int, ...]

    def offset(self, abs_yaw_deg: np.ndarray) -> np.ndarray:
        """(...) offsets in degrees at |yaw| ``abs_yaw_deg`` (...)."""
        xs = np.concatenate([[0.0], self.centres])
        ys = np.concatenate([[0.0], self.offsets])
        return np.interp(np.abs(abs_yaw_deg), xs, ys)

    def apply(self, yaw_deg: np.ndarray) -> np.ndarray:
        """(...) calibrated yaw, degrees, from (...) yaw in degrees."""
        y = np.asarray(yaw_deg, np.float64)
        return y + np.sign(y) * self.offset(y)

    def to_json(self) -> dict:
        return asdict(self)


def learn_yaw_calibration(fitted_yaw_deg: np.ndarray, annotated_yaw_deg: np.ndarray,
                          edges: Sequence[float] = DEFAULT_EDGES, min_count: int = 20) -> YawCalibration:
    """Binned medians of ``(annotated - fitted) * sign(fitted)`` by |fitted| (degrees).

    Args:
        fitted_yaw_deg: (N,) yaw of the label fits, degrees.
        annotated_yaw_deg: (N,) annotated yaw, degrees (NaN = none; beyond ±MAX_ANNOTATED_DEG unused).
        edges: increasing |yaw| bin edges.
        min_count: bins with fewer usable rows are left out.

    Raises:
        InputError: shapes differ, or no bin has ``min_count`` rows.
    """
    f = np.asarray(fitted_yaw_deg, np.float64).reshape(-1)
    a = np.asarray(annotated_yaw_deg, np.float64).reshape(-1)
    if f.shape != a.shape:
        raise InputError(f"fitted yaw {f.shape} and annotated yaw {a.shape} differ in length")
    use = np.isfinite(f) & np.isfinite(a) & (np.abs(a) <= MAX_ANNOTATED_DEG)
    d = (a - f) * np.sign(f)
    centres, offsets, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        b = use & (np.abs(f) >= lo) & (np.abs(f) < hi)
        if b.sum() >= min_count:
            centres.append(0.5 * (lo + hi))
            offsets.append(float(np.median(d[b])))
            counts.append(int(b.sum()))
    if not centres:
        raise InputError(f"no |yaw| bin has {min_count} rows with an annotated yaw: nothing to calibrate against")
    return YawCalibration(tuple(centres), tuple(offsets), tuple(counts))


def label_angles(labels: dict) -> np.ndarray:
    """(N, 3) [pitch, yaw, roll] degrees of the labels' rotations (in the labels' frame)."""
    R = rotvec_to_rotmat(torch.as_tensor(np.asarray(labels["rotvec"], np.float64)))
    return np.degrees(rotmat_to_angles(R).numpy())


def recalibrate_labels(labels: dict, model, calibration: YawCalibration) -> dict:
    """``labels`` with every row's yaw mapped by ``calibration`` (a new dict; the input is unchanged).

    Args:
        labels: a label dict (:func:`regressors.data.load_labels`) in the frame of ``model``
            (:func:`regressors.data.to_frame`).
        model: the labels' :class:`~morphable.model.MorphableModel`; its vertices ``landmark_ids``
            give the stored 3D-style landmarks.
        calibration: the yaw map.

    Returns the dict with ``rotvec``, ``translation`` and ``landmarks3d`` replaced (dtypes as
    stored): the same face (shape, expression, scale) turned to
    ``angles_to_rotmat([pitch, calibrated yaw, roll])``, moved so that the mean of the row's
    annotated points (``visible`` > 0; all 68 where it has none) stays where it was, and projected.
    Refitting shape and expression to the old landmarks instead was tried: it undoes much of the
    turn in the landmarks (they move 0.4 % of face size against 1.1 % on aflw21) and brings them no
    nearer the annotations.
    """
    ang = label_angles(labels)
    new = ang.copy()
    new[:, 1] = calibration.apply(ang[:, 1])
    R1 = angles_to_rotmat(torch.as_tensor(np.radians(new)))
    R0 = rotvec_to_rotmat(torch.as_tensor(np.asarray(labels["rotvec"], np.float64)))
    ids = labels.get("landmark_ids")
    m = (model if ids is None else model.with_landmarks(np.asarray(ids), definition="labels")).double()
    X = m.landmark_points(torch.as_tensor(np.asarray(labels["shape"], np.float64)),
                          torch.as_tensor(np.asarray(labels["expr"], np.float64)))
    s = torch.as_tensor(np.asarray(labels["scale"], np.float64))
    t = torch.as_tensor(np.asarray(labels["translation"], np.float64))
    P0, P1 = project(X, R0, s, t), project(X, R1, s, t)
    w = torch.as_tensor(np.asarray(labels["visible"], np.float64))
    w = torch.where(w.sum(-1, keepdim=True) > 0, w, torch.ones_like(w))
    shift = ((P0 - P1) * w[..., None]).sum(1) / w.sum(1)[..., None]
    out = dict(labels)
    for k, v in (("rotvec", rotmat_to_rotvec(R1)), ("translation", t + shift), ("landmarks3d", P1 + shift[:, None])):
        out[k] = v.numpy().astype(np.asarray(labels[k]).dtype)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .data import load_labels, model_for_labels, to_frame

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Learns on aflw21 training rows, writes new labels.")
    ap.add_argument("--labels", required=True, help="pseudo-label npz (with aflw21 rows and their annotated yaw)")
    ap.add_argument("--out", required=True, help="the recalibrated label npz to write")
    ap.add_argument("--json", default=None, help="also write the calibration table here")
    a = ap.parse_args(argv)
    with np.load(a.labels, allow_pickle=False) as z:
        raw = {k: z[k] for k in z.files}
    labels = load_labels(a.labels)
    model = model_for_labels(None, labels)
    labels = to_frame(labels, model.info.frame_rotation)
    train = labels["ok"].astype(bool) & (labels["split"] == "train") & (labels["set"] == "aflw21")
    if not train.any():
        raise SystemExit(f"{a.labels}: no usable aflw21 training rows to learn the yaw calibration from")
    cal = learn_yaw_calibration(label_angles(labels)[train, 1], np.asarray(labels["annotated_yaw"])[train])
    print("|fitted yaw| bin centre, deg | rows | offset (annotated - fitted) * sign, deg (median)")
    for c, o, n in zip(cal.centres, cal.offsets, cal.counts):
        print(f"{c:5.0f} | {n:6d} | {o:+.2f}")
    new = recalibrate_labels(labels, model, cal)
    for k in ("rotvec", "translation", "landmarks3d"):
        raw[k] = new[k]
    raw["frame_rotation"] = np.asarray(new["frame_rotation"], np.float64)
    np.savez_compressed(a.out, **raw)
    load_labels(a.out)  # what was written reads back as labels
    print(f"wrote {a.out}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"labels": str(a.labels), **cal.to_json()}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
