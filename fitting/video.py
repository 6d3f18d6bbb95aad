r"""Faces through a video: read frames, track faces, one identity per track, smoothed parameters.

``for frame in track(frames): ...`` takes any iterable of frames ((H, W, 3) uint8 RGB arrays, or
``(time_s, array)`` pairs) and yields a :class:`TrackedFrame` per frame:

* **Detection** on the first frame, every ``detect_every`` frames (new faces) and whenever a track
  is lost; in between each face is cropped from its fitted landmarks of the previous frame
  (:func:`morphable.crop.box_from_landmarks`, the regressor's training crop), as 3DDFA_V2 does, so
  a frame costs one regressor call (the crop, four shifted crops and their mirror images in one
  batch: ``FitConfig.shifted_crops``) and the LM, no detector.
* **Tracks** keep their ids; detections are matched to tracks by box IoU. A track is lost when the
  regressed face leaves its crop (IoU of the regressed and the cropping box below ``lost_iou``);
  or when its crop no longer looks like the face it left in the last frame (normalised
  cross-correlation of small grey patches below ``min_ncc``); that frame is then detected again. Frames without a face yield no faces: gaps are recorded,
  never filled.
* **One identity per track**: the shape coefficients are the running mean of the regressor's
  per-frame estimates of the track (all frames so far), held fixed by the LM, which fits pose and
  expression per frame (:meth:`fitting.pipeline.Fitter.fit_crops` with ``shared_shape``).
* **Smoothing** (:mod:`fitting.smoothing`, One-Euro): landmarks, rotation (entrywise, projected back
  to a rotation), scale, translation and expression weights of each track, with the frame times.
  ``smoothing=0`` turns it off; the raw values are kept beside the smoothed ones.

:func:`read_video` yields ``(index, time_s, frame)`` from a file with OpenCV, times from the
container (variable frame rates keep their real times), decoded on a background thread.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import numpy as np
import torch

from morphable.crop import box_from_landmarks
from morphable.errors import InputError

__all__ = ["TrackedFace", "TrackedFrame", "Tracker", "track", "read_video", "video_info", "VIDEO_SUFFIXES"]

#: File suffixes ``morphable fit`` treats as videos.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass
class TrackedFace:
    """One face of one frame.

    Attributes:
        track: track id (0, 1, ... in order of appearance).
        landmarks: (68, 2) image px (y down), smoothed when smoothing is on; ``landmarks_raw`` unsmoothed.
        rotation: (3, 3) model -> camera; ``yaw_pitch_roll``: (3,) degrees (AFLW2000-3D convention).
        scale: pixels per mm; translation: (2,) px of the model origin.
        shape: (Ks,) the track's identity so far; expr: (Ke,) this frame's expression weights.
        rmse: px between the fitted landmarks and the landmark head's; converged: LM flag.
        box: (3,) [x0, y0, side] crop box of this frame; detected: this frame ran the detector for it.
        vertices_img: (N, 3) mesh in image px (x, y, depth), built from the smoothed parameters.
    """

    track: int
    landmarks: np.ndarray
    landmarks_raw: np.ndarray
    rotation: np.ndarray
    yaw_pitch_roll: np.ndarray
    scale: float
    translation: np.ndarray
    shape: np.ndarray
    expr: np.ndarray
    rmse: float
    converged: bool
    box: np.ndarray
    detected: bool
    vertices_img: Optional[np.ndarray] = None


@dataclass
class TrackedFrame:
    """A frame's faces (largest first); ``faces`` is empty where no face was found."""

    index: int
    time: float
    faces: list = field(default_factory=list)
    image: Optional[np.ndarray] = None


class _Track:
    def __init__(self, tid: int, box: np.ndarray, opts):
        from .smoothing import OneEuroFilter

        self.id = tid
        self.box = box
        self.shape_sum = None
        self.n = 0
        self.filters = {k: OneEuroFilter(opts) for k in ("lm", "R", "s", "t", "e")}
        self.recrop = True
        self.patch: Optional[np.ndarray] = None

    def identity(self, regressed: torch.Tensor) -> torch.Tensor:
        """Add this frame's regressed shape (Ks,) and return the running mean."""
        v = regressed.detach().double()
        self.shape_sum = v if self.shape_sum is None else self.shape_sum + v
        self.n += 1
        return (self.shape_sum / self.n).to(regressed.dtype)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two [x0, y0, side] squares."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[2] + b[2] * b[2] - inter + 1e-9)


