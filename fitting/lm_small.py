r"""The small-batch path of the LM landmark fitter: the same algorithm as :mod:`fitting.solver`, one
face at a time in numpy/LAPACK.

At batch 1 the batched torch solver spends most of its time dispatching about a hundred tiny
tensor operations per iteration; the arithmetic of a 159 x 159 problem is microseconds. This module
runs the identical iteration with numpy arrays and direct LAPACK calls (``potrf`` / ``trtrs``):

* the same normal equations from the shared Gram blocks (:meth:`fitting.solver._Problem.shared_gram`),
  here cached per model, dtype, component counts and point weights, so a second call with the same
  model pays nothing for them;
* the same blendshape active set, the same second bound pass (Lagrange multipliers of the crossing
  weights on the trailing block of the same factor), projection onto the bounds, gain ratio,
  Nielsen damping update and convergence tests, in the same order and precision (float32 inputs are
  computed in float32, float64 in float64).

It covers the common case only: CPU, l2 loss, fixed landmark vertices (``contour="3d"``), no
autograd. :func:`fitting.solver.fit_landmarks` sends such calls with at most
``FitOptions.small_batch`` faces here and everything else to the batched path; a test checks that
both give the same results (``tests/test_lm_small.py``).
"""
from __future__ import annotations

import functools
import threading
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch
from scipy.linalg import get_lapack_funcs
from threadpoolctl import ThreadpoolController

from morphable.geometry import project_numpy, rotmat_to_rotvec_numpy, rotvec_to_rotmat_numpy
from morphable.model import MorphableModel

__all__ = ["supported", "fit_small"]

_NP = 6
_SYM6 = ((0, 1, 2, 0, 0, 1), (0, 1, 2, 1, 2, 2))


def supported(landmarks: torch.Tensor, opt, model: MorphableModel, init) -> bool:
    """True when :func:`fit_small` computes what the batched solver would: CPU tensors, l2 loss,
    fixed landmark vertices (no 2D contour), no tensor that needs a gradient."""
    if landmarks.device.type != "cpu" or opt.robust != "l2":
        return False
    if opt.contour == "2d" and model.contour_right.numel() > 0 and model.contour_left.numel() > 0:
        return False
    if torch.is_grad_enabled():
        tensors = [landmarks, model.mean, model.shape_basis, model.expr_basis]
        if init is not None:
            tensors += [init.shape, init.expr, init.rotvec, init.scale, init.translation]
        if any(t.requires_grad for t in tensors):
            return False
    return True


class _Blocks:
    """Model blocks at the landmark vertices in one numpy dtype, for ``ks`` shape and ``ke``
    expression components, plus Gram blocks per point-weight vector (a small LRU)."""

    def __init__(self, model: MorphableModel, dt: np.dtype, ks: int, ke: int):
        lm = model.landmarks.cpu()
        L = lm.shape[0]
        npd = lambda t: t.detach().cpu().numpy().astype(dt, copy=False)  # noqa: E731
        self.L, self.ks, self.ke, self.P = L, ks, ke, _NP + ks + ke
        self.lm_mean = np.ascontiguousarray(npd(model.mean[lm]))  # (L, 3)
        s_lm, e_lm = model.shape_basis[lm], model.expr_basis[lm]
        self.full = np.ascontiguousarray(np.concatenate([npd(s_lm).reshape(L * 3, -1).T,
                                                         npd(e_lm).reshape(L * 3, -1).T]))  # (Ks + Ke, 3L)
        self.basis = np.ascontiguousarray(np.concatenate([npd(s_lm)[..., :ks], npd(e_lm)[..., :ke]], -1))  # (L, 3, K)
        self.Bf = self.basis.reshape(L * 3, -1)  # (3L, K)
        self.lo = npd(model.expr_lower)
        self.hi = npd(model.expr_upper)
        self.expr_pca = model.info.expr_kind == "pca"
        self._grams: "OrderedDict[bytes, np.ndarray]" = OrderedDict()

    def gram(self, w: np.ndarray) -> np.ndarray:
        """(6, P * P) Gram rows of :meth:`fitting.solver._Problem.shared_gram` for point weights ``w`` (L,)."""
        key = w.tobytes()
        G = self._grams.get(key)
        if G is not None:
            self._grams.move_to_end(key)
            return G
        K, L, P = self.ks + self.ke, self.L, self.P
        wB = self.basis * w[:, None, None]
        G9 = np.einsum("lik,ljm->ijkm", wB, self.basis)  # (3, 3, K, K)
        G = np.zeros((6, P, P), dtype=self.basis.dtype)
        for n, (i, j) in enumerate(zip(*_SYM6)):
            G[n, _NP:, _NP:] = G9[i, j] if i == j else G9[i, j] + G9[j, i]
        G = G.reshape(6, P * P)
        self._grams[key] = G
        if len(self._grams) > 16:
            self._grams.popitem(last=False)
        return G


