"""``fit`` against hand-made 68-point annotations (``../shared/data/faces68``, 300-W ``.pts``).

``python -m benchmarks.faces68 [--data DIR] [--weights W] [--no-lm] [--zero-based] [--json]``

The ``.pts`` points are read as 300-W's MATLAB 1-based pixels and moved by -1 (the faces68 README
and ``docs/conventions.md``); ``--zero-based`` reads files that are already 0-based.

Each photo goes through the whole pipeline (OpenCV detection, regressor, LM). The face whose
landmarks overlap the annotation's bounding box most is scored; a photo where no detected face
overlaps it counts as a detection miss. NME = mean point-to-point error / sqrt(w*h) of the
annotation's bounding box * 100, over all 68 points and over the 51 interior points (17..67):
the 300-W jaw follows the visible silhouette while ``fit`` returns the model's fixed (3D-style)
jaw vertices, so the interior figure is the convention-free one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from morphable.formats.pts import read_pts


def _nme(pred: np.ndarray, gt: np.ndarray, idx=slice(None)) -> float:
    ext = gt.max(0) - gt.min(0)
    return float(np.linalg.norm(pred[idx] - gt[idx], axis=-1).mean() / np.sqrt(ext[0] * ext[1]) * 100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.faces68", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared/data/faces68"))
    ap.add_argument("--weights", default=None)
    ap.add_argument("--no-lm", action="store_true")
    ap.add_argument("--zero-based", dest="one_based", action="store_false",
                    help=".pts points are already 0-based (default: 300-W's MATLAB 1-based, moved by -1)")
    ap.add_argument("--one-based", dest="one_based", action="store_true", help="the default (kept for old scripts)")
    ap.add_argument("--detector", default="auto", help="auto, mmod, haar or mediapipe (fitting.detect.make_detector)")
    ap.add_argument("--min-face", type=float, default=None, help="smallest face, fraction of the shorter image side")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from fitting.pipeline import FitConfig, Fitter

    fitter = Fitter(FitConfig(weights=a.weights, refine=not a.no_lm, detector=a.detector, min_face=a.min_face))
    rows = []
    for pts_file in sorted(Path(a.data).glob("*.pts")):
        img = next((pts_file.with_suffix(e) for e in (".jpg", ".png", ".jpeg") if pts_file.with_suffix(e).exists()), None)
        if img is None:
            continue
        gt = read_pts(pts_file, a.one_based)
        faces = fitter.fit_all(str(img))
        best, best_iou = None, 0.0
        g0, g1 = gt.min(0), gt.max(0)
        for f in faces:
            p0, p1 = f.landmarks.min(0), f.landmarks.max(0)
            inter = np.prod(np.clip(np.minimum(g1, p1) - np.maximum(g0, p0), 0, None))
            iou = inter / (np.prod(g1 - g0) + np.prod(p1 - p0) - inter)
            if iou > best_iou:
                best, best_iou = f, iou
        if best is None or best_iou < 0.3:
            rows.append({"image": img.name, "detected": False})
            continue
        rows.append({"image": img.name, "detected": True, "nme_68": _nme(best.landmarks, gt),
                     "nme_interior_51": _nme(best.landmarks, gt, slice(17, 68)),
                     "yaw": float(best.angles_deg[0])})
    hit = [r for r in rows if r["detected"]]
    summary = {"images": len(rows), "detected": len(hit),
               "nme_68_mean": float(np.mean([r["nme_68"] for r in hit])) if hit else None,
               "nme_interior_51_mean": float(np.mean([r["nme_interior_51"] for r in hit])) if hit else None,
               "lm": not a.no_lm, "one_based": a.one_based, "rows": rows}
    if a.json:
        print(json.dumps(summary, indent=1))
        return 0
    print("| image | yaw | NME 68 % | NME interior 51 % |\n|---|---|---|---|")
    for r in rows:
        if r["detected"]:
            print(f"| {r['image']} | {r['yaw']:.0f} | {r['nme_68']:.2f} | {r['nme_interior_51']:.2f} |")
        else:
            print(f"| {r['image']} | – | not detected | |")
    if hit:
        print(f"\n{len(hit)}/{len(rows)} detected; mean NME 68: {summary['nme_68_mean']:.2f} %, "
              f"interior 51: {summary['nme_interior_51_mean']:.2f} % (LM {'on' if not a.no_lm else 'off'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
