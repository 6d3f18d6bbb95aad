r"""Batched Levenberg-Marquardt fitting of a morphable model to 2D landmarks.

For each face b of a batch, independently, minimise over shape ``a`` (Ks), expression ``e`` (Ke),
rotation ``R``, scale ``s`` and translation ``t``

    sum_i  w_bi * rho(|| s P R X_i(a, e) + t - y_bi || / f_b)^2  +  lam_s ||a / sig_s||^2 + lam_e ||e / sig_e||^2

where ``X_i`` are the model's landmark vertices (mm), ``y`` the target landmarks (image px, y
down), ``w`` per-point weights (0 = absent), ``rho`` identity or Huber (IRLS) and ``f_b`` the
face size (px; sqrt of the target bbox area / 100, so residuals are "percent of face size", the
unit of NME, and the priors do not depend on the image resolution).

The algorithm (one iteration, every face at once, no host synchronisation):

1. residuals r (B, 2L) and the analytic Jacobian J (B, 2L, P) at the current parameters, ordered
   [rotation increment, log s, t, shape, expression]; rotation is updated multiplicatively,
   ``R <- exp([d]_x) R``, so its Jacobian block is ``-s P [R X]_x``; scale is parametrised by ``log s``.
2. normal equations ``(J^T W J + D_prior + mu * diag(J^T W J + D_prior)) delta = -g`` solved by a
   batched Cholesky (``cholesky_ex``: a failed factorisation rejects that face's step). When all
   faces share their point weights (l2 loss, fixed landmark vertices; the usual case) the
   coefficient columns of J are never formed: J^T W J is ``(s/f)^2 sum_ij M_ij G_ij`` with
   ``M = R_0^T R_0 + R_1^T R_1`` and Gram blocks ``G_ij = sum_l w_l B_li^T B_lj`` computed
   once per batch (one (B, 6) x (6, P^2) GEMM on the six unique entries of M), plus pose rows
   from small GEMMs on the (3L, K) landmark basis (:func:`_normal_equations_shared`). Blendshape
   bounds: an active set freezes weights at a bound pushing outward; weights whose step still
   crosses a bound are fixed at the bound and the rest re-solved on the trailing (ke x ke) block of
   the same factor (:func:`_bound_pass`, no second factorisation of the normal matrix: on CPU by
   Lagrange multipliers of the k crossing weights, a k x k system, for the faces that have any).
3. candidate cost; per-face accept/reject and Nielsen's damping update on the gain ratio (actual
   over predicted reduction, :func:`_predicted_reduction`) with ``torch.where``.
   Blendshape weights are projected onto their valid range after each step.

Large batches are cut into chunks of ``FitOptions.chunk`` faces (cache-sized) that run on
``FitOptions.workers`` CPU threads side by side, one intra-op thread each; faces never interact,
so the result does not depend on the chunking.
Every ``check_every`` iterations one host sync tests whether all faces converged; the converged
ones then leave the working batch (their results are final: they take zero steps).
"""
from __future__ import annotations

import copy
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from morphable.errors import InputError
from morphable.geometry import project, rotmat_to_rotvec, rotvec_to_rotmat, skew
from morphable.model import MorphableModel

from . import lm_small

__all__ = ["FitOptions", "FitParams", "FitResult", "fit_landmarks", "initial_pose", "JAW_RIGHT", "JAW_LEFT"]

#: iBUG-68 indices of the jaw outline on the image-left (subject's right) and image-right sides.
JAW_RIGHT = tuple(range(0, 8))
JAW_LEFT = tuple(range(9, 17))
#: Pose parameters at the front of the solver's parameter vector: rotation increment (3), log scale, t (2).
_NP = 6
#: Row and column indices of the six unique entries of a symmetric 3 x 3 matrix: diagonal, then (0,1), (0,2), (1,2).
_SYM6 = ((0, 1, 2, 0, 0, 1), (0, 1, 2, 1, 2, 2))


@dataclass
class FitOptions:
    """Options of :func:`fit_landmarks`.

    Attributes:
        max_iterations: LM iterations at most.
        tolerance: a face has converged when an accepted step lowers its cost by less than
            ``tolerance`` (relative) or its step is below ``tolerance`` (parameter units), or when
            a trial step, accepted or not, changes the cost by less than ``tolerance`` (relative)
            and the quadratic model predicted no more (MINPACK's ftol test).
        shape_prior: lam_s, weight of the shape prior (coefficients in std units).
        expr_prior: lam_e, weight of the expression prior: one number, or one per expression
            component (a sequence of Ke numbers, e.g. a stronger prior on the mouth blendshapes of
            faces whose lips are not annotated).
        robust: ``"l2"`` or ``"huber"``.
        huber_delta: Huber threshold in percent of face size.
        contour: ``"3d"`` (fixed landmark vertices, AFLW2000-3D style) or ``"2d"`` (jaw points slide
            along the model's contour candidates to the nearest projection: 300-W style).
        fit_shape / fit_expression: optimise those coefficients (else keep them at init).
        n_shape, n_expr: optimise only the first components (None = all).
        initial_damping: mu at the start.
        check_every: iterations between host-side "all converged?" checks, where the converged
            faces also leave the working batch (0 = never; None = 2 on CPU, where a check costs
            nothing, 5 on other devices, where it is a host synchronisation). Results do not depend
            on it; 2 was about 10 % faster than 5 from the mean face on CPU (``benchmarks.lm_speed``).
        chunk: faces per internal chunk. Small chunks keep each chunk's normal matrix and Cholesky
            factor in cache: 64 was about 1.5x faster than 1024 per face on a 2-core CPU
            (``python -m benchmarks.lm_speed``); it also bounds memory for huge batches.
        workers: CPU threads that fit chunks side by side, each with one intra-op thread
            (0 = torch's thread budget, ``torch.get_num_threads()``; 1 = the calling thread only).
            CUDA inputs always use the calling thread. When there are fewer chunks than workers,
            chunks are split down to 16 faces so that every worker has one.
        small_batch: batches of at most this many faces on the CPU (l2 loss, 3D contour, no
            autograd) run the same iteration one face at a time in numpy/LAPACK
            (:mod:`fitting.lm_small`): same decisions and results to float rounding, several times
            faster there than the batched torch path (``python -m benchmarks.lm_speed``). 0 = never.
        bound_second_pass: blendshape weights whose step crosses a bound are fixed at the bound
            and the others re-solved (on the trailing block of the same Cholesky factor). Blendshape
            bounds are always handled by an active set (weights at a bound with an outward
            gradient are frozen) and by projecting the step.
    """

    max_iterations: int = 20
    tolerance: float = 1e-5
    shape_prior: float = 1.0
    expr_prior: Union[float, Sequence[float]] = 1.0
    robust: str = "l2"
    huber_delta: float = 2.0
    contour: str = "3d"
    fit_shape: bool = True
    fit_expression: bool = True
    n_shape: Optional[int] = None
    n_expr: Optional[int] = None
    initial_damping: float = 1e-3
    check_every: Optional[int] = None
    chunk: int = 64
    workers: int = 0
    bound_second_pass: bool = True
    small_batch: int = 12


