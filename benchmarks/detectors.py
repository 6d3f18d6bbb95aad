"""Face detectors on the AFLW2000-3D dev set: how often is the first box the face, per yaw bin?

    python -m benchmarks.detectors                 # dev set (300 images) + faces68
    python -m benchmarks.detectors --limit 50 --json
    python -m benchmarks.detectors --no-dlib --no-nme   # quicker: no dlib peer, no end-to-end fits

For every image the detectors run once; a face counts as found when the detector's first box
(its best face) overlaps the ground-truth 68-landmark box with IoU >= 0.5 (the built-in detectors'
boxes are calibrated to that box). Detectors: ``blazeface`` (:class:`fitting.detect.BlazeFaceDetector`,
MediaPipe's BlazeFace, exported from our torch reader and run by onnxruntime), ``haar`` (:class:`fitting.detect.OpenCVDetector`), ``mmod``
(:class:`fitting.detect.DlibCNNDetector`, default ``min_face``, the model run by torch),
``mmod+haar`` (the :class:`fitting.detect.CombinedDetector` of the two, the default before
BlazeFace), ``auto`` (the default: BlazeFace, and ``mmod+haar`` on the images where it finds
nothing; replayed from the same detections, its time is BlazeFace's plus the fallback's where it
ran) and ``mmod-dlib`` (the same MMOD model run by dlib itself, when dlib is installed: the peer
of the torch backend). Time is wall time per image on one thread (``torch.set_num_threads(1)``;
dlib and OpenCV run single-threaded here), printed beside Haar's and MMOD's as ratios.

End-to-end NME (dev set, unless ``--no-nme``): each detector's first box goes through the
pipeline's detector path (:meth:`fitting.detect.Detections.crop_boxes`, regressor, re-crop on the
regressed landmarks, LM), and the 68-point 2D NME (%, :func:`benchmarks.protocol.nme_2d`) is
averaged over the images where the detector found the face, and over the images every detector found.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmarks.protocol import load_dataset, yaw_bin
from fitting.detect import (BlazeFaceDetector, CombinedDetector, Detections, DlibCNNDetector, FallbackDetector,
                            OpenCVDetector, box_iou, dlib_detector_available)
from fitting.images import load_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BIN_NAMES = ("[0,30]", "(30,60]", "(60,90]")


class _Replay:
    """A detector that returns recorded detections (to score the combination without re-running)."""

    def __init__(self, det: Detections, min_px: Optional[float] = None):
        self.det = det
        if min_px is not None:
            self.min_face_px = lambda image: min_px

    def detect(self, image):
        return self.det


def _pts(path: Path) -> np.ndarray:
    body = path.read_text().split("{")[1].split("}")[0].split()
    return np.array(body, float).reshape(-1, 2) - 1.0  # .pts are 1-based


def evaluate(images: Sequence[tuple[str, Path, np.ndarray]], progress: bool = True, dlib_backend: bool = True) -> dict:
    """``images``: (name, path, GT landmark box (4,) xyxy). Returns per-detector IoU lists, times and
    the first crop box of every image (``crop``: ``[x0, y0, side]`` or None). ``dlib_backend``: also
    run the MMOD model through dlib itself (``mmod-dlib``), the peer of the torch backend."""
    blaze, haar, mmod = BlazeFaceDetector(), OpenCVDetector(), DlibCNNDetector()
    peer = DlibCNNDetector(backend="dlib") if dlib_backend and dlib_detector_available() else None
    names = ("blazeface", "haar", "mmod", "mmod+haar", "auto") + (("mmod-dlib",) if peer is not None else ())
    out = {k: {"iou": [], "seconds": 0.0, "crop": []} for k in names}
    blaze.detect(np.zeros((64, 64, 3), np.uint8))  # warm-up: the first call of a torch network is slow
    for i, (name, path, gt) in enumerate(images):
        img = load_image(path)
        t0 = time.perf_counter()
        b = blaze.detect(img)
        t1 = time.perf_counter()
        h = haar.detect(img)
        t2 = time.perf_counter()
        m = mmod.detect(img)
        t3 = time.perf_counter()
        mh = CombinedDetector(_Replay(m, mmod.min_face_px(img)), _Replay(h)).detect(img)
        a = FallbackDetector(_Replay(b), _Replay(mh)).detect(img)
        out["blazeface"]["seconds"] += t1 - t0
        out["haar"]["seconds"] += t2 - t1
        out["mmod"]["seconds"] += t3 - t2
        out["mmod+haar"]["seconds"] += t3 - t1
        out["auto"]["seconds"] += (t1 - t0) + (0.0 if len(b) else t3 - t1)
        dets = [("blazeface", b), ("haar", h), ("mmod", m), ("mmod+haar", mh), ("auto", a)]
        if peer is not None:
            t4 = time.perf_counter()
            dets.append(("mmod-dlib", peer.detect(img)))
            out["mmod-dlib"]["seconds"] += time.perf_counter() - t4
        for k, d in dets:
            out[k]["iou"].append(float(box_iou(d.boxes[:1], gt[None])[0, 0]) if len(d) else 0.0)
            cb = d.crop_boxes()[0] if len(d) else None
            out[k]["crop"].append(None if cb is None else [cb.x0, cb.y0, cb.side])
        if progress and (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(images)}", file=sys.stderr, flush=True)
    return out


def end_to_end_nme(res: dict, ds, batch: int = 32) -> dict:
    """Per detector: the dev-set 2D NME (%) of the pipeline's detector path started from its first
    box (regressor, re-crop on the regressed landmarks, LM), on the images where its first box is the
    face (IoU >= 0.5), and on the images every detector found. ``ds``: :class:`benchmarks.protocol.Dataset`."""
    from benchmarks.protocol import nme_2d
    from fitting.pipeline import FitConfig, Fitter

    fitter = Fitter(FitConfig())
    gt = ds.landmarks[:, :, :2]
    found = {k: np.array(r["iou"]) >= 0.5 for k, r in res.items()}
    common = np.logical_and.reduce(list(found.values()))
    out = {}
    for k, r in res.items():
        idx = np.flatnonzero(found[k])
        nme = np.full(len(gt), np.nan)
        for s in range(0, len(idx), batch):
            j = idx[s:s + batch]
            imgs = [load_image(ds.root / f"{ds.names[i]}.jpg") for i in j]
            fits = fitter.fit_crops(imgs, np.array([r["crop"][i] for i in j]), recrop=fitter.config.recrop)
            nme[j] = nme_2d(fits.landmarks.detach().numpy(), gt[j])
        out[k] = {"nme_found": float(np.nanmean(nme)) if len(idx) else None, "n_found": int(len(idx)),
                  "nme_common": float(np.nanmean(nme[common])) if common.any() else None, "n_common": int(common.sum())}
    return out


def summarise(res: dict, bins: Optional[np.ndarray]) -> dict:
    s = {}
    for k, r in res.items():
        iou = np.array(r["iou"])
        hit = iou >= 0.5
        row = {"found_pct": 100.0 * hit.mean(), "median_iou": float(np.median(iou)),
               "ms_per_image": 1e3 * r["seconds"] / max(len(iou), 1), "n": int(len(iou))}
        if bins is not None:
            row["found_pct_by_yaw_bin"] = {BIN_NAMES[b]: 100.0 * float(hit[bins == b].mean()) if np.any(bins == b) else None
                                           for b in range(3)}
        s[k] = row
    return s


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.detectors", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(SHARED / "data/aflw2000-3d-dev"), help="AFLW2000-3D folder")
    p.add_argument("--faces68", default=str(SHARED / "data/faces68"), help="folder of images + 1-based .pts")
    p.add_argument("--limit", type=int, default=None, help="first N dev images only")
    p.add_argument("--json", action="store_true", help="also print one JSON object")
    p.add_argument("--no-dlib", action="store_true", help="skip the dlib peer of the MMOD model (mmod-dlib, ~0.7 s/image)")
    p.add_argument("--no-nme", action="store_true", help="skip the end-to-end NME on the dev set")
    args = p.parse_args(argv)
    import cv2

    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    report = {"env": {"threads": "OpenCV setNumThreads(1); torch set_num_threads(1); dlib single-threaded (CPU build)",
                      "loadavg_start": os.getloadavg()[0]}}
    ds = load_dataset(args.data, limit=args.limit)
    items = []
    for i, n in enumerate(ds.names):
        g = ds.landmarks[i, :, :2]
        items.append((n, ds.root / f"{n}.jpg", np.r_[g.min(0), g.max(0)]))
    bins = yaw_bin(np.degrees(ds.angles[:, 1]))
    print(f"AFLW2000-3D dev: {len(items)} images ...", file=sys.stderr)
    res = evaluate(items, dlib_backend=not args.no_dlib)
    report["aflw2000_dev"] = summarise(res, bins)
    if not args.no_nme:
        print("end-to-end NME through the detector path ...", file=sys.stderr)
        for k, v in end_to_end_nme(res, ds).items():
            report["aflw2000_dev"][k].update(v)
    f68 = Path(args.faces68)
    if f68.is_dir():
        files = sorted(f68.glob("*.jpg")) + sorted(f68.glob("*.png"))
        items = [(f.stem, f, np.r_[_pts(f.with_suffix(".pts")).min(0), _pts(f.with_suffix(".pts")).max(0)]) for f in files]
        print(f"faces68: {len(items)} images ...", file=sys.stderr)
        report["faces68"] = summarise(evaluate(items, dlib_backend=not args.no_dlib), None)
    report["env"]["loadavg_end"] = os.getloadavg()[0]

    for set_name in ("aflw2000_dev", "faces68"):
        if set_name not in report:
            continue
        rows = report[set_name]
        print(f"\n{set_name}: first box is the face (IoU >= 0.5 with the 68-landmark box)")
        head = "| detector | found % | " + (" | ".join(BIN_NAMES) + " | " if set_name == "aflw2000_dev" else "") \
            + "median IoU | ms/image | time vs haar | time vs mmod |" \
            + (" NME % (found) | NME % (all found) |" if "nme_found" in rows.get("auto", {}) else "")
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for k, r in rows.items():
            cells = [k, f"{r['found_pct']:.1f}"]
            if "found_pct_by_yaw_bin" in r:
                cells += [f"{v:.1f}" if v is not None else "-" for v in r["found_pct_by_yaw_bin"].values()]
            cells += [f"{r['median_iou']:.2f}", f"{r['ms_per_image']:.1f}",
                      f"{r['ms_per_image'] / max(rows['haar']['ms_per_image'], 1e-9):.2f}x",
                      f"{r['ms_per_image'] / max(rows['mmod']['ms_per_image'], 1e-9):.2f}x"]
            if "nme_found" in r:
                cells += [f"{r['nme_found']:.2f} ({r['n_found']})" if r["nme_found"] is not None else "-",
                          f"{r['nme_common']:.2f} ({r['n_common']})" if r["nme_common"] is not None else "-"]
            print("| " + " | ".join(cells) + " |")
    print(f"\nthreads: {report['env']['threads']}; loadavg {report['env']['loadavg_start']:.2f} -> {report['env']['loadavg_end']:.2f}")
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
