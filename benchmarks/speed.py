"""End-to-end speed of ``fit`` per face, stage by stage, beside the simplest baseline.

``python -m benchmarks.speed [--data DIR] [--n 64] [--threads 1] [--weights W] [--whole 32] [--json]``

Stages on real photos (``../shared/data/aflw2000-3d-dev`` by default): image decode, face
detection (the default BlazeFace detector, beside OpenCV Haar and dlib's MMOD measured in the same
run), crop, regressor, LM refinement (5 iterations from the regressor's
parameters), mesh build and OBJ export. The baseline does the same job without the regressor's
parameters: LM from the mean face and the closed-form pose (20 iterations) against the same
landmark-head points. Then the whole ``Fitter.fit(image)`` of one decoded photo at a time (what a
user's call costs: detection, regressor, LM, mesh; no export), with its stages. Both run in the same process, on the same faces, with the same thread
settings; times are medians of ``--repeat`` runs, in milliseconds per face. The accuracy of both
against the dataset's 68 landmarks (2D NME, %) is printed beside the times.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _median_time(fn, repeat: int):
    ts = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared/data/aflw2000-3d-dev"))
    ap.add_argument("--n", type=int, default=64, help="faces (images) to time")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--whole", type=int, default=32, help="photos for the whole-fit timing (one at a time)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import cv2

    cv2.setNumThreads(a.threads)
    from benchmarks.protocol import read_annotation
    from fitting.detect import DlibCNNDetector, OpenCVDetector, default_detector
    from fitting.pipeline import FitConfig, Fitter
    from fitting.solver import FitOptions, fit_landmarks
    from morphable.crop import box_from_landmarks, crop_image
    from morphable.export import write_mesh
    from morphable.geometry import project

    data = Path(a.data)
    files = sorted(data.glob("*.jpg"))[: a.n]
    if not files:
        raise SystemExit(f"error: no images in {data}")
    fitter = Fitter(FitConfig(weights=a.weights, iterations=5))
    model = fitter.model
    gts = [read_annotation(f.with_suffix(".mat")) for f in files]
    gt = np.stack([g.landmarks[:, :2] for g in gts])
    B = len(files)
    ms = {}

    t_dec, imgs = _median_time(lambda: [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files], a.repeat)
    ms["decode"] = t_dec / B * 1e3
    det = OpenCVDetector()
    t_det, _ = _median_time(lambda: [det.detect(im) for im in imgs], 1)
    ms["detect (Haar)"] = t_det / B * 1e3
    det2 = default_detector()
    det2.detect(imgs[0])  # warm-up: the first call of a torch network is slow
    t_det2, _ = _median_time(lambda: [det2.detect(im) for im in imgs], a.repeat)
    ms["detect (default: BlazeFace; MMOD + Haar where it finds nothing)"] = t_det2 / B * 1e3
    det3 = DlibCNNDetector()
    t_det3, _ = _median_time(lambda: [det3.detect(im) for im in imgs], 1)
    ms["detect (MMOD)"] = t_det3 / B * 1e3
    boxes = np.array([[b.x0, b.y0, b.side] for b in (box_from_landmarks(g) for g in gt)])
    S = fitter.crop_size
    t_crop, crops = _median_time(lambda: np.stack([crop_image(im, type(box_from_landmarks(g))(*b), S) for im, g, b in zip(imgs, gt, boxes)]), a.repeat)
    ms["crop"] = t_crop / B * 1e3
    t_reg, out = _median_time(lambda: fitter.predictor.predict(crops), a.repeat)
    ms["regressor"] = t_reg / B * 1e3
    fits0 = fitter.fit_crops(imgs, boxes, refine=False)
    head, init = fits0.head_landmarks, fits0.params
    t_lm, res = _median_time(lambda: fit_landmarks(model, head, init=init, options=FitOptions(max_iterations=5, check_every=0)), a.repeat)
    ms["LM (5 it, regressor start)"] = t_lm / B * 1e3
    t_base, base = _median_time(lambda: fit_landmarks(model, head, options=FitOptions(max_iterations=20, check_every=0)), a.repeat)
    tmp = Path(tempfile.mkdtemp())

    def build_export():
        p = res.params
        V = model.vertices(p.shape[:8], p.expr[:8])
        for i in range(len(V)):
            write_mesh(tmp / f"f{i}.obj", V[i].numpy(), model.triangles.numpy())
        return V

    build_export()  # warm-up: the first call also imports trimesh
    t_exp, _ = _median_time(build_export, 3)
    ms["mesh + OBJ export"] = t_exp / 8 * 1e3

    # a whole fit on one photo at a time, as a user calls it: detection, crop, regressor (direct,
    # then on the re-crop: direct, shifted and mirrored crops in one batch), LM, FaceFit and mesh; no export
    n_whole = min(B, a.whole)
    for im in imgs[:2]:
        fitter.fit(im)  # warm-up
    reg_stage = f"regressor (first pass; re-crop pass: direct, {fitter.shifted_crops} shifted, all mirrored)"
    whole, stages = [], {"detect": [], reg_stage: [], "LM": []}
    for im in imgs[:n_whole]:
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            fitter.fit(im)
            whole.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        det = fitter.detector.detect(im)
        stages["detect"].append(time.perf_counter() - t0)
        cb = det.crop_boxes()[:1]
        if cb:
            f = fitter.fit_crops([im], np.array([[cb[0].x0, cb[0].y0, cb[0].side]]), recrop=True)
            stages[reg_stage].append(f.timings["regressor"])
            stages["LM"].append(f.timings["lm"])
    whole_ms = float(np.median(whole)) * 1e3
    stage_ms = {k: float(np.median(v)) * 1e3 for k, v in stages.items() if v}

    from regressors.bench import format_preset_latency, preset_latency

    nets = preset_latency(500, model)

    def nme(lm):
        lm = lm.detach().numpy() if isinstance(lm, torch.Tensor) else lm
        ext = gt.max(1) - gt.min(1)
        return float(np.mean(np.linalg.norm(lm - gt, axis=-1).mean(1) / np.sqrt(ext[:, 0] * ext[:, 1]) * 100))

    p = res.params
    ours_lm = project(model.landmark_points(p.shape, p.expr), p.rotation, p.scale, p.translation)
    bp = base.params
    base_lm = project(model.landmark_points(bp.shape, bp.expr), bp.rotation, bp.scale, bp.translation)
    reg_only = fits0.landmarks
    total_ours = ms["decode"] + ms["crop"] + ms["regressor"] + ms["LM (5 it, regressor start)"]
    total_base = ms["decode"] + ms["crop"] + ms["regressor"] + t_base / B * 1e3
    result = {
        "faces": B, "threads": a.threads, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "ms_per_face": ms,
        "baseline_lm_mean_face_20it_ms": t_base / B * 1e3,
        "lm_speedup_vs_baseline": (t_base / t_lm) if t_lm > 0 else None,
        "total_ms_without_detection": {"ours": total_ours, "baseline": total_base},
        "detect_time_ratio": {"default_vs_mmod": t_det2 / t_det3, "default_vs_haar": t_det2 / t_det},
        "regressor_backend": type(fitter.predictor).__name__,
        "networks_batch1_onnxruntime": nets,
        "whole_fit_per_photo_ms": whole_ms, "whole_fit_photos": n_whole, "whole_fit_stages_ms": stage_ms,
        "nme_2d_vs_gt": {"regressor only": nme(reg_only), "regressor + LM 5 it": nme(ours_lm),
                         "baseline LM 20 it from mean face": nme(base_lm)},
    }
    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"# fit speed per face on {B} AFLW2000-3D dev photos, torch {torch.__version__}, threads={a.threads} "
          f"(torch and OpenCV), median of {a.repeat}, box = standard crop from the GT landmarks")
    print("| stage | ms / face |\n|---|---|")
    for k, v in ms.items():
        print(f"| {k} | {v:.2f} |")
    print(f"| baseline: LM 20 it from the mean face | {t_base / B * 1e3:.2f} |")
    print(f"\ntotal without detection: ours {total_ours:.2f} ms/face, baseline {total_base:.2f} ms/face "
          f"(LM stage {t_base / t_lm:.1f}x faster than the baseline's)")
    print(f"\nwhole `Fitter.fit(image)` on one photo at a time (decoded; detection, regressor on {result['regressor_backend']}, "
          f"LM, mesh; no export), median over {n_whole} photos x {a.repeat}: {whole_ms:.2f} ms per photo")
    print("| stage of one photo | ms (median) |\n|---|---|")
    for k, v in stage_ms.items():
        print(f"| {k} | {v:.2f} |")
    print("\nregressor networks at batch 1, 1 thread, onnxruntime, blocks of 25 calls interleaved:\n" + format_preset_latency(nets))
    print("\n| landmarks | 2D NME % vs GT (these faces) |\n|---|---|")
    for k, v in result["nme_2d_vs_gt"].items():
        print(f"| {k} | {v:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
