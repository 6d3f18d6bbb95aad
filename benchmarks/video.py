"""Video tracking on a real clip: frames/s end to end, stage times, jitter and lag of the smoothing,
and how much a face's identity flickers with and without the joint (per-track) shape.

    python -m benchmarks.video [--video ../shared/data/video/obama.mp4] [--threads 2] [--json]

* **Speed**: ``fitting.video_outputs.fit_video`` (what ``morphable fit clip.mp4`` runs) from the
  first decoded frame to the last file written (JSONL, overlay MP4 drawn and encoded on a
  background thread, per-track NPZ and ARKit CSV), frames/s = frames / wall seconds; the stage
  times are the tracker's (main thread) and the per-frame writing.
* **Jitter** (:func:`fitting.smoothing.jitter`): mean norm of the landmarks' frame-to-frame second
  difference in % of the face size (the landmarks' bounding-box sqrt(w h)), on the still stretch
  of the clip: the ``--still`` consecutive frames (default 25, one second) with the least raw head
  rotation change (sum of |d yaw| + |d pitch| + |d roll|), found on the raw fits; smoothed
  against raw, from the same run (the JSONL holds both).
* **Lag** (:func:`fitting.smoothing.lag_frames`): the shift of the smoothed landmarks that best
  matches the raw ones over the whole clip, in frames.
* **Identity flicker**: mean frame-to-frame change of the neutral face (shape only, expression 0),
  mean vertex distance in mm, with the joint shape (a running mean per track, what is shipped) and
  with a free shape per frame (a second run with ``joint_identity=False``).
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

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def _still_window(ypr: np.ndarray, n: int) -> slice:
    motion = np.abs(np.diff(ypr, axis=0)).sum(1)  # (T-1,)
    if len(motion) < n:
        return slice(0, len(ypr))
    c = np.convolve(motion, np.ones(n - 1), "valid")  # motion inside each window of n frames
    k = int(np.argmin(c))
    return slice(k, k + n)


def _neutral_flicker(model, shapes: np.ndarray) -> float:
    """Mean over consecutive frames of the mean vertex distance (mm) between the neutral faces."""
    S = torch.as_tensor(shapes, dtype=model.mean.dtype)
    V = model.vertices(S, torch.zeros(len(S), model.n_expr, dtype=S.dtype))
    return float((V[1:] - V[:-1]).norm(dim=-1).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.video", description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", default=str(SHARED / "data/video/obama.mp4"))
    ap.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads of the fitter (default 2: both cores)")
    ap.add_argument("--still", type=int, default=25, help="frames of the still stretch for the jitter")
    ap.add_argument("--smooth", type=float, default=1.0, help="smoothing strength (the CLI's default 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (frames/s under 'fps')")
    a = ap.parse_args(argv)
    import cv2

    from fitting.pipeline import FitConfig, Fitter
    from fitting.smoothing import jitter, lag_frames
    from fitting.video import Tracker, read_video
    from fitting.video_outputs import fit_video, read_jsonl

    torch.set_num_threads(a.threads)
    cv2.setNumThreads(1)
    fitter = Fitter(FitConfig(threads=a.threads))
    with tempfile.TemporaryDirectory() as d:
        fit_video(a.video, Path(d) / "warm", fitter, smoothing=a.smooth, progress=False)  # warm-up (exports, caches)
        t0 = time.perf_counter()
        summary = fit_video(a.video, Path(d), fitter, smoothing=a.smooth, progress=False)
        wall = time.perf_counter() - t0
        recs = read_jsonl(Path(summary["files"]["jsonl"]))
    frames = [r for r in recs if r["faces"]]
    main_track = min(f["track"] for r in frames for f in r["faces"])
    F = [next(f for f in r["faces"] if f["track"] == main_track) for r in frames if any(f["track"] == main_track for f in r["faces"])]
    raw = np.array([f["landmarks_raw"] for f in F])
    smo = np.array([f["landmarks"] for f in F])
    ext = raw.max(1) - raw.min(1)
    size = np.sqrt(ext[:, 0] * ext[:, 1])
    ypr_raw = np.array([[f["yaw"], f["pitch"], f["roll"]] for f in F])
    w = _still_window(ypr_raw, a.still)
    j_raw, j_smo = jitter(raw[w], size[w]), jitter(smo[w], size[w])
    lag = lag_frames(raw, smo)
    # identity flicker: joint (the run above) vs a free shape per frame
    joint_shapes = np.array([f["shape"] for f in F])
    tr = Tracker(fitter, smoothing=0.0, joint_identity=False, meshes=False)
    free = []
    for i, t, im in read_video(a.video):
        fr = tr.step(im, t, i)
        if fr.faces:
            free.append(fr.faces[0].shape)
    model = fitter.model
    flick_joint, flick_free = _neutral_flicker(model, joint_shapes), _neutral_flicker(model, np.array(free))
    res = {
        "video": a.video, "frames": summary["frames"], "frames_with_face": summary["frames_with_face"],
        "tracks": summary["tracks"], "fps": summary["frames"] / wall, "wall_s": wall,
        "stage_ms_per_frame": {k: 1e3 * v / summary["frames"] for k, v in summary["stage_seconds"].items()},
        "threads": a.threads, "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "smoothing": a.smooth,
        "still_frames": [int(frames[w.start]["frame"]), int(frames[w.stop - 1]["frame"])],
        "jitter_pct": {"raw": j_raw, "smoothed": j_smo, "reduction": j_raw / j_smo if j_smo > 0 else None},
        "lag_frames": lag,
        "identity_flicker_mm": {"joint": flick_joint, "per_frame": flick_free,
                                "reduction": flick_free / flick_joint if flick_joint > 0 else None},
    }
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"# video tracking on {Path(a.video).name}: {res['frames']} frames, {res['frames_with_face']} with a face, "
          f"tracks {res['tracks']}; {a.threads} thread(s), {res['cpus']} CPUs")
    print(f"frames/s end to end (decode -> JSONL, overlay MP4, NPZ, CSV): **{res['fps']:.1f}** ({wall:.2f} s)")
    print("| stage (main thread) | ms / frame |\n|---|---|")
    for k, v in res["stage_ms_per_frame"].items():
        print(f"| {k} | {v:.2f} |")
    print(f"\njitter on the still stretch (frames {res['still_frames'][0]}-{res['still_frames'][1]}), % of face size: "
          f"raw {j_raw:.4f}, smoothed {j_smo:.4f} ({res['jitter_pct']['reduction']:.1f}x less); lag {lag} frame(s)")
    print(f"identity flicker (neutral face, mean vertex change per frame): joint shape {flick_joint:.4f} mm, "
          f"free shape per frame {flick_free:.4f} mm ({res['identity_flicker_mm']['reduction']:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