_CACHE: "weakref.WeakKeyDictionary[MorphableModel, dict]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _blocks(model: MorphableModel, dt: np.dtype, ks: int, ke: int) -> _Blocks:
    """Cached :class:`_Blocks`; rebuilt when the model's tensors are replaced or modified in place."""
    stamp = tuple((t.data_ptr(), t._version) for t in (model.mean, model.shape_basis, model.expr_basis,
                                                       model.landmarks, model.expr_lower, model.expr_upper))
    key = (np.dtype(dt).str, ks, ke)
    with _LOCK:
        per_model = _CACHE.setdefault(model, {})
        hit = per_model.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    blocks = _Blocks(model, dt, ks, ke)
    with _LOCK:
        per_model[key] = (stamp, blocks)
    return blocks


@functools.lru_cache(maxsize=None)
def _lapack(dt: np.dtype):
    """LAPACK ``potrf`` (Cholesky) and ``trtrs`` (triangular solve) for ``dt``."""
    return get_lapack_funcs(("potrf", "trtrs"), (np.zeros(1, dt),))


def _face_size(y: np.ndarray, w: np.ndarray):
    """(f, valid, w, y) of one face exactly as :class:`fitting.solver._Problem` computes them."""
    dt = y.dtype
    finite = np.isfinite(y).all(-1)
    if not finite.all():
        w = np.where(finite, w, 0).astype(dt)
        y = np.where(finite[:, None], y, 0).astype(dt)
    vis = w > 0
    nvis = int(np.count_nonzero(vis))
    yv = y[vis] if nvis < len(vis) else y
    if nvis:
        ext = np.maximum(yv.max(0) - yv.min(0), 0)
    else:
        ext = np.zeros(2, dt)
    side = max(np.sqrt(ext[0] * ext[1]), dt.type(0.5) * ext.max())
    wv = w[vis] if nvis < len(vis) else w
    yc = yv - (wv @ yv) / max(wv.sum(), dt.type(1e-12))
    cxx, cyy, cxy = yc[:, 0] @ yc[:, 0], yc[:, 1] @ yc[:, 1], yc[:, 0] @ yc[:, 1]
    half, rad = (cxx + cyy) / 2, np.sqrt(((cxx - cyy) / 2) ** 2 + cxy ** 2)
    spread = (half - rad) > dt.type(1e-4) * (half + rad)
    valid = bool(nvis >= 4 and side > 1e-3 * max(ext.max(), 1.0) and side > 1e-6 and spread)
    f = side / dt.type(100.0) if valid else dt.type(1.0)
    return dt.type(f), valid, (w if valid else np.zeros_like(w)), y


