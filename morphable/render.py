r"""A small CPU renderer for fitted meshes: z-buffer, shading, overlays, visibility, colours.

NumPy + OpenCV only (no compiled extension, no GPU). Input vertices are **image-aligned**:
``vertices_img`` (N, 3) with ``x, y`` in image pixels (0-based pixel centres, y down, as
:func:`morphable.geometry.project`) and ``z`` the depth in pixels, **larger = nearer** the camera
(:func:`morphable.geometry.depth`). Weak perspective makes screen-space linear interpolation of
depth exact.

Coverage rule: a pixel belongs to a triangle when its centre ``(x, y)`` (integers) lies inside
or on the triangle, so pixels on a shared edge may be claimed by both neighbours (the z-test
decides). The z-buffer keeps the nearest fragment; ties go to the lower triangle id.

The rasterizer is vectorised over triangles: triangles are grouped by the size of their pixel
bounding box, and each group is tested against its boxes' pixels in one NumPy pass (chunked to
bound memory); a 6.7k-vertex / 13k-triangle face at 450 x 450 renders in a few tens of ms.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["rasterize", "barycentric", "face_normals", "vertex_normals", "shade", "render_shaded", "overlay",
           "draw_landmarks", "draw_axes", "vertex_visibility", "sample_colors", "sample_bilinear", "depth_map",
           "normal_map", "render_textured", "draw_wireframe"]

_CHUNK = 2_000_000  # candidate pixels per NumPy pass


def _as_mesh(vertices_img, triangles) -> Tuple[np.ndarray, np.ndarray]:
    V = np.asarray(vertices_img, dtype=np.float64)
    T = np.asarray(triangles, dtype=np.int64)
    if V.ndim != 2 or V.shape[1] != 3:
        raise ValueError(f"vertices_img must be (N, 3) [x px, y px, depth], got {V.shape}")
    if T.ndim != 2 or T.shape[1] != 3:
        raise ValueError(f"triangles must be (T, 3) vertex indices, got {T.shape}")
    if T.size and (T.min() < 0 or T.max() >= len(V)):
        raise ValueError(f"triangle index outside 0..{len(V) - 1}")
    return V, T


def rasterize(vertices_img, triangles, H: int, W: int) -> Tuple[np.ndarray, np.ndarray]:
    """Z-buffer rasterization of a triangle mesh into an H x W image.

    Args:
        vertices_img: (N, 3) ``[x, y, depth]``: pixels, y down, depth larger = nearer.
        triangles: (T, 3) vertex indices (winding irrelevant: no culling).
        H, W: image size, pixels.

    Returns:
        depth: (H, W) float64 depth of the nearest surface, ``-inf`` where nothing is drawn.
        tri_id: (H, W) int64 index of the triangle seen at each pixel, ``-1`` for background.
    """
    V, T = _as_mesh(vertices_img, triangles)
    H, W = int(H), int(W)
    depth = np.full(H * W, -np.inf)
    tri_id = np.full(H * W, -1, dtype=np.int64)
    if not len(T) or H <= 0 or W <= 0:
        return depth.reshape(H, W), tri_id.reshape(H, W)
    P = V[T]  # (T, 3 corners, 3)
    ok = np.isfinite(P).all((1, 2))
    xy = P[..., :2]
    area2 = ((xy[:, 1, 0] - xy[:, 0, 0]) * (xy[:, 2, 1] - xy[:, 0, 1])
             - (xy[:, 1, 1] - xy[:, 0, 1]) * (xy[:, 2, 0] - xy[:, 0, 0]))
    lo = np.ceil(xy.min(1) - 1e-9)
    hi = np.floor(xy.max(1) + 1e-9)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [W - 1, H - 1])
    ok &= (np.abs(area2) > 1e-12) & (hi >= lo).all(1)
    idx = np.nonzero(ok)[0]
    if not len(idx):
        return depth.reshape(H, W), tri_id.reshape(H, W)
    ext = (hi[idx] - lo[idx] + 1).astype(np.int64)  # (t, 2) box width/height in pixels
    # group by the next power of two of each box side: every group uses one fixed grid
    gx = np.ceil(np.log2(ext[:, 0])).astype(np.int64)
    gy = np.ceil(np.log2(ext[:, 1])).astype(np.int64)
    frag_pix, frag_z, frag_t = [], [], []
    for key in np.unique(gx * 64 + gy):
        sel = idx[(gx * 64 + gy) == key]
        bw, bh = 1 << int(key // 64), 1 << int(key % 64)
        per = max(1, _CHUNK // (bw * bh))
        ox, oy = np.meshgrid(np.arange(bw), np.arange(bh))
        ox, oy = ox.ravel(), oy.ravel()
        for s in range(0, len(sel), per):
            t = sel[s:s + per]
            px = lo[t, 0:1] + ox[None, :]  # (t, bw*bh)
            py = lo[t, 1:2] + oy[None, :]
            a, b, c = xy[t, 0], xy[t, 1], xy[t, 2]  # (t, 2)
            inv = 1.0 / area2[t][:, None]
            # barycentric weight of corner a is the signed area of (p, b, c) / area(a, b, c), etc.
            w0 = ((b[:, 0:1] - px) * (c[:, 1:2] - py) - (b[:, 1:2] - py) * (c[:, 0:1] - px)) * inv
            w1 = ((c[:, 0:1] - px) * (a[:, 1:2] - py) - (c[:, 1:2] - py) * (a[:, 0:1] - px)) * inv
            w2 = 1.0 - w0 - w1
            eps = -1e-9
            inside = (w0 >= eps) & (w1 >= eps) & (w2 >= eps) & (px <= hi[t, 0:1]) & (py <= hi[t, 1:2])
            if not inside.any():
                continue
            z = w0 * P[t, 0, 2:3] + w1 * P[t, 1, 2:3] + w2 * P[t, 2, 2:3]
            ti, _ = np.nonzero(inside)
            frag_pix.append((py[inside] * W + px[inside]).astype(np.int64))
            frag_z.append(z[inside])
            frag_t.append(t[ti])
    if not frag_pix:
        return depth.reshape(H, W), tri_id.reshape(H, W)
    pix, z, tt = np.concatenate(frag_pix), np.concatenate(frag_z), np.concatenate(frag_t)
    # z-test: per pixel keep the largest depth (ties: lowest triangle id)
    order = np.lexsort((tt, -z, pix))
    pix, z, tt = pix[order], z[order], tt[order]
    first = np.ones(len(pix), dtype=bool)
    first[1:] = pix[1:] != pix[:-1]
    depth[pix[first]] = z[first]
    tri_id[pix[first]] = tt[first]
    return depth.reshape(H, W), tri_id.reshape(H, W)


def barycentric(tri_id: np.ndarray, vertices_img, triangles) -> np.ndarray:
    """Barycentric weights (H, W, 3) of each covered pixel centre in its triangle (0 elsewhere)."""
    V, T = _as_mesh(vertices_img, triangles)
    H, W = tri_id.shape
    out = np.zeros((H, W, 3))
    ys, xs = np.nonzero(tri_id >= 0)
    if not len(ys):
        return out
    P = V[T[tri_id[ys, xs]], :2]  # (M, 3, 2)
    a, b, c = P[:, 0], P[:, 1], P[:, 2]
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    w0 = ((b[:, 0] - xs) * (c[:, 1] - ys) - (b[:, 1] - ys) * (c[:, 0] - xs)) / area2
    w1 = ((c[:, 0] - xs) * (a[:, 1] - ys) - (c[:, 1] - ys) * (a[:, 0] - xs)) / area2
    out[ys, xs] = np.clip(np.stack([w0, w1, 1.0 - w0 - w1], -1), 0.0, 1.0)
    return out


def face_normals(vertices_img, triangles, unit: bool = True) -> np.ndarray:
    """Triangle normals (T, 3) in the **view frame** of :func:`vertex_normals` (x right, y up, z
    toward the viewer). ``unit=False`` keeps the length 2 * area (px^2); degenerate triangles get
    0. A triangle faces the camera when its normal's z > 0 (counter-clockwise on screen, y up)."""
    V, T = _as_mesh(vertices_img, triangles)
    Vr = V * np.array([1.0, -1.0, 1.0])
    fn = np.cross(Vr[T[:, 1]] - Vr[T[:, 0]], Vr[T[:, 2]] - Vr[T[:, 0]])
    if unit:
        norm = np.linalg.norm(fn, axis=1, keepdims=True)
        fn = fn / np.where(norm > 0, norm, 1.0)
    return fn


