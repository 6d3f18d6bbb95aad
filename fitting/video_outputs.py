r"""``morphable fit clip.mp4 --out DIR``: track a video and write its files.

For ``clip.mp4`` the folder gets:

* ``clip.jsonl``: one line per frame, ``{"frame", "time", "faces": [...]}`` (``faces`` empty where no
  face was found: gaps are recorded, never filled); a face has ``track``, ``yaw``/``pitch``/``roll``
  (degrees), ``landmarks`` (68 x 2 px, smoothed) and ``landmarks_raw``, ``rmse``, ``converged``,
  ``box``, ``detected``, and the parameters (``rotation``, ``scale``, ``translation``, ``expr``,
  ``shape`` = the track's identity so far). Lines are flushed as frames finish: after Ctrl-C,
  ``--resume`` keeps them and continues after the last one.
* ``clip_overlay.mp4``: the frames with the mesh (front-facing wireframe), landmarks and head axes,
  encoded by OpenCV on a background thread (redrawn from the JSONL on ``--resume``).
* ``clip_track{N}.npz`` per track: ``frames``, ``times``, ``shape`` (the final identity), ``expr``,
  ``rotation``, ``yaw_pitch_roll``, ``scale``, ``translation``, ``landmarks``.
* ``clip_track{N}_arkit.csv`` per track: ARKit blendshape curves (:mod:`fitting.blendshapes`), one
  row per frame of the video, empty fields where the track has no face.
* with ``--meshes``: ``clip_{frame:05d}_track{N}.obj`` per face and frame.

Everything but the JSONL and the OBJ files is written at the end from the JSONL, so an
interrupted run loses nothing that ``--resume`` cannot rebuild.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from morphable.errors import InputError

from .video import TrackedFace, Tracker, read_video, video_info

__all__ = ["fit_video", "video_paths", "face_json", "read_jsonl", "overlay_frame"]


def video_paths(out_dir: Path, stem: str) -> dict:
    return {"jsonl": out_dir / f"{stem}.jsonl", "overlay": out_dir / f"{stem}_overlay.mp4"}


def face_json(f: TrackedFace) -> dict:
    r = lambda a, n=3: np.round(np.asarray(a, dtype=np.float64), n).tolist()  # noqa: E731
    return {"track": f.track, "yaw": round(float(f.yaw_pitch_roll[0]), 3), "pitch": round(float(f.yaw_pitch_roll[1]), 3),
            "roll": round(float(f.yaw_pitch_roll[2]), 3), "landmarks": r(f.landmarks), "landmarks_raw": r(f.landmarks_raw),
            "rmse": round(f.rmse, 4), "converged": f.converged, "box": [int(v) for v in f.box], "detected": f.detected,
            "rotation": r(f.rotation, 6), "scale": round(f.scale, 6), "translation": r(f.translation, 3),
            "expr": r(f.expr, 5), "shape": r(f.shape, 5)}


def read_jsonl(path: Path) -> list[dict]:
    """The complete lines of a JSONL file (a last line cut by an interruption is dropped)."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def _vertices(model, face: dict) -> np.ndarray:
    """Image-aligned mesh (N, 3) of a JSONL face record."""
    from .pipeline import image_vertices

    return image_vertices(model, face["shape"], face["expr"], face["rotation"], face["scale"],
                          face["translation"]).detach().cpu().double().numpy()


def overlay_frame(image: np.ndarray, faces: list, triangles: np.ndarray) -> np.ndarray:
    """A video frame with each face's wireframe, landmarks and axes: ``faces`` are
    ``(vertices_img (N, 3) or None, landmarks (68, 2), rotation (3, 3))``."""
    from morphable import render

    out = image
    for V, lm, R in faces:
        if V is not None:
            out = render.draw_wireframe(out, V, triangles, every=2)
        out = render.draw_landmarks(out, lm)
        lm = np.asarray(lm)
        out = render.draw_axes(out, R, lm.mean(0), 0.4 * float(np.ptp(lm[:, 0])))
    return out


class _Encoder:
    """Overlay frames drawn and encoded on a background thread (OpenCV releases the GIL there)."""

    def __init__(self, path: Path, fps: float, size: tuple, triangles: np.ndarray):
        import cv2

        self.path = path
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            raise InputError(f"{path}: OpenCV cannot write an MP4 here (no mp4v encoder?)")
        self.T = triangles
        self.q: "queue.Queue" = queue.Queue(maxsize=16)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="overlay_encoder", daemon=True)
        self.thread.start()

    def _run(self):
        import cv2

        while True:
            item = self.q.get()
            if item is None:
                break
            try:
                image, faces = item
                self.writer.write(cv2.cvtColor(overlay_frame(image, faces, self.T), cv2.COLOR_RGB2BGR))
            except BaseException as e:  # noqa: BLE001 - reported by close()
                self.error = e

    def put(self, image: np.ndarray, faces: list) -> None:
        self.q.put((image, faces))

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        self.writer.release()
        if self.error is not None:
            raise self.error


