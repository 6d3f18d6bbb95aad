r"""Registering our morphable model to a target surface, and carrying points across.

A *registration* finds the model's own shape and expression coefficients plus a similarity so that
the model surface lies on a target mesh (another face model's mean, a scan):

.. code-block:: text

    target point  y  ~=  s * R @ x + t,        x = mean + shape_basis @ alpha + expr_basis @ beta

with ``x`` in the model frame (mm, +y up, face along +z; :mod:`morphable.geometry`) and ``y`` in the
target's own frame and units. The fit is a closest-point (non-rigid ICP) Gauss-Newton iteration,
with every residual measured in the model frame (mm):

* both directions: each model vertex to its closest point on the target surface, and each target
  vertex to its closest point on the model surface (a point on a model triangle is linear in the
  coefficients);
* point-to-plane distance plus a small point-to-point term (``point_weight``);
* only pairs in the area both meshes cover: closer than a shrinking distance threshold, normals
  within ``max_normal_angle`` degrees, and the closest point not on the other mesh's boundary;
* a Gaussian prior on the shape coefficients (Tikhonov, ``shape_prior``), a small ridge on the
  expression weights, which are kept inside ``model.expr_lower/expr_upper`` (bounded least squares).

Once registered, :func:`transfer_points` puts target points (e.g. another model's landmark
vertices) on the registered model surface: triangle id + barycentric coordinates, and the nearest
vertex. ``python -m morphable.registration`` does this for the 68 keypoint vertices of the Basel
Face Model mean that 3DDFA / 300W-LP / AFLW2000-3D use, giving the "3d-style" landmark definition
``morphable/data/ict_landmarks_68_3d.json`` (derived from the BFM mean face only; no AFLW2000-3D
image or annotation is used)::

    python -m morphable.registration --bfm-dir ../shared/models/bfm/3ddfa-mean \
        --out morphable/data/ict_landmarks_68_3d.json --figure docs/img/landmarks3d/definition.png

Everything inside is numpy float64; closest points on triangles are exact (KD-tree on triangle
centroids with a provable search radius, then the point-triangle distance of every candidate).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import InputError, ModelFormatError

__all__ = [
    "similarity_align",
    "closest_points_on_mesh",
    "vertex_normals",
    "boundary_vertices",
    "Registration",
    "register_model",
    "PointTransfer",
    "transfer_points",
    "IBUG68_REGIONS",
    "load_bfm_mean",
    "landmark_definition_dict",
    "write_landmark_definition",
    "register_bfm_keypoints",
    "BFMKeypointResult",
]

#: iBUG-68 point groups used in the residual tables: name -> slice of point indices.
IBUG68_REGIONS = {
    "jaw": slice(0, 17),
    "brows": slice(17, 27),
    "nose": slice(27, 36),
    "eyes": slice(36, 48),
    "outer lips": slice(48, 60),
    "inner lips": slice(60, 68),
}


# --------------------------------------------------------------------------- similarity


def similarity_align(src, dst, weights=None, *, allow_scale: bool = True):
    """Least-squares similarity (Umeyama 1991) taking ``src`` onto ``dst``: ``dst ~= s * R @ src + t``.

    Args:
        src, dst: (..., P, 3) float corresponding points (any units; leading dims are a batch).
        weights: (..., P) non-negative point weights, or None for equal weights.
        allow_scale: if False, ``s`` is fixed to 1 (a rigid fit).

    Returns:
        ``(s, R, t)``: scale (...,) float64, rotation (..., 3, 3) float64 with det +1 (never a
        reflection), translation (..., 3) float64 in ``dst`` units.

    Raises:
        InputError: mismatched shapes, fewer than 3 points, or non-finite values.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim < 2 or src.shape[-1] != 3:
        raise InputError(f"similarity_align: src and dst must both be (..., P, 3), got {src.shape} and {dst.shape}")
    if src.shape[-2] < 3:
        raise InputError(f"similarity_align: need at least 3 point pairs, got {src.shape[-2]}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise InputError("similarity_align: points contain NaN or inf")
    w = np.ones(src.shape[:-1]) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), src.shape[:-1])
    w = w / w.sum(-1, keepdims=True)
    mu_s = (w[..., None] * src).sum(-2)
    mu_d = (w[..., None] * dst).sum(-2)
    xs, xd = src - mu_s[..., None, :], dst - mu_d[..., None, :]
    cov = np.einsum("...p,...pi,...pj->...ij", w, xd, xs)  # Sigma_xy of Umeyama (dst x src^T)
    U, S, Vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U) * np.linalg.det(Vt))
    d = np.where(d == 0, 1.0, d)
    D = np.ones(S.shape)
    D[..., 2] = d
    R = U @ (D[..., :, None] * Vt)
    var_s = (w * (xs ** 2).sum(-1)).sum(-1)
    s = (S * D).sum(-1) / var_s if allow_scale else np.ones(var_s.shape)
    t = mu_d - s[..., None] * np.einsum("...ij,...j->...i", R, mu_s)
    return s, R, t


# --------------------------------------------------------------------------- mesh helpers


