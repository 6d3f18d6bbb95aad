"""The 300-W validation check: ``fit`` on hand-annotated 300-W faces that are not AFLW2000-3D.

``python -m benchmarks.w300 [--folders helen_test,lfpw_test] [--weights W] [--method regressor+lm] [--json OUT]``

The 541 faces of 300-W's common subset (``../shared/data/300w/{helen_test,lfpw_test}``) are the
validation split of the training data: choices (checkpoints, mixes, landmark definitions) are made
here, never on the AFLW2000-3D dev set. Each face is cropped with the benchmark's box rule from its
annotation (:func:`morphable.crop.box_from_landmarks`) and fitted by ``fitting.pipeline.fit_crops``.

Scores, per face then averaged:
* ``nme_io_interior``: mean error of the 51 interior points (17-67) / the outer-eye-corner distance
  (points 36 and 45) x 100: 300-W's usual measure, free of the jaw convention (300-W's jaw follows
  the visible silhouette, ``fit`` returns fixed 3D-style jaw vertices).
* ``nme_box_interior``, ``nme_box_68``: the AFLW2000-3D normaliser (sqrt(w*h) of the annotation's box).
* signed errors per region and per point (percent of that box size, predicted - annotation, y down),
  :func:`benchmarks.protocol.signed_errors`: a lip or brow definition bias shows at once.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from morphable.formats.pts import read_pts

from .protocol import DIAGNOSTIC_REGIONS, PointErrors, signed_errors

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
#: the 300-W common subset: the validation folders
VALIDATION_FOLDERS = ("helen_test", "lfpw_test")
INTERIOR = slice(17, 68)


@dataclass
class W300Scores:
    """Scores of one run (percent).

    Attributes:
        n: faces scored.
        nme_io_interior: interior (17-67) NME normalised by the outer inter-ocular distance.
        nme_box_interior, nme_box_68: the same points (and all 68) normalised by sqrt(w*h) of the box.
        errors: per-point signed / Euclidean errors (box normaliser), all faces in one bin.
    """

    n: int
    nme_io_interior: float
    nme_box_interior: float
    nme_box_68: float
    errors: PointErrors

    def to_json(self) -> dict:
        regions = {k: {"nme": r.nme.all, "signed_x": r.signed_x.all, "signed_y": r.signed_y.all}
                   for k, r in self.errors.regions().items()}
        return {"n": self.n, "nme_io_interior": self.nme_io_interior, "nme_box_interior": self.nme_box_interior,
                "nme_box_68": self.nme_box_68, "regions": regions, "points": self.errors.to_json()}


def load_faces(root: Path, folders: Sequence[str]) -> tuple[list[Path], np.ndarray]:
    """The photos and their (N, 68, 2) annotations (0-based px) of the given 300-W folders."""
    photos, pts = [], []
    for f in folders:
        d = root / f
        if not d.is_dir():
            raise SystemExit(f"{d}: no such 300-W folder (expected ../shared/data/300w/{f})")
        for p in sorted(d.glob("*.pts")):
            photos.append(p.with_suffix(".jpg"))
            pts.append(read_pts(p))
    if not photos:
        raise SystemExit(f"no .pts files in {root} {list(folders)}")
    return photos, np.stack(pts)


def score(pred: np.ndarray, gt: np.ndarray) -> W300Scores:
    """Scores of predictions (N, 68, 2) against annotations (N, 68, 2), both 0-based image px."""
    pred, gt = np.asarray(pred, np.float64)[..., :2], np.asarray(gt, np.float64)[..., :2]
    d = np.linalg.norm(pred - gt, axis=-1)  # (N, 68)
    io = np.linalg.norm(gt[:, 36] - gt[:, 45], axis=-1)
    ext = gt.max(1) - gt.min(1)
    box = np.sqrt(ext[:, 0] * ext[:, 1])
    err = signed_errors(pred, gt, np.zeros(len(gt)))
    return W300Scores(n=len(gt), nme_io_interior=float((d[:, INTERIOR].mean(1) / io).mean() * 100),
                      nme_box_interior=float((d[:, INTERIOR].mean(1) / box).mean() * 100),
                      nme_box_68=float((d.mean(1) / box).mean() * 100), errors=err)


def format_report(s: W300Scores, label: str) -> str:
    lines = [f"300-W validation, {label}: {s.n} faces",
             f"  interior NME (outer inter-ocular) {s.nme_io_interior:.3f} %;  interior NME (box) "
             f"{s.nme_box_interior:.3f} %;  68-point NME (box) {s.nme_box_68:.3f} % (jaw: 3D-style vs silhouette)",
             "  region       NME   signed x  signed y   (% of box size, predicted - annotation, y down)"]
    for k, r in s.errors.regions().items():
        lines.append(f"  {k:<11} {r.nme.all:5.2f}   {r.signed_x.all:+6.2f}    {r.signed_y.all:+6.2f}")
    sy = s.errors.signed_all[:, 1]
    lines.append("  lips, signed y: upper outer (50-52) {:+.2f}, lower outer (56-58) {:+.2f}, upper inner (61-63) "
                 "{:+.2f}, lower inner (65-67) {:+.2f}".format(sy[50:53].mean(), sy[56:59].mean(), sy[61:64].mean(),
                                                             sy[65:68].mean()))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.w300", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(SHARED / "data/300w"), help="the 300-W folder")
    ap.add_argument("--folders", default=",".join(VALIDATION_FOLDERS), help="comma-separated sub-folders")
    ap.add_argument("--weights", default=None, help="regressor weights (default: shipped)")
    ap.add_argument("--method", choices=["regressor", "regressor+lm"], default="regressor+lm")
    ap.add_argument("--landmarks", default=None, help="landmark definition of the output (default: the model's)")
    ap.add_argument("--region", default=None, help="ICT-FaceKit region (default: the pipeline's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the scores here")
    ap.add_argument("--detector", action="store_true",
                    help="fit through the detector path (the default detector's box nearest the annotation, then the "
                         "pipeline's re-crop), as a user's photo is fitted; faces it misses are counted and left out")
    ap.add_argument("--flip-first-pass", action="store_true", help="with --detector: mirror the first pass too")
    ap.add_argument("--shifted-crops", type=int, default=None, choices=(0, 2, 4),
                    help="FitConfig.shifted_crops (default: the pipeline's)")
    a = ap.parse_args(argv)
    import torch

    from fitting.images import load_image
    from fitting.pipeline import FitConfig, Fitter
    from morphable.crop import box_from_landmarks

    torch.set_num_threads(a.threads)
    photos, gt = load_faces(Path(a.data), [f for f in a.folders.split(",") if f])
    kw = {k: v for k, v in (("landmarks", a.landmarks), ("region", a.region)) if v is not None}
    fitter = Fitter(FitConfig(weights=a.weights, threads=a.threads, flip_first_pass=a.flip_first_pass,
                              shifted_crops=a.shifted_crops, **kw))
    t0 = time.perf_counter()
    images = [load_image(p) for p in photos]
    boxes = np.array([[b.x0, b.y0, b.side] for b in (box_from_landmarks(g) for g in gt)])
    missed = 0
    if a.detector:  # the detection nearest the annotated face replaces its box; recrop as the pipeline does
        keep = []
        for i, im in enumerate(images):
            cbs = fitter.detector.detect(im).crop_boxes()
            if not cbs:
                continue
            c = boxes[i, :2] + boxes[i, 2] / 2
            cb = min(cbs, key=lambda b: float(np.hypot(b.x0 + b.side / 2 - c[0], b.y0 + b.side / 2 - c[1])))
            if np.hypot(cb.x0 + cb.side / 2 - c[0], cb.y0 + cb.side / 2 - c[1]) > 0.5 * boxes[i, 2]:
                continue  # another face: this one was missed
            boxes[i] = (cb.x0, cb.y0, cb.side)
            keep.append(i)
        missed = len(images) - len(keep)
        images, boxes, gt = [images[i] for i in keep], boxes[keep], gt[keep]
    pred = np.concatenate([np.asarray(fitter.fit_crops(images[i:i + 128], boxes[i:i + 128], recrop=a.detector,
                                                       refine=a.method == "regressor+lm").landmarks)
                           for i in range(0, len(images), 128)])
    dt = time.perf_counter() - t0
    s = score(pred, gt)
    label = f"{a.method}, weights {a.weights or 'shipped'}, model {fitter.model.name} ({fitter.model.info.landmark_definition} landmarks)"
    if a.detector:
        label += (f", detector path ({len(images)} faces found, {missed} missed; first pass "
                  f"{'mirrored too' if a.flip_first_pass else 'direct only'})")
    print(format_report(s, label))
    print(f"  ({dt:.1f} s, {a.threads} thread(s))")
    if a.json:
        Path(a.json).write_text(json.dumps({"label": label, **s.to_json()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
