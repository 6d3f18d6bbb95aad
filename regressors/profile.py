r"""300W-LP-style face profiling from our own fits (issue 10): re-render training photos at large yaw.

    python -m regressors.profile --labels LABELS.npz --out DIR [--per-face 2] [--limit N] [--seed 0]
        [--resume] [--max-yaw 90] [--min-yaw 15] [--max-delta 75] [--contact-sheet PNG]
        [--data-root DIR] [--render-region head|face|narrow] [--neck-cut -100]

For every training face with a usable fit (``ok``, split ``train``, |pitch| and |roll| <= 60 deg)
and each of ``--per-face`` views, the photo is re-rendered with the head turned to a sampled yaw:

* **Pose.** Target |yaw| uniform in [``--min-yaw``, ``--max-yaw``] on the side the face already
  turns to (p = 0.75; either side when |yaw| < 10 deg), at least 10 deg and at most ``--max-delta``
  from the current yaw; pitch moves by U(-10, 10) deg; roll is kept. Angles follow
  :mod:`morphable.geometry` (``R = Rx(pitch) Ry(yaw) Rz(roll)``). The head turns about the centroid
  of the fitted face mesh: scale is kept and ``t' = t + s P (R - R') c`` so the centroid stays on
  its pixel.
* **Head.** The fitted coefficients are applied to a wider region of the same model
  (``--render-region``, ICT-FaceKit ``head``: face, skull and ears; its first vertices and bases are
  the label model's) cut below the chin (``--neck-cut``, model height in mm: the neck stays in the
  surroundings), with the eye and mouth holes capped by fans (the eyes and the inner mouth come
  along). It is z-buffered at the new pose (:func:`morphable.render.rasterize`); each covered pixel
  is a point of a triangle and takes the photo's colour where that surface point projected in the
  original pose (per-pixel texture lookup, bilinear). Per-vertex trust decides where the photo is
  used: visible in the original (z-buffer), not grazing (view normal z ramped from 0.15 to 0.45) and
  not within 1-5 % of the face size of the original silhouette (the fit's outline is uncertain, so
  background would bleed in). Untrusted surface takes the photo at its mirror vertex's original
  projection when that one is trusted (left-right map of the mean mesh), else a smooth fill: the
  trusted vertex colours diffused over the mesh graph. The three are blended with the barycentric
  interpolation of the per-vertex trusts: no seams, no garbage.
* **Surroundings** (hair beyond the skull, background, neck): the photo with the old head region
  inpainted (``cv2.inpaint``; any leftover shows smeared surroundings, never a ghost face), warped by
  a radial map about the rotation centre's pixel that takes the old head outline onto the new one
  and decays linearly to no motion at the image border (:func:`radial_warp_map`). Image-border
  pixels do not move; the surroundings are squeezed on the side the head turns to and stretched on
  the other (radial streaks where the old head filled the crop).
* **Composite.** The rendered head over the warped surroundings with its coverage mask eroded by
  one pixel and blurred (sigma 0.8 px) as alpha: no holes at the edge.

Labels are exact by construction (same shape/expression/scale, new rotation and translation):
``landmarks3d`` the model's 68 landmark vertices projected at the new pose; ``target`` the same
3D-style points with ``visible`` = 1 everywhere (they are exact, not annotated, and 3D-style is the
convention of AFLW2000-3D and of our ``landmarks3d``); ``rmse`` 0, ``ok`` True, split ``train``, set
``profiled-<set>``. Extra keys: ``landmarks2d`` (68 points, jaw on the silhouette: 300-W style),
``lm_visible`` (z-buffer visibility of the 68 3D-style points at the new pose), ``source`` /
``source_index`` (original image and label row), ``yaw`` / ``source_yaw`` (deg). Names are relative
to ``--out``.

2D-style jaw (``landmarks2d``): jaw points 0-4 and 12-16 slide along fixed horizontal lines of face
vertices of their side (within 4 mm of the landmark's height on the mean mesh, |x| >= 8 mm) to the
line's outermost projection (landmark marching, Zhu et al. 2016); the lower jaw 5-7 and 9-11 do so
only on the far side and on lines restricted to the front of the chin; point 8 and the inner points
are the 3D-style ones.

Output: ``DIR/images/<set>/<stem>_p<k>.jpg`` (JPEG q90, same size and frame as the original),
``DIR/shards/chunk_NNNNN.npz`` (one per chunk of ``--chunk`` faces, written when the chunk is done),
``DIR/labels.npz`` (all shards merged, a :mod:`regressors.data` label file), ``DIR/profile.json``.
Every view depends only on (``--seed``, label row, view index). ``--resume`` keeps finished shards
whose images all exist and, elsewhere, does not re-render views whose image exists (their labels are
recomputed, cheaply). Mixing into training: :mod:`regressors.mixing`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from scipy import sparse
from scipy.spatial import cKDTree

from morphable.geometry import PROJECTION, angles_to_rotmat, rotmat_to_angles, rotmat_to_rotvec, rotvec_to_rotmat
from morphable.render import barycentric, draw_landmarks, rasterize, sample_colors, vertex_normals, vertex_visibility

from .data import LABEL_KEYS, _validate, default_data_root, load_labels, model_for_labels, to_frame
from .mixing import label_angles

__all__ = ["ProfileTopology", "ProfileOptions", "sample_target", "new_pose", "project_mesh", "profile_face",
           "texture_weights", "fill_colors", "render_texture", "radial_warp_map", "warp_surroundings",
           "contour_landmarks", "select_faces", "merge_shards", "contact_sheet", "main"]

P2 = np.array(PROJECTION)  # drops z, flips y
#: Extra per-row keys of the profiled label file (besides regressors.data.LABEL_KEYS).
EXTRA_KEYS = ("landmarks2d", "lm_visible", "source", "source_index", "yaw", "source_yaw")
JAW_CHEEK = (0, 1, 2, 3, 4, 12, 13, 14, 15, 16)  # marched on both sides
JAW_LOWER = (5, 6, 7, 9, 10, 11)  # marched on the far side only


# --------------------------------------------------------------------------------- topology
def boundary_loops(triangles: np.ndarray) -> list:
    """Ordered boundary loops (lists of vertex ids) of a consistently wound manifold triangle mesh."""
    T = np.asarray(triangles, dtype=np.int64)
    e = np.concatenate([T[:, [0, 1]], T[:, [1, 2]], T[:, [2, 0]]])
    n = int(T.max()) + 1
    key = e[:, 0] * n + e[:, 1]
    rev = e[:, 1] * n + e[:, 0]
    bnd = e[~np.isin(key, rev)]
    nxt = dict(zip(bnd[:, 0].tolist(), bnd[:, 1].tolist()))
    loops, seen = [], set()
    for s in nxt:
        if s in seen:
            continue
        loop, v = [], s
        while v not in seen:
            seen.add(v)
            loop.append(v)
            v = nxt.get(v, s)
        loops.append(loop)
    return loops


class ProfileTopology:
    """Everything about the model that profiling needs, built once.

    Attributes:
        n_model: model vertices N; ``n`` = N + one cap centre per hole.
        n_face: the first ``n_face`` vertices are the face the labels were fitted on (the marching
            lines and the rotation centre use only them).
        tri: (T', 3) triangles with the holes (eyes, mouth) closed by fans to a centre vertex.
        holes: the small boundary loops (eyes, mouth); the cap centre of hole k is vertex N + k.
        mirror: (n,) left-right mirror vertex (nearest vertex of the x-mirrored mean mesh).
        adj: (n, n) row-normalised vertex adjacency (sparse CSR).
        landmarks: (68,) landmark vertex ids.
        lines: {jaw index: vertex ids} landmark-marching lines.
    """

    def __init__(self, model, n_face: Optional[int] = None, neck_cut: Optional[float] = None):
        mean = model.mean.detach().double().cpu().numpy()
        T = model.triangles.cpu().numpy().astype(np.int64)
        N = len(mean)
        if neck_cut is not None:  # drop the neck below the chin: it is "surroundings", not head
            T = T[(mean[T][:, :, 1] > neck_cut).all(1)]
        loops = boundary_loops(T)
        if not loops:
            raise ValueError(f"{model.name}: the mesh has no boundary; profiling needs an open face mesh")
        diag = np.linalg.norm(np.ptp(mean[np.unique(T)], axis=0))
        small = [np.linalg.norm(np.ptp(mean[h], axis=0)) < 0.5 * diag for h in loops]
        self.n_model = N
        self.n_face = int(n_face) if n_face else N
        self.holes = [np.asarray(h, dtype=np.int64) for h, sm in zip(loops, small) if sm]  # eyes, mouth
        caps = []
        for k, h in enumerate(self.holes):  # fan (b, a, centre) contains the reversed boundary edge b -> a
            caps.append(np.stack([np.roll(h, -1), h, np.full(len(h), N + k)], 1))
        self.tri = np.concatenate([T] + caps) if caps else T
        self.n = N + len(self.holes)
        full = self.extend_np(mean[None])[0]
        _, mir = cKDTree(full * [-1.0, 1.0, 1.0]).query(full)
        self.mirror = mir.astype(np.int64)
        e = np.concatenate([self.tri[:, [0, 1]], self.tri[:, [1, 2]], self.tri[:, [2, 0]]])
        A = sparse.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(self.n, self.n)).tocsr()
        A = ((A + A.T) > 0).astype(np.float64)
        self.adj = sparse.diags(1.0 / np.maximum(np.asarray(A.sum(1)).ravel(), 1.0)) @ A
        self.landmarks = model.landmarks.cpu().numpy().astype(np.int64)
        self.lines = self._lines(mean)

    def _lines(self, mean: np.ndarray) -> dict:
        lines = {}
        for j in JAW_CHEEK + JAW_LOWER:
            v = self.landmarks[j]
            x, y, z = mean[v]
            sel = (np.abs(mean[:, 1] - y) <= 4.0) & (mean[:, 0] * np.sign(x) >= 8.0)
            sel &= np.arange(len(mean)) < self.n_face
            if j in JAW_LOWER:
                sel &= mean[:, 2] >= z - 10.0
            ids = np.union1d(np.flatnonzero(sel), [v])
            lines[j] = ids.astype(np.int64)
        return lines

    def extend_np(self, V: np.ndarray) -> np.ndarray:
        """(B, N, 3) model vertices -> (B, n, 3) with the cap centres (mean of each hole loop)."""
        if not self.holes:
            return V
        return np.concatenate([V] + [V[:, h].mean(1, keepdims=True) for h in self.holes], 1)


# ------------------------------------------------------------------------------- pose
@dataclass
class ProfileOptions:
    """Knobs of the pose sampling and the rendering (defaults are the CLI's)."""

    min_yaw: float = 15.0
    max_yaw: float = 90.0
    min_delta: float = 10.0
    max_delta: float = 75.0
    same_side: float = 0.75
    max_dpitch: float = 10.0
    max_pitch: float = 60.0
    feather: float = 0.8  # px, Gaussian sigma of the face alpha


def sample_target(rng: np.random.Generator, yaw0: float, pitch0: float, opt: ProfileOptions) -> tuple:
    """(target yaw, target pitch) in degrees for a face at (yaw0, pitch0) degrees."""
    if abs(yaw0) >= 10.0:
        side = math.copysign(1.0, yaw0) if rng.random() < opt.same_side else -math.copysign(1.0, yaw0)
    else:
        side = 1.0 if rng.random() < 0.5 else -1.0
    lo, hi = opt.min_yaw, max(opt.max_yaw, opt.min_yaw)
    y = None
    for _ in range(32):
        cand = side * rng.uniform(lo, hi)
        if opt.min_delta <= abs(cand - yaw0) <= opt.max_delta:
            y = cand
            break
    if y is None:  # no room on that side: the nearest allowed yaw on either side
        grid = np.concatenate([np.linspace(-hi, -lo, 64), np.linspace(lo, hi, 64)])
        d = np.abs(grid - yaw0)
        ok = (d >= opt.min_delta) & (d <= opt.max_delta)
        y = float(rng.choice(grid[ok])) if ok.any() else float(grid[np.argmax(d)])
    p = float(np.clip(pitch0 + rng.uniform(-opt.max_dpitch, opt.max_dpitch), -opt.max_pitch, opt.max_pitch))
    return float(y), p


def new_pose(R0: np.ndarray, scale: float, t0: np.ndarray, centre: np.ndarray, yaw: float, pitch: float):
    """Rotation with the given yaw/pitch (deg, roll kept) and the translation that keeps ``centre``
    (model frame, mm) on its pixel: returns (R1 (3, 3), t1 (2,))."""
    ang = rotmat_to_angles(torch.as_tensor(R0, dtype=torch.float64)).numpy()
    R1 = angles_to_rotmat(torch.tensor([math.radians(pitch), math.radians(yaw), ang[2]], dtype=torch.float64)).numpy()
    t1 = np.asarray(t0, dtype=np.float64) + scale * P2 @ (R0 - R1) @ centre
    return R1, t1


def project_mesh(V: np.ndarray, R: np.ndarray, scale: float, t: np.ndarray) -> np.ndarray:
    """(n, 3) model vertices -> (n, 3) ``[x px, y px, depth]`` (the :mod:`morphable.geometry` camera)."""
    Y = V @ R.T
    return np.stack([scale * Y[:, 0] + t[0], -scale * Y[:, 1] + t[1], scale * Y[:, 2]], 1)


# ---------------------------------------------------------------------------- texture
def _remap_points(img: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples (M, C) float32 of an image at (M, 2) pixel positions (edge-clamped)."""
    if not len(xy):
        return np.zeros((0, img.shape[2]), np.float32)
    m = np.ascontiguousarray(xy.astype(np.float32).reshape(-1, 1, 2))
    # cv2.remap takes maps of fewer than 32,767 rows (SHRT_MAX): a 320 px 300-W face covers more pixels
    out = np.concatenate([cv2.remap(img, m[i:i + 32000], None, interpolation=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE) for i in range(0, len(m), 32000)])
    return out.reshape(len(xy), -1).astype(np.float32)


def texture_weights(X0: np.ndarray, topo: ProfileTopology, H: int, W: int, depth_map=None) -> np.ndarray:
    """Per-vertex trust (n,) in [0, 1] of the photo as texture: visible (z-buffer), inside the image,
    facing the camera (view-frame normal z ramped from 0.15 to 0.45) and away from the silhouette
    (distance ramped from 1 % to 5 % of the face size)."""
    if depth_map is None:
        depth_map, _ = rasterize(X0, topo.tri, H, W)
    vis = vertex_visibility(X0, topo.tri, H, W, depth_map=depth_map)
    nz = vertex_normals(X0, topo.tri)[:, 2]
    inside = (X0[:, 0] >= 0) & (X0[:, 0] <= W - 1) & (X0[:, 1] >= 0) & (X0[:, 1] <= H - 1)
    # distance (px) of each vertex from the silhouette: the fit's outline is uncertain by a few px
    dist = cv2.distanceTransform(np.isfinite(depth_map).astype(np.uint8), cv2.DIST_L2, 3)
    xi = np.clip(np.rint(X0[:, 0]).astype(np.int64), 0, W - 1)
    yi = np.clip(np.rint(X0[:, 1]).astype(np.int64), 0, H - 1)
    size = max(float(np.ptp(X0[topo.landmarks, :2], axis=0).max()), 8.0)
    edge = np.clip((dist[yi, xi] - 0.01 * size) / (0.04 * size), 0.0, 1.0)
    return vis * inside * edge * np.clip((nz - 0.15) / 0.3, 0.0, 1.0)


def fill_colors(img: np.ndarray, X0: np.ndarray, q: np.ndarray, topo: ProfileTopology, iters: int = 30) -> np.ndarray:
    """Smooth per-vertex fill colours (n, C): the photo at reliable vertices (q >= 0.5) diffused over
    the mesh graph to the rest (started from their mean colour)."""
    known = q >= 0.5
    C = sample_colors(img, X0, visible=known).astype(np.float64)
    if not known.any():
        C[:] = img.reshape(-1, img.shape[2]).mean(0)
        return C
    C[~known] = C[known].mean(0)
    free = ~known[:, None]
    for _ in range(iters):
        C = np.where(free, topo.adj @ C, C)
    return C


def render_texture(img: np.ndarray, X0: np.ndarray, X1: np.ndarray, q: np.ndarray, fill: np.ndarray,
                   topo: ProfileTopology, tri_id: np.ndarray):
    """The face at the new pose: (rgb (H, W, C) float32, coverage mask (H, W) bool).

    Pixel colour = a * photo(direct) + (1 - a) * (b * photo(mirror) + (1 - b) * fill), with a, b the
    barycentric interpolation of the vertex trust ``q`` and of the mirror's trust; "direct" is the
    photo at the pixel's surface point projected with the original pose ``X0``, "mirror" the same for
    the mirrored surface point.
    """
    H, W = tri_id.shape
    mask = tri_id >= 0
    out = np.zeros((H, W, img.shape[2]), np.float32)
    if not mask.any():
        return out, mask
    bc = barycentric(tri_id, X1, topo.tri)[mask]  # (M, 3)
    cor = topo.tri[tri_id[mask]]  # (M, 3)
    mcor = topo.mirror[cor]
    src = np.einsum("mk,mkd->md", bc, X0[cor, :2])
    msrc = np.einsum("mk,mkd->md", bc, X0[mcor, :2])
    a = np.einsum("mk,mk->m", bc, q[cor])[:, None]
    b = np.einsum("mk,mk->m", bc, q[mcor])[:, None]
    f = np.einsum("mk,mkc->mc", bc, fill[cor])
    need_m = (a[:, 0] < 1.0 - 1e-6) & (b[:, 0] > 1e-6)
    cm = np.zeros_like(f, dtype=np.float32)
    cm[need_m] = _remap_points(img, msrc[need_m])
    cd = _remap_points(img, src)
    out[mask] = a * cd + (1 - a) * (b * cm + (1 - b) * f)
    return out, mask


# ---------------------------------------------------------------------------- surroundings
def _ray_exit(mask: np.ndarray, centre: np.ndarray, theta: np.ndarray, rmax: np.ndarray,
              step: float = 0.5) -> np.ndarray:
    """Radius (K,) at which each ray from ``centre`` at angles ``theta`` first leaves ``mask`` (0 if
    the centre is off the mask), capped at ``rmax`` (K,)."""
    H, W = mask.shape
    r = np.arange(0.0, float(rmax.max()) + step, step)
    x = centre[0] + np.cos(theta)[:, None] * r[None, :]
    y = centre[1] + np.sin(theta)[:, None] * r[None, :]
    xi, yi = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    inside = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H) & (r[None, :] <= rmax[:, None])
    hit = np.zeros(inside.shape, bool)
    hit[inside] = mask[yi[inside], xi[inside]]
    return np.minimum(r[np.argmax(~hit, axis=1)], rmax)


def _border_radius(centre: np.ndarray, theta: np.ndarray, H: int, W: int) -> np.ndarray:
    """Distance (K,) from ``centre`` (inside the image) to the border of [0, W-1] x [0, H-1] along each ray."""
    c, s = np.cos(theta), np.sin(theta)
    with np.errstate(divide="ignore", invalid="ignore"):
        tx = np.where(c > 1e-12, (W - 1 - centre[0]) / c, np.where(c < -1e-12, -centre[0] / c, np.inf))
        ty = np.where(s > 1e-12, (H - 1 - centre[1]) / s, np.where(s < -1e-12, -centre[1] / s, np.inf))
    return np.minimum(tx, ty)


def _circular_smooth(v: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return v
    k = np.ones(width) / width
    pad = np.r_[v[-width:], v, v[:width]]
    return np.convolve(pad, k, mode="same")[width:-width]


def radial_warp_map(mask0: np.ndarray, mask1: np.ndarray, centre, n_angles: int = 360, smooth: int = 3):
    """Backward map (map_x, map_y) (H, W) float32 that takes the outline of ``mask1`` (the new face)
    onto the outline of ``mask0`` (the old one) along rays from ``centre`` and leaves the image border
    fixed.

    Along the ray at angle theta with old/new face radii r0, r1 and border distance B, an output
    pixel at radius r reads the source at ``r0 + (r - r1) (B - r0) / (B - r1)`` outside the new face
    (monotone: the surroundings are squeezed or stretched between the face and the border, the
    displacement decaying linearly to 0 at the border) and at ``r r0 / r1`` inside it. Radii are the
    first exit of each ray from its mask (sampled at ``n_angles`` angles, smoothed over ``smooth``
    angles) and kept 1 px short of the border.
    """
    H, W = mask0.shape
    c = np.clip(np.asarray(centre, dtype=np.float64), [1.0, 1.0], [W - 2.0, H - 2.0])
    th = np.linspace(-np.pi, np.pi, n_angles, endpoint=False)
    B = _border_radius(c, th, H, W)
    r0 = np.minimum(_circular_smooth(_ray_exit(mask0, c, th, B), smooth), B - 1.0)
    r1 = np.minimum(_circular_smooth(_ray_exit(mask1, c, th, B), smooth), B - 1.0)
    r0, r1 = np.maximum(r0, 0.0), np.maximum(r1, 0.0)
    gy, gx = np.mgrid[0:H, 0:W].astype(np.float64)
    dx, dy = gx - c[0], gy - c[1]
    r = np.hypot(dx, dy)
    a = np.arctan2(dy, dx)
    f = (a + np.pi) / (2 * np.pi) * n_angles  # fractional angle index
    i0 = np.floor(f).astype(np.int64) % n_angles
    i1 = (i0 + 1) % n_angles
    w = f - np.floor(f)
    lerp = lambda v: (1 - w) * v[i0] + w * v[i1]  # noqa: E731
    Bp = np.maximum(_border_radius(c, a, H, W), r)  # exact per pixel: border pixels map to themselves
    R0, R1 = np.minimum(lerp(r0), Bp - 1.0), np.minimum(lerp(r1), Bp - 1.0)
    out_face = r >= R1
    rho = np.where(out_face, R0 + (r - R1) * (Bp - R0) / np.maximum(Bp - R1, 1e-6), r * R0 / np.maximum(R1, 1e-6))
    rho = np.where(r > 1e-9, rho, 0.0)
    scale = np.where(r > 1e-9, rho / np.maximum(r, 1e-9), 1.0)
    mx = (c[0] + dx * scale).astype(np.float32)
    my = (c[1] + dy * scale).astype(np.float32)
    return mx, my


def warp_surroundings(img: np.ndarray, mask0: np.ndarray, mask1: np.ndarray, centre) -> np.ndarray:
    """The photo without the old face (inpainted) warped by :func:`radial_warp_map`."""
    m0 = cv2.dilate(mask0.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2)
    base = cv2.inpaint(img, m0, 3, cv2.INPAINT_TELEA) if m0.any() else img
    mx, my = radial_warp_map(mask0, mask1, centre)
    return cv2.remap(base, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# ---------------------------------------------------------------------------- labels
def contour_landmarks(X1: np.ndarray, topo: ProfileTopology, yaw_deg: float) -> np.ndarray:
    """68 landmarks, 300-W style: jaw points marched to the silhouette (module docstring)."""
    lm = X1[topo.landmarks, :2].copy()
    far_right = yaw_deg > 0  # positive yaw turns the face to image-left: the subject's right side is far
    for j, ids in topo.lines.items():
        right = j < 8
        if j in JAW_LOWER and right != far_right:
            continue
        x = X1[ids, 0]
        v = ids[np.argmin(x)] if right else ids[np.argmax(x)]  # right side (image-left) outward = smaller x
        lm[j] = X1[v, :2]
    return lm


@dataclass
class ProfiledView:
    image: Optional[np.ndarray]
    rotvec: np.ndarray
    translation: np.ndarray
    landmarks3d: np.ndarray
    landmarks2d: np.ndarray
    lm_visible: np.ndarray
    yaw: float
    pitch: float


def profile_face(img: np.ndarray, V: np.ndarray, R0: np.ndarray, scale: float, t0: np.ndarray,
                 yaw: float, pitch: float, topo: ProfileTopology, opt: ProfileOptions = ProfileOptions(),
                 render: bool = True) -> ProfiledView:
    """Profile one face.

    Args:
        img: (H, W, C) uint8 photo (any channel order; the view comes back in the same); with
            ``render=False`` only its size is used.
        V: (n, 3) fitted vertices with cap centres (:meth:`ProfileTopology.extend_np`), model frame mm.
        R0, scale, t0: the fitted camera (image frame).
        yaw, pitch: target angles, degrees.
        render: False computes only the labels (no image).
    """
    H, W = img.shape[:2]
    centre3 = V[:topo.n_face].mean(0)
    R1, t1 = new_pose(R0, scale, t0, centre3, yaw, pitch)
    X1 = project_mesh(V, R1, scale, t1)
    d1, tid1 = rasterize(X1, topo.tri, H, W)
    vis1 = vertex_visibility(X1, topo.tri, H, W, depth_map=d1)
    lm3 = X1[topo.landmarks, :2]
    lm2 = contour_landmarks(X1, topo, yaw)
    rv = rotmat_to_rotvec(torch.as_tensor(R1)).numpy()
    out = None
    if render:
        X0 = project_mesh(V, R0, scale, t0)
        d0, tid0 = rasterize(X0, topo.tri, H, W)
        q = texture_weights(X0, topo, H, W, depth_map=d0)
        fill = fill_colors(img, X0, q, topo)
        face, mask1 = render_texture(img, X0, X1, q, fill, topo, tid1)
        centre = scale * P2 @ R0 @ centre3 + t0
        bg = warp_surroundings(img, tid0 >= 0, mask1, centre)
        alpha = cv2.erode(mask1.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
        if opt.feather > 0:
            alpha = cv2.GaussianBlur(alpha, (0, 0), opt.feather)
        alpha = alpha[..., None]
        out = np.clip(np.rint(alpha * face + (1 - alpha) * bg.astype(np.float32)), 0, 255).astype(np.uint8)
    return ProfiledView(out, rv, t1, lm3, lm2, vis1[topo.landmarks], yaw, pitch)


# ---------------------------------------------------------------------------- label files
def _to_label_arrays(rows: dict) -> dict:
    out = {}
    for k, v in rows.items():
        a = np.asarray(v)
        kind = LABEL_KEYS[k][1] if k in LABEL_KEYS else None
        if kind == "U" or a.dtype.kind in "UO":
            out[k] = a.astype(str)
        elif kind == "b" or a.dtype == bool:
            out[k] = a.astype(bool)
        elif a.dtype.kind in "iu":
            out[k] = a.astype(np.int64)
        else:
            out[k] = a.astype(np.float32)
    return out


def write_label_file(path: Path, rows: dict, model: str = "", landmark_ids=None, frame_rotation=None) -> None:
    """A :mod:`regressors.data` label file with extra keys, written atomically (checked first)."""
    arrays = _to_label_arrays(rows)
    _validate(arrays, str(path))
    arrays["model"] = np.asarray(str(model))
    if landmark_ids is not None:
        arrays["landmark_ids"] = np.asarray(landmark_ids, dtype=np.int64).reshape(68)
    if frame_rotation is not None:
        arrays["frame_rotation"] = np.asarray(frame_rotation, dtype=np.float64).reshape(3, 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _read_shard(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _empty_rows(n_shape: int, n_expr: int) -> dict:
    """Zero-row arrays of every key, right trailing shapes and kinds (a chunk whose faces all failed)."""
    trail = {"shape": (n_shape,), "expr": (n_expr,), "rotvec": (3,), "translation": (2,), "landmarks3d": (68, 2),
             "target": (68, 2), "landmarks2d": (68, 2), "visible": (68,), "lm_visible": (68,)}
    kind = {"name": str, "set": str, "split": str, "source": str, "ok": bool, "lm_visible": bool,
            "source_index": np.int64}
    keys = list(LABEL_KEYS) + list(EXTRA_KEYS)
    return {k: np.zeros((0,) + trail.get(k, ()), dtype=kind.get(k, np.float32)) for k in keys}


def merge_shards(out: Path, model: str = "", landmark_ids=None, frame_rotation=None) -> int:
    """Concatenate ``out/shards/chunk_*.npz`` (in order) into ``out/labels.npz``; returns the row count."""
    parts = [_read_shard(p) for p in sorted((out / "shards").glob("chunk_*.npz"))]
    if not parts:
        raise ValueError(f"{out / 'shards'}: no shards to merge")
    rows = {k: np.concatenate([p[k] for p in parts]) for k in list(LABEL_KEYS) + list(EXTRA_KEYS)}
    write_label_file(out / "labels.npz", rows, model, landmark_ids, frame_rotation)
    return len(rows["name"])


# ---------------------------------------------------------------------------- selection
def select_faces(labels: dict, opt: ProfileOptions, limit: int = 0, seed: int = 0) -> np.ndarray:
    """Label rows to profile: ok, split train, finite, |pitch| and |roll| <= opt.max_pitch. With ``limit``
    a seeded random subset of that size (kept in file order)."""
    ok = labels["ok"].astype(bool) & (labels["split"] == "train")
    ok &= np.isfinite(labels["shape"]).all(1) & np.isfinite(labels["rotvec"]).all(1) & np.isfinite(labels["scale"])
    ang = label_angles(labels)
    ok &= (np.abs(ang[:, 0]) <= opt.max_pitch) & (np.abs(ang[:, 2]) <= opt.max_pitch)
    idx = np.flatnonzero(ok)
    if limit and limit < len(idx):
        idx = np.sort(np.random.default_rng([seed, 104729]).choice(idx, limit, replace=False))
    return idx


def render_model(model, name_or_path, region: str):
    """The model to render with: for ICT-FaceKit the wider ``region`` (its first vertices and bases
    are exactly the label model's, so the fitted coefficients carry over), else the label model."""
    if region == "narrow" or not model.name.startswith("ict-facekit"):
        return model
    from morphable.registry import load_model

    big = load_model(name_or_path, region=region).with_landmarks(model.landmarks.cpu().numpy(), definition=model.info.landmark_definition)
    N = model.n_vertices
    # the packaged model's bases are stored to 1e-4 mm, the upstream folder's exactly: 1 um is "the same"
    same = (big.n_vertices >= N and big.n_shape == model.n_shape and big.n_expr == model.n_expr
            and torch.allclose(big.mean[:N], model.mean, atol=1e-3)
            and torch.allclose(big.shape_basis[:N], model.shape_basis, atol=1e-3)
            and torch.allclose(big.expr_basis[:N], model.expr_basis, atol=1e-3) and torch.equal(big.landmarks, model.landmarks))
    if not same:
        raise SystemExit(f"region {region!r} of {model.name} does not extend the label model; "
                         "use --render-region narrow")
    return big


def view_name(source: str, set_name: str, k: int) -> str:
    return f"images/{set_name}/{Path(source).stem}_p{k}.jpg"


def _read_image(path: Path) -> Optional[np.ndarray]:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


def run(args) -> dict:
    """The CLI's work (see the module docstring); returns a summary dict."""
    from tqdm import tqdm

    torch.set_num_threads(max(int(args.threads), 1))
    cv2.setNumThreads(1)
    out = Path(args.out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    root = Path(args.data_root) if args.data_root else default_data_root()
    labels = load_labels(args.labels)
    model = model_for_labels(args.model, labels)  # same landmark definition as the source labels
    labels = to_frame(labels, model.info.frame_rotation)
    if labels["shape"].shape[1] != model.n_shape or labels["expr"].shape[1] != model.n_expr:
        raise SystemExit(f"{args.labels}: labels do not match the model {model.name} (Ks/Ke)")
    rmodel = render_model(model, args.model, args.render_region)
    topo = ProfileTopology(rmodel, n_face=model.n_vertices, neck_cut=args.neck_cut)
    opt = ProfileOptions(min_yaw=args.min_yaw, max_yaw=args.max_yaw, max_delta=args.max_delta)
    idx = select_faces(labels, opt, args.limit, args.seed)
    if not len(idx):
        raise SystemExit(f"{args.labels}: no usable training faces (ok, split train, |pitch|, |roll| <= 60 deg)")
    chunks = [idx[i:i + args.chunk] for i in range(0, len(idx), args.chunk)]
    meta = {"labels": str(Path(args.labels).resolve()), "data_root": str(root.resolve()), "seed": args.seed,
            "per_face": args.per_face, "limit": args.limit, "chunk": args.chunk, "options": opt.__dict__,
            "model": model.name, "render_model": rmodel.name, "neck_cut": args.neck_cut, "faces": int(len(idx))}
    meta_path = out / "profile.json"
    if args.resume and meta_path.exists():
        old = json.loads(meta_path.read_text())
        for k in ("seed", "per_face", "limit", "chunk", "options", "render_model", "neck_cut"):
            if json.dumps(old.get(k)) != json.dumps(meta[k]):
                raise SystemExit(f"--resume: {meta_path} was made with {k}={old.get(k)}, now {meta[k]}")
    elif not args.resume and any((out / "shards").glob("chunk_*.npz")):
        raise SystemExit(f"{out}: holds shards of an earlier run; pass --resume or use a new folder")
    meta_path.write_text(json.dumps(meta, indent=1, default=list))

    ang_all = label_angles(labels)
    bar = tqdm(total=len(idx), desc="profiling", unit="face", file=sys.stderr, dynamic_ncols=True, mininterval=2.0,
               disable=args.no_progress)
    n_rendered, n_failed, t_start = 0, 0, time.perf_counter()
    for c, rows_idx in enumerate(chunks):
        shard = out / "shards" / f"chunk_{c:05d}.npz"
        if args.resume and shard.exists():
            done = _read_shard(shard)["name"]
            if all((out / str(nm)).exists() for nm in done):
                bar.update(len(rows_idx))
                continue
        sh = torch.as_tensor(labels["shape"][rows_idx], dtype=torch.float64)
        ex = torch.as_tensor(labels["expr"][rows_idx], dtype=torch.float64)
        with torch.no_grad():
            Vb = topo.extend_np(rmodel.vertices(sh, ex).numpy())
        acc = {k: [] for k in list(LABEL_KEYS) + list(EXTRA_KEYS)}
        for b, i in enumerate(rows_idx):
            src = str(labels["name"][i])
            st = str(labels["set"][i])
            names = [view_name(src, st, k) for k in range(args.per_face)]
            need = [not (args.resume and (out / n).exists()) for n in names]
            img = _read_image(root / src)
            if img is None:
                n_failed += 1
                print(f"warning: {root / src}: missing or unreadable, skipped", file=sys.stderr)
                bar.update(1)
                continue
            R0 = rotvec_to_rotmat(torch.as_tensor(labels["rotvec"][i], dtype=torch.float64)).numpy()
            s = float(labels["scale"][i])
            t0 = labels["translation"][i].astype(np.float64)
            for k in range(args.per_face):
                rng = np.random.default_rng([args.seed, int(i), k])
                yaw, pitch = sample_target(rng, ang_all[i, 1], ang_all[i, 0], opt)
                try:
                    v = profile_face(img, Vb[b], R0, s, t0, yaw, pitch, topo, opt, render=need[k])
                except Exception as e:  # one bad face must not stop a long run
                    n_failed += 1
                    print(f"warning: {src} view {k}: {type(e).__name__}: {e}", file=sys.stderr)
                    continue
                if v.image is not None:
                    p = out / names[k]
                    p.parent.mkdir(parents=True, exist_ok=True)
                    if not cv2.imwrite(str(p), v.image, [cv2.IMWRITE_JPEG_QUALITY, 90]):
                        raise SystemExit(f"{p}: could not write the image")
                    n_rendered += 1
                for key, val in (("name", names[k]), ("set", f"profiled-{st}"), ("shape", labels["shape"][i]),
                                 ("expr", labels["expr"][i]), ("rotvec", v.rotvec), ("scale", s),
                                 ("translation", v.translation), ("landmarks3d", v.landmarks3d),
                                 ("target", v.landmarks3d), ("visible", np.ones(68)), ("rmse", 0.0), ("ok", True),
                                 ("split", "train"), ("landmarks2d", v.landmarks2d), ("lm_visible", v.lm_visible),
                                 ("source", src), ("source_index", int(i)), ("yaw", v.yaw),
                                 ("source_yaw", ang_all[i, 1])):
                    acc[key].append(val)
            bar.update(1)
        if acc["name"]:
            rows = {k: np.stack([np.asarray(x) for x in v]) for k, v in acc.items()}
        else:
            rows = _empty_rows(model.n_shape, model.n_expr)
        arrays = _to_label_arrays(rows)
        tmp = shard.with_name(shard.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, shard)
    bar.close()
    dt = time.perf_counter() - t_start
    n = merge_shards(out, model.name, model.landmarks.cpu().numpy(), model.info.frame_rotation)
    summary = {"faces": int(len(idx)), "views": n, "rendered": n_rendered, "failed": n_failed, "seconds": round(dt, 1)}
    print(f"wrote {out / 'labels.npz'}: {n} views of {len(idx)} faces; rendered {n_rendered} in {dt:.0f} s "
          f"({n_rendered / max(dt, 1e-9):.2f} views/s), {n_failed} failed", file=sys.stderr)
    if args.contact_sheet:
        contact_sheet(out / "labels.npz", out, root, args.contact_sheet, n=args.sheet_faces, seed=args.seed)
        print(f"wrote {args.contact_sheet}", file=sys.stderr)
    return summary


# ---------------------------------------------------------------------------- contact sheet
def _tile(img: np.ndarray, pts_list, colors, side: int, text: str = "") -> np.ndarray:
    H, W = img.shape[:2]
    k = side / max(H, W)
    im = cv2.resize(img, (max(int(round(W * k)), 1), max(int(round(H * k)), 1)), interpolation=cv2.INTER_LINEAR)
    for pts, col in zip(pts_list, colors):
        if pts is not None:
            im = draw_landmarks(im, (np.asarray(pts, dtype=np.float64) + 0.5) * k - 0.5, color=col, radius=1)
    canvas = np.zeros((side, side, 3), np.uint8)
    canvas[:im.shape[0], :im.shape[1]] = im
    if text:
        cv2.putText(canvas, text, (3, side - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def contact_sheet(labels_path, out_dir, data_root, png, n: int = 24, seed: int = 0, side: int = 180,
                  cols: int = 3) -> None:
    """A PNG grid of random profiled views: for each, the original with its fitted 3D-style landmarks
    (green), the profiled view as written, and the profiled view with its labels (3D-style landmarks
    green where visible, red where hidden; the 2D-style jaw yellow)."""
    lab = load_labels(labels_path)
    out_dir, data_root = Path(out_dir), Path(data_root)
    N = len(lab["name"])
    if N == 0:
        raise SystemExit(f"{labels_path}: no rows to draw")
    pick = np.sort(np.random.default_rng([seed, 31337]).choice(N, min(n, N), replace=False))
    tiles = []
    for r in pick:
        src = str(lab["source"][r])
        orig = _read_image(data_root / src)
        prof = _read_image(out_dir / str(lab["name"][r]))
        if orig is None or prof is None:
            continue
        lm3 = lab["landmarks3d"][r]
        vis = lab["lm_visible"][r].astype(bool)[:, None]
        a = _tile(orig, [_source_landmarks(labels_path, int(lab["source_index"][r]))], [(0, 255, 0)], side,
                  f"{src.split('/')[0]} yaw {float(lab['source_yaw'][r]):+.0f}")
        b = _tile(prof, [], [], side, f"yaw {float(lab['yaw'][r]):+.0f}")
        c = _tile(prof, [np.where(vis, lm3, np.nan), np.where(vis, np.nan, lm3), lab["landmarks2d"][r][:17]],
                  [(0, 255, 0), (0, 0, 255), (0, 255, 255)], side)
        gap = np.full((side, 2, 3), 255, np.uint8)
        tiles.append(np.concatenate([a, gap, b, gap, c], 1))
    if not tiles:
        raise SystemExit("contact sheet: no images found")
    rows = []
    blank = np.zeros_like(tiles[0])
    for i in range(0, len(tiles), cols):
        row = tiles[i:i + cols] + [blank] * (cols - len(tiles[i:i + cols]))
        rows.append(np.concatenate([np.concatenate([t, np.full((side, 8, 3), 128, np.uint8)], 1) for t in row], 1))
    sheet = np.concatenate([np.concatenate([r, np.full((8, r.shape[1], 3), 128, np.uint8)], 0) for r in rows], 0)
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(png), sheet)


_SOURCE_CACHE: dict = {}


def _source_landmarks(labels_path, row: int):
    """The original face's landmarks3d, from the source label file recorded in profile.json."""
    meta = Path(labels_path).parent / "profile.json"
    if not meta.exists():
        return None
    src = json.loads(meta.read_text()).get("labels")
    if src not in _SOURCE_CACHE:
        try:
            _SOURCE_CACHE[src] = load_labels(src)["landmarks3d"]
        except (FileNotFoundError, ValueError):
            _SOURCE_CACHE[src] = None
    lm = _SOURCE_CACHE[src]
    return None if lm is None else lm[row]


# ---------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m regressors.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", required=True, help="pseudo-label npz of the real faces (regressors.data contract)")
    p.add_argument("--out", required=True, help="output folder (images/, shards/, labels.npz)")
    p.add_argument("--data-root", default=None, help="folder the label names are relative to (default ../shared/data)")
    p.add_argument("--model", default=None, help="morphable model of the labels (default: ICT-FaceKit)")
    p.add_argument("--render-region", default="head", choices=("narrow", "face", "head"),
                   help="ICT-FaceKit region rendered (head: face, skull, ears and neck turn together)")
    p.add_argument("--neck-cut", type=float, default=-100.0,
                   help="render only triangles above this model height, mm (the neck below is surroundings)")
    p.add_argument("--per-face", type=int, default=2, help="profiled views per face")
    p.add_argument("--limit", type=int, default=0, help="profile a seeded random subset of N faces")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="keep finished shards and existing images")
    p.add_argument("--max-yaw", type=float, default=90.0, help="largest target |yaw|, degrees")
    p.add_argument("--min-yaw", type=float, default=15.0, help="smallest target |yaw|, degrees")
    p.add_argument("--max-delta", type=float, default=75.0, help="largest yaw change, degrees")
    p.add_argument("--chunk", type=int, default=200, help="faces per label shard")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--contact-sheet", default=None, help="also write this PNG: originals next to profiled views")
    p.add_argument("--sheet-faces", type=int, default=24)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