def _patch(image: np.ndarray, box: np.ndarray, n: int = 32) -> np.ndarray:
    """The crop box's content as an (n, n) float32 grey patch (zero mean, unit norm; zeros when flat)."""
    from morphable.crop import CropBox, crop_image

    g = crop_image(image, CropBox(int(box[0]), int(box[1]), int(box[2])), n).astype(np.float32).mean(-1)
    g -= g.mean()
    nrm = float(np.linalg.norm(g))
    return g / nrm if nrm > 1e-3 * n else np.zeros_like(g)


def _box(lm: np.ndarray) -> np.ndarray:
    b = box_from_landmarks(lm)
    return np.array([b.x0, b.y0, b.side], dtype=np.int64)


class Tracker:
    """Stateful face tracker over consecutive frames (see the module docstring).

    Args:
        fitter: a :class:`fitting.pipeline.Fitter` (default: a new one with the default config).
        smoothing: One-Euro strength (:meth:`fitting.smoothing.SmoothingOptions.from_strength`); 0 = off.
        detect_every: run the detector every this many frames to find new faces (0 = only on the
            first frame and when a track is lost).
        max_faces: faces per frame at most (largest first).
        joint_identity: one shape per track (False: every frame fits its own shape).
        lost_iou: a track is lost when the regressed face's box overlaps its crop box less than this.
        min_ncc: ... or when its crop correlates less than this with the face it left in the last
            frame (32 x 32 grey patches, normalised cross-correlation; a cut or a blank frame).
        meshes: build ``vertices_img`` for every face (for overlays and OBJ files).
    """

    def __init__(self, fitter=None, smoothing: float = 1.0, detect_every: int = 25, max_faces: Optional[int] = None,
                 joint_identity: bool = True, lost_iou: float = 0.5, min_ncc: float = 0.4, meshes: bool = True):
        from .pipeline import Fitter
        from .smoothing import SmoothingOptions

        if smoothing < 0 or not np.isfinite(smoothing):
            raise InputError(f"smoothing must be a finite strength >= 0 (0 = off), got {smoothing}")
        if detect_every < 0:
            raise InputError(f"detect_every must be >= 0, got {detect_every}")
        self.fitter = fitter if fitter is not None else Fitter()
        self.opts = SmoothingOptions.from_strength(float(smoothing))
        self.smoothing = float(smoothing)
        self.detect_every = int(detect_every)
        self.max_faces = max_faces
        self.joint = joint_identity
        self.lost_iou = float(lost_iou)
        self.min_ncc = float(min_ncc)
        self.meshes = meshes
        m = self.fitter.model  # the blendshape range the smoothed weights are kept in
        self.expr_lo = m.expr_lower.detach().cpu().double().numpy()
        self.expr_hi = m.expr_upper.detach().cpu().double().numpy()
        self.tracks: list[_Track] = []
        self.next_id = 0
        self.k = 0

    def seed(self, faces: list, counts: Optional[dict] = None) -> None:
        """Continue the tracks of an earlier run (``--resume``): ``faces`` are the JSONL records
        (:func:`fitting.video_outputs.face_json`) of its last frame, ``counts`` {track: frames seen},
        the weight of each identity in the running mean. Smoothing starts afresh."""
        counts = counts or {}
        for f in faces:
            tr = _Track(int(f["track"]), _box(np.asarray(f["landmarks_raw"], dtype=np.float64)), self.opts)
            n = int(counts.get(f["track"], 1))
            tr.shape_sum, tr.n, tr.recrop = torch.tensor(f["shape"], dtype=torch.float64) * n, n, False
            self.tracks.append(tr)
        ids = [int(k) for k in counts] + [tr.id for tr in self.tracks]
        self.next_id = max([self.next_id - 1, *ids]) + 1

    # ------------------------------------------------------------------ one frame
    def step(self, image: np.ndarray, t: float, index: Optional[int] = None) -> TrackedFrame:
        """Track the faces of one frame (uint8 RGB (H, W, 3)) at time ``t`` seconds."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"frames must be (H, W, 3) uint8 RGB arrays, got {getattr(image, 'shape', type(image))}")
        idx = self.k if index is None else index
        detect = not self.tracks or bool(self.detect_every and self.k % self.detect_every == 0)
        self.k += 1
        placed = self._detect(image) if detect else set()
        results = self._fit(image, t, placed)
        lost = [tr for tr in self.tracks if results.get(tr.id, 0) is None]
        if lost:
            self.tracks = [tr for tr in self.tracks if tr not in lost]
            if not detect:  # a face left its crop: detect this frame again; a lost track found again keeps its id
                again = self._detect(image, reuse=lost, new_tracks=False)
                results.update(self._fit(image, t, again, only=again))
        faces = [f for f in results.values() if f is not None]
        alive = {f.track for f in faces}
        self.tracks = [tr for tr in self.tracks if tr.id in alive]
        faces.sort(key=lambda f: -f.box[2])
        return TrackedFrame(idx, float(t), faces)

    def _detect(self, image: np.ndarray, reuse: Optional[list] = None, new_tracks: bool = True) -> set:
        """Place detections: one overlapping a track (IoU >= 0.3 of the crop boxes) re-places that
        track; the others take over the tracks of ``reuse`` (just lost, keeping their ids) and then,
        with ``new_tracks``, start new ones. Returns the ids placed."""
        det = self.fitter.detector.detect(image)
        boxes = [np.array([b.x0, b.y0, b.side], dtype=np.int64) for b in det.crop_boxes()]
        if self.max_faces:
            boxes = boxes[: self.max_faces]
        reuse = list(reuse or [])
        placed = set()
        for b in boxes:
            cands = [tr for tr in self.tracks if tr.id not in placed]
            best = max(cands, key=lambda tr: _iou(tr.box, b), default=None)
            if best is not None and _iou(best.box, b) >= 0.3:
                if reuse or new_tracks:  # a periodic detection: re-place the track on the detector's box
                    best.box, best.recrop = b, True
                    placed.add(best.id)
                continue
            if reuse:
                tr = reuse.pop(0)
            elif new_tracks and (self.max_faces is None or len(self.tracks) < self.max_faces):
                tr = _Track(self.next_id, b, self.opts)
                self.next_id += 1
            else:
                continue
            tr.box, tr.recrop = b, True
            self.tracks.append(tr)
            placed.add(tr.id)
        return placed

    def _fit(self, image: np.ndarray, t: float, placed: set, only: Optional[set] = None) -> dict:
        """Fit every track (or the ids ``only``): ``{track id: TrackedFace, or None when lost}``.
        Tracks placed by the detector re-crop once on their regressed landmarks; the others are
        cropped from their last frame's landmarks."""
        from morphable.geometry import rotmat_to_angles

        from .pipeline import image_vertices
        from .smoothing import project_to_rotation

        trs = [tr for tr in self.tracks if only is None or tr.id in only]
        fitter = self.fitter
        out: dict = {}
        # a tracked face must still look like itself: the grey patch at its crop box against the
        # one it left in the last frame (normalised cross-correlation); a face that vanished (cut,
        # occlusion, blank frame) is lost here instead of being invented by the regressor
        for tr in trs:
            if not tr.recrop and tr.patch is not None and float((_patch(image, tr.box) * tr.patch).sum()) < self.min_ncc:
                out[tr.id] = None
        trs = [tr for tr in trs if tr.id not in out]
        groups = {rc: [tr for tr in trs if tr.recrop == rc] for rc in (True, False)}  # before fitting clears the flags
        for recrop, group in groups.items():
            if not group:
                continue
            boxes = np.stack([tr.box for tr in group])
            shared = None
            if self.joint:
                def shared(sh, group=group):
                    return torch.stack([tr.identity(sh[i]) for i, tr in enumerate(group)])
            fits = fitter.fit_crops([image] * len(group), boxes, recrop=recrop, shared_shape=shared)
            head = fits.head_landmarks.detach().cpu().numpy()
            for i, tr in enumerate(group):
                tr.recrop = False
                if not recrop and _iou(_box(head[i]), fits.boxes[i]) < self.lost_iou:
                    out[tr.id] = None  # the face left its crop
                    continue
                p = fits.params.index(slice(i, i + 1))
                lm_raw = fits.landmarks[i].detach().cpu().numpy().astype(np.float64)
                R = fits.rotation[i].detach().cpu().numpy().astype(np.float64)
                s, tt = float(p.scale[0]), p.translation[0].detach().cpu().numpy().astype(np.float64)
                e = p.expr[0].detach().cpu().numpy().astype(np.float64)
                lm = lm_raw
                if self.smoothing > 0:
                    lm = tr.filters["lm"](lm_raw, t)
                    R = project_to_rotation(tr.filters["R"](R, t))
                    s = float(tr.filters["s"](np.array([s]), t)[0])
                    tt = tr.filters["t"](tt, t)
                    e = np.clip(tr.filters["e"](e, t), self.expr_lo, self.expr_hi)
                tr.box = _box(lm_raw)  # the next frame's crop
                tr.patch = _patch(image, tr.box)
                ang = np.rad2deg(rotmat_to_angles(torch.as_tensor(R)).numpy())  # [pitch, yaw, roll]
                V = None
                if self.meshes:
                    V = image_vertices(fitter.model, p.shape[0], e, R, s, tt).detach().cpu().double().numpy()
                out[tr.id] = TrackedFace(
                    track=tr.id, landmarks=lm, landmarks_raw=lm_raw, rotation=R,
                    yaw_pitch_roll=np.array([ang[1], ang[0], ang[2]]), scale=s, translation=tt,
                    shape=p.shape[0].detach().cpu().double().numpy(), expr=e, rmse=float(fits.rmse[i]),
                    converged=bool(fits.converged[i]), box=fits.boxes[i].copy(), detected=tr.id in placed, vertices_img=V)
        return out