@dataclass
class FitParams:
    """Model and camera parameters of a batch of faces.

    Attributes:
        shape: (B, Ks) shape coefficients (std units for PCA models).
        expr: (B, Ke) expression coefficients / blendshape weights.
        rotvec: (B, 3) Rodrigues rotation vector, radians (``R = rotvec_to_rotmat(rotvec)``).
        scale: (B,) pixels per mm.
        translation: (B, 2) image pixels of the model origin.
    """

    shape: torch.Tensor
    expr: torch.Tensor
    rotvec: torch.Tensor
    scale: torch.Tensor
    translation: torch.Tensor

    @property
    def rotation(self) -> torch.Tensor:
        """(B, 3, 3) rotation matrices."""
        return rotvec_to_rotmat(self.rotvec)

    def index(self, i) -> "FitParams":
        return FitParams(self.shape[i], self.expr[i], self.rotvec[i], self.scale[i], self.translation[i])

    def to(self, *a, **k) -> "FitParams":
        return FitParams(*(getattr(self, f).to(*a, **k) for f in ("shape", "expr", "rotvec", "scale", "translation")))

    @staticmethod
    def cat(items: list["FitParams"]) -> "FitParams":
        return FitParams(*(torch.cat([getattr(p, f) for p in items]) for f in ("shape", "expr", "rotvec", "scale", "translation")))


@dataclass
class FitResult:
    """Result of :func:`fit_landmarks` for B faces.

    Attributes:
        params: fitted :class:`FitParams`.
        landmarks: (B, 68, 2) fitted model landmarks projected to the image, px.
        cost: (B,) final objective.
        rmse: (B,) reprojection RMSE over the weighted points, px.
        iterations: (B,) int, accepted steps.
        converged: (B,) bool.
        valid: (B,) bool, False where the input could not be fitted (fewer than 4 finite
            visible points, no spread, all points on one line); such faces keep the initial parameters.
        landmark_vertices: (B, 68) int64 vertex ids used at the end (differs from the model's
            landmarks on the jaw when ``contour="2d"``).
    """

    params: FitParams
    landmarks: torch.Tensor
    cost: torch.Tensor
    rmse: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    valid: torch.Tensor
    landmark_vertices: torch.Tensor

    @staticmethod
    def cat(items: list["FitResult"]) -> "FitResult":
        return FitResult(FitParams.cat([r.params for r in items]),
                         *(torch.cat([getattr(r, f) for r in items]) for f in
                           ("landmarks", "cost", "rmse", "iterations", "converged", "valid", "landmark_vertices")))


# --------------------------------------------------------------------------- initial pose
def initial_pose(points3d: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor):
    """Closed-form weak-perspective pose from 3D-2D correspondences (affine camera, then the
    nearest rotation), batched.

    Args:
        points3d: (B, L, 3) model points, mm.
        targets: (B, L, 2) image px (finite where weights > 0).
        weights: (B, L) >= 0.

    Returns:
        R (B, 3, 3), scale (B,), translation (B, 2). Degenerate faces get R = I and a scale from
        the point spread.
    """
    dt = points3d.dtype
    w = weights[..., None]
    wsum = w.sum(1).clamp_min(1e-12)  # (B, 1)
    Xbar = (w * points3d).sum(1) / wsum  # (B, 3)
    ybar = (w * targets).sum(1) / wsum  # (B, 2)
    Xc, yc = points3d - Xbar[:, None], targets - ybar[:, None]
    A = Xc.transpose(1, 2) @ (w * Xc)  # (B, 3, 3)
    A = A + 1e-12 * A.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] * torch.eye(3, dtype=dt, device=A.device)
    k = torch.linalg.solve_ex(A, Xc.transpose(1, 2) @ (w * yc))[0]  # (B, 3, 2): u and v regressions
    r1, r2 = k[:, :, 0], -k[:, :, 1]
    s = 0.5 * (r1.norm(dim=-1) + r2.norm(dim=-1))
    r1n = r1 / r1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    r2n = r2 / r2.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    M = torch.stack([r1n, r2n, torch.linalg.cross(r1n, r2n)], 1)
    finite = torch.isfinite(M).all(-1).all(-1)
    M = torch.where(finite[:, None, None], M, torch.eye(3, dtype=dt, device=M.device).expand_as(M))
    U, _, Vh = torch.linalg.svd(M)
    d = torch.linalg.det(U @ Vh)
    U = torch.cat([U[..., :2], U[..., 2:] * d[:, None, None]], -1)
    R = U @ Vh
    t = ybar - project(Xbar[:, None], R, s, torch.zeros_like(ybar))[:, 0]  # model origin, consistent with R, s
    ok = finite & torch.isfinite(R).all(-1).all(-1) & torch.isfinite(s) & (s > 0) & torch.isfinite(t).all(-1)
    eye = torch.eye(3, dtype=dt, device=R.device).expand_as(R)
    R = torch.where(ok[:, None, None], R, eye)
    s = torch.where(ok, s, torch.ones_like(s))
    t = torch.where(ok[:, None], t, torch.zeros_like(t))
    return R, s, t