def vertex_normals(vertices_img, triangles) -> np.ndarray:
    """Unit vertex normals (N, 3) in a right-handed **view frame** (x right, y up, z toward the
    viewer): the image frame with y flipped. Area-weighted mean of the adjacent face normals;
    faces wound counter-clockwise in the model frame (seen from outside) give outward normals."""
    V, T = _as_mesh(vertices_img, triangles)
    fn = face_normals(V, T, unit=False)  # length = 2 * area
    n = np.zeros_like(V)
    for k in range(3):
        for j in range(3):
            n[:, j] += np.bincount(T[:, k], weights=fn[:, j], minlength=len(V))
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.where(norm > 0, norm, 1.0)


def shade(vertices_img, triangles, light: Sequence[float] = (0.3, 0.3, 1.0), ambient: float = 0.25,
          two_sided: bool = True) -> np.ndarray:
    """Lambert shading per vertex: ``ambient + (1 - ambient) * max(n . l, 0)`` in [0, 1], (N,).

    ``light`` is the direction *toward* the light in the view frame of :func:`vertex_normals`
    (default: from the camera, a little up and right). ``two_sided`` uses ``|n . l|`` so a mesh
    of either winding convention is lit.
    """
    n = vertex_normals(vertices_img, triangles)
    l = np.asarray(light, dtype=np.float64)
    l = l / np.linalg.norm(l)
    d = n @ l
    d = np.abs(d) if two_sided else np.clip(d, 0.0, None)
    return ambient + (1.0 - ambient) * d


