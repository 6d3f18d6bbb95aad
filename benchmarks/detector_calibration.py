"""Calibrate BlazeFace's boxes to the 68-landmark box on the 300-W TRAINING photos (never AFLW2000-3D).

    python -m benchmarks.detector_calibration [--data ../shared/data/300w] [--limit N] [--json]

For each model (``short``, ``full``) BlazeFace runs on every photo of ``afw``, ``helen_train`` and
``lfpw_train``; the detection overlapping the hand-made landmark box best (IoU >= 0.3) is paired
with it. Printed: the ``(dx, dy, sw, sh, gx, gy)`` of :data:`fitting.detect.BLAZEFACE_CALIB`:
``sw``/``sh`` are the medians of landmark-box width/height over detector-box width/height, and
the centre offset (in detector-box widths) is the least-squares fit of ``dx + gx * nose_dx`` (and
``dy + gy * nose_dy``), ``nose_d*`` being the nose-tip keypoint's offset from the box centre.
Also printed: the median IoU of the calibrated boxes with the landmark boxes, before and after.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TRAIN = ("afw", "helen_train", "lfpw_train")


def pairs(files: Sequence[Path], model: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(detector box (4,), nose keypoint (2,), landmark box (4,)) for every face found."""
    from fitting.blazeface import BlazeFace
    from fitting.detect import box_iou
    from fitting.images import load_image
    from morphable.formats.pts import read_pts

    net = BlazeFace(model)
    out = []
    for f in files:
        g = read_pts(f.with_suffix(".pts"))
        gt = np.r_[g.min(0), g.max(0)]
        o = net(load_image(f))
        if not len(o):
            continue
        iou = box_iou(o.boxes, gt[None])[:, 0]
        if iou.max() >= 0.3:
            k = int(iou.argmax())
            out.append((o.boxes[k], o.keypoints[k, 2] + 0.5, gt))
    return out


def fit(p: list) -> tuple[float, float, float, float, float, float]:
    """``(dx, dy, sw, sh, gx, gy)`` from :func:`pairs`."""
    B = np.array([b for b, _, _ in p])
    N = np.array([n for _, n, _ in p])
    G = np.array([g for _, _, g in p])
    w, h = B[:, 2] - B[:, 0], B[:, 3] - B[:, 1]
    c, cg = (B[:, :2] + B[:, 2:]) / 2, (G[:, :2] + G[:, 2:]) / 2
    size = np.stack([w, h], 1)
    coef = []
    for a in range(2):  # (cg - c) / size = d + g * (nose - c) / size
        X = np.stack([np.ones(len(B)), (N[:, a] - c[:, a]) / size[:, a]], 1)
        coef.append(np.linalg.lstsq(X, (cg[:, a] - c[:, a]) / size[:, a], rcond=None)[0])
    sw = float(np.median((G[:, 2] - G[:, 0]) / w))
    sh = float(np.median((G[:, 3] - G[:, 1]) / h))
    return (float(coef[0][0]), float(coef[1][0]), sw, sh, float(coef[0][1]), float(coef[1][1]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.detector_calibration", description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(SHARED / "data/300w"), help="300-W folder with afw/, helen_train/, lfpw_train/")
    ap.add_argument("--limit", type=int, default=None, help="first N photos of each folder")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    import torch

    from fitting.detect import BLAZEFACE_CALIB, box_iou

    torch.set_num_threads(1)
    files = [f for sub in TRAIN for f in sorted((Path(a.data) / sub).glob("*.jpg"))[: a.limit]]
    if not files:
        raise SystemExit(f"error: no 300-W training photos under {a.data}")
    report = {}
    for model in ("short", "full"):
        p = pairs(files, model)
        cal = fit(p)
        dx, dy, sw, sh, gx, gy = cal
        iou_raw, iou_cal = [], []
        for b, n, g in p:
            w, h = b[2] - b[0], b[3] - b[1]
            c = (b[:2] + b[2:]) / 2
            cx, cy = c[0] + dx * w + gx * (n[0] - c[0]), c[1] + dy * h + gy * (n[1] - c[1])
            cb = np.array([cx - sw * w / 2, cy - sh * h / 2, cx + sw * w / 2, cy + sh * h / 2])
            iou_raw.append(box_iou(b[None], g[None])[0, 0])
            iou_cal.append(box_iou(cb[None], g[None])[0, 0])
        report[model] = {"faces": len(p), "photos": len(files), "calib": [round(v, 3) for v in cal],
                         "shipped": list(BLAZEFACE_CALIB[model]),
                         "median_iou_raw": float(np.median(iou_raw)), "median_iou_calibrated": float(np.median(iou_cal))}
        print(f"{model}: {len(p)}/{len(files)} faces; (dx, dy, sw, sh, gx, gy) = {tuple(round(v, 3) for v in cal)}; "
              f"median IoU with the landmark box {np.median(iou_raw):.3f} -> {np.median(iou_cal):.3f}", file=sys.stderr)
    if a.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