# --------------------------------------------------------------------------- main entry
def fit_landmarks(model: MorphableModel, landmarks: torch.Tensor, weights: Optional[torch.Tensor] = None,
                  init: Optional[FitParams] = None, options: Optional[FitOptions] = None) -> FitResult:
    """Fit ``model`` to 2D landmarks of a batch of faces.

    Args:
        model: the morphable model (its 68 landmark vertices are the correspondences).
        landmarks: (B, 68, 2) target points, image px (0-based, y down). NaN/inf points are
            treated as absent.
        weights: (B, 68) per-point weights or visibility (0 = absent), default 1.
        init: initial :class:`FitParams` (e.g. from the regressor); default: mean face and the
            closed-form pose (:func:`initial_pose`).
        options: :class:`FitOptions`.

    Returns:
        :class:`FitResult`; per-face flags say which faces converged and which were invalid.
        Runs on the device and in the dtype of ``landmarks`` (float16 is computed in float32).

    Raises:
        InputError: wrong shapes, empty batch, non-numeric or complex arrays, negative or non-finite weights.
    """
    opt = options or FitOptions()
    landmarks = _real_tensor(landmarks, "landmarks")
    L = model.n_landmarks
    if landmarks.ndim != 3 or landmarks.shape[1:] != (L, 2):
        raise InputError(f"landmarks must be (B, {L}, 2) image pixels, got {tuple(landmarks.shape)}")
    B = landmarks.shape[0]
    if B == 0:
        raise InputError("empty batch: landmarks has 0 faces; pass at least one (B >= 1)")
    out_dtype = landmarks.dtype if landmarks.dtype in (torch.float32, torch.float64) else torch.float32
    landmarks = landmarks.to(out_dtype)
    if weights is None:
        weights = torch.ones(B, L, dtype=out_dtype, device=landmarks.device)
    else:
        weights = _real_tensor(weights, "weights").to(device=landmarks.device, dtype=out_dtype)
        if weights.shape != (B, L):
            raise InputError(f"weights must be (B, {L}) = ({B}, {L}), got {tuple(weights.shape)}")
        if not bool(torch.isfinite(weights).all()):
            raise InputError("weights must be finite (0 = absent point); got NaN or inf")
        if bool((weights < 0).any()):
            raise InputError("weights must be >= 0 (0 = absent point); got negative values")
    if opt.robust not in ("l2", "huber"):
        raise InputError(f"robust must be 'l2' or 'huber', got {opt.robust!r}")
    if opt.contour not in ("3d", "2d"):
        raise InputError(f"contour must be '3d' or '2d', got {opt.contour!r}")
    if opt.chunk < 1 or opt.workers < 0 or (opt.check_every is not None and opt.check_every < 0):
        raise InputError(f"chunk must be >= 1, workers >= 0 and check_every >= 0 (or None), got chunk={opt.chunk}, "
                         f"workers={opt.workers}, check_every={opt.check_every}")
    cpu = landmarks.device.type == "cpu"
    if B <= opt.small_batch and lm_small.supported(landmarks, opt, model, init):
        ks, ke = _components(model, opt)
        return lm_small.fit_small(model, landmarks, weights, init, opt, ks, ke,
                                  _expr_prior(opt.expr_prior, model.n_expr, ke, out_dtype, landmarks.device))
    workers = 1 if not cpu else (opt.workers or torch.get_num_threads())
    chunk = opt.chunk
    if workers > 1 and B > 16:
        chunk = max(min(chunk, -(-B // workers)), 16)
    slices = [slice(i, i + chunk) for i in range(0, B, chunk)]
    grad = torch.is_grad_enabled()

    def one(sl: slice) -> FitResult:
        with torch.set_grad_enabled(grad):
            if len(slices) == 1:
                return _fit(model, landmarks, weights, init, opt)
            return _fit(model, landmarks[sl], weights[sl], init.index(sl) if init is not None else None, opt)

    def in_worker(sl: slice) -> FitResult:
        torch.set_num_threads(1)  # this pool thread keeps one intra-op thread
        return one(sl)

    # One intra-op thread per worker on CPU: batched LAPACK calls on small matrices were 10x or more
    # slower with 2 OpenMP/MKL threads on a 2-core machine (python -m benchmarks.lm_speed).
    workers = min(workers, len(slices))
    if workers == 1:
        with _intra_op_threads(1 if cpu else None):
            return FitResult.cat([one(sl) for sl in slices]) if len(slices) > 1 else one(slices[0])
    return FitResult.cat(list(_pool(workers).map(in_worker, slices)))


@contextmanager
def _intra_op_threads(n: Optional[int]):
    """Run the block with ``torch.set_num_threads(n)`` in this thread (None: unchanged), then restore."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(old)


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads for this process (each task sets one intra-op torch thread for
    itself); keyed by process id, since a forked child does not inherit the parent's threads."""
    key = (os.getpid(), workers)
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="fit_landmarks")
        return _POOLS[key]


def _real_tensor(a, name: str) -> torch.Tensor:
    """``a`` as a real-valued tensor, or InputError (strings, objects, complex numbers)."""
    try:
        t = a if isinstance(a, torch.Tensor) else torch.as_tensor(a)
    except (TypeError, ValueError, RuntimeError) as e:
        raise InputError(f"{name} must be an array of numbers, got {type(a).__name__} "
                         f"({str(e).splitlines()[0][:80] if str(e) else ''})") from None
    if t.is_complex():
        raise InputError(f"{name} must be real numbers, got {t.dtype}")
    return t


def _components(model: MorphableModel, opt: FitOptions) -> tuple[int, int]:
    """(ks, ke): how many shape and expression components are optimised."""
    ks = model.n_shape if opt.n_shape is None else min(opt.n_shape, model.n_shape)
    ke = model.n_expr if opt.n_expr is None else min(opt.n_expr, model.n_expr)
    return (ks if opt.fit_shape else 0), (ke if opt.fit_expression else 0)


def _expr_prior(lam, Ke: int, ke: int, dt, dev) -> torch.Tensor:
    """(ke,) expression prior weights from a number or a (Ke,) sequence (FitOptions.expr_prior)."""
    t = _real_tensor(lam, "expr_prior").to(dev, dt).reshape(-1)
    if t.numel() == 1:
        t = t.expand(ke)
    elif t.numel() == Ke:
        t = t[:ke]
    else:
        raise InputError(f"expr_prior must be one number or {Ke} (one per expression component), got {t.numel()}")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise InputError("expr_prior must be finite and >= 0")
    return t.clone()


class _Problem:
    """Constant data of one batch: the model blocks on the device/dtype of the targets."""

    def __init__(self, model: MorphableModel, y, w, opt: FitOptions):
        dt, dev = y.dtype, y.device
        self.B, self.L = y.shape[:2]
        self.ks, self.ke = _components(model, opt)
        self.Ks, self.Ke = model.n_shape, model.n_expr
        self.mean = model.mean.to(dev, dt)
        self.Bs = model.shape_basis.to(dev, dt)
        self.Be = model.expr_basis.to(dev, dt)
        self.lm = model.landmarks.to(dev)
        self.lo = model.expr_lower.to(dev, dt)
        self.hi = model.expr_upper.to(dev, dt)
        self.expr_pca = model.info.expr_kind == "pca"
        self.prior = torch.cat([torch.zeros(_NP, dtype=dt, device=dev),
                                torch.full((self.ks,), opt.shape_prior, dtype=dt, device=dev),
                                _expr_prior(opt.expr_prior, self.Ke, self.ke, dt, dev)])
        self.P = _NP + self.ks + self.ke
        self.uv_sign = torch.tensor([1.0, -1.0], dtype=dt, device=dev)  # D = diag(1, -1): image y points down
        # invalid points -> weight 0; face size f (px) from the valid points' bbox
        finite = torch.isfinite(y).all(-1)
        self.w = torch.where(finite, w, torch.zeros_like(w))
        self.y = torch.where(finite[..., None], y, torch.zeros_like(y))
        vis = self.w > 0
        big = torch.finfo(dt).max
        lo = torch.where(vis[..., None], self.y, torch.full_like(self.y, big)).amin(1)
        hi = torch.where(vis[..., None], self.y, torch.full_like(self.y, -big)).amax(1)
        ext = (hi - lo).clamp_min(0)
        area = torch.where(vis.sum(1) > 0, ext[:, 0] * ext[:, 1], torch.zeros_like(ext[:, 0]))
        # profile/partial faces: use the larger side if the bbox is thin
        side = torch.maximum(area.sqrt(), 0.5 * ext.amax(-1))
        # no 2D spread: the visible points (nearly) on one line (minor axis std < 1% of the major)
        wv = self.w * vis.to(dt)
        yc = self.y - (wv[..., None] * self.y).sum(1, keepdim=True) / wv.sum(1).clamp_min(1e-12)[:, None, None]
        yc = yc * vis[..., None].to(dt)
        cxx, cyy, cxy = (yc[..., 0] ** 2).sum(1), (yc[..., 1] ** 2).sum(1), (yc[..., 0] * yc[..., 1]).sum(1)
        half, rad = (cxx + cyy) / 2, torch.sqrt(((cxx - cyy) / 2) ** 2 + cxy ** 2)
        spread = (half - rad) > 1e-4 * (half + rad)
        self.valid = (vis.sum(1) >= 4) & (side > 1e-3 * ext.abs().amax(-1).clamp_min(1.0)) & (side > 1e-6) & spread
        self.f = torch.where(self.valid, side / 100.0, torch.ones_like(side))
        self.w = self.w * self.valid[:, None].to(dt)
        lm = self.lm
        self.lm_mean = self.mean[lm]
        self.lm_basis = torch.cat([self.Bs[lm][..., : self.ks], self.Be[lm][..., : self.ke]], -1)  # (L, 3, K)
        self.lm_full_s = self.Bs[lm]
        self.lm_full_e = self.Be[lm]
        self.contour = opt.contour == "2d" and model.contour_right.numel() > 0 and model.contour_left.numel() > 0
        if self.contour:
            self.cand_r = model.contour_right.to(dev)
            self.cand_l = model.contour_left.to(dev)

    def shared_gram(self, opt: FitOptions):
        """Weighted Gram blocks of the landmark basis, (6, P * P), when every face of the batch has
        the same point weights and the IRLS weights stay fixed (l2 loss, model landmarks); else None.
        With ``G_ij = sum_l w_l B_li^T B_lj`` (in the coefficient block of a P x P matrix, zeros in
        the pose rows and columns) the rows are ``G_00, G_11, G_22, G_01 + G_10, G_02 + G_20,
        G_12 + G_21``. Then J^T W J's coefficient block of a face is (s/f)^2 sum_ij M_ij G_ij with the
        symmetric M = R_0^T R_0 + R_1^T R_1 (the projected rows of R), i.e. the six unique entries of M
        (:data:`_SYM6`) times these rows: one GEMM (B, 6) x (6, P * P) that writes the normal matrix
        contiguously, 6 P^2 multiply-adds per face instead of 2 L K^2."""
        K = self.ks + self.ke
        if K == 0 or self.contour or opt.robust != "l2" or not bool((self.w == self.w[:1]).all()):
            return None
        Bc = self.lm_basis  # (L, 3, K)
        wB = Bc * self.w[0][:, None, None]
        G9 = torch.einsum("lik,ljm->ijkm", wB, Bc)  # (3, 3, K, K)
        G = torch.zeros(6, self.P, self.P, dtype=Bc.dtype, device=Bc.device)
        for n, (i, j) in enumerate(zip(*_SYM6)):
            G[n, _NP:, _NP:] = G9[i, j] if i == j else G9[i, j] + G9[j, i]
        return G.view(6, self.P * self.P)

    def subset(self, keep: torch.Tensor) -> "_Problem":
        """The same problem for the faces at batch rows ``keep`` (a shallow copy: model blocks shared)."""
        p = copy.copy(self)
        p.y, p.w, p.f, p.valid = self.y[keep], self.w[keep], self.f[keep], self.valid[keep]
        p.B = int(keep.shape[0])
        return p

    def basis(self, vid):
        """Basis rows of the optimised components (K = ks + ke) at the landmark vertices: shared
        (vid None -> the model's landmarks, (L, 3, K)) or per face (vid (B, L) -> (B, L, 3, K))."""
        if vid is None:
            return self.lm_basis
        return torch.cat([self.Bs[vid][..., : self.ks], self.Be[vid][..., : self.ke]], -1)


def _points(shape, expr, prob: _Problem, vid):
    """Model landmark points (B, L, 3) mm of the full coefficient vectors; ``vid`` None = the
    model's fixed landmark vertices (one GEMM), else per-face vertex ids (B, L)."""
    if vid is None:
        L = prob.L
        X = prob.lm_mean + (shape @ prob.lm_full_s.reshape(L * 3, -1).T).view(-1, L, 3)
        return X + (expr @ prob.lm_full_e.reshape(L * 3, -1).T).view(-1, L, 3)
    return (prob.mean[vid] + torch.einsum("blck,bk->blc", prob.Bs[vid], shape)
            + torch.einsum("blck,bk->blc", prob.Be[vid], expr))


def _residual(X, R, s, t, prob: _Problem, opt: FitOptions):
    """Weighted residuals (B, L, 2) in percent of face size, and IRLS weights (B, L)."""
    x = project(X, R, s, t)
    r = (x - prob.y) / prob.f[:, None, None]
    w = prob.w
    if opt.robust == "huber":
        n = r.norm(dim=-1).clamp_min(1e-12)
        w = w * torch.where(n > opt.huber_delta, opt.huber_delta / n, torch.ones_like(n))
    return r, w, x


def _cost(r, coef, prob: _Problem, opt: FitOptions):
    """The objective (B,): ``sum_i w_i rho(|r_i|) + prior``, with ``rho(n) = n^2`` (l2) or Huber's
    ``n^2`` up to ``delta`` and ``2 delta n - delta^2`` beyond (same value and slope at ``delta``).
    Its gradient is ``2 J^T W_irls r`` with the IRLS weights of :func:`_residual`
    (``w min(1, delta / n)``), the ``2 g`` of the normal equations; the IRLS-weighted Gauss-Newton
    matrix is the curvature of the model (a majoriser of the Huber part)."""
    n2 = (r * r).sum(-1)
    if opt.robust == "huber":
        d = opt.huber_delta
        n = n2.sqrt()
        n2 = torch.where(n <= d, n2, 2.0 * d * n - d * d)
    return (prob.w * n2).sum(-1) + (prob.prior[_NP:] * coef * coef).sum(-1)


def _pose_jacobian(prob: _Problem, X, x, R, s, t, out: torch.Tensor) -> None:
    """Write the pose columns [rotation increment d (R <- exp([d]_x) R), log s, t] of the Jacobian
    into ``out`` (B, 2, L, >= 6): rows [u of the L points; v of the L points], percent of face size."""
    Y = X @ R.transpose(1, 2)  # (B, L, 3) rotated points
    # d x / d rot = s P (-[Y]_x):  row u: s*(0, Yz, -Yy); row v: -s*(-Yz, 0, Yx)
    Yx, Yy, Yz = Y.unbind(-1)
    sf2 = (s / prob.f)[:, None]
    out[:, 0, :, 0] = 0.0
    out[:, 0, :, 1] = Yz * sf2
    out[:, 0, :, 2] = -Yy * sf2
    out[:, 1, :, 0] = Yz * sf2
    out[:, 1, :, 1] = 0.0
    out[:, 1, :, 2] = -Yx * sf2
    out[:, :, :, 3] = ((x - t[:, None, :]) / prob.f[:, None, None]).transpose(1, 2)
    out[:, :, :, 4:6] = 0.0
    out[:, 0, :, 4] = (1.0 / prob.f)[:, None]
    out[:, 1, :, 5] = (1.0 / prob.f)[:, None]


def _jacobian(prob: _Problem, X, x, R, s, t, vid):
    """Jacobian (B, 2L, P) of the residuals (percent of face size; rows: all u, then all v) with respect to
    [rotation increment d (R <- exp([d]_x) R), log s, t, shape[:ks], expr[:ke]]: the pose first and the
    blendshape block last, so that the bound handling can work on the trailing block of the Cholesky factor."""
    B, L, dt, dev = X.shape[0], prob.L, X.dtype, X.device
    K = prob.ks + prob.ke
    # (B, 2, L, P), contiguous blocks
    J = torch.empty(B, 2, L, prob.P, dtype=dt, device=dev)
    sf = (s / prob.f)[:, None, None]
    if K:
        Bc = prob.basis(vid)
        if Bc.ndim == 3:  # shared blocks: one GEMM (B*2, 3) x (3, L*K)
            RB = (R[:, :2, :] @ Bc.permute(1, 0, 2).reshape(3, L * K)).view(B, 2, L, K)
        else:
            RB = torch.einsum("bij,bljk->bilk", R[:, :2, :], Bc)
        torch.mul(RB[:, 0], sf, out=J[:, 0, :, _NP:])
        torch.mul(RB[:, 1], -sf, out=J[:, 1, :, _NP:])
    _pose_jacobian(prob, X, x, R, s, t, J)
    return J.view(B, 2 * L, prob.P)


def _normal_equations_shared(prob: _Problem, gram, X, x, R, s, t, r, w):
    """``J^T W J`` (B, P, P) and ``J^T W r`` (B, P) without forming the coefficient columns of J
    (shared point weights ``w``, fixed landmark vertices): with c = s / f, D = diag(1, -1) and R2 the
    first two rows of R, a point's coefficient rows are c D R2 B_l (B_l the (3, K) basis rows), so

    * coefficient block: c^2 sum_ij M_ij G_ij, M = R2^T R2 (``gram``: one (B, 6) x (6, P^2) GEMM on
      the six unique entries of the symmetric M);
    * pose-coefficient block: sum_l Q_l B_l with Q_l = w_l c Jp_l^T D R2 (6 x 3): a (6B, 3L) x (3L, K) GEMM;
    * gradient: c sum_l B_l^T R2^T D (w_l r_l): a (B, 3L) x (3L, K) GEMM.

    Args: ``r`` (B, L, 2) residuals and ``w`` (B, L) weights as returned by :func:`_residual`."""
    B, L, dt, dev = X.shape[0], prob.L, X.dtype, X.device
    c = s / prob.f
    R2 = R[:, :2, :]
    M = (R2.transpose(1, 2) @ R2) * (c * c)[:, None, None]  # (B, 3, 3)
    H = (M[:, _SYM6[0], _SYM6[1]] @ gram).view(B, prob.P, prob.P)
    Jp = torch.empty(B, 2, L, _NP, dtype=dt, device=dev)
    _pose_jacobian(prob, X, x, R, s, t, Jp)
    wJp = Jp * w[:, None, :, None]
    H[:, :_NP, :_NP] = Jp.view(B, 2 * L, _NP).transpose(1, 2) @ wJp.view(B, 2 * L, _NP)
    Bf = prob.lm_basis.reshape(L * 3, -1)  # (3L, K)
    cR2 = (R2 * prob.uv_sign[:, None]) * c[:, None, None]  # c D R2 (B, 2, 3)
    Q = torch.einsum("bali,baj->blij", wJp, cR2)  # (B, L, 6, 3)
    Hpc = (Q.permute(0, 2, 1, 3).reshape(B * _NP, 3 * L) @ Bf).view(B, _NP, -1)
    H[:, :_NP, _NP:] = Hpc
    H[:, _NP:, :_NP] = Hpc.transpose(1, 2)
    wr = r * w[..., None]  # (B, L, 2)
    gp = wJp.view(B, 2 * L, _NP).transpose(1, 2) @ r.transpose(1, 2).reshape(B, 2 * L, 1)
    v = wr @ cR2  # (B, L, 3) = c R2^T D (w r) per point
    gc = v.reshape(B, 3 * L) @ Bf
    return H, torch.cat([gp.squeeze(-1), gc], 1)


def _bound_pass(Lc: torch.Tensor, z: torch.Tensor, e: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Second pass for bounded (blendshape) weights, the trailing ke parameters, on the existing factor.

    With ``A = L L^T`` (``Lc``, (B, P, P) lower) and ``z = L^-1 (-g)`` ((B, P, 1)), the Newton step
    ``delta = L^-T z`` restricted to the trailing block minimises ``1/2 d^T S d - (L_ee z_e)^T d``
    with ``S = L_ee L_ee^T`` (the Schur complement of that block); its unconstrained minimiser is
    ``d0 = L_ee^-T z_e``. Weights ``e`` (B, ke) whose step crosses ``[lo, hi]`` (the set C) are fixed
    AT the bound (``d_C = c``) and the others re-solved; the returned ``z' = [z_o; L_ee^T d_e]``
    gives the full step by the usual back-substitution ``L^T delta = z'`` (the leading rows then
    solve ``A_oo d_o = -g_o - A_oe d_e`` exactly). Faces without a crossing get ``z`` unchanged.
    No second factorisation of A. On CPU: :func:`_bound_pass_lagrange` on the faces with a crossing
    (a host sync, free there); elsewhere :func:`_bound_pass_masked` on the whole batch (no sync).
    """
    ke = e.shape[1]
    o = Lc.shape[1] - ke
    Lee = Lc[:, o:, o:]
    ze = z[:, o:]
    de = torch.linalg.solve_triangular(Lee.transpose(1, 2), ze, upper=True).squeeze(-1)
    tgt = torch.maximum(torch.minimum(e + de, hi), lo)
    cross = (tgt != e + de) & torch.isfinite(de)
    c = torch.where(cross, tgt - e, torch.zeros_like(tgt))  # the steps that land exactly on the bounds
    if Lc.device.type == "cpu":
        return _bound_pass_lagrange(Lee, z, de, cross, c)
    return _bound_pass_masked(Lee, z, cross, c)


def _bound_pass_lagrange(Lee, z, de, cross, c):
    """:func:`_bound_pass` for the faces with a crossing, by the multipliers of ``d_C = c``:
    ``d = d0 + S^-1 E_C lam`` with ``(Y^T Y) lam = c_C - d0_C``, ``Y = L_ee^-1 E_C`` (E_C: the
    identity columns of C, padded to the largest count k of the batch), so ``L_ee^T d = z_e + Y lam``:
    one triangular solve with k right-hand sides and a (k x k) Cholesky instead of a (ke x ke) one."""
    n_cross = cross.sum(-1)
    rows = (n_cross > 0).nonzero().squeeze(1)
    if rows.numel() == 0:
        return z
    n, ke, o = rows.numel(), Lee.shape[1], z.shape[1] - Lee.shape[1]
    k = int(n_cross.max())
    nc = n_cross[rows]
    idx = torch.sort(cross[rows].to(torch.int8), dim=1, descending=True, stable=True).indices[:, :k]  # (n, k): C first
    slot = torch.arange(k, device=z.device) < nc[:, None]  # (n, k) real (not padding) columns
    E = torch.zeros(n, ke, k, dtype=z.dtype, device=z.device)
    E.scatter_(1, idx[:, None, :], slot[:, None, :].to(z.dtype))
    Y = torch.linalg.solve_triangular(Lee[rows], E, upper=False)  # (n, ke, k)
    K = Y.transpose(1, 2) @ Y
    K.diagonal(dim1=1, dim2=2).add_((~slot).to(z.dtype))  # padding: identity rows, multiplier 0
    rhs = torch.where(slot, (c[rows] - de[rows]).gather(1, idx), torch.zeros_like(slot, dtype=z.dtype))
    Lk, info = torch.linalg.cholesky_ex(K)
    lam = torch.linalg.solve_triangular(Lk, rhs[..., None], upper=False)
    lam = torch.linalg.solve_triangular(Lk.transpose(1, 2), lam, upper=True)
    ok = (info == 0)[:, None, None]
    out = z.clone()
    out[rows, o:] = torch.where(ok, z[rows, o:] + Y @ lam, z[rows, o:])
    return out


def _bound_pass_masked(Lee, z, cross, c):
    """:func:`_bound_pass` on the whole batch without a host sync: the crossing rows and columns of
    ``S = L_ee L_ee^T`` become the identity and the free block is re-solved by a (ke x ke) Cholesky."""
    o = z.shape[1] - Lee.shape[1]
    ze = z[:, o:]
    S = Lee @ Lee.transpose(1, 2)
    rhs = torch.where(cross, c, (Lee @ ze - S @ c[..., None]).squeeze(-1))
    _mask_block(S, (~cross).to(Lee.dtype), 0, Lee.shape[1])  # fixed weights: identity rows/columns
    L2, info2 = torch.linalg.cholesky_ex(S)
    z2 = torch.linalg.solve_triangular(L2, rhs[..., None], upper=False)
    d_e = torch.linalg.solve_triangular(L2.transpose(1, 2), z2, upper=True).squeeze(-1)
    d_e = torch.where(cross, c, d_e)  # exactly at the bound
    use = (cross.any(-1) & (info2 == 0))[:, None, None]
    return torch.where(use, torch.cat([z[:, :o], Lee.transpose(1, 2) @ d_e[..., None]], 1), z)


def _predicted_reduction(delta: torch.Tensor, g: torch.Tensor, damping: torch.Tensor) -> torch.Tensor:
    """Cost reduction (B,) the quadratic model predicts for the step ``delta`` (B, P).

    The cost is ``F = r^T W r + c^T D_prior c`` (no 1/2), so its gradient is ``2 g`` and its
    Gauss-Newton Hessian ``2 H`` (``g``, ``H`` as the solver forms them) and the model is
    ``m(d) = F + 2 g^T d + d^T H d``. For the damped step ``(H + diag(damping)) d = -g``,
    ``d^T H d = -g^T d - d^T diag(damping) d``, hence ``F - m(d) = d^T (damping * d - g)``.
    Where blendshape weights were fixed at a bound (:func:`_bound_pass`) or clipped to it the step
    is not that one and this is an approximation; the exact ``-2 g^T d - d^T H d`` (one more
    batched product with the normal matrix) was tried on ``benchmarks.lm_speed``'s faces: RMSE
    0.7993 px against 0.7992 at 5 iterations, 99.8 % converged against 100 % at 20 (session 6).
    """
    return (delta * (damping * delta - g)).sum(-1)


def _mask_block(H: torch.Tensor, keep: torch.Tensor, a: int, b: int) -> None:
    """In place: rows and columns a..b-1 of H (B, P, P) where ``keep`` (B, b-a) is 0 become those of
    the identity (the variable is frozen); only the 2 (b-a) P entries of that band are touched."""
    H[:, a:b, :] *= keep[:, :, None]
    H[:, :, a:b] *= keep[:, None, :]
    H.diagonal(dim1=1, dim2=2)[:, a:b] += 1.0 - keep


def _fit(model: MorphableModel, y, w, init: Optional[FitParams], opt: FitOptions) -> FitResult:
    prob = _Problem(model, y, w, opt)
    B, L, dt, dev = prob.B, prob.L, y.dtype, y.device
    ks, ke = prob.ks, prob.ke
    vid = prob.lm[None].expand(B, L).clone() if prob.contour else None

    if init is None:
        shape = torch.zeros(B, prob.Ks, dtype=dt, device=dev)
        expr = torch.zeros(B, prob.Ke, dtype=dt, device=dev)
        if not prob.expr_pca:
            expr = expr.clamp(prob.lo, prob.hi)
        X0 = _points(shape, expr, prob, vid)
        R, s, t = initial_pose(X0, prob.y, prob.w)
    else:
        shape = init.shape.to(dev, dt).clone()
        expr = init.expr.to(dev, dt).clone()
        R = rotvec_to_rotmat(init.rotvec.to(dev, dt))
        s = init.scale.to(dev, dt).clone()
        t = init.translation.to(dev, dt).clone()
    logs = torch.log(s.clamp_min(1e-12))

    def coef_vec(shape, expr):
        return torch.cat([shape[:, :ks], expr[:, :ke]], 1)

    def evaluate(shape, expr, R, logs, t, vid):
        X = _points(shape, expr, prob, vid)
        r, wr, x = _residual(X, R, logs.exp(), t, prob, opt)
        return X, r, wr, x, _cost(r, coef_vec(shape, expr), prob, opt)

    if prob.contour:
        vid = _contour_assign(prob, shape, expr, R, logs.exp(), t, vid)
    X, r, wr, x, cost = evaluate(shape, expr, R, logs, t, vid)
    mu = torch.full((B,), opt.initial_damping, dtype=dt, device=dev)
    nu = torch.full((B,), 2.0, dtype=dt, device=dev)
    converged = ~prob.valid
    iters = torch.zeros(B, dtype=torch.long, device=dev)

    bounded = (not prob.expr_pca) and ke > 0
    gram = prob.shared_gram(opt)
    prob_all, where, done = prob, None, None  # where: batch rows of the faces still iterating
    o = _NP + ks  # the blendshape block is the trailing (ke, ke) block of the normal matrix
    check_every = opt.check_every if opt.check_every is not None else (2 if dev.type == "cpu" else 5)
    for it in range(opt.max_iterations):
        s = logs.exp()
        coef = coef_vec(shape, expr)
        if gram is None:
            J = _jacobian(prob, X, x, R, s, t, vid)
            sw = wr.sqrt().repeat(1, 2)[..., None]  # (B, 2L, 1) in the Jacobian's row order (u..., v...)
            Jw = J.mul_(sw)  # sqrt(W) J, in place (J is a fresh tensor)
            H = Jw.transpose(1, 2) @ Jw  # (B, P, P) = J^T W J
            g = (Jw.transpose(1, 2) @ (sw * r.transpose(1, 2).reshape(B, 2 * L, 1))).squeeze(-1)  # (B, P) = J^T W r
        else:  # shared point weights: from the Gram blocks, without the coefficient columns of J
            H, g = _normal_equations_shared(prob, gram, X, x, R, s, t, r, wr)
        g[:, _NP:] += prob.prior[_NP:] * coef
        Hd = H.diagonal(dim1=1, dim2=2)
        Hd += prob.prior  # H is now J^T W J + D_prior (in place: H is a fresh tensor)
        if bounded:
            # active set: blendshape weights at a bound whose gradient points outward are frozen
            e_ = expr[:, :ke]
            ge = g[:, o:]
            act_e = ((e_ <= prob.lo[:ke] + 1e-6) & (ge > 0)) | ((e_ >= prob.hi[:ke] - 1e-6) & (ge < 0))
            fe = (~act_e).to(dt)
            _mask_block(H, fe, o, o + ke)  # frozen rows/columns -> identity
            g[:, o:] *= fe
            Hd = H.diagonal(dim1=1, dim2=2)
        dpre = Hd.clamp_min(1e-9)  # Marquardt scaling, before damping
        A = H
        A.diagonal(dim1=1, dim2=2).add_(mu[:, None] * dpre)
        Lc, info = torch.linalg.cholesky_ex(A)
        ok = (info == 0) & ~converged
        # two triangular solves (much faster than cholesky_solve on CPU batches)
        z = torch.linalg.solve_triangular(Lc, -g[..., None], upper=False)
        if bounded and opt.bound_second_pass:
            z = _bound_pass(Lc, z, expr[:, :ke], prob.lo[:ke], prob.hi[:ke])
        delta = torch.linalg.solve_triangular(Lc.transpose(1, 2), z, upper=True).squeeze(-1)
        step_ok = ok & torch.isfinite(delta).all(-1)  # a failed solve is retried with more damping
        delta = torch.where(step_ok[:, None], delta, torch.zeros_like(delta))

        # candidate
        n_shape = shape.clone()
        n_shape[:, :ks] = shape[:, :ks] + delta[:, _NP:o]
        n_expr = expr.clone()
        n_expr[:, :ke] = expr[:, :ke] + delta[:, o:]
        if not prob.expr_pca:
            n_expr = torch.maximum(torch.minimum(n_expr, prob.hi), prob.lo)
        dR = rotvec_to_rotmat(delta[:, 0:3])
        n_R = dR @ R
        n_logs = logs + delta[:, 3]
        n_t = t + delta[:, 4:6]
        nX, nr, nwr, nx, ncost = evaluate(n_shape, n_expr, n_R, n_logs, n_t, vid)
        # gain ratio: actual over predicted reduction
        pred = _predicted_reduction(delta, g, mu[:, None] * dpre).clamp_min(1e-30)
        actual = cost - ncost
        rho = actual / pred
        accept = ok & torch.isfinite(ncost) & (actual > 0)
        a3 = accept[:, None]
        shape = torch.where(a3, n_shape, shape)
        expr = torch.where(a3, n_expr, expr)
        R = torch.where(accept[:, None, None], n_R, R)
        logs = torch.where(accept, n_logs, logs)
        t = torch.where(a3, n_t, t)
        X = torch.where(accept[:, None, None], nX, X)
        r = torch.where(accept[:, None, None], nr, r)
        wr = torch.where(a3, nwr, wr)
        x = torch.where(accept[:, None, None], nx, x)
        tol_cost = opt.tolerance * cost.clamp_min(1e-12)
        small = (actual.abs() <= tol_cost) | (delta.abs().amax(-1) <= opt.tolerance)
        # MINPACK's ftol test: the model predicts, and the trial step shows, a relative change below
        # the tolerance; holds for a rejected step too (at its minimum a face's trial steps change the
        # cost by float rounding only, and waiting for one of them to be accepted costs iterations)
        flat = (pred <= tol_cost) & (actual.abs() <= tol_cost) & step_ok
        cost = torch.where(accept, ncost, cost)
        # Nielsen's rule
        mu = torch.where(accept, mu * torch.clamp(1.0 - (2.0 * rho - 1.0) ** 3, min=1.0 / 3.0), mu * nu)
        nu = torch.where(accept, torch.full_like(nu, 2.0), nu * 2.0)
        mu = mu.clamp(1e-9, 1e9)
        iters = iters + accept.long()
        converged = converged | (accept & small) | flat | (mu >= 1e9)
        if prob.contour:
            vid = _contour_assign(prob, shape, expr, R, logs.exp(), t, vid)
            X, r, wr, x, cost = evaluate(shape, expr, R, logs, t, vid)
        if check_every and (it + 1) % check_every == 0:
            active = ~converged
            n_active = int(active.sum())
            if n_active == 0:
                break
            if n_active <= 0.75 * B and it + 1 < opt.max_iterations:
                # drop the converged faces (their steps are zero from now on): store their results,
                # go on with the rest; exact, and the sync is the one this check makes anyway
                done = _store(done, where, (shape, expr, R, logs, t, x, cost, iters, converged, vid))
                keep = active.nonzero().squeeze(1)
                where = keep if where is None else where[keep]
                shape, expr, R, logs, t, X, r, wr, x, cost, mu, nu, converged, iters = (
                    v[keep] for v in (shape, expr, R, logs, t, X, r, wr, x, cost, mu, nu, converged, iters))
                vid = vid[keep] if vid is not None else None
                prob = prob.subset(keep)
                B = n_active

    if where is not None:
        shape, expr, R, logs, t, x, cost, iters, converged, vid = _store(
            done, where, (shape, expr, R, logs, t, x, cost, iters, converged, vid))
        prob, B = prob_all, prob_all.B
    s = logs.exp()
    wsum = prob.w.sum(-1).clamp_min(1e-12)
    err = (x - prob.y).norm(dim=-1)
    rmse = torch.sqrt((prob.w * err * err).sum(-1) / wsum)
    converged = converged & prob.valid
    params = FitParams(shape, expr, rotmat_to_rotvec(R), s, t)
    if vid is None:
        vid = prob.lm[None].expand(B, L).clone()
    return FitResult(params, x, cost, torch.where(prob.valid, rmse, torch.full_like(rmse, float("nan"))),
                     iters, converged, prob.valid, vid)


def _store(done: Optional[list], where: Optional[torch.Tensor], state: tuple) -> list:
    """Write the per-face ``state`` tensors of the faces at batch rows ``where`` (None: all rows, in
    order) into ``done`` (a list of full-batch tensors; None: ``state`` itself becomes it)."""
    if done is None:
        return [v.clone() if v is not None else None for v in state]
    for d, v in zip(done, state):
        if d is not None:
            d[where] = v
    return done


def _contour_assign(prob: _Problem, shape, expr, R, s, t, vid):
    """2D-contour mode: each jaw landmark takes the candidate vertex (of its side) whose projection
    is nearest to its target: a re-assignment between iterations, as eos does."""
    vid = vid.clone()
    for cand, idx in ((prob.cand_r, JAW_RIGHT), (prob.cand_l, JAW_LEFT)):
        Xc = prob.mean[cand] + torch.einsum("cdk,bk->bcd", prob.Bs[cand], shape) + torch.einsum("cdk,bk->bcd", prob.Be[cand], expr)
        pc = project(Xc, R, s, t)  # (B, C, 2)
        ii = list(idx)
        d = (prob.y[:, ii, None, :] - pc[:, None, :, :]).pow(2).sum(-1)  # (B, J, C)
        vid[:, ii] = cand[d.argmin(-1)]
    return vid
