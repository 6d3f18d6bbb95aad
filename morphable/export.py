"""Writing and reading triangle meshes (.obj, .ply) with vertex order kept.

Writing goes through trimesh's exporters with ``process=False`` (no merging, no reordering), so
vertex ``i`` of the file is vertex ``i`` of the model: landmark and vertex ids stay valid. PLY is
read with trimesh (``process=False, fix_texture=False``); OBJ is read line by line, because
trimesh's OBJ importer re-indexes vertices and drops unreferenced ones when the file has ``vt``.

* ``.obj``: ``v x y z [r g b]`` (colours as floats 0..1, the common extension), ``vt u v`` (one
  per vertex: faces read ``f a/a b/b c/c``), and, with a texture image, ``<stem>.mtl`` +
  ``<stem>.png`` beside the OBJ. Coordinates are written with 8 decimals.
* ``.ply``: binary little-endian; float32 positions, uint8 RGBA colours, float ``s``/``t`` UVs.
* ``.glb`` (write only, :func:`write_textured`): binary glTF 2.0 with the texture embedded, for
  browser viewers (glTF stores v down; the exporter flips it).

Writes are atomic: each file goes to a temporary name in the same folder, then ``os.replace``.
Triangles are 0-based (T, 3) in memory; the model's are counter-clockwise seen from outside.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .errors import InputError, ModelFormatError

__all__ = ["write_mesh", "read_mesh", "write_textured", "textured_trimesh", "MESH_SUFFIXES", "TEXTURED_SUFFIXES"]

PathLike = Union[str, os.PathLike]
#: numpy arrays, torch tensors (detached to the CPU) or nested sequences.
ArrayLike = Any
MESH_SUFFIXES = (".obj", ".ply")
#: What :func:`write_textured` writes: OBJ (+ MTL + PNG beside it) or binary glTF.
TEXTURED_SUFFIXES = (".obj", ".glb")


def _np(a, name: str) -> Optional[np.ndarray]:
    if a is None:
        return None
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: not an array ({e})") from None


def _colors_u8(colors: np.ndarray, n: int) -> np.ndarray:
    if colors.ndim != 2 or colors.shape[0] != n or colors.shape[1] not in (3, 4):
        raise InputError(f"colors must be (N={n}, 3) uint8 or float in 0..1, got {colors.shape}")
    colors = colors[:, :3]
    if colors.dtype == np.uint8:
        return colors
    c = colors.astype(np.float64)
    if not np.isfinite(c).all() or c.min() < 0 or c.max() > 1:
        raise InputError("float colors must be finite and in 0..1 (pass uint8 for 0..255)")
    return np.round(c * 255.0).astype(np.uint8)


def _atomic_write(path: Path, data: Union[bytes, str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_mesh(path: PathLike, vertices: ArrayLike, triangles: ArrayLike, colors: Optional[ArrayLike] = None,
               uv: Optional[ArrayLike] = None, texture: Optional[ArrayLike] = None) -> Path:
    """Write a mesh to ``.obj`` or ``.ply`` (by suffix), keeping the vertex order.

    Args:
        path: output file, ``.obj`` or ``.ply``; its folder is created.
        vertices: (N, 3) float, model units (mm).
        triangles: (T, 3) int, 0-based.
        colors: optional (N, 3) per-vertex RGB, uint8 0..255 or float 0..1.
        uv: optional (N, 2) per-vertex texture coordinates (origin bottom-left, OBJ convention).
        texture: optional (H, W, 3) uint8 image (or a PIL image) for ``uv``; OBJ only: written as
            ``<stem>.png`` with a ``<stem>.mtl`` next to the OBJ.

    Returns:
        The path written.

    Raises:
        InputError: wrong shapes, indices outside 0..N-1, non-finite values, unknown suffix.
    """
    import trimesh

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise InputError(f"{path}: unknown mesh type {suffix!r}; use .obj or .ply")
    V = _np(vertices, "vertices")
    T = _np(triangles, "triangles")
    if V is None or V.ndim != 2 or V.shape[1] != 3:
        raise InputError(f"vertices must be (N, 3), got {None if V is None else V.shape}")
    V = V.astype(np.float64)
    if not np.isfinite(V).all():
        raise InputError("vertices contain NaN or inf")
    N = len(V)
    T = np.zeros((0, 3), np.int64) if T is None else T
    if T.ndim != 2 or T.shape[1] != 3 or (T.size and not np.issubdtype(T.dtype, np.integer)):
        raise InputError(f"triangles must be (T, 3) integers, got {T.shape} {T.dtype}")
    T = T.astype(np.int64)
    if T.size and (T.min() < 0 or T.max() >= N):
        raise InputError(f"triangle ids must be 0-based in 0..{N - 1}, got {T.min()}..{T.max()}")
    C = _colors_u8(_np(colors, "colors"), N) if colors is not None else None
    UV = _np(uv, "uv")
    if UV is not None:
        if UV.shape != (N, 2) or not np.isfinite(UV).all():
            raise InputError(f"uv must be finite (N={N}, 2), got {UV.shape}")
        UV = UV.astype(np.float64)
    if texture is not None and (UV is None or suffix != ".obj"):
        raise InputError("a texture image needs uv= and an .obj path")

    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".ply":
        visual = trimesh.visual.ColorVisuals(vertex_colors=C) if C is not None else None
        mesh = trimesh.Trimesh(V, T, visual=visual, process=False, validate=False)
        if UV is not None:
            mesh.vertex_attributes["s"] = UV[:, 0]
            mesh.vertex_attributes["t"] = UV[:, 1]
        _atomic_write(path, trimesh.exchange.ply.export_ply(mesh, encoding="binary", vertex_normal=False))
        return path

    files: dict = {}
    if UV is not None:
        from PIL import Image

        img = None
        if texture is not None:
            img = texture if isinstance(texture, Image.Image) else Image.fromarray(
                np.ascontiguousarray(_np(texture, "texture")).astype(np.uint8))
        mat = trimesh.visual.material.SimpleMaterial(image=img, name=path.stem, ambient=[255, 255, 255, 255],
                                                     diffuse=[255, 255, 255, 255], specular=[0, 0, 0, 255])
        mesh = trimesh.Trimesh(V, T, visual=trimesh.visual.TextureVisuals(uv=UV, material=mat), process=False,
                               validate=False)
        text, files = trimesh.exchange.obj.export_obj(mesh, include_normals=False, include_texture=True,
                                                      return_texture=True, mtl_name=f"{path.stem}.mtl",
                                                      header="morphable")
        if img is None:  # vt lines only, no material
            text = "\n".join(ln for ln in text.split("\n") if not ln.startswith(("mtllib ", "usemtl ")))
            files = {}
        if C is not None:  # trimesh writes colours only for colour visuals: add them to the v lines
            rows = iter(f"v {x:.8f} {y:.8f} {z:.8f} {r / 255:.8f} {g / 255:.8f} {b / 255:.8f}"
                        for (x, y, z), (r, g, b) in zip(V, C))
            text = "\n".join(next(rows) if ln.startswith("v ") else ln for ln in text.split("\n"))
    else:
        visual = trimesh.visual.ColorVisuals(vertex_colors=C) if C is not None else None
        mesh = trimesh.Trimesh(V, T, visual=visual, process=False, validate=False)
        text = trimesh.exchange.obj.export_obj(mesh, include_normals=False, include_color=C is not None,
                                               include_texture=False, header="morphable")
    for name, data in files.items():  # texture image and .mtl first, the OBJ last
        _atomic_write(path.parent / name, data)
    _atomic_write(path, text if text.endswith("\n") else text + "\n")
    return path


def _pil(texture):
    from PIL import Image

    if isinstance(texture, Image.Image):
        return texture.convert("RGB")
    a = np.ascontiguousarray(_np(texture, "texture"))
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
        raise InputError(f"texture must be an (H, W, 3) uint8 RGB image, got {a.dtype} {a.shape}")
    return Image.fromarray(a[..., :3])


def textured_trimesh(vertices: ArrayLike, triangles: ArrayLike, uv: ArrayLike, texture: ArrayLike):
    """A ``trimesh.Trimesh`` with ``TextureVisuals`` (``visual.kind == 'texture'``), vertex order kept.

    Args:
        vertices: (N, 3) float; triangles: (T, 3) int, 0-based.
        uv: (N, 2) per-vertex texture coordinates in [0, 1], v up (OBJ/OpenGL).
        texture: (S_h, S_w, 3) uint8 RGB (row 0 = v 1) or a PIL image.

    The material is a matte, double-sided PBR material (metallic 0, roughness 1), so browser
    glTF viewers show the texture as it is and the open mesh from behind as well.
    """
    import trimesh

    V, T, UV = (_np(a, n) for a, n in ((vertices, "vertices"), (triangles, "triangles"), (uv, "uv")))
    if V is None or V.ndim != 2 or V.shape[1] != 3 or not np.isfinite(V).all():
        raise InputError(f"vertices must be finite (N, 3), got {None if V is None else V.shape}")
    if T is None or T.ndim != 2 or T.shape[1] != 3 or (T.size and (T.min() < 0 or T.max() >= len(V))):
        raise InputError(f"triangles must be (T, 3) ids in 0..{len(V) - 1}")
    if UV is None or UV.shape != (len(V), 2) or not np.isfinite(UV).all():
        raise InputError(f"uv must be finite (N={len(V)}, 2), got {None if UV is None else UV.shape}")
    mat = trimesh.visual.material.PBRMaterial(name="texture", baseColorTexture=_pil(texture), metallicFactor=0.0,
                                              roughnessFactor=1.0, doubleSided=True)
    return trimesh.Trimesh(V.astype(np.float64), T.astype(np.int64), process=False, validate=False,
                           visual=trimesh.visual.TextureVisuals(uv=UV.astype(np.float64), material=mat))


def write_textured(path: PathLike, vertices: ArrayLike, triangles: ArrayLike, uv: ArrayLike,
                   texture: ArrayLike) -> Path:
    """Write a textured mesh that Blender, MeshLab and browser glTF viewers open, by suffix:

    * ``.obj``: the OBJ with one ``vt`` per vertex, ``<stem>.mtl`` and the texture as
      ``<stem>.png`` beside it (:func:`write_mesh`);
    * ``.glb``: one binary glTF file with the PNG texture inside (:func:`textured_trimesh`).

    Vertex order is kept; the write is atomic. Returns the path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TEXTURED_SUFFIXES:
        raise InputError(f"{path}: a textured mesh is written as .obj (+ .mtl + .png) or .glb, not {suffix!r}")
    if suffix == ".obj":
        return write_mesh(path, vertices, triangles, uv=uv, texture=_pil(texture))
    data = textured_trimesh(vertices, triangles, uv, texture).export(file_type="glb")
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data)
    return path