def initial_pose_numpy(X: np.ndarray, y: np.ndarray, w: np.ndarray):
    """:func:`fitting.solver.initial_pose` for one face in numpy: model points X (L, 3) mm, targets
    y (L, 2) px, weights w (L,) -> (R (3, 3), scale, translation (2,)) in the dtype of X, with the
    same fallback (R = I, s = 1, t = 0) where the closed form fails."""
    dt = X.dtype
    wsum = max(w.sum(), dt.type(1e-12))
    Xbar, ybar = (w @ X) / wsum, (w @ y) / wsum
    Xc, yc = X - Xbar, y - ybar
    A = Xc.T @ (w[:, None] * Xc)
    A = A + dt.type(1e-12) * np.trace(A) * np.eye(3, dtype=dt)
    try:
        k = np.linalg.solve(A, Xc.T @ (w[:, None] * yc))  # (3, 2): u and v regressions
    except np.linalg.LinAlgError:
        k = np.full((3, 2), np.nan, dt)
    r1, r2 = k[:, 0], -k[:, 1]
    n1, n2 = np.sqrt(r1 @ r1), np.sqrt(r2 @ r2)
    s = dt.type(0.5) * (n1 + n2)
    r1n, r2n = r1 / max(n1, dt.type(1e-12)), r2 / max(n2, dt.type(1e-12))
    r3 = np.array([r1n[1] * r2n[2] - r1n[2] * r2n[1], r1n[2] * r2n[0] - r1n[0] * r2n[2],
                   r1n[0] * r2n[1] - r1n[1] * r2n[0]], dtype=dt)  # r1n x r2n
    M = np.stack([r1n, r2n, r3])
    finite = bool(np.isfinite(M).all())
    if not finite:
        M = np.eye(3, dtype=dt)
    U, _, Vh = np.linalg.svd(M)
    U[:, 2] *= np.linalg.det(U @ Vh)
    R = (U @ Vh).astype(dt)
    t = ybar - project_numpy(Xbar[None], R, s, np.zeros(2, dt))[0]
    if not (finite and np.isfinite(R).all() and np.isfinite(s) and s > 0 and np.isfinite(t).all()):
        return np.eye(3, dtype=dt), dt.type(1.0), np.zeros(2, dt)
    return R, dt.type(s), t.astype(dt)


def _bound_pass(Lc, z, e, lo, hi, trtrs, potrf):
    """One face's :func:`fitting.solver._bound_pass` (the Lagrange form); returns the new ``z``."""
    ke = e.shape[0]
    o = Lc.shape[0] - ke
    Lee = Lc[o:, o:]
    ze = z[o:]
    de, _ = trtrs(Lee, ze, lower=1, trans=1)
    tgt = np.maximum(np.minimum(e + de, hi), lo)
    cross = (tgt != e + de) & np.isfinite(de)
    if not cross.any():
        return z
    C = np.flatnonzero(cross)
    k = C.size
    E = np.zeros((ke, k), dtype=z.dtype)
    E[C, np.arange(k)] = 1.0
    Y, _ = trtrs(Lee, E, lower=1)
    K = Y.T @ Y
    rhs = (tgt - e)[C] - de[C]
    Lk, info = potrf(K, lower=1)
    if info != 0:
        return z
    lam, _ = trtrs(Lk, rhs, lower=1)
    lam, _ = trtrs(Lk, lam, lower=1, trans=1)
    out = z.copy()
    out[o:] = ze + Y @ lam
    return out


def fit_small(model: MorphableModel, landmarks: torch.Tensor, weights: torch.Tensor, init, opt, ks: int, ke: int,
              expr_prior: torch.Tensor):
    """Fit each face of a small batch in numpy; arguments as :func:`fitting.solver._fit` after the
    input checks (``landmarks`` (B, L, 2) and ``weights`` (B, L) in the output dtype on the CPU,
    ``expr_prior`` (ke,) the per-component expression prior). Returns a :class:`fitting.solver.FitResult`."""

    # as in torch, overflow and NaN propagate silently: the validity and convergence flags report them
    with _one_blas_thread(), np.errstate(all="ignore"):
        return _fit_small(model, landmarks, weights, init, opt, ks, ke, expr_prior)


_BLAS = None


@contextmanager
def _one_blas_thread():
    """One BLAS thread for the block: LAPACK on a 159 x 159 matrix only loses time to a second
    thread (and a busy machine makes that worse). The BLAS libraries are found once (threadpoolctl);
    each call then only reads and sets their thread counts."""
    global _BLAS
    if _BLAS is None:
        _BLAS = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
    before = [lib.num_threads for lib in _BLAS]
    for lib, n in zip(_BLAS, before):
        if n != 1:
            lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(_BLAS, before):
            if n != 1:
                lib.set_num_threads(n)