def _write_tracks(out_dir: Path, stem: str, records: list[dict], names: list, fps: float) -> dict:
    """Per-track NPZ and ARKit CSV from the JSONL records; returns ``{track: {"npz", "csv"}}``."""
    from .blendshapes import write_arkit_csv

    times = np.array([r["time"] for r in records], dtype=np.float64)
    tracks = sorted({f["track"] for r in records for f in r["faces"]})
    files = {}
    for tid in tracks:
        rows = [(k, f) for k, r in enumerate(records) for f in r["faces"] if f["track"] == tid]
        idx = np.array([k for k, _ in rows])
        F = [f for _, f in rows]
        npz = out_dir / f"{stem}_track{tid}.npz"
        np.savez(npz, frames=np.array([records[k]["frame"] for k in idx]), times=times[idx],
                 shape=np.asarray(F[-1]["shape"]), expr=np.array([f["expr"] for f in F]),
                 rotation=np.array([f["rotation"] for f in F]),
                 yaw_pitch_roll=np.array([[f["yaw"], f["pitch"], f["roll"]] for f in F]),
                 scale=np.array([f["scale"] for f in F]), translation=np.array([f["translation"] for f in F]),
                 landmarks=np.array([f["landmarks"] for f in F]))
        W = np.full((len(records), len(names)), np.nan)
        ypr = np.full((len(records), 3), np.nan)
        W[idx] = [f["expr"] for f in F]
        ypr[idx] = [[f["yaw"], f["pitch"], f["roll"]] for f in F]
        csv = out_dir / f"{stem}_track{tid}_arkit.csv"
        write_arkit_csv(csv, times, W, names, ypr, fps)
        files[tid] = {"npz": npz, "csv": csv}
    return files


def fit_video(path, out_dir, fitter=None, smoothing: float = 1.0, meshes: bool = False, resume: bool = False,
              progress: bool = True, detect_every: int = 25, max_faces: Optional[int] = None) -> dict:
    """Track the faces of a video file and write its files (see the module docstring).

    Returns a summary dict: frames, frames with a face, tracks, seconds, frames/s (decode to all
    files), the stage times and the file paths.
    """
    from .pipeline import Fitter

    path, out_dir = Path(path), Path(out_dir)
    info = video_info(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    paths = video_paths(out_dir, stem)
    fitter = fitter if fitter is not None else Fitter()
    model = fitter.model
    T = model.triangles.cpu().numpy()
    names = list(model.info.expression_names)
    done = read_jsonl(paths["jsonl"]) if resume else []
    if not resume and paths["jsonl"].exists():
        paths["jsonl"].unlink()
    tracker = Tracker(fitter, smoothing=smoothing, detect_every=detect_every, max_faces=max_faces, meshes=True)
    if done:
        tracker.seed(done[-1]["faces"], counts=_track_counts(done))
    start = done[-1]["frame"] + 1 if done else 0
    fps = info.fps if info.fps > 0 else 25.0
    enc = _Encoder(paths["overlay"], fps, (info.width, info.height), T)
    t0 = time.perf_counter()
    stage = {"fit": 0.0, "write": 0.0}
    n = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=info.frames or None, initial=start, unit="frame", desc=stem, dynamic_ncols=True)
    records = list(done)
    try:
        if done:  # redraw the finished frames' overlays from their records
            by_frame = {r["frame"]: r for r in done}
            for i, t, im in read_video(path):
                if i >= start:
                    break
                r = by_frame.get(i)
                enc.put(im, [(_vertices(model, f), f["landmarks"], np.asarray(f["rotation"])) for f in (r["faces"] if r else [])])
        with open(paths["jsonl"], "a") as jf:
            for i, t, im in read_video(path, start=start):
                a = time.perf_counter()
                fr = tracker.step(im, t, i)
                b = time.perf_counter()
                enc.put(im, [(f.vertices_img, f.landmarks, f.rotation) for f in fr.faces])
                rec = {"frame": i, "time": round(t, 6), "faces": [face_json(f) for f in fr.faces]}
                jf.write(json.dumps(rec) + "\n")
                jf.flush()
                records.append(rec)
                if meshes:
                    from morphable.export import write_mesh

                    for f in fr.faces:
                        write_mesh(out_dir / f"{stem}_{i:05d}_track{f.track}.obj", f.vertices_img, T)
                stage["fit"] += b - a
                stage["write"] += time.perf_counter() - b
                n += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(fps=f"{n / max(time.perf_counter() - t0, 1e-9):.1f}", faces=len(fr.faces), refresh=False)
    finally:
        if bar is not None:
            bar.close()
        enc.close()
    if not records:
        raise InputError(f"{path}: no frames were read")
    tracks = _write_tracks(out_dir, stem, records, names, fps)
    dt = time.perf_counter() - t0
    return {"video": str(path), "frames": len(records), "frames_this_run": n,
            "frames_with_face": sum(bool(r["faces"]) for r in records), "tracks": sorted(tracks),
            "seconds": dt, "fps": n / dt if dt > 0 else 0.0, "stage_seconds": stage,
            "files": {"jsonl": str(paths["jsonl"]), "overlay": str(paths["overlay"]),
                      **{f"track{k}_{kind}": str(p) for k, v in tracks.items() for kind, p in v.items()}}}


def _track_counts(records: list[dict]) -> dict:
    c: dict = {}
    for r in records:
        for f in r["faces"]:
            c[f["track"]] = c.get(f["track"], 0) + 1
    return c