def _read_obj(path: Path):
    """``v``/``vt``/``f`` lines of an OBJ in file order (trimesh's OBJ importer re-indexes and drops
    unreferenced vertices when the file has ``vt``, so OBJs are read here)."""
    v, vt, faces, fvt = [], [], [], []
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"v "):
                v.append(line.split()[1:])
            elif line.startswith(b"vt "):
                vt.append(line.split()[1:3])
            elif line.startswith(b"f "):
                corners = [c.split(b"/") for c in line.split()[1:]]
                ids = [int(c[0]) for c in corners]
                tids = [int(c[1]) if len(c) > 1 and c[1] else 0 for c in corners]
                for k in range(1, len(ids) - 1):  # fan-triangulate polygons
                    faces.append((ids[0], ids[k], ids[k + 1]))
                    fvt.append((tids[0], tids[k], tids[k + 1]))
    n = len(v)
    widths = {len(r) for r in v}
    if not n or not widths <= {3, 4, 6, 7}:
        raise ValueError("no vertices, or 'v' lines that are neither 'x y z' nor 'x y z r g b'")
    rows = np.asarray([r[:3] for r in v], dtype=np.float64)
    colors = None
    if widths <= {6, 7}:
        c = np.asarray([r[-3:] for r in v], dtype=np.float64)
        colors = (np.round(np.clip(c, 0, 1) * 255) if c.max() <= 1.0 else np.clip(c, 0, 255)).astype(np.uint8)
    F = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    F = np.where(F < 0, F + n, F - 1)  # OBJ ids are 1-based; negative ids count from the end
    if F.size and (F.min() < 0 or F.max() >= n):
        raise ValueError("face ids outside the vertex list")
    uv = None
    if vt:
        VT = np.asarray(vt, dtype=np.float64)
        T = np.asarray(fvt, dtype=np.int64).reshape(-1, 3)
        if len(VT) == n and (T.size == 0 or np.array_equal(T - 1, F)):
            uv = VT  # one vt per vertex, same numbering
        elif T.size and T.min() > 0 and T.max() <= len(VT):
            uv = np.zeros((n, 2))
            uv[F.reshape(-1)] = VT[T.reshape(-1) - 1]  # per corner -> per vertex (last corner wins at seams)
    return rows, F, colors, uv


