"""Per-face output files of ``morphable fit``: mesh, pose JSON, overlay picture.

For face ``k`` of an image with stem ``<stem>`` (face 0 has no suffix, face k >= 1 gets ``_k``):

* ``<stem>[_k].obj``: the fitted mesh, **image-aligned and right-handed**: ``x`` = image column
  (px), ``y = H - 1 - row`` (px, up), ``z`` = depth (px, toward the camera, the same pixels per
  mm as x and y). A front view in any mesh viewer shows the face as in the photo, and the mesh
  lies exactly on the picture if the photo is placed as a plane with its bottom-left pixel centre
  at the origin. Per-vertex colours are sampled from the photo; vertices the camera does not see
  are neutral grey. Vertex order is the model's.
* ``<stem>[_k].json``: pose (yaw, pitch, roll in degrees, AFLW2000-3D convention, see
  :mod:`morphable.geometry`), rotation matrix, weak-perspective scale (px/mm) and translation
  (px), the 68 landmarks (image px, 0-based, y down), fit RMSE (px), convergence, detection box,
  model name, image size and the mesh frame.
* ``<stem>[_k]_overlay.png``: the shaded mesh over the photo with landmarks and pose axes.

Every file is written atomically (temporary file in the same folder, then ``os.replace``): a
crash or Ctrl-C leaves either the old file or the new one, never half a file.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from morphable import render

__all__ = ["FaceRecord", "output_paths", "write_face", "record_json", "mesh_frame_vertices", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
_UMASK = os.umask(0o022)
os.umask(_UMASK)
MESH_FRAME = "x: image column px; y: H-1-row px (up); z: depth px toward the camera (right-handed)"


@dataclass
class FaceRecord:
    """Everything written for one fitted face.

    Attributes:
        image: (H, W, 3) uint8 RGB photo the face was fitted in.
        stem: output file stem (usually the image file's stem).
        index: face number k in the image (0 = first/best).
        vertices_img: (N, 3) image-aligned vertices: x, y px (y down), depth px (larger = nearer).
        triangles: (T, 3) int.
        landmarks: (68, 2) image px.
        rotation: (3, 3) model -> camera rotation.
        angles_deg: (3,) [yaw, pitch, roll] degrees.
        scale: pixels per mm.
        translation: (2,) px, image position of the model origin.
        rmse: landmark fit error, px (NaN if unknown).
        converged: whether the refinement converged.
        box: (4,) detection box [x0, y0, x1, y1] px (or None).
        model_name: name of the morphable model.
        extra: more JSON-ready fields to store (e.g. timings, source image path).
    """

    image: np.ndarray
    stem: str
    index: int
    vertices_img: np.ndarray
    triangles: np.ndarray
    landmarks: np.ndarray
    rotation: np.ndarray
    angles_deg: Sequence[float]
    scale: float
    translation: Sequence[float]
    rmse: float = float("nan")
    converged: bool = False
    box: Optional[Sequence[float]] = None
    model_name: str = ""
    extra: dict = field(default_factory=dict)


def _np(a, dtype=np.float64) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype)


def output_paths(out_dir, stem: str, index: int = 0) -> dict:
    """``{"mesh", "json", "overlay"}`` -> Path of face ``index`` of image ``stem`` in ``out_dir``."""
    base = Path(out_dir) / (stem if index == 0 else f"{stem}_{index}")
    return {"mesh": base.with_name(base.name + ".obj"), "json": base.with_name(base.name + ".json"),
            "overlay": base.with_name(base.name + "_overlay.png")}


def mesh_frame_vertices(vertices_img, height: int) -> np.ndarray:
    """Image-aligned vertices (x, y down, depth) -> the right-handed OBJ frame (x, H-1-y, depth)."""
    V = _np(vertices_img).copy()
    V[:, 1] = (height - 1) - V[:, 1]
    return V


def _finite(x) -> Optional[float]:
    x = float(x)
    return x if np.isfinite(x) else None


def record_json(rec: FaceRecord, files: Optional[dict] = None) -> dict:
    """The JSON document of one face (plain Python types; NaN/inf become null)."""
    H, W = rec.image.shape[:2]
    yaw, pitch, roll = (float(a) for a in _np(rec.angles_deg).reshape(3))
    lm = _np(rec.landmarks).reshape(-1, 2)
    doc = {
        "schema": SCHEMA_VERSION,
        "stem": rec.stem,
        "face": int(rec.index),
        "image_size": [int(W), int(H)],
        "model": rec.model_name,
        "pose": {"yaw": yaw, "pitch": pitch, "roll": roll, "units": "degrees",
                 "convention": "AFLW2000-3D: R = Rx(pitch) Ry(yaw) Rz(roll); yaw > 0 turns the face to image-left"},
        "rotation": _np(rec.rotation).reshape(3, 3).tolist(),
        "scale": float(rec.scale),
        "translation": _np(rec.translation).reshape(2).tolist(),
        "projection": "x_img = scale * [[1,0,0],[0,-1,0]] @ rotation @ X_model_mm + translation (px, 0-based, y down)",
        "landmarks": [[_finite(x), _finite(y)] for x, y in lm],
        "rmse_px": _finite(rec.rmse),
        "converged": bool(rec.converged),
        "box": None if rec.box is None else [float(v) for v in _np(rec.box).reshape(-1)],
        "mesh_frame": MESH_FRAME,
    }
    if files:
        doc["files"] = {k: Path(v).name for k, v in files.items()}
    doc.update(rec.extra)
    return doc


def _atomic(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then move the result over ``path``; no partial file on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs are ordinary files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_obj(path: Path, V: np.ndarray, T: np.ndarray, colors: np.ndarray) -> None:
    from morphable.export import write_mesh  # atomic: temporary file + os.replace

    write_mesh(path, V, T, colors=colors)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    _atomic(path, lambda p: Path(p).write_bytes(buf.tobytes()))


def write_face(rec: FaceRecord, out_dir, overlay: bool = True, mesh: bool = True) -> dict:
    """Write the mesh, JSON and overlay of one face; returns ``{"mesh", "json", "overlay"}`` paths
    (only those written). The JSON is written last, so its presence marks a complete face."""
    paths = output_paths(out_dir, rec.stem, rec.index)
    img = np.asarray(rec.image)
    H, W = img.shape[:2]
    V = _np(rec.vertices_img)
    T = _np(rec.triangles, np.int64)
    written = {}
    depth_map = None
    if mesh:
        depth_map, _ = render.rasterize(V, T, H, W)
        vis = render.vertex_visibility(V, T, H, W, depth_map=depth_map)
        colors = render.sample_colors(img, V, vis)
        _write_obj(paths["mesh"], mesh_frame_vertices(V, H), T, colors)
        written["mesh"] = paths["mesh"]
    if overlay:
        pic = render.overlay(img, V, T, landmarks=_np(rec.landmarks), rotation=_np(rec.rotation))
        _write_png(paths["overlay"], pic)
        written["overlay"] = paths["overlay"]
    doc = record_json(rec, {**written, "json": paths["json"]})
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    _atomic(paths["json"], lambda p: Path(p).write_text(text))
    written["json"] = paths["json"]
    return written