def track(frames: Iterable, fitter=None, fps: float = 25.0, **kw) -> Iterator[TrackedFrame]:
    """Track faces through ``frames``: arrays (H, W, 3) uint8 RGB (times ``index / fps``) or
    ``(time_s, array)`` pairs; yields one :class:`TrackedFrame` per frame. ``kw``: :class:`Tracker`
    options (``smoothing``, ``detect_every``, ``max_faces``, ``joint_identity``, ``meshes``)."""
    tr = Tracker(fitter, **kw)
    for i, fr in enumerate(frames):
        t, im = fr if isinstance(fr, tuple) else (i / fps, fr)
        yield tr.step(im, t, i)


# ---------------------------------------------------------------------------------------- reading
@dataclass
class VideoInfo:
    """What the container says: frame count (may be an estimate), nominal frames/s, size."""

    frames: int
    fps: float
    width: int
    height: int


_OPEN_LOCK = threading.Lock()


def _capture(path: Union[str, Path]):
    """``cv2.VideoCapture`` (FFmpeg) that decodes every frame the file holds: FFmpeg's MP4 demuxer
    is told to ignore the edit list (``ignore_editlist``), which otherwise hides frames with
    negative timestamps: OpenCV then reads 55 of the 158 frames of ../shared's obama.mp4. The
    option travels in ``OPENCV_FFMPEG_CAPTURE_OPTIONS``, set only while the file is opened (a
    value the user set is kept)."""
    import os

    import cv2

    key = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
    with _OPEN_LOCK:
        old = os.environ.get(key)
        if old is None:
            os.environ[key] = "ignore_editlist;1"
        try:
            return cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        finally:
            if old is None:
                del os.environ[key]