def render_shaded(vertices_img, triangles, H: int, W: int, color: Sequence[float] = (170, 190, 230),
                  vertex_colors: Optional[np.ndarray] = None, light=(0.3, 0.3, 1.0), ambient: float = 0.25):
    """Shaded rendering: (rgb (H, W, 3) uint8, mask (H, W) bool). Per-vertex intensity (and
    optional per-vertex colours (N, 3) uint8) interpolated across each triangle (Gouraud)."""
    V, T = _as_mesh(vertices_img, triangles)
    _, tid = rasterize(V, T, H, W)
    mask = tid >= 0
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    if not mask.any():
        return rgb, mask
    inten = shade(V, T, light=light, ambient=ambient)
    bc = barycentric(tid, V, T)[mask]  # (M, 3)
    corners = T[tid[mask]]  # (M, 3)
    if vertex_colors is None:
        base = np.asarray(color, dtype=np.float64)[None, None, :] * inten[corners][..., None]
    else:
        base = np.asarray(vertex_colors, dtype=np.float64)[corners] * inten[corners][..., None]
    rgb[mask] = np.clip((bc[..., None] * base).sum(1), 0, 255).astype(np.uint8)
    return rgb, mask


def draw_landmarks(image: np.ndarray, landmarks, color=(0, 255, 0), radius: Optional[int] = None) -> np.ndarray:
    """Draw (L, 2) pixel points as filled dots on a copy of an RGB uint8 image (NaN rows skipped)."""
    out = np.ascontiguousarray(image.copy())
    H, W = out.shape[:2]
    r = radius if radius is not None else max(1, int(round(min(H, W) / 250)))
    for x, y in np.asarray(landmarks, dtype=np.float64).reshape(-1, 2):
        if np.isfinite(x) and np.isfinite(y):
            c = (int(round(x * 16)), int(round(y * 16)))
            cv2.circle(out, c, r * 16, (0, 0, 0), -1, cv2.LINE_AA, shift=4)
            cv2.circle(out, c, max(1, r - 1) * 16 if r > 1 else 12, tuple(int(v) for v in color), -1, cv2.LINE_AA, shift=4)
    return out


