r"""UV textures sampled from a photo through a model's UV layout.

Frames and units:

* ``vertices_img`` (N, 3): the **image frame** of :mod:`morphable.render`: ``x, y`` pixels
  (0-based pixel centres, origin top-left, y down), ``z`` = depth in pixels, larger = nearer.
* ``uv`` (N, 2) in [0, 1], one per vertex, OBJ/OpenGL convention (u right, v **up**): texel
  (row r, column c) of an S x S texture has its centre at ``u = (c + 0.5) / S``,
  ``v = 1 - (r + 0.5) / S``, so row 0 of the PNG is the top (v = 1).

:func:`sample_texture`, per texel:

1. the mesh's UV triangles are rasterised into the texel grid with
   :func:`morphable.render.rasterize` (triangle id and barycentric weights per texel);
2. the texel's surface point in the photo is the same barycentric mix of its triangle's
   image-frame vertices;
3. **photo** weight: the triangle faces the camera, the point lies in the image and is not
   behind the z-buffer of the whole mesh at its pixel (within a tolerance); the weight then
   ramps 0 -> 1 with the smooth normal's z above ``min_cos`` (grazing surface smears the photo)
   and with the distance to the mesh's occluding contour above ``contour_margin`` (a fitted
   silhouette is seldom exact, so the photo right inside it is often background). The photo is
   sampled bilinearly;
4. **mirror**: texels not fully seen take the photo colour of their mirror point (the same
   barycentric mix of the mirror vertices' ``uv``), weighted by how well that point was seen:
   the hidden half of a turned face is filled from the visible half where the layout allows;
5. photo over mirror over a **fill** from the surrounding texels (:func:`fill_holes`,
   push-pull on an OpenCV pyramid) for what neither covers (hidden on both sides, and the
   texels outside the layout), which also pads the seams: texture filtering at a chart's edge
   never reads unset (black) texels.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np

from . import render
from .errors import InputError, ModelFormatError, MorphableWarning

__all__ = ["Texture", "sample_texture", "texel_points", "fill_holes", "face_size_px", "require_uv", "MIN_FACE_PX"]

#: Faces smaller than this (pixels) give a texture too blurry to be of use: a warning says so.
MIN_FACE_PX = 64
_RAMP = 0.15  # the photo's weight goes 0 -> 1 over this rise in the normal's z above min_cos


@dataclass
class Texture:
    """A UV texture sampled from a photo, with the mesh it belongs to.

    Attributes:
        image: (S, S, 3) uint8 RGB texture; row 0 is v = 1 (see the module docstring).
        uv: (N, 2) float64 per-vertex texture coordinates in [0, 1] (v up).
        vertices: (N, 3) float64 mesh in the **image-aligned right-handed frame** of the CLI's
            OBJ files: ``x`` = image column px, ``y = H - 1 - row`` px (up), ``z`` = depth px
            toward the camera.
        triangles: (T, 3) int64, the model's (counter-clockwise seen from outside).
        from_photo: (S, S) bool, texels at least half from the photo (visible surface).
        from_mirror: (S, S) bool, the other texels at least half from their mirror point.
        covered: (S, S) bool, texels inside the mesh's UV triangles (the rest is padding).
        face_px: size of the face in the photo, px (what the small-face warning tests).
        warning: why the texture is of limited use, or None.
    """

    image: np.ndarray
    uv: np.ndarray
    vertices: np.ndarray
    triangles: np.ndarray
    from_photo: np.ndarray
    from_mirror: np.ndarray
    covered: np.ndarray
    face_px: float
    warning: Optional[str] = None

    @property
    def size(self) -> int:
        """Texture side, texels."""
        return int(self.image.shape[0])

    @property
    def photo_fraction(self) -> float:
        """Share of the covered texels sampled from the photo (0..1)."""
        n = int(self.covered.sum())
        return float((self.from_photo & self.covered).sum() / n) if n else 0.0

    @property
    def mirror_fraction(self) -> float:
        """Share of the covered texels filled from their mirror point (0..1)."""
        n = int(self.covered.sum())
        return float((self.from_mirror & self.covered).sum() / n) if n else 0.0

    def trimesh(self):
        """The textured mesh as a ``trimesh.Trimesh`` (``visual.kind == 'texture'``), vertex order kept."""
        from .export import textured_trimesh

        return textured_trimesh(self.vertices, self.triangles, self.uv, self.image)

    def save(self, path: Union[str, Path]) -> Path:
        """Write the textured mesh: ``.obj`` (+ ``<stem>.mtl`` + ``<stem>.png`` beside it) or
        ``.glb`` (one binary glTF file with the texture inside), by suffix. Returns the path."""
        from .export import write_textured

        return write_textured(path, self.vertices, self.triangles, self.uv, self.image)


def fill_holes(image: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """A hole-free version (H, W, C) float64 of ``image`` (H, W, C) whose pixels are known with
    ``weight`` (H, W) in [0, 1] (bool: known or not): **push-pull** (Gortler et al. 1996) on an
    OpenCV Gaussian pyramid. Each pixel becomes ``weight * image + (1 - weight) * fill``, where
    the fill is the weighted known pixels around it from ever coarser levels until some are in
    reach: pixels of weight 1 keep their values, holes get their surroundings' colour (near
    known pixels their colour, which pads seams; far away a smooth blend, without the streaks
    of ``cv2.inpaint``)."""
    w = np.clip(np.asarray(weight, dtype=np.float32), 0.0, 1.0)
    c = np.asarray(image, dtype=np.float32).reshape(w.shape + (-1,)) * w[..., None]
    if not (w > 0).any():
        return np.full(c.shape, 128.0)
    levels = [(c, w)]
    while min(levels[-1][1].shape) > 2:
        c, w = levels[-1]
        levels.append((cv2.pyrDown(c).reshape(-1, (w.shape[1] + 1) // 2, c.shape[2]), cv2.pyrDown(w)))
    c, w = levels[-1]
    fill = np.broadcast_to(c.reshape(-1, c.shape[2]).sum(0) / max(float(w.sum()), 1e-12), c.shape)
    for c, w in reversed(levels):  # pull: each level's own (weighted) colour over the coarser fill
        fill = cv2.resize(np.ascontiguousarray(fill), (w.shape[1], w.shape[0]), interpolation=cv2.INTER_LINEAR)
        a = np.clip(w, 0.0, 1.0)[..., None]
        fill = a * (c / np.maximum(w, 1e-12)[..., None]) + (1.0 - a) * fill.reshape(c.shape)
    return fill.astype(np.float64)


def _contour_distance(V: np.ndarray, T: np.ndarray, tri_id: np.ndarray) -> np.ndarray:
    """(H, W) float32 distance, px, of every pixel to the mesh's occluding contour in the image: the
    outline of the drawn mesh (holes such as the eyes and mouth filled) where its surface turns
    away (smooth normal z < 0.5), not the open edges of the mesh."""
    outlines, _ = cv2.findContours((tri_id >= 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    mask = cv2.drawContours(np.zeros(tri_id.shape, np.uint8), outlines, -1, 1, thickness=cv2.FILLED)
    edge = (mask > 0) & (tri_id >= 0) & (cv2.erode(mask, np.ones((3, 3), np.uint8)) == 0)
    contour = edge & (render.normal_map(V, T, *tri_id.shape, tri_id=tri_id)[..., 2] < 0.5)
    if not contour.any():
        return np.full(tri_id.shape, float(sum(tri_id.shape)), dtype=np.float32)  # farther than any pixel
    return cv2.distanceTransform((~contour).astype(np.uint8), cv2.DIST_L2, 3)


def face_size_px(landmarks) -> Optional[float]:
    """The size of a face in its photo, px: the larger side of the bounding box of its (L, 2)
    landmarks (the face box, brows to chin), NaN rows ignored; None without any."""
    lm = np.asarray(landmarks.detach().cpu() if hasattr(landmarks, "detach") else landmarks, dtype=np.float64)
    lm = lm.reshape(-1, 2)[np.isfinite(lm.reshape(-1, 2)).all(1)]
    return float(np.ptp(lm, axis=0).max()) if len(lm) else None


def texel_points(uv, size: int) -> np.ndarray:
    """Texture coordinates (N, 2) in [0, 1] -> texel positions (N, 2) ``[column, row]`` of an
    ``size`` x ``size`` texture (texel centres at integers, row 0 = v 1)."""
    UV = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    return np.c_[UV[:, 0] * size - 0.5, (1.0 - UV[:, 1]) * size - 0.5]


def require_uv(uv, model_name: str = "") -> np.ndarray:
    """``uv`` as a float64 array; raises :class:`~morphable.errors.ModelFormatError` when it is
    None or empty (``model.uv.numel() == 0``: a model without texture coordinates)."""
    UV = np.zeros((0, 2)) if uv is None else np.asarray(uv.detach().cpu() if hasattr(uv, "detach") else uv,
                                                        dtype=np.float64)
    if UV.size == 0:
        raise ModelFormatError(f"the model{' ' + model_name if model_name else ''} has no texture coordinates "
                               "(uv), so no texture can be made; use a model with per-vertex UVs (the default "
                               "ICT-FaceKit model has them) or leave out the texture (--texture)")
    return UV


def _check(image, vertices_img, triangles, uv, mirror):
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InputError(f"the photo must be an (H, W, 3) uint8 RGB array, got {img.dtype} {img.shape}")
    V = np.asarray(vertices_img, dtype=np.float64)
    T = np.asarray(triangles, dtype=np.int64)
    if V.ndim != 2 or V.shape[1] != 3 or not np.isfinite(V).all():
        raise InputError(f"vertices_img must be finite (N, 3) [x px, y px, depth px], got {V.shape}")
    if T.ndim != 2 or T.shape[1] != 3 or (T.size and (T.min() < 0 or T.max() >= len(V))):
        raise InputError(f"triangles must be (T, 3) vertex ids in 0..{len(V) - 1}")
    UV = require_uv(uv)
    if UV.shape != (len(V), 2) or not np.isfinite(UV).all():
        raise InputError(f"uv must be finite (N={len(V)}, 2), got {UV.shape}")
    M = None
    if mirror is not None:
        M = np.asarray(mirror.detach().cpu() if hasattr(mirror, "detach") else mirror, dtype=np.int64).reshape(-1)
        if M.shape != (len(V),) or (M.size and (M.min() < 0 or M.max() >= len(V))):
            raise InputError(f"mirror must be (N={len(V)},) vertex ids")
    return img, V, T, UV, M


def sample_texture(image: np.ndarray, vertices_img, triangles, uv, mirror=None, size: int = 1024,
                   min_cos: float = 0.2, contour_margin: float = 0.04, tol: Optional[float] = None,
                   face_px: Optional[float] = None, min_face_px: float = MIN_FACE_PX) -> Texture:
    """Sample a UV texture of a fitted mesh from its photo (see the module docstring for the steps).

    Args:
        image: (H, W, 3) uint8 RGB photo the mesh was fitted in.
        vertices_img: (N, 3) image-frame vertices: x, y px (y down), depth px (larger nearer).
        triangles: (T, 3) vertex ids, counter-clockwise seen from outside (the model's).
        uv: (N, 2) texture coordinates in [0, 1] (v up), e.g. ``model.uv``.
        mirror: optional (N,) id of each vertex's mirror vertex
            (:func:`morphable.landmark_definition.mirror_vertices` of the mean face); None = no
            mirror filling.
        size: texture side, texels.
        min_cos: the photo is used where the cosine between the surface normal and the direction
            to the camera exceeds this (fully from ``min_cos + 0.15``; grazing surface smears the
            photo).
        contour_margin: nor within this fraction of ``face_px`` of the mesh's occluding contour
            in the image (fully from twice that), where the photo often shows background: a
            fitted silhouette is seldom exact; 0 = off.
        tol: depth tolerance of the occlusion test, px (default: 1 % of the mesh's x/y extent, at
            least 1 px), plus the depth change of the triangle's own slope over half a pixel.
        face_px: size of the face in the photo, px, e.g. :func:`face_size_px` of its landmarks
            (default: the larger side of the mesh's bounding box in the image).
        min_face_px: below this face size a :class:`~morphable.errors.MorphableWarning` says the
            texture will be blurry (the texture is still made).

    Returns:
        :class:`Texture`.

    Raises:
        ModelFormatError: ``uv`` is empty (the model has no texture coordinates).
        InputError: wrong shapes or values.
    """
    img, V, T, UV, M = _check(image, vertices_img, triangles, uv, mirror)
    S = int(size)
    if S < 8:
        raise InputError(f"texture size must be at least 8 texels, got {size}")
    H, W = img.shape[:2]
    ext = np.ptp(V[:, :2], axis=0) if len(V) else np.zeros(2)
    face = float(ext.max()) if face_px is None else float(face_px)
    warning = None
    if face < min_face_px:
        warning = (f"the face is only {face:.0f} px in the photo (under {min_face_px:.0f} px): its texture will be "
                   "blurry; use a larger or sharper photo of the face")
        warnings.warn(warning, MorphableWarning, stacklevel=2)

    # 1. texel -> (triangle, barycentric weights)
    P = np.c_[texel_points(UV, S), np.zeros(len(UV))]
    _, tid = render.rasterize(P, T, S, S)
    covered = tid >= 0
    ys, xs = np.nonzero(covered)
    t = tid[ys, xs]
    w = render.barycentric(tid, P, T)[ys, xs]  # (M, 3)
    corners = T[t]  # (M, 3)
    # 2. texel -> surface point in the photo (x, y px, depth px)
    pts = np.einsum("mk,mkd->md", w, V[corners])
    # 3. visible texels: facing the camera, inside the photo, not behind the z-buffer
    zbuf, tid_img = render.rasterize(V, T, H, W)
    fn = render.face_normals(V, T)
    # facing: the triangle itself faces the camera and the smooth (interpolated vertex) normal is
    # not grazing, so the visible region's border follows the surface, not the triangulation
    nz = np.einsum("mk,mk->m", w, render.vertex_normals(V, T)[corners, 2])
    slope = np.minimum(np.linalg.norm(fn[:, :2], axis=1) / np.maximum(fn[:, 2], 1e-6), 10.0)
    if tol is None:
        tol = max(1.0, 0.01 * float(ext.max()))
    xi, yi = np.rint(pts[:, 0]).astype(np.int64), np.rint(pts[:, 1]).astype(np.int64)
    inside = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
    zb = np.full(len(pts), -np.inf)
    zb[inside] = zbuf[yi[inside], xi[inside]]
    vis = inside & (fn[t, 2] > 0) & (pts[:, 2] >= zb - tol - 0.5 * slope[t])
    # confidence of the photo sample, 0..1: it ramps up from `min_cos` over 0.15 in the normal's z
    # and from `contour_margin` to twice that in the distance to the occluding contour, so the
    # photo fades into the filled texels instead of ending at a hard, ragged edge
    alpha = np.where(vis, np.clip((nz - min_cos) / _RAMP, 0.0, 1.0), 0.0)
    if contour_margin > 0 and alpha.any():
        on = alpha > 0
        dist = _contour_distance(V, T, tid_img)
        d = render.sample_bilinear(dist, pts[on, 0], pts[on, 1])[:, 0]
        alpha[on] *= np.clip(d / (contour_margin * face) - 1.0, 0.0, 1.0)
    a = np.zeros((S, S))
    a[ys, xs] = alpha
    # feather the visibility edges that follow triangles (occlusion, back faces) over a few texels,
    # within the layout: a weight is at most the mean weight of the covered texels around it
    sigma = max(1.0, 1.5 * S / 512)
    around = cv2.GaussianBlur(a, (0, 0), sigma) / np.maximum(cv2.GaussianBlur(covered * 1.0, (0, 0), sigma), 1e-6)
    a = np.minimum(a, np.where(around > 1.0 - 1e-6, 1.0, around))
    on = a[ys, xs] > 0
    photo = np.zeros((S, S, 3))
    photo[ys[on], xs[on]] = render.sample_bilinear(img, pts[on, 0], pts[on, 1])
    # 4. texels not fully seen: the photo at their mirror point, weighted by how well that was seen
    mirrored, b = np.zeros((S, S, 3)), np.zeros((S, S))
    part = a[ys, xs] < 1.0
    if M is not None and part.any() and on.any():
        q = texel_points(np.einsum("mk,mkd->md", w[part], UV[M[corners[part]]]), S)
        num = render.sample_bilinear(np.concatenate([photo * a[..., None], a[..., None]], -1), q[:, 0], q[:, 1])
        ok = num[:, 3] > 1e-6
        py, px = ys[part][ok], xs[part][ok]
        mirrored[py, px] = num[ok, :3] / num[ok, 3:]
        b[py, px] = np.minimum(num[ok, 3], 1.0)
    # 5. photo over mirror over the fill from the surrounding texels (fills holes, pads seams)
    weight = a + (1.0 - a) * b
    known = (a[..., None] * photo + ((1.0 - a) * b)[..., None] * mirrored) / np.maximum(weight, 1e-12)[..., None]
    out = fill_holes(known, weight)
    from_photo = a >= 0.5
    from_mirror = ~from_photo & ((1.0 - a) * b >= 0.5)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    Vm = V.copy()
    Vm[:, 1] = (H - 1) - Vm[:, 1]
    return Texture(image=out, uv=UV, vertices=Vm, triangles=T, from_photo=from_photo, from_mirror=from_mirror,
                   covered=covered, face_px=face, warning=warning)
