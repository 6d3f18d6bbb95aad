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

Extra outputs, on request (``extras``; the CLI's ``--texture`` and ``--save``):

* ``texture``: ``<stem>[_k]_textured.obj`` + ``.mtl`` + ``.png`` (the mesh in the same frame with
  one UV per vertex and the UV texture sampled from the photo, :mod:`morphable.texture`) and
  ``<stem>[_k].glb`` (the same, one binary glTF file for browser viewers).
* ``depth``: ``<stem>[_k]_depth.png``, the depth map from the rasteriser at the photo's size,
  16-bit grey, brighter = nearer: ``depth_px = far + (value - 1) * (near - far) / 65534``, 0 = no
  face; ``near``/``far`` (px, the mesh's depth range) are in the JSON's ``depth_png``.
* ``normals``: ``<stem>[_k]_normals.png``, the normal map at the photo's size, RGB =
  ``(n + 1) / 2 * 255`` with ``n`` the unit normal in the view frame (x right, y up, z toward the
  camera), black = no face.

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
from morphable.errors import InputError

__all__ = ["FaceRecord", "output_paths", "write_face", "record_json", "mesh_frame_vertices", "depth_png_range",
           "SCHEMA_VERSION", "EXTRAS"]

SCHEMA_VERSION = 1
_UMASK = os.umask(0o022)
os.umask(_UMASK)
MESH_FRAME = "x: image column px; y: H-1-row px (up); z: depth px toward the camera (right-handed)"
#: Optional outputs -> the files each writes (keys of :func:`output_paths`).
EXTRAS = {"texture": ("textured_obj", "textured_mtl", "texture", "glb"), "depth": ("depth",), "normals": ("normals",)}
_SUFFIX = {"mesh": ".obj", "json": ".json", "overlay": "_overlay.png", "textured_obj": "_textured.obj",
           "textured_mtl": "_textured.mtl", "texture": "_textured.png", "glb": ".glb", "depth": "_depth.png",
           "normals": "_normals.png"}


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
        uv: (N, 2) the model's texture coordinates in [0, 1] (v up), or None / (0, 2) without.
        mirror: (N,) each vertex's mirror vertex (fills the hidden side of the texture), or None.
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
    uv: Optional[np.ndarray] = None
    mirror: Optional[np.ndarray] = None


def _np(a, dtype=np.float64) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype)


def _extras(extras: Sequence[str]) -> tuple:
    bad = sorted(set(extras) - set(EXTRAS))
    if bad:
        raise InputError(f"unknown output(s) {', '.join(bad)}; choose from {', '.join(EXTRAS)}")
    return tuple(e for e in EXTRAS if e in set(extras))


def output_paths(out_dir, stem: str, index: int = 0, extras: Sequence[str] = ()) -> dict:
    """``{"mesh", "json", "overlay"}`` (plus the files of each of ``extras``, see :data:`EXTRAS`)
    -> Path of face ``index`` of image ``stem`` in ``out_dir``."""
    base = Path(out_dir) / (stem if index == 0 else f"{stem}_{index}")
    keys = ("mesh", "json", "overlay") + tuple(k for e in _extras(extras) for k in EXTRAS[e])
    return {k: base.with_name(base.name + _SUFFIX[k]) for k in keys}


def mesh_frame_vertices(vertices_img, height: int) -> np.ndarray:
    """Image-aligned vertices (x, y down, depth) -> the right-handed OBJ frame (x, H-1-y, depth)."""
    V = _np(vertices_img).copy()
    V[:, 1] = (height - 1) - V[:, 1]
    return V


def depth_png_range(vertices_img) -> tuple[float, float]:
    """``(far, near)`` px: the depth range the 16-bit depth PNG spans (the mesh's own, so every
    drawn pixel fits; a flat mesh gets a 1 px range)."""
    z = _np(vertices_img)[:, 2]
    z = z[np.isfinite(z)]
    far, near = (float(z.min()), float(z.max())) if len(z) else (0.0, 1.0)
    return far, max(near, far + 1.0)


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
        if "depth" in files:
            far, near = depth_png_range(rec.vertices_img)
            doc["depth_png"] = {"far_px": far, "near_px": near,
                                "rule": "depth_px = far_px + (value - 1) * (near_px - far_px) / 65534; 0 = no face; "
                                        "depth larger = nearer the camera"}
        if "normals" in files:
            doc["normals_png"] = ("rgb = (n + 1) / 2 * 255, n = unit normal: x right, y up, z toward the camera; "
                                  "black = no face")
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


def _write_depth_png(path: Path, rec: FaceRecord, depth: np.ndarray) -> None:
    import cv2

    far, near = depth_png_range(rec.vertices_img)
    ok = np.isfinite(depth)
    val = np.zeros(depth.shape, np.uint16)
    val[ok] = np.clip(np.rint(1 + (depth[ok] - far) / (near - far) * 65534), 1, 65535).astype(np.uint16)
    good, buf = cv2.imencode(".png", val)
    if not good:
        raise OSError(f"{path}: PNG encoding failed")
    _atomic(path, lambda p: Path(p).write_bytes(buf.tobytes()))


def _write_texture(paths: dict, rec: FaceRecord, img: np.ndarray, V: np.ndarray, T: np.ndarray, size: int) -> None:
    from morphable.texture import face_size_px, sample_texture

    tex = sample_texture(img, V, T, rec.uv, mirror=rec.mirror, size=size, face_px=face_size_px(rec.landmarks))
    tex.save(paths["textured_obj"])  # + _textured.mtl and _textured.png beside it
    tex.save(paths["glb"])


def write_face(rec: FaceRecord, out_dir, overlay: bool = True, mesh: bool = True, extras: Sequence[str] = (),
               texture_size: int = 1024) -> dict:
    """Write the mesh, JSON and overlay of one face, and the files of ``extras`` (any of
    ``"texture"``, ``"depth"``, ``"normals"``, see :data:`EXTRAS`); returns ``{key: path}`` of
    the files written (keys of :func:`output_paths`). The JSON is written last, so its presence
    marks a complete face.

    A face too small for a useful texture gets a :class:`~morphable.errors.MorphableWarning`
    (the files are still written). Raises ``ModelFormatError`` before writing anything when a
    texture is asked for and ``rec.uv`` is empty (a model without texture coordinates).
    """
    extras = _extras(extras)
    paths = output_paths(out_dir, rec.stem, rec.index, extras)
    if "texture" in extras:
        from morphable.texture import require_uv

        require_uv(rec.uv, rec.model_name)  # before any file is written
    img = np.asarray(rec.image)
    H, W = img.shape[:2]
    V = _np(rec.vertices_img)
    T = _np(rec.triangles, np.int64)
    written = {}
    depth_map = tri_id = None
    if mesh or "depth" in extras or "normals" in extras:
        depth_map, tri_id = render.rasterize(V, T, H, W)
    if mesh:
        vis = render.vertex_visibility(V, T, H, W, depth_map=depth_map)
        colors = render.sample_colors(img, V, vis)
        _write_obj(paths["mesh"], mesh_frame_vertices(V, H), T, colors)
        written["mesh"] = paths["mesh"]
    if "texture" in extras:
        _write_texture(paths, rec, img, V, T, texture_size)
        written.update({k: paths[k] for k in EXTRAS["texture"]})
    if "depth" in extras:
        _write_depth_png(paths["depth"], rec, depth_map)
        written["depth"] = paths["depth"]
    if "normals" in extras:
        n = render.normal_map(V, T, H, W, tri_id=tri_id)
        rgb = np.where((tri_id >= 0)[..., None], np.rint((n + 1.0) * 127.5), 0).astype(np.uint8)
        _write_png(paths["normals"], rgb)
        written["normals"] = paths["normals"]
    if overlay:
        pic = render.overlay(img, V, T, landmarks=_np(rec.landmarks), rotation=_np(rec.rotation))
        _write_png(paths["overlay"], pic)
        written["overlay"] = paths["overlay"]
    doc = record_json(rec, {**written, "json": paths["json"]})
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    _atomic(paths["json"], lambda p: Path(p).write_text(text))
    written["json"] = paths["json"]
    return written