def draw_wireframe(image: np.ndarray, vertices_img, triangles, color=(120, 200, 255), every: int = 1,
                   thickness: int = 1) -> np.ndarray:
    """The mesh's front-facing triangle edges (every ``every``-th triangle) on a copy of an RGB
    image: a fast overlay for video (one ``cv2.polylines`` call, no z-buffer). A triangle faces the
    camera when its projected winding is counter-clockwise in the image (y down: negative signed area)."""
    out = np.ascontiguousarray(image.copy())
    V = np.asarray(vertices_img, dtype=np.float64)
    T = np.asarray(triangles, dtype=np.int64)[:: max(int(every), 1)]
    p = V[T][..., :2]  # (T, 3, 2)
    area = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1])
    front = p[(area < 0) & np.isfinite(p).all((1, 2))]
    if len(front):
        cv2.polylines(out, list(np.rint(front * 4).astype(np.int32)), True, tuple(int(c) for c in color), thickness,
                      cv2.LINE_8, shift=2)
    return out


def draw_axes(image: np.ndarray, rotation, center, length: float, thickness: Optional[int] = None) -> np.ndarray:
    """Draw the head's model axes on a copy of an RGB image: x red, y green, z blue, from
    ``center`` (pixels). Axis i goes to ``center + length * (R[0, i], -R[1, i])`` (the image y
    flip of the weak-perspective projection); axes pointing away from the camera are drawn
    first so the nearer ones stay on top."""
    out = np.ascontiguousarray(image.copy())
    R = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    H, W = out.shape[:2]
    th = thickness if thickness is not None else max(1, int(round(min(H, W) / 200)))
    cx, cy = float(center[0]), float(center[1])
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i in np.argsort(R[2, :]):  # far (negative z toward camera) first
        ex, ey = cx + length * R[0, i], cy - length * R[1, i]
        p0, p1 = (int(round(cx * 16)), int(round(cy * 16))), (int(round(ex * 16)), int(round(ey * 16)))
        if p0 == p1:
            continue
        cv2.arrowedLine(out, p0, p1, colors[i], th, cv2.LINE_AA, shift=4, tipLength=0.15)
    return out