def video_info(path: Union[str, Path]) -> VideoInfo:
    """Open ``path`` with OpenCV and read its header; InputError if it is not a readable video."""
    import cv2

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: video file not found")
    cap = _capture(p)
    try:
        if not cap.isOpened():
            raise InputError(f"{p}: not a readable video (OpenCV cannot open it; is it truncated or another format?)")
        return VideoInfo(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
                         int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        cap.release()


def read_video(path: Union[str, Path], start: int = 0, prefetch: int = 8) -> Iterator[tuple[int, float, np.ndarray]]:
    """``(index, time_s, rgb)`` for every frame of a video file, decoded on a background thread.

    Times come from the container (``CAP_PROP_POS_MSEC`` of each frame), so a variable frame rate
    keeps its real times; every frame the file holds is read (:func:`_capture`); frames before ``start`` are decoded and skipped. Raises InputError for a
    missing or unreadable file and for a video without a single decodable frame; a truncated file
    ends at its last decodable frame.
    """
    import cv2

    info = video_info(path)
    q: "queue.Queue" = queue.Queue(maxsize=max(prefetch, 1))
    stop = threading.Event()

    def worker():
        cap = _capture(path)
        i = 0
        try:
            while not stop.is_set():
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                if not np.isfinite(t) or (t <= 0 and i > 0):
                    t = i / (info.fps or 25.0)
                if i >= start:
                    q.put((i, t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
                i += 1
        finally:
            cap.release()
            q.put(None)

    th = threading.Thread(target=worker, name="read_video", daemon=True)
    th.start()
    n = 0
    try:
        while True:
            item = q.get()
            if item is None:
                break
            n += 1
            yield item
    finally:
        stop.set()
        while th.is_alive():  # unblock the worker if it waits on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(0.05)
    if n == 0 and start == 0:
        raise InputError(f"{path}: the video has no decodable frames (empty or truncated before the first frame)")