def _closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray):
    """Closest points of p (M, 3) on triangles (a, b, c) (M, 3 each): barycentric (M, 3).

    Ericson, Real-Time Collision Detection, 5.1.5; degenerate triangles are handled (no NaN).
    """
    ab, ac, ap = b - a, c - a, p - a
    d1 = np.einsum("ij,ij->i", ab, ap)
    d2 = np.einsum("ij,ij->i", ac, ap)
    bp = p - b
    d3 = np.einsum("ij,ij->i", ab, bp)
    d4 = np.einsum("ij,ij->i", ac, bp)
    cp = p - c
    d5 = np.einsum("ij,ij->i", ab, cp)
    d6 = np.einsum("ij,ij->i", ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    tiny = 1e-300

    def div(n, d):
        return n / np.where(np.abs(d) < tiny, tiny, d)

    # interior (default)
    den = va + vb + vc
    v = div(vb, den)
    w = div(vc, den)
    bary = np.stack([1.0 - v - w, v, w], 1)
    done = np.zeros(len(p), bool)

    def put(mask, value):
        nonlocal done
        m = mask & ~done
        bary[m] = value[m] if np.ndim(value) == 2 else value
        done |= m

    # the vertex and edge regions, in Ericson's order (earlier tests win)
    put((d1 <= 0) & (d2 <= 0), np.array([1.0, 0.0, 0.0]))
    put((d3 >= 0) & (d4 <= d3), np.array([0.0, 1.0, 0.0]))
    t = np.clip(div(d1, d1 - d3), 0.0, 1.0)
    put((vc <= 0) & (d1 >= 0) & (d3 <= 0), np.stack([1.0 - t, t, np.zeros_like(t)], 1))
    put((d6 >= 0) & (d5 <= d6), np.array([0.0, 0.0, 1.0]))
    t = np.clip(div(d2, d2 - d6), 0.0, 1.0)
    put((vb <= 0) & (d2 >= 0) & (d6 <= 0), np.stack([1.0 - t, np.zeros_like(t), t], 1))
    t = np.clip(div(d4 - d3, (d4 - d3) + (d5 - d6)), 0.0, 1.0)
    put((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), np.stack([np.zeros_like(t), 1.0 - t, t], 1))
    # fully degenerate triangle that fell through: use vertex a
    bad = ~np.isfinite(bary).all(1)
    bary[bad] = (1.0, 0.0, 0.0)
    return bary


@dataclass
class _SurfaceIndex:
    """Triangle centroids in KD-trees: one over all, and one per class of centroid-to-corner radius
    (each class at most twice the radius of the one before), so a few big triangles do not widen
    the search for everyone."""

    tree: object
    radii: np.ndarray
    classes: list  # of (tree, triangle ids (Tc,), largest radius)


def _surface_index(vertices: np.ndarray, triangles: np.ndarray) -> _SurfaceIndex:
    from scipy.spatial import cKDTree

    tri = vertices[triangles]
    cen = tri.mean(1)
    radii = np.sqrt(((tri - cen[:, None]) ** 2).sum(-1)).max(1)
    classes = []
    if len(radii):
        base = max(float(np.median(radii)) * 2.0, 1e-300)
        level = np.maximum(0, np.ceil(np.log2(np.maximum(radii, 1e-300) / base))).astype(np.int64)
        for lv in np.unique(level):
            ids = np.where(level == lv)[0]
            classes.append((cKDTree(cen[ids]), ids, float(radii[ids].max())))
    return _SurfaceIndex(cKDTree(cen), radii, classes)


def closest_points_on_mesh(vertices, triangles, points, max_distance: float = np.inf, *, index=None,
                           k: int = 16):
    """Exact closest points of ``points`` on the triangle mesh (``vertices``, ``triangles``).

    A triangle within distance d of a point has its centroid within ``d + r`` of it (``r``: its
    centroid-to-corner distance), so every triangle whose centroid lies within ``min(d0,
    max_distance) + r`` is a candidate, ``d0`` being the distance to the triangle of the nearest
    centroid. Triangles are searched per class of radius (KD-trees, asking for more neighbours
    until each ball is exhausted) and tested exactly: exact for every point closer than
    ``max_distance``.

    Args:
        vertices: (N, 3) float, any units. triangles: (T, 3) int, 0-based.
        points: (P, 3) float, same frame/units as ``vertices``.
        max_distance: points farther than this from the surface get an upper-bound answer (a
            valid point on the surface, not necessarily the closest) and cost less.
        index: internal, a prebuilt search structure. k: first neighbour count asked for.

    Returns:
        ``(triangle (P,) int64, barycentric (P, 3) float64, surface_point (P, 3) float64,
        distance (P,) float64)``; ``surface_point = sum_k barycentric[:, k] * vertices[triangles[triangle, k]]``.
    """
    V = np.asarray(vertices, np.float64)
    F = np.asarray(triangles, np.int64).reshape(-1, 3)
    P = np.asarray(points, np.float64).reshape(-1, 3)
    if not len(F):
        raise InputError("closest_points_on_mesh: the mesh has no triangles")
    idx = index if index is not None else _surface_index(V, F)
    _, i0 = idx.tree.query(P)
    i0 = np.asarray(i0, np.int64)
    best_b = _closest_on_triangles(P, V[F[i0, 0]], V[F[i0, 1]], V[F[i0, 2]])
    best_d = np.linalg.norm(np.einsum("pk,pkc->pc", best_b, V[F[i0]]) - P, axis=1)
    best_t = i0.copy()
    bound = np.minimum(best_d, max_distance)
    for tree, ids, rc in idx.classes:
        Tc = len(ids)
        todo = np.arange(len(P))
        kk = min(k, Tc)
        while len(todo):
            r = bound[todo] + rc * (1 + 1e-9) + 1e-12
            dist, nb = tree.query(P[todo], k=kk, distance_upper_bound=float(r.max()))
            dist, nb = dist.reshape(len(todo), kk), nb.reshape(len(todo), kk)
            valid = (nb < Tc) & (dist <= r[:, None])
            tid = ids[np.minimum(nb, Tc - 1)]
            valid &= dist - idx.radii[tid] <= bound[todo, None] * (1 + 1e-9) + 1e-12
            q = np.broadcast_to(todo[:, None], nb.shape)[valid]
            t = tid[valid]
            if len(q):
                b = _closest_on_triangles(P[q], V[F[t, 0]], V[F[t, 1]], V[F[t, 2]])
                d = np.linalg.norm(np.einsum("pk,pkc->pc", b, V[F[t]]) - P[q], axis=1)
                order = np.lexsort((d, q))
                q_s = q[order]
                sel = order[np.r_[True, q_s[1:] != q_s[:-1]]]
                qs = q[sel]
                better = d[sel] < best_d[qs]
                qs, sel = qs[better], sel[better]
                best_d[qs], best_t[qs], best_b[qs] = d[sel], t[sel], b[sel]
            # the ball may hold more centroids than were returned: ask again with more neighbours
            todo = todo[(dist[:, -1] <= r) & (kk < Tc)]
            kk = min(kk * 4, Tc)
    sp = np.einsum("pk,pkc->pc", best_b, V[F[best_t]])
    return best_t, best_b, sp, best_d


def vertex_normals(vertices, triangles) -> np.ndarray:
    """(N, 3) unit area-weighted vertex normals (zero for unused vertices); triangles are
    counter-clockwise seen from outside, so normals point out of the surface."""
    V = np.asarray(vertices, np.float64)
    F = np.asarray(triangles, np.int64)
    fn = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    n = np.zeros_like(V)
    for k in range(3):
        np.add.at(n, F[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)


def _edge_keys(F: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    e = np.concatenate([F[:, [1, 2]], F[:, [2, 0]], F[:, [0, 1]]])  # edge opposite corner 0, 1, 2
    e = np.sort(e, 1)
    return e[:, 0] * n + e[:, 1], e


def boundary_vertices(n_vertices: int, triangles) -> np.ndarray:
    """(N,) bool: vertices on an edge used by only one triangle (mesh borders, holes)."""
    F = np.asarray(triangles, np.int64)
    keys, e = _edge_keys(F, n_vertices)
    u, inv, cnt = np.unique(keys, return_inverse=True, return_counts=True)
    out = np.zeros(n_vertices, bool)
    out[e[cnt[inv] == 1].reshape(-1)] = True
    return out


class _Boundary:
    """Tells whether a closest point (triangle, barycentric) lies on the mesh border."""

    def __init__(self, n_vertices: int, triangles: np.ndarray):
        F = np.asarray(triangles, np.int64)
        keys, _ = _edge_keys(F, n_vertices)
        u, inv, cnt = np.unique(keys, return_inverse=True, return_counts=True)
        self.edge_border = (cnt[inv] == 1).reshape(3, -1).T  # (T, 3): edge opposite corner k is a border
        self.vert_border = boundary_vertices(n_vertices, F)
        self.F = F

    def on_border(self, tri: np.ndarray, bary: np.ndarray, eps: float = 1e-9) -> np.ndarray:
        zero = bary <= eps
        nz = zero.sum(1)
        edge = (zero & self.edge_border[tri]).any(1) & (nz == 1)
        corner = np.argmax(bary, 1)
        vert = (nz >= 2) & self.vert_border[self.F[tri, corner]]
        return edge | vert


# --------------------------------------------------------------------------- registration


@dataclass
class Registration:
    """Result of :func:`register_model`: ``target ~= scale * rotation @ x_model + translation``.

    Attributes:
        scale: float, target units per mm (e.g. ~1000 for a target in micrometres).
        rotation: (3, 3) float64, model frame -> target frame.
        translation: (3,) float64, target units.
        shape: (Ks,) float64 shape coefficients (~N(0, 1) scale).
        expr: (Ke,) float64 expression coefficients, inside the model's bounds.
        vertices: (N, 3) float64, mm, model frame: the registered model instance.
        rms_mm: float, final RMS point-to-point distance (mm, model frame) over the overlap pairs
            of both directions (model -> target surface and target -> model surface).
        rms_forward_mm, rms_backward_mm: the same per direction.
        n_forward, n_backward: pairs in the overlap at the end.
        overlap: (N,) bool, model vertices whose closest target point passed the overlap tests.
        history: per iteration dicts (threshold, pairs, RMS, |shape|).
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    shape: np.ndarray
    expr: np.ndarray
    vertices: np.ndarray
    rms_mm: float
    rms_forward_mm: float
    rms_backward_mm: float
    n_forward: int
    n_backward: int
    overlap: np.ndarray
    history: list = field(default_factory=list)

    def to_model(self, points) -> np.ndarray:
        """Target-frame points (..., 3) -> model frame (..., 3), mm (the inverse similarity)."""
        p = np.asarray(points, np.float64)
        return (p - self.translation) @ self.rotation / self.scale

    def to_target(self, points) -> np.ndarray:
        """Model-frame points (..., 3), mm -> target frame (..., 3)."""
        return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.translation

    def angles_deg(self) -> np.ndarray:
        """[pitch, yaw, roll] (3,) degrees of ``rotation`` (model -> target), AFLW2000-3D order
        (:func:`morphable.geometry.rotmat_to_angles`)."""
        from .geometry import rotmat_to_angles

        return np.degrees(rotmat_to_angles(torch.from_numpy(self.rotation)).numpy())


def _model_arrays(model):
    f = lambda x: x.detach().cpu().double().numpy()  # noqa: E731
    return (f(model.mean), f(model.shape_basis), f(model.expr_basis), f(model.expr_lower), f(model.expr_upper),
            model.triangles.detach().cpu().numpy().astype(np.int64))


def register_model(model, target_vertices, target_triangles, *, init_pairs=None, init_similarity=None,
                   iterations: int = 30, rigid_iterations: int = 8, shape_prior: float = 1e-3,
                   expr_prior: float = 1e-4, fit_shape: bool = True, fit_expr: bool = True,
                   point_weight: float = 0.1, max_distance_start: float = 15.0, max_distance: float = 5.0,
                   max_normal_angle: float = 60.0, target_sample: int = 15000, model_vertices=None,
                   tol: float = 1e-10, verbose: bool = False) -> Registration:
    """Register ``model`` (its own shape + expression coefficients and a similarity) to a target mesh.

    Minimises, over shape ``alpha``, expression ``beta`` (bounded) and the similarity,

    ``0.5 * (mean_fwd r^2 + mean_bwd r^2) + shape_prior * |alpha|^2 + expr_prior * |beta|^2``

    where ``r`` are the model-frame residuals (mm) of the overlap pairs of both directions
    (point-to-plane along the other surface's normal, plus ``point_weight`` times point-to-point).
    ``shape_prior`` is therefore mm^2 of mean squared residual per unit coefficient^2 (the Gaussian
    N(0, 1) prior of the coefficients with a per-pair noise level).

    Args:
        model: a :class:`~morphable.model.MorphableModel`; its ``triangles`` are the surface used.
        target_vertices: (M, 3) float, target frame and units; target_triangles: (T, 3) int,
            counter-clockwise seen from outside (normals point out).
        init_pairs: ``(model_vertex_ids (P,), target_points (P, 3))`` for the start similarity
            (Umeyama on the mean face), e.g. landmark vertices and their target positions.
        init_similarity: ``(scale, rotation (3, 3), translation (3,))`` model -> target to start
            from instead; one of the two is required.
        iterations: Gauss-Newton steps in all (closest points are recomputed every step).
        rigid_iterations: the first steps fit the similarity only.
        shape_prior, expr_prior: Tikhonov weights (mm^2 per unit^2) on shape / expression.
        fit_shape, fit_expr: fit those coefficients (otherwise kept at 0).
        point_weight: weight of the point-to-point rows relative to the point-to-plane row.
        max_distance_start, max_distance: pair distance threshold, mm, model frame: shrinks
            geometrically from the first to the second over the rigid steps and the first joint steps.
        max_normal_angle: degrees; pairs with normals further apart are dropped.
        target_sample: at most this many target vertices (evenly strided) give backward pairs.
        model_vertices: (N,) bool or ids of model vertices allowed in forward pairs (default all
            vertices used by ``model.triangles``).
        tol: stop when the largest parameter update (coefficients, mm of the similarity) is below it.

    Returns:
        :class:`Registration`.
    """
    with _TorchThreads(1):
        mean, S, E, lo, hi, F = _model_arrays(model)
        N, Ks, Ke = mean.shape[0], S.shape[2], E.shape[2]
        Y = np.asarray(target_vertices, np.float64)
        TF = np.asarray(target_triangles, np.int64).reshape(-1, 3)
        if Y.ndim != 2 or Y.shape[1] != 3 or not len(TF) or not np.isfinite(Y).all():
            raise InputError("register_model: target must be finite (M, 3) vertices with (T, 3) triangles")
        if TF.min() < 0 or TF.max() >= len(Y):
            raise InputError("register_model: target triangles index outside the target vertices")
        if init_similarity is not None:
            s0, R0, t0 = init_similarity
            s0, R0, t0 = float(s0), np.asarray(R0, np.float64), np.asarray(t0, np.float64)
        elif init_pairs is not None:
            ids, pts = init_pairs
            s0, R0, t0 = similarity_align(mean[np.asarray(ids, np.int64)], np.asarray(pts, np.float64))
            s0 = float(s0)
        else:
            raise InputError("register_model: give init_pairs or init_similarity")
        # the map we iterate on: target -> model, z = a * Q @ y + u
        a, Q, u = 1.0 / s0, R0.T.copy(), -(R0.T @ t0) / s0
        used = np.zeros(N, bool)
        used[np.unique(F)] = True
        if model_vertices is not None:
            mv = np.asarray(model_vertices)
            allowed = np.zeros(N, bool)
            if mv.dtype == bool:
                allowed[:] = mv
            else:
                allowed[mv.astype(np.int64)] = True
            used &= allowed
        fwd_ids = np.where(used)[0]
        step = max(1, int(np.ceil(len(Y) / max(1, target_sample))))
        tgt_used = np.zeros(len(Y), bool)
        tgt_used[np.unique(TF)] = True
        bwd_ids = np.where(tgt_used)[0][::step]
        tb = _Boundary(len(Y), TF)
        mb = _Boundary(N, F)
        cos_min = np.cos(np.radians(max_normal_angle))
        alpha, beta = np.zeros(Ks), np.zeros(Ke)
        fit_cols = np.r_[np.full(Ks, fit_shape), np.full(Ke, fit_expr)]
        n_p = Ks + Ke
        history = []
        n_shrink = max(1, rigid_iterations + 4)
        ratio = (max_distance / max_distance_start) ** (1.0 / n_shrink) if max_distance_start > max_distance else 1.0
        rot_from_vec = lambda w: _rotvec(w)  # noqa: E731
        final = None
        for it in range(iterations + 1):
            last = it == iterations
            thr = max(max_distance, max_distance_start * ratio ** it)
            X = _instance(mean, S, E, alpha, beta)  # (N, 3)
            Z = a * np.einsum("ij,mj->mi", Q, Y) + u  # target in the model frame
            nX = vertex_normals(X, F)
            nZ = vertex_normals(Z, TF)
            # forward: model vertex -> target surface
            ft, fb, fc, fd = closest_points_on_mesh(Z, TF, X[fwd_ids], max_distance=thr)
            fn = np.einsum("pk,pkc->pc", fb, nZ[TF[ft]])
            fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-300)
            fok = (fd < thr) & ~tb.on_border(ft, fb) & ((fn * nX[fwd_ids]).sum(1) > cos_min)
            # backward: target vertex -> model surface
            bt, bb, bc, bd = closest_points_on_mesh(X, F, Z[bwd_ids], max_distance=thr)
            bn = np.einsum("pk,pkc->pc", bb, nX[F[bt]])
            bn /= np.maximum(np.linalg.norm(bn, axis=1, keepdims=True), 1e-300)
            bok = (bd < thr) & ~mb.on_border(bt, bb) & ((bn * nZ[bwd_ids]).sum(1) > cos_min)
            if model_vertices is not None:  # backward pairs must land on allowed model triangles
                bok &= used[F[bt]].all(1)
            nf, nb = int(fok.sum()), int(bok.sum())
            rms_f = float(np.sqrt(np.mean(fd[fok] ** 2))) if nf else float("nan")
            rms_b = float(np.sqrt(np.mean(bd[bok] ** 2))) if nb else float("nan")
            rms = float(np.sqrt(0.5 * (rms_f ** 2 + rms_b ** 2)))
            rec = {"iteration": it, "threshold_mm": thr, "n_forward": nf, "n_backward": nb, "rms_mm": rms,
                   "rms_forward_mm": rms_f, "rms_backward_mm": rms_b, "shape_norm": float(np.linalg.norm(alpha))}
            history.append(rec)
            if verbose:
                print(f"  it {it:2d} thr {thr:5.2f} mm  pairs {nf:5d}/{nb:5d}  rms {rms:.4f} mm "
                      f"(fwd {rms_f:.4f}, bwd {rms_b:.4f})  |shape| {rec['shape_norm']:.2f}", flush=True)
            final = (fok, nf, nb, rms, rms_f, rms_b)
            if last or nf + nb < 7:
                break
            rigid = it < rigid_iterations
            # ----- linear system in x = [alpha, beta, dlog_scale, omega (3), du (3)]
            # forward rows: model point m + S a + E b (vertex i); target point c (moves with the similarity)
            i = fwd_ids[fok]
            fS, fE, fm, fcp, fnn = S[i], E[i], mean[i], fc[fok], fn[fok]
            # backward rows: model point sum_k b_k (vertex f_k); target point Z_j
            tri, bw = F[bt[bok]], bb[bok]
            bS = np.einsum("pk,pkcj->pcj", bw, S[tri])
            bE = np.einsum("pk,pkcj->pcj", bw, E[tri])
            bm = np.einsum("pk,pkc->pc", bw, mean[tri])
            bcp, bnn = Z[bwd_ids[bok]], bn[bok]
            H = np.zeros((n_p + 7, n_p + 7))
            g = np.zeros(n_p + 7)
            for (SS, EE, mm, cc, nn, wdir) in ((fS, fE, fm, fcp, fnn, 0.5 / max(nf, 1)),
                                                (bS, bE, bm, bcp, bnn, 0.5 / max(nb, 1))):
                if not len(mm):
                    continue
                P_ = len(mm)
                # point-to-point block: residual = m + S a + E b - c - d*c + [c]x w ... - du  (3 rows)
                J = np.zeros((P_, 3, n_p + 7))
                J[:, :, :Ks] = SS
                J[:, :, Ks:n_p] = EE
                J[:, :, n_p] = -cc
                J[:, :, n_p + 1:n_p + 4] = _skew(cc)  # + c x w
                J[:, :, n_p + 4:] = -np.eye(3)
                r0 = cc - mm  # target of J x (absolute alpha, beta; increments for the similarity)
                # plane rows: n^T (.)
                Jn = np.einsum("pc,pcj->pj", nn, J)
                rn = (nn * r0).sum(1)
                # stack the plane row and the three weighted point rows: (4P, n)
                A = torch.from_numpy(np.concatenate([Jn, point_weight * J.reshape(3 * P_, n_p + 7)]))
                rhs = torch.from_numpy(np.concatenate([rn, point_weight * r0.reshape(-1)]))
                H += wdir * (A.T @ A).numpy()
                g += wdir * (A.T @ rhs).numpy()
            reg = np.r_[np.full(Ks, shape_prior), np.full(Ke, expr_prior), np.full(7, 1e-12)]
            H[np.diag_indices_from(H)] += reg
            # the coefficients not being fitted are pinned at zero
            pinned = np.r_[~fit_cols | rigid, np.zeros(7, bool)]
            free = ~pinned
            Hf, gf = H[np.ix_(free, free)], g[free]
            lb = np.r_[np.full(Ks, -np.inf), lo, np.full(7, -np.inf)][free]
            ub = np.r_[np.full(Ks, np.inf), hi, np.full(7, np.inf)][free]
            x = _bounded_quadratic(Hf, gf, lb, ub)
            full = np.zeros(n_p + 7)
            full[free] = x
            new_alpha, new_beta = full[:Ks], full[Ks:n_p]
            dls, w, du = full[n_p], full[n_p + 1:n_p + 4], full[n_p + 4:]
            dR = rot_from_vec(w)
            ds = np.exp(dls)
            a, Q, u = a * ds, dR @ Q, ds * (dR @ u) + du
            delta = max(float(np.abs(new_alpha - alpha).max(initial=0)), float(np.abs(new_beta - beta).max(initial=0)),
                        float(np.abs(dls)), float(np.abs(w).max()), float(np.abs(du).max()))
            alpha, beta = new_alpha, new_beta
            rec["step"] = delta
            if not rigid and delta < tol:
                iterations = it + 1  # one more pass to measure the final pairs
        fok, nf, nb, rms, rms_f, rms_b = final
        overlap = np.zeros(N, bool)
        overlap[fwd_ids[fok]] = True
        s, R = 1.0 / a, Q.T
        t = -s * (R @ u)
        X = _instance(mean, S, E, alpha, beta)
        return Registration(float(s), R, t, alpha, beta, X, rms, rms_f, rms_b, nf, nb, overlap, history)


def _skew(c: np.ndarray) -> np.ndarray:
    """(P, 3) -> (P, 3, 3) cross-product matrices ``[c]_x`` (``[c]_x @ w = c x w``), the numpy
    twin of :func:`morphable.geometry.skew` (kept in numpy here: a torch call inside the BLAS-heavy
    loop leaves OpenMP threads spinning against OpenBLAS's on small machines)."""
    K = np.zeros(c.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2] = -c[..., 2], c[..., 1]
    K[..., 1, 0], K[..., 1, 2] = c[..., 2], -c[..., 0]
    K[..., 2, 0], K[..., 2, 1] = -c[..., 1], c[..., 0]
    return K


def _rotvec(w: np.ndarray) -> np.ndarray:
    from .geometry import rotvec_to_rotmat

    return rotvec_to_rotmat(torch.from_numpy(np.asarray(w, np.float64))).numpy()


def _bounded_quadratic(H: np.ndarray, g: np.ndarray, lb: np.ndarray, ub: np.ndarray,
                       max_iter: int = 1000) -> np.ndarray:
    """argmin_x 0.5 x^T H x - g^T x subject to lb <= x <= ub (H symmetric positive definite).

    Primal active-set method (Nocedal & Wright, Algorithm 16.3) for box constraints: exact, and
    finite for a strictly convex problem. Linear algebra through torch (see :func:`register_model`).
    """
    Ht = torch.from_numpy(np.ascontiguousarray(H))

    def solve(mask, rhs):
        idx = torch.from_numpy(np.where(mask)[0])
        return torch.linalg.solve(Ht[idx][:, idx], torch.from_numpy(rhs)).numpy()

    def hx(v, rows=None, cols=None):
        Hs = Ht if rows is None else Ht[torch.from_numpy(np.where(rows)[0])][:, torch.from_numpy(np.where(cols)[0])]
        return (Hs @ torch.from_numpy(np.ascontiguousarray(v))).numpy()

    n = len(g)
    x = solve(np.ones(n, bool), g)
    if np.all(x >= lb) and np.all(x <= ub):
        return x
    x = np.clip(x, lb, ub)
    at_lo = np.isfinite(lb) & (x <= lb)
    at_hi = np.isfinite(ub) & (x >= ub) & ~at_lo
    scale = max(1.0, float(np.abs(g).max()))
    for _ in range(max_iter):
        free = ~(at_lo | at_hi)
        xs = x.copy()
        if free.any():
            fixed = ~free
            rhs = g[free] - (hx(x[fixed], free, fixed) if fixed.any() else 0.0)
            xs[free] = solve(free, rhs)
        p = xs - x
        if np.abs(p).max(initial=0.0) <= 1e-13 * max(1.0, float(np.abs(x).max())):
            grad = hx(x) - g  # KKT: grad >= 0 at a lower bound, <= 0 at an upper bound
            lam = np.where(at_lo, grad, np.where(at_hi, -grad, np.inf))
            j = int(np.argmin(lam))
            if lam[j] >= -1e-12 * scale:
                return x
            at_lo[j] = at_hi[j] = False
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(free & (p < 0), (lb - x) / p, np.where(free & (p > 0), (ub - x) / p, np.inf))
        j = int(np.argmin(ratio))
        step = min(1.0, float(ratio[j]))
        x = np.clip(x + step * p, lb, ub)
        if step < 1.0:
            if p[j] < 0:
                at_lo[j], x[j] = True, lb[j]
            else:
                at_hi[j], x[j] = True, ub[j]
    raise RuntimeError("bounded least squares did not converge")  # cannot happen for a positive definite H


def _instance(mean: np.ndarray, S: np.ndarray, E: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``mean + S @ alpha + E @ beta`` (N, 3), mm (einsum: no multi-threaded BLAS call)."""
    return mean + np.einsum("nck,k->nc", S, alpha) + np.einsum("nck,k->nc", E, beta)


class _TorchThreads:
    """Run torch on ``n`` threads inside the block (restored after). Two thread pools (torch's
    OpenMP and numpy's OpenBLAS) spinning against each other on a small machine make the small,
    many linear solves of the registration 10-100x slower; one thread is fastest for them."""

    def __init__(self, n: int = 1):
        self.n = n

    def __enter__(self):
        self.prev = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.prev)
        return False


# --------------------------------------------------------------------------- point transfer


@dataclass
class PointTransfer:
    """Points carried onto a model surface by :func:`transfer_points` (P points, model frame, mm).

    Attributes:
        points: (P, 3) the query points.
        triangle: (P,) int64 triangle ids of the closest surface points.
        barycentric: (P, 3) float64 barycentric coordinates in those triangles (sum 1, >= 0).
        surface: (P, 3) the closest surface points.
        residual_mm: (P,) |point - surface point|.
        vertex: (P,) int64 the mesh vertex nearest to each surface point.
        snap_mm: (P,) |vertex - surface point|.
        vertex_residual_mm: (P,) |point - vertex|.
    """

    points: np.ndarray
    triangle: np.ndarray
    barycentric: np.ndarray
    surface: np.ndarray
    residual_mm: np.ndarray
    vertex: np.ndarray
    snap_mm: np.ndarray
    vertex_residual_mm: np.ndarray


def transfer_points(vertices, triangles, points) -> PointTransfer:
    """Closest points of ``points`` on the mesh, as triangle + barycentric and as the nearest vertex.

    Args:
        vertices: (N, 3) float, mm, model frame (e.g. :attr:`Registration.vertices`).
        triangles: (T, 3) int the surface to use (e.g. the model's ``face`` region triangles); the
            nearest vertex is chosen among the vertices these triangles use.
        points: (P, 3) float, mm, model frame (e.g. ``registration.to_model(target_points)``).

    Returns:
        :class:`PointTransfer`.
    """
    from scipy.spatial import cKDTree

    V = np.asarray(vertices, np.float64)
    F = np.asarray(triangles, np.int64).reshape(-1, 3)
    P = np.asarray(points, np.float64).reshape(-1, 3)
    tri, bary, sp, d = closest_points_on_mesh(V, F, P)
    used = np.unique(F)
    _, k = cKDTree(V[used]).query(sp)
    vid = used[np.asarray(k, np.int64)]
    return PointTransfer(P, tri, bary, sp, d, vid, np.linalg.norm(V[vid] - sp, axis=1),
                         np.linalg.norm(V[vid] - P, axis=1))


def symmetric_transfer(tr: PointTransfer, vertices, mirror, pairs) -> PointTransfer:
    """``tr`` with its nearest vertices made mirror-symmetric: for each mirror pair of points (a, b),
    the vertex pair (v_a, mirror(v_a)) or (mirror(v_b), v_b), whichever lies closer to the two
    surface points (sum of distances). Points that are their own mirror keep their vertex.

    Args:
        tr: a :class:`PointTransfer` of P points.
        vertices: (N, 3) the surface's vertices (mm), as given to :func:`transfer_points`.
        mirror: (N,) int, the mirror vertex of each vertex on the (symmetric) mean face
            (:func:`morphable.landmark_definition.mirror_vertices`).
        pairs: (P,) int, the mirror point of each point (e.g. ``IBUG68_MIRROR``).

    Returns:
        A copy with ``vertex``, ``snap_mm`` and ``vertex_residual_mm`` updated (surface points unchanged).
    """
    V = np.asarray(vertices, np.float64)
    mir = np.asarray(mirror, np.int64)
    vid = tr.vertex.copy()
    for a, b in enumerate(np.asarray(pairs, np.int64)):
        if b <= a:
            continue
        opts = [(tr.vertex[a], mir[tr.vertex[a]]), (mir[tr.vertex[b]], tr.vertex[b])]
        cost = [np.linalg.norm(V[x] - tr.surface[a]) + np.linalg.norm(V[y] - tr.surface[b]) for x, y in opts]
        vid[a], vid[b] = opts[int(np.argmin(cost))]
    return dataclasses.replace(tr, vertex=vid, snap_mm=np.linalg.norm(V[vid] - tr.surface, axis=1),
                               vertex_residual_mm=np.linalg.norm(V[vid] - tr.points, axis=1))


# --------------------------------------------------------------------------- the BFM 3D-style definition

BFM_UNITS_PER_MM = 1e3


def load_bfm_mean(bfm_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Basel Face Model mean of 3DDFA and its 68 keypoint vertex ids.

    Reads ``bfm_mean.ply`` (with :func:`morphable.export.read_mesh`, which keeps the vertex order)
    and ``keypoints68.txt`` from ``bfm_dir``. The PLY looks along -z; z is negated here (3DDFA's own
    frame: +y up, face along +z, +x the subject's left, like ours) and the triangle winding is
    reversed accordingly so that normals still point out of the face.

    Returns:
        ``(vertices (53215, 3) float64 in BFM units (1e3 per mm), triangles (T, 3) int64,
        keypoints (68,) int64 vertex ids in iBUG order)``.
    """
    from .export import read_mesh

    d = Path(bfm_dir)
    V, F, _, _ = read_mesh(d / "bfm_mean.ply")
    try:
        kp = np.loadtxt(d / "keypoints68.txt").astype(np.int64).reshape(-1)
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{d / 'keypoints68.txt'}: not a list of 68 vertex ids ({e})") from None
    if kp.shape != (68,) or kp.min() < 0 or kp.max() >= len(V):
        raise ModelFormatError(f"{d / 'keypoints68.txt'}: expected 68 vertex ids below {len(V)}, got {kp.shape}")
    V = V * np.array([1.0, 1.0, -1.0])
    F = F[:, ::-1].copy()
    return V, F, kp


def landmark_definition_dict(model_name: str, ids, transfer: Optional[PointTransfer] = None, **extra) -> dict:
    """A landmark definition JSON object readable by
    :func:`morphable.landmark_definition.read_landmark_file` (``model``, ``description``, ``ids``),
    with the triangle/barycentric form and residuals of ``transfer`` when given."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    out = {"model": model_name, "description": extra.pop("description", ""), "ids": ids.tolist()}
    if transfer is not None:
        out.update({
            "triangles": transfer.triangle.astype(int).tolist(),
            "barycentric": np.round(transfer.barycentric, 8).tolist(),
            "residual_mm": np.round(transfer.residual_mm, 4).tolist(),
            "vertex_residual_mm": np.round(transfer.vertex_residual_mm, 4).tolist(),
            "snap_mm": np.round(transfer.snap_mm, 4).tolist(),
        })
    out.update(extra)
    return out


def write_landmark_definition(path, definition: dict) -> Path:
    """Write a definition dict (:func:`landmark_definition_dict`) as JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(definition, indent=1))
    return path


@dataclass
class BFMKeypointResult:
    """What :func:`register_bfm_keypoints` computed (model frame, mm)."""

    registration: Registration
    initial: tuple  # (s, R, t) of the keypoint similarity, model -> BFM
    rigid: Optional[Registration]  # similarity-only surface registration (shape, expression at 0), if asked
    keypoints: np.ndarray  # (68, 3) BFM keypoints in the model frame (inverse registered similarity)
    transfer: PointTransfer
    bfm_vertices: np.ndarray  # (M, 3) BFM mean in the model frame
    bfm_triangles: np.ndarray


def register_bfm_keypoints(model, bfm_dir, *, iterations: int = 30, compare_rigid: bool = True, verbose: bool = False,
                           **kwargs) -> BFMKeypointResult:
    """Register ``model`` (its ``triangles``, e.g. the ICT ``face`` region) to the BFM mean face and
    carry BFM's 68 keypoints onto it.

    Starts from the similarity of the BFM keypoints 17-67 onto ``model.landmarks`` on the mean
    face (Umeyama), then :func:`register_model`; the keypoints are brought into the model frame by
    the registered similarity's inverse and put on the registered surface with
    :func:`transfer_points`; the nearest vertices are made mirror-symmetric
    (:func:`symmetric_transfer`). ``compare_rigid`` also runs a similarity-only registration of the
    mean face (for the frame comparison; it does not change the result). ``kwargs`` go to
    :func:`register_model`.
    """
    V, F, kp = load_bfm_mean(bfm_dir)
    mean = model.mean.detach().cpu().double().numpy()
    inner = np.arange(17, 68)
    lm = model.landmarks.cpu().numpy()
    init = similarity_align(mean[lm[inner]], V[kp[inner]])
    rigid = None
    if compare_rigid:
        rigid = register_model(model, V, F, init_similarity=init, iterations=12, rigid_iterations=12,
                               fit_shape=False, fit_expr=False, verbose=False, **kwargs)
    reg = register_model(model, V, F, init_similarity=init, iterations=iterations, verbose=verbose, **kwargs)
    from .landmark_definition import IBUG68_MIRROR, mirror_vertices

    k_model = reg.to_model(V[kp])
    tr = transfer_points(reg.vertices, model.triangles.cpu().numpy(), k_model)
    # flip augmentation mirrors the labels with IBUG68_MIRROR: the vertex pairs must be mirror images
    tr = symmetric_transfer(tr, reg.vertices, mirror_vertices(model.mean.detach().cpu().double()).numpy(), IBUG68_MIRROR)
    return BFMKeypointResult(reg, tuple(float(x) if np.ndim(x) == 0 else x for x in init), rigid, k_model, tr,
                             reg.to_model(V), F)


def _region_table(tr: PointTransfer) -> list[tuple[str, float, float, float, float, float]]:
    rows = []
    for name, sl in list(IBUG68_REGIONS.items()) + [("all", slice(0, 68))]:
        rows.append((name, float(tr.residual_mm[sl].mean()), float(tr.residual_mm[sl].max()),
                     float(tr.vertex_residual_mm[sl].mean()), float(tr.vertex_residual_mm[sl].max()),
                     float(tr.snap_mm[sl].mean())))
    return rows


def _figure(res: BFMKeypointResult, triangles: np.ndarray, path, old_ids=None) -> None:
    """Front, side and zoomed front views (model frame, mm) of the registered model and the aligned
    BFM mean, with BFM's keypoints (red), the new vertex ids (green rings) and lines between them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reg = res.registration
    X = reg.vertices
    used = np.unique(triangles)
    inside, outside = used[reg.overlap[used]], used[~reg.overlap[used]]
    B = res.bfm_vertices
    k, vid = res.keypoints, res.transfer.vertex
    lo, hi = X[used].min(0) - 5, X[used].max(0) + 5
    Bs = B[np.all((B >= lo) & (B <= hi), 1)][::2]
    fig, axes = plt.subplots(1, 3, figsize=(17, 7.2))
    views = [("front view (x = subject's left, y up)", 0, 1, None, 0.6),
             ("side view (z = toward the camera, y up)", 2, 1, None, 0.6),
             ("front view, zoom", 0, 1, (-52, 52, -75, 45), 2.0)]
    for ax, (title, i, j, box, ms) in zip(axes, views):
        ax.scatter(Bs[:, i], Bs[:, j], s=ms * 0.5, c="tab:orange", alpha=0.35, linewidths=0, rasterized=True,
                   label="BFM mean, aligned (similarity inverse)")
        ax.scatter(X[outside, i], X[outside, j], s=ms, c="0.6", alpha=0.5, linewidths=0, rasterized=True,
                   label="ICT face, registered: outside the overlap")
        ax.scatter(X[inside, i], X[inside, j], s=ms, c="tab:blue", alpha=0.45, linewidths=0, rasterized=True,
                   label="ICT face, registered: overlap (data term)")
        if old_ids is not None:
            ax.scatter(X[old_ids, i], X[old_ids, j], s=16, marker="x", c="k", linewidths=0.8,
                       label="current refined ids (ict_landmarks_68.json)", zorder=3)
        for a_, b_ in zip(k, X[vid]):
            ax.plot([a_[i], b_[i]], [a_[j], b_[j]], c="k", lw=0.8, zorder=4)
        ax.scatter(k[:, i], k[:, j], s=18, c="red", label="BFM keypoints (3DDFA 68)", zorder=5)
        ax.scatter(X[vid, i], X[vid, j], s=30, facecolors="none", edgecolors="limegreen", linewidths=1.4,
                   label="new 3D-style vertex ids", zorder=6)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("xyz"[i] + " (mm)")
        ax.set_ylabel("xyz"[j] + " (mm)")
        if box is not None:
            ax.set_xlim(box[0], box[1])
            ax.set_ylim(box[2], box[3])
    axes[0].legend(loc="lower left", fontsize=7.5, markerscale=2.5, framealpha=0.9)
    p, y, r = reg.angles_deg()
    fig.suptitle("3D-style 68 landmarks on ICT-FaceKit 'face', derived from the BFM mean face and 3DDFA's keypoint "
                 f"vertices (no AFLW2000-3D data)\nregistration fit RMS {reg.rms_mm:.2f} mm on the overlap; keypoint to "
                 f"surface mean {res.transfer.residual_mm.mean():.2f} mm, to vertex {res.transfer.vertex_residual_mm.mean():.2f} mm;"
                 f" similarity model->BFM pitch {p:.1f}, yaw {y:.1f}, roll {r:.1f} deg", fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .landmark_definition import REFINED_ICT_LANDMARKS, read_landmark_file
    from .registry import load_model

    p = argparse.ArgumentParser(prog="python -m morphable.registration",
                                description="Derive the 3D-style (BFM / AFLW2000-3D) 68-landmark definition on the "
                                            "default model by registering it to the BFM mean face.")
    p.add_argument("--bfm-dir", required=True, help="folder with bfm_mean.ply and keypoints68.txt")
    p.add_argument("--out", default=None, help="write the BFM-registered definition (all 68 points) JSON here")
    p.add_argument("--out-3d", default=None,
                   help="also write the 3D-style definition here: the registered jaw (0-16) with the refined "
                        "interior points (17-67), which match hand annotations better (morphable.landmark_definition)")
    p.add_argument("--figure", default=None, help="write a PNG of the registration here")
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    t0 = time.time()
    model = load_model(region="face", landmarks="refined")
    F = model.triangles.cpu().numpy()
    res = register_bfm_keypoints(model, args.bfm_dir, iterations=args.iterations, verbose=not args.quiet)
    reg, tr = res.registration, res.transfer
    mean = model.mean.double().numpy()
    old = read_landmark_file(REFINED_ICT_LANDMARKS, model.n_vertices)
    from .geometry import rotmat_to_angles

    ang = lambda R: np.degrees(rotmat_to_angles(torch.from_numpy(np.asarray(R))).numpy())  # noqa: E731
    print(f"model {model.name}: {model.n_vertices} vertices, {len(F)} triangles; BFM mean {len(res.bfm_vertices)} vertices")
    print("similarity model -> BFM, [pitch, yaw, roll] deg (AFLW2000-3D order), scale (BFM units per mm):")
    print(f"  keypoints 17-67 (Umeyama): {np.round(ang(res.initial[1]), 2).tolist()}  scale {res.initial[0]:.2f}")
    print(f"  rigid surface ICP (mean face): {np.round(res.rigid.angles_deg(), 2).tolist()}  scale {res.rigid.scale:.2f}"
          f"  rms {res.rigid.rms_mm:.3f} mm")
    print(f"  full registration: {np.round(reg.angles_deg(), 2).tolist()}  scale {reg.scale:.2f}")
    Ff = np.asarray(model.info.frame_rotation, np.float64)  # x_model = Ff @ x_file
    file_angles = ang(reg.rotation @ Ff)
    print(f"  full registration from the model's source-file frame (R @ frame_rotation): "
          f"{np.round(file_angles, 2).tolist()}")
    print(f"registration: fit RMS {reg.rms_mm:.3f} mm on the overlap (model->BFM {reg.rms_forward_mm:.3f} mm over "
          f"{reg.n_forward} vertices, BFM->model {reg.rms_backward_mm:.3f} mm over {reg.n_backward} points); "
          f"|shape| {np.linalg.norm(reg.shape):.2f}, max |shape_k| {np.abs(reg.shape).max():.2f}; "
          f"expression weights > 0.05: "
          + ", ".join(f"{n}={w:.2f}" for n, w in zip(model.info.expression_names, reg.expr) if w > 0.05))
    print(f"\n{'region':<11} {'surface mean':>12} {'surface max':>11} {'vertex mean':>11} {'vertex max':>10} {'snap mean':>9}  (mm)")
    for name, a, b, c, d, e in _region_table(tr):
        print(f"{name:<11} {a:12.2f} {b:11.2f} {c:11.2f} {d:10.2f} {e:9.2f}")
    moved = np.linalg.norm(mean[tr.vertex] - mean[old], axis=1)
    print(f"\nvs the refined ids: {int((tr.vertex != old).sum())} of 68 changed; moved on the mean face mean "
          f"{moved.mean():.2f} mm, max {moved.max():.2f} mm (point {int(moved.argmax())})")
    print("point  bfm_vid  tri  residual  vertex  snap  new_id  old_id  moved")
    kp = load_bfm_mean(args.bfm_dir)[2]
    for i in range(68):
        print(f"{i:5d} {kp[i]:8d} {tr.triangle[i]:5d} {tr.residual_mm[i]:8.2f} {tr.vertex_residual_mm[i]:7.2f} "
              f"{tr.snap_mm[i]:5.2f} {tr.vertex[i]:7d} {old[i]:7d} {moved[i]:6.2f}")
    if args.out:
        d = landmark_definition_dict(
            model.name, tr.vertex, tr,
            description="iBUG-68 landmark vertex ids in the 3D style of 300W-LP / AFLW2000-3D: the 68 keypoint vertices of "
                        "the Basel Face Model mean (3DDFA's keypoints) carried onto ICT-FaceKit's 'face' region by a "
                        "non-rigid registration of the model's own shape and expression coefficients "
                        "(morphable.registration); each id is the vertex nearest to the registered surface point",
            definition="3d-style", region="face",
            source="derived from the BFM 2009 mean face of 3DDFA (cleardusk/3DDFA BFM_Remove_Neck/bfm.ply) and its 68 "
                   "keypoint vertex ids (train.configs/keypoints_sim.npy); no AFLW2000-3D image or annotation was used",
            frame="triangles/barycentric index model.triangles of load_model(region='face') (ICT-FaceKit face region); "
                  "residuals in mm on the registered instance, model frame",
            registration={
                "rms_mm": round(reg.rms_mm, 4), "rms_forward_mm": round(reg.rms_forward_mm, 4),
                "rms_backward_mm": round(reg.rms_backward_mm, 4), "n_forward": reg.n_forward, "n_backward": reg.n_backward,
                "scale_bfm_units_per_mm": round(reg.scale, 4),
                "angles_deg_model_to_bfm": np.round(reg.angles_deg(), 3).tolist(),
                "keypoint_similarity_angles_deg": np.round(ang(res.initial[1]), 3).tolist(),
                "rigid_icp_angles_deg": np.round(res.rigid.angles_deg(), 3).tolist(),
                "angles_deg_model_file_frame_to_bfm": np.round(file_angles, 3).tolist(),
                "angles_note": "[pitch, yaw, roll] degrees (morphable.geometry.rotmat_to_angles) of the rotation R in "
                               "bfm = s * R @ x_model + t; positive pitch: the face is raised in BFM's frame relative to ours",
                "shape": np.round(reg.shape, 4).tolist(), "expr": np.round(reg.expr, 4).tolist()},
            previous_refined_ids=old.tolist(), moved_from_refined_mm=np.round(moved, 3).tolist())
        write_landmark_definition(args.out, d)
        read_landmark_file(args.out, model.n_vertices)  # the library reads it back
        print(f"wrote {args.out}")
    if args.out_3d:
        ids = np.concatenate([tr.vertex[:17], old[17:]])
        d3 = landmark_definition_dict(
            model.name, ids,
            description="iBUG-68 landmark vertex ids, 3D style (AFLW2000-3D / 300W-LP): the jaw (0-16) is the BFM "
                        "keypoints' jaw registered onto ICT-FaceKit's 'face' region (morphable.registration, as in "
                        "ict_landmarks_68_bfm.json), fixed vertices on the 3D jawline; the interior points (17-67), "
                        "which mean the same in the 2D-contour and 3D styles, are the refined ids "
                        "(ict_landmarks_68.json, re-selected on hand-annotated training photos)",
            definition="3d-style", region="face", jaw_from="ict_landmarks_68_bfm.json", interior_from="ict_landmarks_68.json",
            jaw_residual_mm=np.round(tr.vertex_residual_mm[:17], 3).tolist())
        write_landmark_definition(args.out_3d, d3)
        read_landmark_file(args.out_3d, model.n_vertices)
        print(f"wrote {args.out_3d}")
    if args.figure:
        _figure(res, F, args.figure, old_ids=old)
        print(f"wrote {args.figure}")
    print(f"done in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