def overlay(image: np.ndarray, vertices_img, triangles, landmarks=None, rotation=None, alpha: float = 0.6,
            color: Sequence[float] = (170, 190, 230), vertex_colors: Optional[np.ndarray] = None) -> np.ndarray:
    """The shaded mesh blended over the photo, with landmarks and pose axes.

    Args:
        image: (H, W, 3) uint8 RGB photo.
        vertices_img: (N, 3) image-aligned vertices (px, depth larger = nearer).
        triangles: (T, 3).
        landmarks: optional (L, 2) pixels, drawn as green dots.
        rotation: optional (3, 3) head rotation (model -> camera); axes drawn from the face centre
            (the mean of the drawn pixels) with a length of 40 % of the face width.
        alpha: opacity of the mesh (0 = photo only, 1 = mesh only).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"overlay needs an (H, W, 3) uint8 RGB image, got {img.dtype} {img.shape}")
    H, W = img.shape[:2]
    V, T = _as_mesh(vertices_img, triangles)
    rgb, mask = render_shaded(V, T, H, W, color=color, vertex_colors=vertex_colors)
    out = img.copy()
    a = float(np.clip(alpha, 0.0, 1.0))
    if mask.any():
        blend = (1.0 - a) * img[mask].astype(np.float64) + a * rgb[mask].astype(np.float64)
        out[mask] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    if landmarks is not None:
        out = draw_landmarks(out, landmarks)
    if rotation is not None:
        if mask.any():
            ys, xs = np.nonzero(mask)
            center = (xs.mean(), ys.mean())
            width = xs.max() - xs.min() + 1
        else:
            fin = np.isfinite(V[:, :2]).all(1)
            center = V[fin, :2].mean(0) if fin.any() else (W / 2, H / 2)
            width = np.ptp(V[fin, 0]) if fin.any() else min(H, W) / 4
        out = draw_axes(out, rotation, center, 0.4 * max(float(width), 8.0))
    return out


def vertex_visibility(vertices_img, triangles, H: int, W: int, tol: Optional[float] = None,
                      depth_map: Optional[np.ndarray] = None) -> np.ndarray:
    """Which vertices the camera sees: (N,) bool.

    A vertex is visible when it projects inside the image and its depth is within a tolerance of
    the z-buffer at its (rounded) pixel, i.e. its own surface is the nearest there. The tolerance
    is ``tol`` (default: 2 % of the mesh's x/y extent, at least 1 px) plus the depth change of
    the vertex's own surface over the rounding offset (|offset| * |n_xy| / |n_z|, the slope from
    its normal, capped at 10), which keeps steep, near-silhouette vertices visible. Vertices
    whose pixel is background (a silhouette vertex rounding off the mesh) count as visible.
    Pass ``depth_map`` to reuse a :func:`rasterize` result.
    """
    V, T = _as_mesh(vertices_img, triangles)
    if depth_map is None:
        depth_map, _ = rasterize(V, T, H, W)
    fin = np.isfinite(V).all(1)
    if tol is None:
        ext = float(np.ptp(V[fin, :2], axis=0).max()) if fin.any() else 0.0
        tol = max(1.0, 0.02 * ext)
    xi = np.rint(np.where(fin, V[:, 0], -1)).astype(np.int64)
    yi = np.rint(np.where(fin, V[:, 1], -1)).astype(np.int64)
    inside = fin & (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
    vis = np.zeros(len(V), dtype=bool)
    if not inside.any():
        return vis
    n = vertex_normals(np.where(fin[:, None], V, 0.0), T)[inside]
    slope = np.minimum(np.linalg.norm(n[:, :2], axis=1) / np.maximum(np.abs(n[:, 2]), 1e-6), 10.0)
    off = np.hypot(V[inside, 0] - xi[inside], V[inside, 1] - yi[inside])
    zb = depth_map[yi[inside], xi[inside]]
    vis[inside] = (V[inside, 2] >= zb - tol - off * slope) | ~np.isfinite(zb)
    return vis


def sample_colors(image: np.ndarray, vertices_img, visible=None, neutral: Sequence[int] = (200, 200, 200)) -> np.ndarray:
    """Per-vertex colours (N, 3) uint8 sampled bilinearly from an RGB image at each vertex's
    pixel; vertices that are not ``visible`` (N,) bool, or fall outside the image, get ``neutral``."""
    img = np.asarray(image)
    V = np.asarray(vertices_img, dtype=np.float64)
    N = len(V)
    out = np.empty((N, 3), dtype=np.uint8)
    out[:] = np.asarray(neutral, dtype=np.uint8)
    H, W = img.shape[:2]
    ok = np.isfinite(V[:, :2]).all(1) & (V[:, 0] >= -0.5) & (V[:, 0] <= W - 0.5) & (V[:, 1] >= -0.5) & (V[:, 1] <= H - 0.5)
    if visible is not None:
        ok &= np.asarray(visible, dtype=bool).reshape(N)
    if ok.any():
        out[ok] = np.clip(np.rint(sample_bilinear(img[..., :3], V[ok, 0], V[ok, 1])), 0, 255).astype(np.uint8)
    return out


def sample_bilinear(image: np.ndarray, x, y) -> np.ndarray:
    """Bilinear samples (M, C) float64 of an (H, W, C) image at pixel positions ``x``, ``y`` (M,)
    (pixel centres at integers, y down); positions outside are clamped to the border pixels."""
    img = np.asarray(image)
    H, W = img.shape[:2]
    x = np.clip(np.asarray(x, dtype=np.float64).reshape(-1), 0.0, W - 1.0)
    y = np.clip(np.asarray(y, dtype=np.float64).reshape(-1), 0.0, H - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), W - 2) if W > 1 else np.zeros(len(x), np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), H - 2) if H > 1 else np.zeros(len(y), np.int64)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    im = img.reshape(H, W, -1)
    return (im[y0, x0] * (1 - fx) * (1 - fy) + im[y0, x1] * fx * (1 - fy)
            + im[y1, x0] * (1 - fx) * fy + im[y1, x1] * fx * fy)


def depth_map(vertices_img, triangles, H: int, W: int) -> np.ndarray:
    """Depth of the nearest surface at each pixel centre: (H, W) float64, pixels, **larger =
    nearer** the camera (the ``z`` of ``vertices_img``), NaN where no triangle is drawn."""
    depth, _ = rasterize(vertices_img, triangles, H, W)
    return np.where(np.isfinite(depth), depth, np.nan)


def normal_map(vertices_img, triangles, H: int, W: int, smooth: bool = True,
               tri_id: Optional[np.ndarray] = None) -> np.ndarray:
    """Surface normals at each pixel centre: (H, W, 3) float64 unit vectors in the view frame of
    :func:`vertex_normals` (x right, y **up**, z toward the viewer), 0 where nothing is drawn.

    ``smooth``: the vertex normals interpolated across each triangle and renormalised (else the
    flat triangle normal). Pass ``tri_id`` to reuse a :func:`rasterize` result.
    """
    V, T = _as_mesh(vertices_img, triangles)
    if tri_id is None:
        _, tri_id = rasterize(V, T, H, W)
    out = np.zeros(tri_id.shape + (3,))
    mask = tri_id >= 0
    if not mask.any():
        return out
    if smooth:
        bc = barycentric(tri_id, V, T)[mask]  # (M, 3)
        n = (bc[..., None] * vertex_normals(V, T)[T[tri_id[mask]]]).sum(1)
    else:
        n = face_normals(V, T)[tri_id[mask]]
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    out[mask] = n / np.where(norm > 0, norm, 1.0)
    return out


def render_textured(vertices_img, triangles, uv, texture: np.ndarray, H: int, W: int,
                    light: Optional[Sequence[float]] = (0.3, 0.3, 1.0), ambient: float = 0.6):
    """A textured rendering: (rgb (H, W, 3) uint8, mask (H, W) bool).

    Each pixel's ``uv`` (N, 2) in [0, 1] (OBJ convention: v up, so texture row 0 is v = 1) is
    interpolated across its triangle and the (S_h, S_w, 3) uint8 ``texture`` is sampled
    bilinearly there; with ``light`` the colour is scaled by the Lambert shading of
    :func:`shade` (``light=None``: unlit, the texture as is).
    """
    V, T = _as_mesh(vertices_img, triangles)
    UV = np.asarray(uv, dtype=np.float64).reshape(len(V), 2)
    tex = np.ascontiguousarray(texture)
    _, tid = rasterize(V, T, H, W)
    mask = tid >= 0
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    if not mask.any():
        return rgb, mask
    bc = barycentric(tid, V, T)[mask]  # (M, 3)
    corners = T[tid[mask]]  # (M, 3)
    p = (bc[..., None] * UV[corners]).sum(1)
    th, tw = tex.shape[:2]
    col = sample_bilinear(tex[..., :3], p[:, 0] * tw - 0.5, (1.0 - p[:, 1]) * th - 0.5)
    if light is not None:
        inten = shade(V, T, light=light, ambient=ambient)
        col *= (bc * inten[corners]).sum(1)[:, None]
    rgb[mask] = np.clip(np.rint(col), 0, 255).astype(np.uint8)
    return rgb, mask