def _fit_small(model, landmarks, weights, init, opt, ks, ke, expr_prior):
    from .solver import FitParams, FitResult  # the batched module owns the result types

    tdt = landmarks.dtype
    dt = np.dtype(np.float32 if tdt == torch.float32 else np.float64)
    blk = _blocks(model, dt, ks, ke)
    B, L = landmarks.shape[:2]
    Ks, Ke, P, o = model.n_shape, model.n_expr, blk.P, _NP + ks
    prior = np.concatenate([np.zeros(_NP, dt), np.full(ks, opt.shape_prior, dt),
                            expr_prior.detach().cpu().numpy().astype(dt)])
    prior_c = prior[_NP:]
    potrf, trtrs = _lapack(dt)
    bounded = (not blk.expr_pca) and ke > 0
    Y_all = landmarks.detach().cpu().numpy()
    W_all = weights.detach().cpu().numpy()
    if init is None:
        shape0 = np.zeros((B, Ks), dt)
        expr0 = np.zeros((B, Ke), dt)
        if not blk.expr_pca:
            expr0 = np.clip(expr0, blk.lo, blk.hi)
        R0 = s0 = t0 = None
    else:
        shape0 = init.shape.detach().cpu().to(tdt).numpy()
        expr0 = init.expr.detach().cpu().to(tdt).numpy()
        R0 = [rotvec_to_rotmat_numpy(v) for v in init.rotvec.detach().cpu().to(tdt).numpy()]
        s0 = init.scale.detach().cpu().to(tdt).numpy()
        t0 = init.translation.detach().cpu().to(tdt).numpy()
    one, tol = dt.type(1.0), dt.type(opt.tolerance)
    di = np.arange(P)

    out = {k: [] for k in ("shape", "expr", "R", "s", "t", "x", "cost", "rmse", "iters", "conv", "valid")}
    for b in range(B):
        f, valid, w, y = _face_size(Y_all[b], W_all[b])
        shape, expr = shape0[b].copy(), expr0[b].copy()

        def points(shape, expr):
            return blk.lm_mean + (np.concatenate([shape, expr]) @ blk.full).reshape(L, 3)

        if R0 is None:
            R, s, t = initial_pose_numpy(points(shape, expr), y, w)
        else:
            R, s, t = R0[b].copy(), s0[b], t0[b].copy()
        logs = np.log(np.maximum(s, dt.type(1e-12))).astype(dt)

        def coef_vec(shape, expr):
            return np.concatenate([shape[:ks], expr[:ke]])

        def evaluate(shape, expr, R, logs, t):
            X = points(shape, expr)
            x = project_numpy(X, R, np.exp(logs), t)
            r = (x - y) / f
            cost = (w * (r * r).sum(-1)).sum() + (prior_c * coef_vec(shape, expr) ** 2).sum()
            return X, r, x, cost

        X, r, x, cost = evaluate(shape, expr, R, logs, t)
        mu, nu = dt.type(opt.initial_damping), dt.type(2.0)
        converged, iters = not valid, 0
        gram = blk.gram(w) if ks + ke else None
        Bf = blk.Bf
        for _ in range(opt.max_iterations):
            if converged:  # the batched path rejects every step of a converged face: nothing changes
                break
            s = np.exp(logs)
            coef = coef_vec(shape, expr)
            c = s / f
            R2 = R[:2]
            # normal equations from the Gram blocks (fitting.solver._normal_equations_shared)
            if gram is not None:
                M = (R2.T @ R2) * (c * c)
                H = (M[_SYM6[0], _SYM6[1]] @ gram).reshape(P, P)
            else:
                H = np.zeros((P, P), dt)
            Yr = X @ R.T
            Jp = np.zeros((2, L, _NP), dt)
            Jp[0, :, 1] = Yr[:, 2] * c
            Jp[0, :, 2] = -Yr[:, 1] * c
            Jp[1, :, 0] = Yr[:, 2] * c
            Jp[1, :, 2] = -Yr[:, 0] * c
            Jp[:, :, 3] = ((x - t) / f).T
            Jp[0, :, 4] = one / f
            Jp[1, :, 5] = one / f
            wJp = Jp * w[None, :, None]
            Jp2, wJp2 = Jp.reshape(2 * L, _NP), wJp.reshape(2 * L, _NP)
            H[:_NP, :_NP] = Jp2.T @ wJp2
            gp = wJp2.T @ r.T.reshape(2 * L)
            if gram is not None:
                cR2 = R2 * np.array([[1.0], [-1.0]], dt) * c
                Q = wJp[0][:, :, None] * cR2[0] + wJp[1][:, :, None] * cR2[1]  # (L, 6, 3)
                Hpc = Q.transpose(1, 0, 2).reshape(_NP, 3 * L) @ Bf
                H[:_NP, _NP:] = Hpc
                H[_NP:, :_NP] = Hpc.T
                gc = ((r * w[:, None]) @ cR2).reshape(3 * L) @ Bf
                g = np.concatenate([gp, gc])
            else:
                g = gp
            g[_NP:] += prior_c * coef
            H[di, di] += prior
            if bounded:
                e_, ge = expr[:ke], g[o:]
                act = ((e_ <= blk.lo[:ke] + dt.type(1e-6)) & (ge > 0)) | ((e_ >= blk.hi[:ke] - dt.type(1e-6)) & (ge < 0))
                if act.any():  # frozen rows/columns -> identity (multiplying by ones would change nothing)
                    fe = (~act).astype(dt)
                    H[o:, :] *= fe[:, None]
                    H[:, o:] *= fe[None, :]
                    H[di[o:], di[o:]] += one - fe
                    g[o:] *= fe
            dpre = np.maximum(H[di, di], dt.type(1e-9))
            damp = mu * dpre
            H[di, di] += damp
            Lc, info = potrf(H.T, lower=1, overwrite_a=1, clean=0)  # H is symmetric: H.T is its Fortran view
            ok = info == 0
            if ok:
                z, _ = trtrs(Lc, -g, lower=1)
                if bounded and opt.bound_second_pass:
                    z = _bound_pass(Lc, z, expr[:ke], blk.lo[:ke], blk.hi[:ke], trtrs, potrf)
                delta, _ = trtrs(Lc, z, lower=1, trans=1)
                step_ok = bool(np.isfinite(delta).all())
            else:
                step_ok = False
            if not step_ok:
                delta = np.zeros(P, dt)
            n_shape = shape.copy()
            n_shape[:ks] += delta[_NP:o]
            n_expr = expr.copy()
            n_expr[:ke] += delta[o:]
            if not blk.expr_pca:
                n_expr = np.maximum(np.minimum(n_expr, blk.hi), blk.lo)
            n_R = rotvec_to_rotmat_numpy(delta[:3]) @ R
            n_logs = logs + delta[3]
            n_t = t + delta[4:6]
            nX, nr, nx, ncost = evaluate(n_shape, n_expr, n_R, n_logs, n_t)
            pred = max((delta * (damp * delta - g)).sum(), dt.type(1e-30))
            actual = cost - ncost
            rho = actual / pred
            accept = ok and bool(np.isfinite(ncost)) and actual > 0
            if accept:
                shape, expr, R, logs, t, X, r, x = n_shape, n_expr, n_R, n_logs, n_t, nX, nr, nx
            tol_cost = tol * max(cost, dt.type(1e-12))
            small = abs(actual) <= tol_cost or np.abs(delta).max() <= tol
            flat = pred <= tol_cost and abs(actual) <= tol_cost and step_ok
            if accept:
                cost = ncost
                mu = mu * max(one - (dt.type(2.0) * rho - one) ** 3, dt.type(1.0 / 3.0))
                nu = dt.type(2.0)
            else:
                mu, nu = mu * nu, nu * dt.type(2.0)
            mu = min(max(mu, dt.type(1e-9)), dt.type(1e9))
            iters += int(accept)
            converged = converged or (accept and small) or flat or mu >= 1e9
        err2 = ((x - y) ** 2).sum(-1)
        rmse = np.sqrt((w * err2).sum() / max(w.sum(), dt.type(1e-12))) if valid else dt.type(np.nan)
        for k, v in zip(out, (shape, expr, R, np.exp(logs), t, x, cost, rmse, iters, converged and valid, valid)):
            out[k].append(v)

    def T(k, dtype=tdt):
        return torch.as_tensor(np.stack(out[k]) if isinstance(out[k][0], np.ndarray) else np.array(out[k])).to(dtype)

    rotvec = torch.from_numpy(rotmat_to_rotvec_numpy(np.stack(out["R"]))).to(tdt)
    params = FitParams(T("shape"), T("expr"), rotvec, T("s"), T("t"))
    vid = model.landmarks.cpu().repeat(B, 1)
    return FitResult(params, T("x"), T("cost"), T("rmse"), T("iters", torch.long),
                     T("conv", torch.bool), T("valid", torch.bool), vid)