def read_mesh(path: PathLike) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
    """Read a ``.obj``/``.ply`` mesh keeping the file's vertex order and count.

    Returns:
        (vertices (N, 3) float64, triangles (T, 3) int64 0-based, colors (N, 3) uint8 or None,
        uv (N, 2) float64 or None). OBJ polygons are fan-triangulated; an OBJ whose ``vt`` are
        not one per vertex gets per-vertex UVs from its face corners.

    Raises:
        FileNotFoundError: no such file. ModelFormatError: unreadable, or not a mesh.
    """
    import trimesh

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise InputError(f"{path}: unknown mesh type {suffix!r}; use .obj or .ply")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mesh file")
    if suffix == ".obj":
        try:
            return _read_obj(path)
        except ValueError as e:
            raise ModelFormatError(f"{path}: not a readable OBJ mesh ({e})") from None
    try:
        m = trimesh.load(path, file_type="ply", process=False, fix_texture=False, force="mesh")
    except Exception as e:  # trimesh raises many types on malformed files
        raise ModelFormatError(f"{path}: not a readable PLY mesh ({type(e).__name__}: {e})") from None
    V = np.asarray(m.vertices, dtype=np.float64)
    F = np.asarray(getattr(m, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    colors = uv = None
    vis = getattr(m, "visual", None)
    if vis is not None and getattr(vis, "kind", None) == "vertex":
        colors = np.asarray(vis.vertex_colors)[:, :3].astype(np.uint8)
    if vis is not None and getattr(vis, "uv", None) is not None and np.shape(vis.uv) == (len(V), 2):
        uv = np.asarray(vis.uv, dtype=np.float64)
    a = getattr(m, "metadata", {}).get("_ply_raw", {}).get("vertex", {}).get("data")
    names = set(getattr(getattr(a, "dtype", None), "names", None) or ())
    for su, sv in (("s", "t"), ("texture_u", "texture_v"), ("u", "v")):
        if {su, sv} <= names:  # per-vertex UVs as stored (trimesh's visual zeroes unreferenced vertices)
            uv = np.stack([a[su], a[sv]], 1).astype(np.float64)
            break
    if colors is None and {"red", "green", "blue"} <= names:  # trimesh keeps only the uv visual
        colors = np.stack([a["red"], a["green"], a["blue"]], 1).astype(np.uint8)
    return V, F, colors, uv
