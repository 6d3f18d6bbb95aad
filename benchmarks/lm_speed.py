r"""Speed and accuracy of the batched LM landmark fitter against scipy and eos: ``python -m benchmarks.lm_speed``.

Usage::

    python -m benchmarks.lm_speed                    # full run, default --threads 2 (this machine's cores)
    python -m benchmarks.lm_speed --quick --json     # < 1 minute, table then one JSON object
    python -m benchmarks.lm_speed --profile          # + torch.profiler summary at the largest batch
    python -m benchmarks.lm_speed --threads 1 --sizes 1,64,1024
    python -m benchmarks.lm_speed --quick --baseline HEAD~1   # + the largest batch with an earlier solver, same run

What is measured (every timing is a median over repeated calls; other jobs share this machine):

* **ours** (:func:`fitting.solver.fit_landmarks`, float32) on the default model (ICT-FaceKit,
  100 shape + 53 blendshape components) at each batch size, for two starts:
  (a) a regressor-quality start (ground truth perturbed: 5 deg rotation about a random axis,
  shape + N(0, 0.5), expression + U(-0.1, 0.1) clipped to [0, 1], scale x (1 + U(-5 %, 5 %)),
  translation + U(-3, 3) px) with a 5-iteration budget; (b) the closed-form mean-face start
  (``init=None``) with 20 iterations. RMSE (px) of the fitted landmarks against the noisy targets
  and against the clean points.
* **scipy**: ``scipy.optimize.least_squares(method="trf")``, one face at a time, float64, the same
  residuals and prior ``[(x - y)/f ; sqrt(lam_s) a ; sqrt(lam_e) e]`` over ``[a, e, rotvec, log s,
  t]`` with ``f`` the solver's own face size, blendshape bounds [0, 1] through ``bounds``, the same
  starts and the same budget (``max_nfev = iterations + 1``: the initial evaluation plus one trial
  step per iteration; trf does not count the Jacobian's evaluations). Jacobian: **analytic**
  (rotation block through the left Jacobian of SO(3)) for the main rows; the default 2-point
  finite differences on a smaller sample in full runs, for reference.
* **eos** (eos-py, ``fit_shape_and_pose`` without contours, 5 iterations) on the Surrey model
  (63 shape components + 6 blendshapes) with synthetic landmarks on the 50 iBUG points that
  ``ibug_to_sfm.txt`` maps, and ours on the same sets (weight 1 on those points, 0 elsewhere;
  mean-face start, 5 and 20 iterations). eos's landmarks are measured by projecting its mesh with
  ``get_3x4_affine_camera_matrix`` (checked on a noise-free mean face: RMSE < 0.01 px).
* **limits**: fp32 GEMM rate (1024^2 matmul, same thread setting), the rates of the solver's two
  big batched kernels (J^T W J bmm and Cholesky) at its shapes, the FLOPs per face-iteration and
  the implied upper bounds on fits/s for the 5-iteration budget.

Timed spans: ours = the whole ``fit_landmarks`` call (input checks, closed-form start, LM loop,
outputs) on tensors already in memory; scipy = the ``least_squares`` call; eos = the
``fit_shape_and_pose`` call (its ``Landmark`` list is built beforehand). Threads: the module
restarts itself with OMP/MKL/OPENBLAS_NUM_THREADS=1 (scipy's and eos's per-face loops are fastest on
one BLAS thread) and ``--threads N`` sets ``torch.set_num_threads(N)``: the solver then fits chunks
of 64 faces on N worker threads, each with one intra-op thread (``FitOptions.workers``), and with
N > 1 the largest batch is also timed with ``FitOptions(workers=1)``. The GEMM rate is measured on
N threads. scipy and eos stay single-threaded per-face loops (split over two processes they would
be at most 2x faster).

Synthetic faces: shape ~ N(0, 1), sparse blendshape expressions (:meth:`MorphableModel.sample`),
yaw U(-70, 70), pitch and roll U(-20, 20) deg, mean-face landmark width 200 px x U(0.9, 1.1),
centre (320, 240) + U(-20, 20) px in a 640 x 480 image, 0.5 px Gaussian noise, seed 0.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from fitting.solver import FitOptions, FitParams, _Problem, fit_landmarks, initial_pose
from morphable.geometry import angles_to_rotmat, project, rotmat_to_rotvec, rotvec_to_rotmat
from morphable.model import MorphableModel

__all__ = ["SyntheticSet", "make_synthetic", "perturb", "flops_per_iteration", "ScipyFace", "fit_scipy",
           "rodrigues", "left_jacobian", "eos_available", "EosFitter", "sfm_mapped_points", "run", "main"]

SEED = 0
NOISE_PX = 0.5
FACE_PX = 200.0
IMAGE_WH = (640, 480)
#: The solver's default chunk (faces per internal chunk, one chunk per worker at a time): the
#: batch of the per-worker kernel rates and of the second profile.
TUNED_CHUNK = FitOptions.chunk
SFM_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "sfm"
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_REEXEC = "_MORPHABLE_LM_SPEED_CHILD"


# --------------------------------------------------------------------------- synthetic data
@dataclass
class SyntheticSet:
    """N synthetic faces of one model.

    Attributes:
        gt: ground-truth :class:`FitParams` (float64).
        clean: (N, 68, 2) float64 exact projections, px.
        noisy: (N, 68, 2) float32 targets (clean + noise).
        weights: (N, 68) float32.
        init: (N,) perturbed "regressor-quality" :class:`FitParams` (float32).
        angles: (N, 3) ground-truth pitch, yaw, roll, radians.
    """

    gt: FitParams
    clean: torch.Tensor
    noisy: torch.Tensor
    weights: torch.Tensor
    init: FitParams
    angles: torch.Tensor

    def __len__(self) -> int:
        return self.clean.shape[0]


def _double(model: MorphableModel) -> MorphableModel:
    """A float64 copy (the caller's model is left untouched)."""
    return copy.deepcopy(model).double()


def _uniform(g, n, lo, hi, dtype=torch.float64):
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=dtype)


def perturb(gt: FitParams, model: MorphableModel, g: torch.Generator, rot_deg: float = 5.0, shape_sd: float = 0.5,
            expr_pm: float = 0.1, scale_pm: float = 0.05, trans_pm: float = 3.0) -> FitParams:
    """A regressor-quality start: ``gt`` rotated by ``rot_deg`` about a random axis, shape + N(0, shape_sd),
    expression + U(-expr_pm, expr_pm) clipped to the model's range within [0, 1] (blendshapes; PCA
    expressions are not clipped), scale x (1 + U(-scale_pm, scale_pm)), translation + U(-trans_pm, trans_pm) px."""
    B = gt.shape.shape[0]
    dt = gt.shape.dtype
    axis = torch.randn(B, 3, generator=g, dtype=dt)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    dR = rotvec_to_rotmat(axis * math.radians(rot_deg))
    R = dR @ rotvec_to_rotmat(gt.rotvec)
    shape = gt.shape + shape_sd * torch.randn(gt.shape.shape, generator=g, dtype=dt)
    expr = gt.expr + expr_pm * (2 * torch.rand(gt.expr.shape, generator=g, dtype=dt) - 1)
    if model.info.expr_kind != "pca":
        lo = model.expr_lower.to(dt).clamp_min(0.0)
        hi = model.expr_upper.to(dt).clamp_max(1.0)
        expr = torch.maximum(torch.minimum(expr, hi), lo)
    scale = gt.scale * (1 + _uniform(g, B, -scale_pm, scale_pm, dt))
    t = gt.translation + trans_pm * (2 * torch.rand(B, 2, generator=g, dtype=dt) - 1)
    return FitParams(shape, expr, rotmat_to_rotvec(R), scale, t)


def make_synthetic(model: MorphableModel, n: int, seed: int = SEED, weights: Optional[torch.Tensor] = None,
                   face_px: float = FACE_PX, noise_px: float = NOISE_PX, yaw_deg: float = 70.0,
                   pitch_roll_deg: float = 20.0) -> SyntheticSet:
    """``n`` random faces of ``model`` (see the module docstring), deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    m = _double(model)
    shape, expr = m.sample(n, generator=g)
    shape, expr = shape.to(dt), expr.to(dt)
    ang = torch.stack([_uniform(g, n, -math.radians(pitch_roll_deg), math.radians(pitch_roll_deg)),
                       _uniform(g, n, -math.radians(yaw_deg), math.radians(yaw_deg)),
                       _uniform(g, n, -math.radians(pitch_roll_deg), math.radians(pitch_roll_deg))], -1)
    R = angles_to_rotmat(ang)
    lm0 = m.mean[m.landmarks]
    width = float(lm0[:, 0].max() - lm0[:, 0].min())
    scale = face_px / width * _uniform(g, n, 0.9, 1.1)
    t = torch.tensor(IMAGE_WH, dtype=dt) / 2 + 20 * (2 * torch.rand(n, 2, generator=g, dtype=dt) - 1)
    clean = project(m.landmark_points(shape, expr), R, scale, t)
    noisy = (clean + noise_px * torch.randn(clean.shape, generator=g, dtype=dt)).float()
    gt = FitParams(shape, expr, rotmat_to_rotvec(R), scale, t)
    init = perturb(gt, m, g)
    init = init.to(torch.float32)
    w = torch.ones(n, m.n_landmarks) if weights is None else torch.as_tensor(weights, dtype=torch.float32).expand(n, -1).clone()
    return SyntheticSet(gt, clean, noisy, w.float(), init, ang)


def weighted_rmse(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B,) weighted RMS point distance, px."""
    e2 = ((x.double() - y.double()) ** 2).sum(-1)
    w = w.double()
    return torch.sqrt((w * e2).sum(-1) / w.sum(-1).clamp_min(1e-12))


# --------------------------------------------------------------------------- FLOP model
#: Blendshape weights per face whose step crosses a bound, for the bound-pass terms of the FLOP model
#: and kernel timing: 7.4 on average in case (a) at 5 iterations (78 % of the face-iterations had one
#: or more; 3.7 and 61 % in case (b)), measured on this benchmark's faces in session 6.
BOUND_CROSSINGS = 8


def flops_per_iteration(n_landmarks: int, k_opt: int, k_full: Optional[int] = None, n_pose: int = 6,
                        gram: bool = True, k_bounded: int = 0, k_cross: int = BOUND_CROSSINGS) -> dict:
    """FLOPs of one face-iteration of :func:`fit_landmarks` (multiply-add = 2), by term.

    ``k_opt`` optimised coefficients (P = k_opt + n_pose), ``k_full`` coefficients in the point
    evaluation (the solver evaluates all of them), M = 2 L residuals, ``k_bounded`` blendshape
    weights (the trailing block of the bound pass), ``k_cross`` of them crossing a bound (the bound
    pass on CPU: a triangular solve with k_cross right-hand sides and a k_cross x k_cross Cholesky;
    counted for every face). ``gram``: the faces share their point weights
    (l2 loss): J^T W J is one (6) x (P^2) combination of precomputed Gram blocks plus the pose
    rows (6 x 3L x K GEMM), the gradient a 3L x K GEMM, and the coefficient columns of J are never
    formed; else the full J^T W J product.
    """
    L = n_landmarks
    M = 2 * L
    P = k_opt + n_pose
    kf = k_opt if k_full is None else k_full
    kb = k_bounded
    kc = min(k_cross, kb)
    terms = {
        "JtWJ": (2 * 6 * P * P + 2 * n_pose * 3 * L * k_opt + 2 * L * n_pose * 2 * 3 + 2 * M * n_pose * n_pose) if gram
        else 2 * M * P * P,  # Gram combination + pose blocks, or the full bmm (no SYRK)
        "cholesky": P ** 3 / 3,
        # d0 = L_ee^-T z_e, Y = L_ee^-1 E_C, Y^T Y, its Cholesky and two solves, z_e + Y lam
        "bound_pass": (kb * kb + kb * kb * kc + 2 * kc * kc * kb + kc ** 3 / 3 + 2 * kc * kc + 2 * kb * kc) if kb else 0,
        "solves": 2 * P * P,
        "jacobian": (2 * L * 3 * 9 + 2 * M * n_pose) if gram else 2 * (2 * L) * 3 * k_opt + 2 * L * 3 * 9,
        "gradient": (2 * 3 * L * k_opt + 2 * M * n_pose) if gram else 3 * M * P,  # J^T W r
        "residual_eval": 2 * 3 * L * kf + 2 * L * 3 * 3 + 6 * L,  # points GEMM + rotation + projection
    }
    terms["total"] = sum(terms.values())
    terms["M"], terms["P"] = M, P
    return terms


def gemm_gflops(n: int = 1024, repeats: int = 7) -> float:
    """Measured fp32 GEMM rate (n x n x n) in GFLOP/s, median of ``repeats``."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    a @ b
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(ts) / 1e9


def kernel_rates(B: int, M: int, P: int, repeats: int = 3, n_pose: int = 6, k_bounded: int = 0) -> dict:
    """Median rates of the solver's batched kernels at its shapes (fp32, the calling thread's torch
    thread count): H = Jw^T Jw as a full bmm (the per-face-weights path), H from the shared Gram
    blocks (the shared-weights path: one (B, 6) x (6, P^2) GEMM, the pose-coefficient rows as one
    (6B, 3L) x (3L, K) GEMM, the pose block by bmm), ``cholesky_ex`` of (B, P, P), the two
    triangular solves that follow it, and the solver's own bound pass (:func:`fitting.solver._bound_pass`)
    on the trailing (k_bounded) block with :data:`BOUND_CROSSINGS` weights of every face crossing a bound.
    ``per_face_iteration_us`` counts the Gram path, the Cholesky, the solves and the bound pass."""
    g = torch.Generator().manual_seed(1)
    K = P - n_pose
    L3 = 3 * (M // 2)
    J = torch.randn(B, M, P, generator=g)
    A = J.transpose(1, 2) @ J + torch.eye(P)
    rhs = torch.randn(B, P, 1, generator=g)
    G = torch.randn(6, P * P, generator=g)
    Mr = torch.randn(B, 6, generator=g)
    Q = torch.randn(B * n_pose, L3, generator=g)
    Bf = torch.randn(L3, K, generator=g)

    def med(fn):
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    def gram_h():
        H = (Mr @ G).view(B, P, P)
        Hpc = (Q @ Bf).view(B, n_pose, K)
        H[:, :n_pose, n_pose:] = Hpc
        H[:, n_pose:, :n_pose] = Hpc.transpose(1, 2)
        Jp = J[:, :, :n_pose]
        H[:, :n_pose, :n_pose] = Jp.transpose(1, 2) @ Jp
        return H

    t_bmm = med(lambda: J.transpose(1, 2) @ J)
    t_gram = med(gram_h)
    t_chol = med(lambda: torch.linalg.cholesky_ex(A))
    Lc = torch.linalg.cholesky_ex(A)[0]
    t_solve = med(lambda: torch.linalg.solve_triangular(
        Lc.transpose(1, 2), torch.linalg.solve_triangular(Lc, rhs, upper=False), upper=True))
    t_tril = med(lambda: A.tril())
    t_bound = 0.0
    if k_bounded:
        from fitting.solver import _bound_pass

        z = torch.linalg.solve_triangular(Lc, rhs, upper=False)
        d0 = torch.linalg.solve_triangular(Lc[:, -k_bounded:, -k_bounded:].transpose(1, 2), z[:, -k_bounded:],
                                           upper=True).squeeze(-1)
        # weights placed so that exactly the first BOUND_CROSSINGS steps of every face leave [0, 1]
        e = 0.5 - d0
        e[:, :BOUND_CROSSINGS] = -d0[:, :BOUND_CROSSINGS] - 0.25
        lo, hi = torch.zeros(k_bounded), torch.ones(k_bounded)
        t_bound = med(lambda: _bound_pass(Lc, z, e, lo, hi))
    return {"batch": B, "threads": torch.get_num_threads(), "bmm_ms": 1e3 * t_bmm,
            "bmm_gflops": B * 2 * M * P * P / t_bmm / 1e9, "gram_ms": 1e3 * t_gram,
            "cholesky_ms": 1e3 * t_chol, "cholesky_gflops": B * P ** 3 / 3 / t_chol / 1e9,
            "solves_ms": 1e3 * t_solve, "tril_ms": 1e3 * t_tril, "bound_pass_ms": 1e3 * t_bound,
            "per_face_iteration_us": 1e6 * (t_gram + t_chol + t_solve + t_bound) / B}


# --------------------------------------------------------------------------- scipy reference
def rodrigues(w: np.ndarray) -> np.ndarray:
    """Rotation vector (3,) -> (3, 3), numpy float64."""
    return rotvec_to_rotmat(torch.as_tensor(w, dtype=torch.float64)).numpy()


def _skew(v):
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def left_jacobian(w: np.ndarray) -> np.ndarray:
    """Left Jacobian of SO(3): ``exp([w + dw]_x) = exp([J_l(w) dw]_x) exp([w]_x) + O(dw^2)``."""
    th2 = float(w @ w)
    K = _skew(w)
    if th2 < 1e-10:
        return np.eye(3) + 0.5 * K + K @ K / 6.0
    th = math.sqrt(th2)
    return np.eye(3) + (1 - math.cos(th)) / th2 * K + (th - math.sin(th)) / (th2 * th) * (K @ K)


class ScipyFace:
    """One face's least-squares problem in numpy float64, residual layout as in the solver:
    ``[(x_i - y_i) * sqrt(w_i) / f for the L points (u, v interleaved) ; sqrt(prior) * coef]``
    over ``p = [coef (K), rotvec (3), log s, t (2)]``; ``R = exp([rotvec]_x)`` (absolute)."""

    def __init__(self, model: MorphableModel, y: np.ndarray, w: np.ndarray, f: float, opt: FitOptions):
        self.L = model.n_landmarks
        lm = model.landmarks
        self.ks, self.ke = model.n_shape, model.n_expr
        self.K = self.ks + self.ke
        self.mean = model.mean[lm].double().numpy()  # (L, 3)
        basis = torch.cat([model.shape_basis[lm], model.expr_basis[lm]], -1).double().numpy()  # (L, 3, K)
        self.basis = basis
        self.Bflat = basis.reshape(3 * self.L, self.K)
        self.y = np.asarray(y, np.float64)
        self.sw = np.sqrt(np.asarray(w, np.float64))
        self.f = float(f)
        self.sp = np.sqrt(np.r_[np.full(self.ks, opt.shape_prior), np.full(self.ke, opt.expr_prior)])
        self.P = self.K + 6
        lo = np.r_[np.full(self.ks, -np.inf), np.maximum(model.expr_lower.double().numpy(), 0.0), np.full(6, -np.inf)]
        hi = np.r_[np.full(self.ks, np.inf), np.minimum(model.expr_upper.double().numpy(), 1.0), np.full(6, np.inf)]
        if model.info.expr_kind == "pca":
            lo[self.ks:self.K], hi[self.ks:self.K] = -np.inf, np.inf
        self.bounds = (lo, hi)

    def pack(self, shape, expr, rotvec, scale, t) -> np.ndarray:
        return np.r_[np.asarray(shape, np.float64), np.asarray(expr, np.float64), np.asarray(rotvec, np.float64),
                     math.log(float(scale)), np.asarray(t, np.float64)]

    def _pose(self, p):
        K = self.K
        c, w, ls, t = p[:K], p[K:K + 3], p[K + 3], p[K + 4:K + 6]
        X = self.mean + (self.Bflat @ c).reshape(self.L, 3)
        R = rodrigues(w)
        Y = X @ R.T
        s = math.exp(ls)
        x = np.stack([s * Y[:, 0], -s * Y[:, 1]], -1) + t
        return c, w, s, t, R, Y, x

    def points(self, p) -> np.ndarray:
        """(L, 2) projected model landmarks, px."""
        return self._pose(p)[-1]

    def fun(self, p) -> np.ndarray:
        c, _, _, _, _, _, x = self._pose(p)
        r = (x - self.y) * (self.sw[:, None] / self.f)
        return np.r_[r.ravel(), self.sp * c]

    def jac(self, p) -> np.ndarray:
        K, L = self.K, self.L
        c, w, s, t, R, Y, x = self._pose(p)
        J = np.zeros((2 * L + K, self.P))
        sf = s / self.f
        RB = np.einsum("ij,ljk->lik", R[:2], self.basis)  # (L, 2, K)
        Jd = J[: 2 * L].reshape(L, 2, self.P)
        Jd[:, 0, :K] = sf * RB[:, 0]
        Jd[:, 1, :K] = -sf * RB[:, 1]
        Jl = left_jacobian(w)
        z = np.zeros(L)
        Jd[:, 0, K:K + 3] = sf * np.stack([z, Y[:, 2], -Y[:, 1]], -1) @ Jl
        Jd[:, 1, K:K + 3] = sf * np.stack([Y[:, 2], z, -Y[:, 0]], -1) @ Jl
        Jd[:, :, K + 3] = (x - t) / self.f
        Jd[:, 0, K + 4] = 1.0 / self.f
        Jd[:, 1, K + 5] = 1.0 / self.f
        Jd *= self.sw[:, None, None]
        J[2 * L:, :K] = np.diag(self.sp)
        return J


def fit_scipy(face: ScipyFace, p0: np.ndarray, iterations: int, jac: str = "analytic", x_scale="jac"):
    """``least_squares(method="trf", bounds=..., x_scale=x_scale)`` with ``max_nfev = iterations + 1``.

    ``x_scale="jac"`` (scipy's own remedy for badly scaled variables) is the default here: with the
    default ``x_scale=1.0`` trf's Coleman-Li scaling crawls along the blendshape bounds (measured
    while writing this: ~3700 evaluations, 40 s per face, to converge; 2.9 px after 20 iterations).
    Returns (p, result)."""
    from scipy.optimize import least_squares

    lo, hi = face.bounds
    p0 = np.clip(p0, lo, hi)
    res = least_squares(face.fun, p0, jac=face.jac if jac == "analytic" else "2-point", bounds=face.bounds,
                        method="trf", x_scale=x_scale, max_nfev=iterations + 1)
    return res.x, res


def _scipy_faces(model: MorphableModel, data: SyntheticSet, idx: Sequence[int], opt: FitOptions):
    prob = _Problem(model, data.noisy[list(idx)], data.weights[list(idx)], opt)  # the solver's own face size f
    return [ScipyFace(model, data.noisy[i].numpy(), data.weights[i].numpy(), float(prob.f[j]), opt)
            for j, i in enumerate(idx)]


def _scipy_starts(model: MorphableModel, data: SyntheticSet, idx: Sequence[int], faces, start: str):
    if start == "perturbed":
        p = data.init.index(list(idx)).to(torch.float64)
        return [f.pack(p.shape[j], p.expr[j], p.rotvec[j], p.scale[j], p.translation[j]) for j, f in enumerate(faces)]
    # the solver's closed-form start: mean face (blendshapes clipped to range) + initial_pose
    m = _double(model)
    B = len(idx)
    shape = torch.zeros(B, m.n_shape, dtype=torch.float64)
    expr = torch.zeros(B, m.n_expr, dtype=torch.float64)
    if m.info.expr_kind != "pca":
        expr = expr.clamp(m.expr_lower, m.expr_upper)
    X0 = m.landmark_points(shape, expr)
    R, s, t = initial_pose(X0, data.noisy[list(idx)].double(), data.weights[list(idx)].double())
    rv = rotmat_to_rotvec(R)
    return [f.pack(shape[j], expr[j], rv[j], s[j], t[j]) for j, f in enumerate(faces)]


def bench_scipy(model: MorphableModel, data: SyntheticSet, n: int, start: str, iterations: int, jac: str,
                x_scale="jac") -> dict:
    idx = list(range(min(n, len(data))))
    opt = FitOptions()
    faces = _scipy_faces(model, data, idx, opt)
    starts = _scipy_starts(model, data, idx, faces, start)
    fit_scipy(faces[0], starts[0], iterations, jac, x_scale)  # warm-up (imports)
    times, xs, nfev, njev = [], [], [], []
    for f, p0 in zip(faces, starts):
        t0 = time.perf_counter()
        p, res = fit_scipy(f, p0, iterations, jac, x_scale)
        times.append(time.perf_counter() - t0)
        xs.append(f.points(p))
        nfev.append(res.nfev)
        njev.append(res.njev if res.njev is not None else 0)
    x = torch.as_tensor(np.stack(xs))
    w = data.weights[idx]
    r_noisy = weighted_rmse(x, data.noisy[idx], w)
    r_clean = weighted_rmse(x, data.clean[idx], w)
    med = statistics.median(times)
    xs_name = "" if x_scale == "jac" else f", x_scale={x_scale:g}"
    return {"solver": f"scipy ({jac} J{xs_name})", "jacobian": jac, "x_scale": x_scale, "faces": len(idx), "fits_per_s": 1.0 / med,
            "ms_per_fit": 1e3 * med, "rmse_noisy": float(r_noisy.mean()), "rmse_clean": float(r_clean.mean()),
            "rmse_noisy_median": float(r_noisy.median()), "rmse_clean_median": float(r_clean.median()),
            "nfev_mean": float(np.mean(nfev)), "njev_mean": float(np.mean(njev)),
            "max_nfev": iterations + 1, "dtype": "float64"}


# --------------------------------------------------------------------------- ours
def _time_ours(model, data: SyntheticSet, init: Optional[FitParams], opt: FitOptions, batch: int, n_faces: int,
               repeats: int, warmup: bool):
    """Median seconds per call of ``fit_landmarks`` on consecutive chunks of ``batch`` faces;
    returns (seconds per call list, result of the first call)."""
    n_faces = max(batch, (n_faces // batch) * batch)
    if warmup:
        fit_landmarks(model, data.noisy[:batch], data.weights[:batch],
                      init.index(slice(0, batch)) if init is not None else None, opt)
    times, first = [], None
    for _ in range(repeats):
        for i in range(0, n_faces, batch):
            sl = slice(i, i + batch)
            y, w = data.noisy[sl], data.weights[sl]
            ini = init.index(sl) if init is not None else None
            t0 = time.perf_counter()
            res = fit_landmarks(model, y, w, ini, opt)
            times.append(time.perf_counter() - t0)
            if first is None:
                first = res
    return times, first


def _accuracy(res, data: SyntheticSet, n: int) -> dict:
    w = data.weights[:n]
    r_noisy = weighted_rmse(res.landmarks[:n], data.noisy[:n], w)
    r_clean = weighted_rmse(res.landmarks[:n], data.clean[:n], w)
    return {"rmse_noisy": float(r_noisy.mean()), "rmse_clean": float(r_clean.mean()),
            "rmse_noisy_median": float(r_noisy.median()), "rmse_clean_median": float(r_clean.median()),
            "converged_frac": float(res.converged[:n].float().mean()), "iterations_mean": float(res.iterations[:n].float().mean())}


def bench_ours(model, data: SyntheticSet, start: str, iterations: int, sizes: Sequence[int], quick: bool,
               subset: int = 0, one_worker: bool = False) -> dict:
    """fits/s at each batch size with the default :class:`FitOptions` (as many solver workers as
    torch threads); accuracy from the largest batch's first call (which covers the first
    ``max(sizes)`` faces) and on the first ``subset`` faces (the scipy/eos sample). ``one_worker``:
    also the largest batch with ``FitOptions(workers=1)`` (key ``"tuned"``: one thread)."""
    opt = FitOptions(max_iterations=iterations)
    init = data.init if start == "perturbed" else None
    N = len(data)
    out = {"start": start, "iterations": iterations, "dtype": "float32", "sizes": {}}
    big = max(sizes)
    for bs in sizes:
        if bs == 1:
            n_faces, reps = (32 if quick else 128), 1
        elif bs >= 512:
            n_faces, reps = bs, (1 if quick else 5)
        else:
            n_faces, reps = min(N, 256 if quick else 1024), (1 if quick else 2)
        warm = not (quick and bs >= 512)
        times, res = _time_ours(model, data, init, opt, bs, min(n_faces, N), reps, warm)
        med = statistics.median(times)
        out["sizes"][str(bs)] = {"batch": bs, "calls": len(times), "fits_per_s": bs / med, "ms_per_fit": 1e3 * med / bs,
                                 "s_per_call": med}
        if bs <= opt.small_batch:  # the same sizes through the batched torch path, for the ratio
            opt_b = FitOptions(max_iterations=iterations, small_batch=0)
            tb, _ = _time_ours(model, data, init, opt_b, bs, min(n_faces, N), reps, warm)
            mb = statistics.median(tb)
            out["sizes"][str(bs)]["batched_path"] = {"fits_per_s": bs / mb, "ms_per_fit": 1e3 * mb / bs,
                                                     "small_over_batched": mb / med}
        if bs == big:
            out.update(_accuracy(res, data, bs))
            out["accuracy_faces"] = bs
            if subset:
                out["subset"] = {"faces": subset, **_accuracy(res, data, min(subset, bs))}
    if one_worker:
        opt_t = FitOptions(max_iterations=iterations, workers=1)
        times, res = _time_ours(model, data, init, opt_t, big, big, 1 if quick else 5, not quick)
        med = statistics.median(times)
        out["tuned"] = {"batch": big, "chunk": opt_t.chunk, "workers": 1, "calls": len(times), "fits_per_s": big / med,
                        "ms_per_fit": 1e3 * med / big, "s_per_call": med, **_accuracy(res, data, big)}
    return out


# --------------------------------------------------------------------------- an earlier solver
def load_solver_at(rev: str):
    """``fitting/solver.py`` of git revision ``rev`` as a module of its own (it imports only
    absolute ``morphable`` names; a revision with package-relative imports gets those from today's
    ``fitting``)."""
    import importlib.util
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parent.parent
    src = subprocess.run(["git", "show", f"{rev}:fitting/solver.py"], cwd=root, capture_output=True, text=True)
    if src.returncode != 0:
        raise SystemExit(f"--baseline {rev}: git show failed: {src.stderr.strip()}")
    path = Path(tempfile.mkdtemp()) / "solver_baseline.py"
    path.write_text(src.stdout.replace("from . import", "from fitting import"))
    spec = importlib.util.spec_from_file_location("solver_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def bench_baseline(rev: str, model, data: SyntheticSet, batch: int, rounds: int) -> dict:
    """fits/s at ``batch`` (5 iterations, perturbed start, default options) of today's solver and of
    the one at ``rev``, timed in alternating rounds so both see the same machine load."""
    old = load_solver_at(rev)
    y, w, ini = data.noisy[:batch], data.weights[:batch], data.init.index(slice(0, batch))
    calls = {"ours": lambda: fit_landmarks(model, y, w, ini, FitOptions(max_iterations=5)),
             "baseline": lambda: old.fit_landmarks(model, y, w, ini, old.FitOptions(max_iterations=5))}
    times: dict = {k: [] for k in calls}
    for f in calls.values():
        f()
    order = list(calls)
    for r in range(rounds):
        for k in (order if r % 2 == 0 else order[::-1]):  # alternate who goes first
            t0 = time.perf_counter()
            calls[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    return {"rev": rev, "batch": batch, "rounds": rounds, "fits_per_s": {k: batch / v for k, v in med.items()},
            "fits_per_s_best": {k: batch / v for k, v in best.items()},
            "ours_over_baseline": med["baseline"] / med["ours"], "ours_over_baseline_best": best["baseline"] / best["ours"]}


# --------------------------------------------------------------------------- eos
def eos_available() -> bool:
    try:
        import eos  # noqa: F401
    except ImportError:
        return False
    return (SFM_DIR / "sfm_shape_3448.bin").is_file()


def sfm_mapped_points(mapping: Path = SFM_DIR / "ibug_to_sfm.txt") -> list[int]:
    """0-based iBUG indices that ``ibug_to_sfm.txt`` maps to a vertex."""
    import tomllib

    with open(mapping, "rb") as fh:
        m = tomllib.load(fh)["landmark_mappings"]
    return sorted(int(k) - 1 for k in m)


class EosFitter:
    """eos-py's ``fit_shape_and_pose`` (no contours) on the SFM + expression blendshapes, like
    eos's python/demo.py."""

    def __init__(self, sfm_dir: Path = SFM_DIR, width: int = IMAGE_WH[0], height: int = IMAGE_WH[1]):
        import eos

        self.eos = eos
        base = eos.morphablemodel.load_model(str(sfm_dir / "sfm_shape_3448.bin"))
        bs = eos.morphablemodel.load_blendshapes(str(sfm_dir / "expression_blendshapes_3448.bin"))
        self.model = eos.morphablemodel.MorphableModel(
            base.get_shape_model(), bs, color_model=eos.morphablemodel.PcaModel(), vertex_definitions=None,
            texture_coordinates=base.get_texture_coordinates())
        self.mapper = eos.core.LandmarkMapper(str(sfm_dir / "ibug_to_sfm.txt"))
        self.width, self.height = width, height

    def landmarks(self, y: np.ndarray, points: Sequence[int]):
        return [self.eos.core.Landmark(str(i + 1), [float(y[i, 0]), float(y[i, 1])]) for i in points]

    def fit(self, lms, iterations: int = 5):
        return self.eos.fitting.fit_shape_and_pose(self.model, lms, self.mapper, self.width, self.height,
                                                   num_iterations=iterations)

    def project(self, fit, vertex_ids: Sequence[int]) -> np.ndarray:
        """(n, 2) image px of mesh vertices through ``get_3x4_affine_camera_matrix``."""
        mesh, rp = fit[0], fit[1]
        A = np.asarray(self.eos.fitting.get_3x4_affine_camera_matrix(rp, self.width, self.height), np.float64)
        V = np.asarray(mesh.vertices, np.float64)[list(vertex_ids)]
        return (np.c_[V, np.ones(len(V))] @ A.T)[:, :2]


def eos_projection_check(fitter: EosFitter, sfm: MorphableModel, pose: FitParams, points: Sequence[int],
                         iterations: int = 5) -> float:
    """RMSE (px) between noise-free landmarks of the SFM mean face in ``pose`` (one face) and eos's
    fit of them measured through :meth:`EosFitter.project`: ~0 when the projection is right (the
    prior pulls toward the mean face, which is the truth here)."""
    m = _double(sfm)
    X = m.landmark_points(torch.zeros(1, m.n_shape, dtype=torch.float64), torch.zeros(1, m.n_expr, dtype=torch.float64))
    y0 = project(X, rotvec_to_rotmat(pose.rotvec.double()), pose.scale.double(), pose.translation.double())[0].numpy()
    fit = fitter.fit(fitter.landmarks(y0, points), iterations)
    vid = [int(sfm.landmarks[i]) for i in points]
    return float(np.sqrt(((fitter.project(fit, vid) - y0[list(points)]) ** 2).sum(-1).mean()))


def bench_eos(sfm: MorphableModel, data: SyntheticSet, points: Sequence[int], n: int, iterations: int = 5) -> dict:
    fitter = EosFitter()
    vid = [int(sfm.landmarks[i]) for i in points]
    # projection check: noise-free mean faces must be reproduced (the prior pulls toward the truth)
    chk = [eos_projection_check(fitter, sfm, data.gt.index(slice(i, i + 1)), points, iterations) for i in range(3)]
    ys = data.noisy.numpy()
    lms = [fitter.landmarks(ys[i], points) for i in range(n)]
    fitter.fit(lms[0], iterations)
    times, xs = [], []
    for lm in lms:
        t0 = time.perf_counter()
        fit = fitter.fit(lm, iterations)
        times.append(time.perf_counter() - t0)
        xs.append(fitter.project(fit, vid))
    x = torch.as_tensor(np.stack(xs))
    r_noisy = weighted_rmse(x, data.noisy[:n, points], torch.ones(n, len(points)))
    r_clean = weighted_rmse(x, data.clean[:n, points], torch.ones(n, len(points)))
    med = statistics.median(times)
    return {"solver": f"eos fit_shape_and_pose ({iterations} it, no contours)", "faces": n, "iterations": iterations,
            "fits_per_s": 1.0 / med, "ms_per_fit": 1e3 * med, "rmse_noisy": float(r_noisy.mean()),
            "rmse_clean": float(r_clean.mean()), "rmse_noisy_median": float(r_noisy.median()),
            "rmse_clean_median": float(r_clean.median()), "projection_check_rmse_px": max(chk),
            "lambda_identity": 30.0, "lambda_expressions": 30.0}


# --------------------------------------------------------------------------- profile
_CATEGORIES = (
    ("linalg (cholesky_ex incl. its tril, solves, svd)", ("cholesky", "linalg", "svd", "solve", "det", "lu", "tril")),
    ("gemm (bmm/mm/matmul)", ("bmm", "aten::mm", "addmm", "matmul", "baddbmm", "einsum")),
    ("copies/indexing (copy_/cat/stack/where/index/clone)",
     ("copy_", "cat", "stack", "where", "index", "clone", "repeat", "expand", "slice", "select", "view",
      "empty", "zeros", "full", "fill_", "to", "contiguous", "unbind", "transpose", "permute", "reshape",
      "diagonal", "narrow", "as_strided", "squeeze", "unsqueeze", "t")),
)


def _category(name: str) -> str:
    for cat, keys in _CATEGORIES:
        for k in keys:
            if (k.startswith("aten::") and name == k) or (not k.startswith("aten::") and (
                    name == f"aten::{k}" or (len(k) > 3 and k in name))):
                return cat
    return "elementwise/other"


def profile_ours(model, data: SyntheticSet, batch: int, iterations: int, start: str, top: int = 12,
                 chunk: Optional[int] = None) -> dict:
    """torch.profiler key_averages of one ``fit_landmarks`` call (after a warm-up): top aten ops by
    self CPU time and shares by category. The profiler's per-op overhead inflates wall time."""
    from torch.profiler import ProfilerActivity, profile

    opt = FitOptions(max_iterations=iterations, workers=1) if chunk is None else \
        FitOptions(max_iterations=iterations, chunk=chunk, workers=1)
    sl = slice(0, batch)
    y, w = data.noisy[sl], data.weights[sl]
    init = data.init.index(sl) if start == "perturbed" else None
    fit_landmarks(model, y, w, init, opt)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fit_landmarks(model, y, w, init, opt)
        wall = time.perf_counter() - t0
    ev = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in ev) or 1.0
    rows = sorted(ev, key=lambda e: e.self_cpu_time_total, reverse=True)
    cats: dict = {}
    for e in ev:
        c = _category(e.key)
        cats[c] = cats.get(c, 0.0) + e.self_cpu_time_total
    return {"batch": batch, "iterations": iterations, "start": start, "chunk": opt.chunk, "wall_s_profiled": wall,
            "self_cpu_ms_total": total / 1e3,
            "top": [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3,
                     "pct": 100 * e.self_cpu_time_total / total} for e in rows[:top]],
            "categories_pct": {k: 100 * v / total for k, v in sorted(cats.items(), key=lambda kv: -kv[1])}}


# --------------------------------------------------------------------------- run + report
def _env_info(threads: int) -> dict:
    import scipy

    try:
        import eos  # noqa: F401
        from importlib.metadata import version

        eos_v = version("eos-py")
    except Exception:  # noqa: BLE001
        eos_v = None
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__, "eos_py": eos_v,
            "python": platform.python_version(), "cpu": cpu, "cpus": os.cpu_count(),
            "threads_requested": threads, "torch_num_threads": torch.get_num_threads(),
            "torch_num_interop_threads": torch.get_num_interop_threads(),
            "env": {k: os.environ.get(k) for k in THREAD_ENV},
            "loadavg_start": list(os.getloadavg())}


def run(sizes: Sequence[int] = (1, 4, 16, 64, 1024), quick: bool = False, threads: int = 1, profile: bool = False,
        log: Callable[[str], None] = lambda s: None, baseline: Optional[str] = None) -> dict:
    """The whole benchmark; returns the JSON-ready result."""
    from morphable.registry import load_model

    torch.set_num_threads(threads)
    t_start = time.perf_counter()
    out: dict = {"quick": quick, "seed": SEED, "sizes": list(sizes), "env": _env_info(threads)}
    model = load_model()
    N = max(max(sizes), 64)
    data = make_synthetic(model, N)
    Ks, Ke, L = model.n_shape, model.n_expr, model.n_landmarks
    n_scipy = 10 if quick else 50
    n_scipy_fd = 0 if quick else 10

    log("limits ...")
    kb = Ke if model.info.expr_kind != "pca" else 0
    fl = flops_per_iteration(L, Ks + Ke, k_bounded=kb)
    gemm = gemm_gflops(1024, 5 if quick else 11)
    kr = kernel_rates(max(sizes), fl["M"], fl["P"], 1 if quick else 3, k_bounded=kb)
    torch.set_num_threads(1)  # one solver worker: a chunk of 64 on one thread
    kr_c = kernel_rates(TUNED_CHUNK, fl["M"], fl["P"], 5 if quick else 15, k_bounded=kb)
    torch.set_num_threads(threads)
    eval_flops = fl["residual_eval"]
    budget = 5
    per_fit = budget * fl["total"] + eval_flops
    out["limits"] = {"gemm_fp32_1024_gflops": gemm, "kernels": kr, "kernels_chunk": kr_c,
                     "flops_per_face_iteration": fl, "flops_per_fit_5it": per_fit,
                     "bound_fits_per_s_5it_gemm_rate": gemm * 1e9 / per_fit,
                     "bound_fits_per_s_5it_kernel_rates": 1e6 / (budget * kr["per_face_iteration_us"]),
                     "workers": threads,
                     "bound_fits_per_s_5it_kernel_rates_chunk": threads * 1e6 / (budget * kr_c["per_face_iteration_us"]),
                     "bound_fits_per_s_20it_gemm_rate": gemm * 1e9 / (20 * fl["total"] + eval_flops)}

    cases = (("a", "perturbed", 5), ("b", "mean-face", 20))
    out["default_model"] = {"model": model.name, "n_shape": Ks, "n_expr": Ke, "expr_kind": model.info.expr_kind,
                            "faces": N, "cases": {}}
    for key, start, iters in cases:
        log(f"ours ({key}) ...")
        ours = bench_ours(model, data, start, iters, sizes, quick, subset=n_scipy, one_worker=threads > 1)
        log(f"scipy ({key}) ...")
        sp = bench_scipy(model, data, n_scipy, start, iters, "analytic")
        case = {"start": start, "iterations": iters, "ours": ours, "scipy": sp,
                "ratio_ours_over_scipy": {b: v["fits_per_s"] / sp["fits_per_s"] for b, v in ours["sizes"].items()}}
        if "tuned" in ours:
            case["ratio_tuned_over_scipy"] = ours["tuned"]["fits_per_s"] / sp["fits_per_s"]
        if n_scipy_fd:
            log(f"scipy 2-point and x_scale=1 ({key}) ...")
            for name, jac, xs in (("scipy_2point", "2-point", "jac"), ("scipy_xscale1", "analytic", 1.0)):
                ref = bench_scipy(model, data, n_scipy_fd, start, iters, jac, xs)
                case[name] = ref
                case[f"ratio_ours_over_{name}"] = {b: v["fits_per_s"] / ref["fits_per_s"] for b, v in ours["sizes"].items()}
        out["default_model"]["cases"][key] = case

    if eos_available():
        from morphable.formats.sfm import load_sfm

        log("eos ...")
        sfm = load_sfm(SFM_DIR / "sfm_shape_3448.bin")
        pts = sfm_mapped_points()
        w = torch.zeros(sfm.n_landmarks)
        w[pts] = 1.0
        sdata = make_synthetic(sfm, N, seed=SEED + 1, weights=w)
        n_eos = 50 if quick else 200
        e = bench_eos(sfm, sdata, pts, n_eos)
        sec = {"model": sfm.name, "n_shape": sfm.n_shape, "n_expr": sfm.n_expr, "points": len(pts), "faces": N,
               "eos": e, "ours": {}}
        for iters in (5, 20):
            log(f"ours on SFM ({iters} it) ...")
            o = bench_ours(sfm, sdata, "mean-face", iters, sizes, quick, subset=n_eos, one_worker=threads > 1)
            o["ratio_ours_over_eos"] = {b: v["fits_per_s"] / e["fits_per_s"] for b, v in o["sizes"].items()}
            if "tuned" in o:
                o["ratio_tuned_over_eos"] = o["tuned"]["fits_per_s"] / e["fits_per_s"]
            sec["ours"][str(iters)] = o
        fls = flops_per_iteration(L, sfm.n_shape + sfm.n_expr, k_bounded=sfm.n_expr if sfm.info.expr_kind != "pca" else 0)
        sec["flops_per_face_iteration"] = fls["total"]
        sec["bound_fits_per_s_5it_gemm_rate"] = gemm * 1e9 / (5 * fls["total"] + fls["residual_eval"])
        out["sfm_vs_eos"] = sec
    else:
        out["sfm_vs_eos"] = {"skipped": "eos-py or ../shared/models/sfm not available"}

    if baseline:
        log(f"baseline {baseline} ...")
        out["baseline"] = bench_baseline(baseline, model, data, max(sizes), 4 if quick else 12)

    if profile:
        log("profile ...")
        out["profile"] = [profile_ours(model, data, max(sizes), 5, "perturbed", chunk=max(sizes)),
                          profile_ours(model, data, max(sizes), 5, "perturbed", chunk=TUNED_CHUNK)]

    out["targets"] = _targets(out)
    out["env"]["loadavg_end"] = list(os.getloadavg())
    out["elapsed_s"] = time.perf_counter() - t_start
    return out


def _targets(out: dict) -> dict:
    """The three targets, as shipped (default FitOptions: one worker per torch thread) and with one worker."""
    big = str(max(out["sizes"]))
    cases = out["default_model"]["cases"]
    t: dict = {"batch": int(big)}
    for tag, get in (("default", lambda o: o["sizes"][big]), ("tuned", lambda o: o.get("tuned"))):
        a, b = get(cases["a"]["ours"]), get(cases["b"]["ours"])
        if a is None:
            continue
        ra = a["fits_per_s"] / cases["a"]["scipy"]["fits_per_s"]
        rb = b["fits_per_s"] / cases["b"]["scipy"]["fits_per_s"]
        row = {"ours_over_scipy_a": ra, "ours_over_scipy_b": rb, "ge_100x_scipy": ra >= 100 and rb >= 100,
               "fits_per_s_5it": a["fits_per_s"], "ge_1000_fits_per_s_5it": a["fits_per_s"] >= 1000}
        se = out.get("sfm_vs_eos", {})
        if "eos" in se:
            e = se["eos"]
            met = []
            for iters, o in se["ours"].items():
                v = get(o)
                sub = o["subset"]  # ours on eos's faces (from the largest batch)
                faster = v["fits_per_s"] > e["fits_per_s"]
                row[f"sfm_{iters}it_fits_per_s_over_eos"] = v["fits_per_s"] / e["fits_per_s"]
                row[f"sfm_{iters}it_rmse_clean_le_eos"] = sub["rmse_clean"] <= e["rmse_clean"]
                row[f"sfm_{iters}it_rmse_noisy_le_eos"] = sub["rmse_noisy"] <= e["rmse_noisy"]
                if faster and sub["rmse_clean"] <= e["rmse_clean"]:
                    met.append(int(iters))
            row["faster_than_eos_at_le_rmse_clean"] = bool(met)
            row["faster_than_eos_iterations"] = met
        t[tag] = row
    return t


def _f(v, nd=1):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{nd}f}"


def format_report(out: dict) -> str:
    """The printed table."""
    env, lim = out["env"], out["limits"]
    fl = lim["flops_per_face_iteration"]
    nthr = env["torch_num_threads"]
    L = ["=" * 110,
         f"morphable LM speed benchmark ({'quick' if out['quick'] else 'full'}, seed {out['seed']}, {out['elapsed_s']:.0f} s)",
         f"torch {env['torch']} (get_num_threads {env['torch_num_threads']}, interop {env['torch_num_interop_threads']}), "
         f"numpy {env['numpy']}, scipy {env['scipy']}, eos-py {env['eos_py']}, python {env['python']}",
         "thread env: " + ", ".join(f"{k}={v}" for k, v in env["env"].items())
         + f"; cpu: {env['cpu']} x{env['cpus']}; loadavg {env['loadavg_start'][0]:.2f} -> {env['loadavg_end'][0]:.2f}"
         " (other jobs share this machine: timings are medians)",
         "",
         f"LIMITS  fp32 GEMM 1024^2: {lim['gemm_fp32_1024_gflops']:.0f} GFLOP/s"]
    for kr in (lim["kernels"], lim["kernels_chunk"]):
        L.append(f"  solver kernels at batch {kr['batch']:>5}, {kr.get('threads', '?')} thread(s): J^T W J from Gram blocks "
                 f"{kr.get('gram_ms', float('nan')):7.2f} ms (full bmm {kr['bmm_ms']:.2f} ms, {kr['bmm_gflops']:.0f} GFLOP/s), "
                 f"cholesky_ex {kr['cholesky_ms']:7.2f} ms ({kr['cholesky_gflops']:.0f} GFLOP/s; its tril alone "
                 f"{kr['tril_ms']:.2f} ms), 2 triangular solves {kr['solves_ms']:.2f} ms, bound pass ({BOUND_CROSSINGS} crossing) "
                 f"{kr.get('bound_pass_ms', 0.0):.2f} ms = {kr['per_face_iteration_us']:.0f} us/face-iteration")
    L += [f"  FLOPs per face-iteration (M={fl['M']}, P={fl['P']}): J^T W J {fl['JtWJ'] / 1e6:.2f} M + Cholesky "
          f"{fl['cholesky'] / 1e6:.2f} M + bound pass {fl.get('bound_pass', 0) / 1e6:.2f} M + solves {fl['solves'] / 1e6:.3f} M "
          f"+ Jacobian {fl['jacobian'] / 1e6:.3f} M + J^T W r {fl.get('gradient', 0) / 1e6:.3f} M + residual eval "
          f"{fl['residual_eval'] / 1e6:.3f} M = {fl['total'] / 1e6:.2f} MFLOP",
          f"  upper bound, 5 iterations: {lim['bound_fits_per_s_5it_gemm_rate']:,.0f} fits/s if every FLOP ran at the GEMM rate; "
          f"{lim['bound_fits_per_s_5it_kernel_rates']:,.0f} (one batch of {lim['kernels']['batch']}) / "
          f"{lim['bound_fits_per_s_5it_kernel_rates_chunk']:,.0f} ({lim.get('workers', 1)} worker(s) x chunks of "
          f"{lim['kernels_chunk']['batch']}) fits/s from the measured J^T W J + Cholesky + solves + bound pass alone; "
          f"20 iterations: {lim['bound_fits_per_s_20it_gemm_rate']:,.0f} at the GEMM rate",
          ""]
    hdr = (f"{'case':<24} {'solver':<38} {'batch':>5} {'fits/s':>8} {'ms/fit':>8} {'rmse noisy':>10} "
           f"{'rmse clean':>10} {'ours/ref':>8}")
    dm = out["default_model"]
    L += [f"DEFAULT MODEL {dm['model']} (Ks={dm['n_shape']}, Ke={dm['n_expr']} {dm['expr_kind']}), {dm['faces']} synthetic "
          "faces, 0.5 px noise; rmse = mean of per-face RMSE (px) over the faces of the largest batch; ratio vs the "
          "first scipy row", hdr, "-" * len(hdr)]

    def ours_rows(label, o, ratio_key_sizes, ratio_tuned, ref_rate):
        rows = []
        for b, v in o["sizes"].items():
            acc = (f"{o['rmse_noisy']:.3f}", f"{o['rmse_clean']:.3f}") if int(b) == o["accuracy_faces"] else ("", "")
            rows.append(f"{label:<24} {'ours, FitOptions() ' + str(nthr) + ' thread(s)':<38} {b:>5} {_f(v['fits_per_s']):>8} {v['ms_per_fit']:>8.3f} "
                        f"{acc[0]:>10} {acc[1]:>10} {ratio_key_sizes[b]:>7.1f}x")
            label = ""
            if "batched_path" in v:
                bp = v["batched_path"]
                rows.append(f"{'':<24} {'  same, batched torch path':<38} {b:>5} {_f(bp['fits_per_s']):>8} {bp['ms_per_fit']:>8.3f} "
                            f"{'':>10} {'':>10} {bp['fits_per_s'] / v['fits_per_s'] * ratio_key_sizes[b]:>7.1f}x"
                            f"  (small-batch path {bp['small_over_batched']:.1f}x faster)")
        if "tuned" in o:
            v = o["tuned"]
            rows.append(f"{'':<24} {'ours, FitOptions(workers=1)':<38} {v['batch']:>5} {_f(v['fits_per_s']):>8} "
                        f"{v['ms_per_fit']:>8.3f} {v['rmse_noisy']:>10.3f} {v['rmse_clean']:>10.3f} {ratio_tuned:>7.1f}x")
        return rows

    for key, case in dm["cases"].items():
        o = case["ours"]
        L += ours_rows(f"({key}) {case['iterations']} it, {case['start']}", o, case["ratio_ours_over_scipy"],
                       case.get("ratio_tuned_over_scipy", 0.0), case["scipy"]["fits_per_s"])
        fpf = lim["bound_fits_per_s_5it_gemm_rate"] if case["iterations"] == 5 else lim["bound_fits_per_s_20it_gemm_rate"]
        L.append(f"{'':<24} {'FLOP bound at the GEMM rate':<38} {'-':>5} {_f(fpf):>8} {1e3 / fpf:>8.3f}")
        for name in ("scipy", "scipy_2point", "scipy_xscale1"):
            if name in case:
                s = case[name]
                L.append(f"{'':<24} {s['solver'] + ', ' + str(s['faces']) + ' faces':<38} {'1':>5} {_f(s['fits_per_s']):>8} "
                         f"{s['ms_per_fit']:>8.3f} {s['rmse_noisy']:>10.3f} {s['rmse_clean']:>10.3f}"
                         + (f" {'ref':>8}" if name == "scipy" else ""))
        sub = o.get("subset")
        if sub:
            L.append(f"{'':<24} {'ours on those first ' + str(sub['faces']) + ' faces':<38} {'':>5} {'':>8} {'':>8} "
                     f"{sub['rmse_noisy']:>10.3f} {sub['rmse_clean']:>10.3f}")
        L.append(f"{'':<24} ours: converged {o['converged_frac']:.2f}, accepted steps {o['iterations_mean']:.1f}/"
                 f"{case['iterations']}; scipy: nfev {case['scipy']['nfev_mean']:.1f}/{case['scipy']['max_nfev']}, "
                 f"njev {case['scipy']['njev_mean']:.1f}")
    L.append("")
    se = out.get("sfm_vs_eos", {})
    if "eos" in se:
        e = se["eos"]
        L += [f"SFM {se['model']} (Ks={se['n_shape']}, Ke={se['n_expr']} blendshapes), the {se['points']} iBUG points "
              f"ibug_to_sfm.txt maps, {se['faces']} synthetic faces; eos projection check on noise-free mean faces: "
              f"{e['projection_check_rmse_px']:.1g} px", hdr, "-" * len(hdr),
              f"{'eos, 5 it, mean start':<24} {'eos-py, ' + str(e['faces']) + ' faces':<38} {'1':>5} {_f(e['fits_per_s']):>8} "
              f"{e['ms_per_fit']:>8.3f} {e['rmse_noisy']:>10.3f} {e['rmse_clean']:>10.3f} {'ref':>8}"]
        for iters, o in se["ours"].items():
            L += ours_rows(f"ours, {iters} it, mean start", o, o["ratio_ours_over_eos"], o.get("ratio_tuned_over_eos", 0.0),
                           e["fits_per_s"])
            sub = o["subset"]
            L.append(f"{'':<24} {'ours on eos faces (first ' + str(sub['faces']) + ')':<38} {'':>5} {'':>8} {'':>8} "
                     f"{sub['rmse_noisy']:>10.3f} {sub['rmse_clean']:>10.3f}")
        L.append(f"{'':<24} {'FLOP bound 5 it at the GEMM rate':<38} {'-':>5} {_f(se['bound_fits_per_s_5it_gemm_rate']):>8}")
    else:
        L.append(f"SFM vs eos: {se.get('skipped')}")
    t = out["targets"]
    L += ["", f"TARGETS at batch {t['batch']} (measured, not adjusted)"]
    yes = lambda b: "MET" if b else "NOT MET"  # noqa: E731
    for tag in ("default", "tuned"):
        if tag not in t:
            continue
        r = t[tag]
        name = f"FitOptions() {nthr} thr" if tag == "default" else "FitOptions(workers=1)"
        line = (f"  {name:<24} >= 100x scipy: {yes(r['ge_100x_scipy'])} (a {r['ours_over_scipy_a']:.1f}x, "
                f"b {r['ours_over_scipy_b']:.1f}x); >= 1000 fits/s at 5 it: {yes(r['ge_1000_fits_per_s_5it'])} "
                f"({r['fits_per_s_5it']:,.0f})")
        if "faster_than_eos_at_le_rmse_clean" in r:
            line += (f"; faster than eos at <= its clean RMSE: {yes(r['faster_than_eos_at_le_rmse_clean'])}"
                     + (f" ({'/'.join(map(str, r['faster_than_eos_iterations']))} it)" if r["faster_than_eos_iterations"] else ""))
        L.append(line)
    if "baseline" in out:
        b = out["baseline"]
        L += ["", f"BASELINE batch {b['batch']}, 5 it, perturbed start, {b['rounds']} alternating rounds (who goes first "
              f"alternates): median ours {b['fits_per_s']['ours']:,.0f} fits/s, solver of {b['rev']} "
              f"{b['fits_per_s']['baseline']:,.0f} fits/s (ours/baseline {b['ours_over_baseline']:.2f}x); best round "
              f"{b['fits_per_s_best']['ours']:,.0f} vs {b['fits_per_s_best']['baseline']:,.0f} "
              f"({b['ours_over_baseline_best']:.2f}x)"]
    for p in out.get("profile", []):
        L += ["", f"PROFILE ours at batch {p['batch']}, {p['iterations']} it, {p['start']} start, chunk {p['chunk']}: "
              f"{p['wall_s_profiled']:.2f} s wall under the profiler (its per-op overhead inflates this), "
              f"{p['self_cpu_ms_total']:.0f} ms aten self CPU",
              "  by category: " + "; ".join(f"{k} {v:.0f}%" for k, v in p["categories_pct"].items()),
              f"  {'op':<38} {'calls':>6} {'self ms':>9} {'%':>6}"]
        for r in p["top"]:
            L.append(f"  {r['op']:<38} {r['calls']:>6} {r['self_ms']:>9.1f} {r['pct']:>6.1f}")
    L.append("=" * 110)
    return "\n".join(L)


def _ensure_thread_env(argv: Sequence[str]) -> None:
    """Re-run this module once with OMP/MKL/OpenBLAS thread counts of 1 in the environment: the
    per-face baselines (scipy's numpy/OpenBLAS reads them only at start-up; eos) are fastest on one
    BLAS thread, and our solver sets one intra-op thread per worker itself; ``--threads`` then sets
    torch's thread count (the solver's default number of workers) with ``torch.set_num_threads``."""
    if os.environ.get(_REEXEC) or all(os.environ.get(k) == "1" for k in THREAD_ENV):
        return
    env = dict(os.environ, **{k: "1" for k in THREAD_ENV}, **{_REEXEC: "1"})
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.lm_speed", *argv], env)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.lm_speed", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="under a minute: scipy 10 faces, eos 50, batch 1024 once")
    ap.add_argument("--json", action="store_true", help="also print one JSON object (after the table)")
    ap.add_argument("--threads", type=int, choices=(1, 2), default=2,
                    help="torch/BLAS threads; the solver runs one worker per thread (default 2, this machine's cores)")
    ap.add_argument("--sizes", default="1,4,16,64,1024", help="comma-separated batch sizes (default 1,4,16,64,1024)")
    ap.add_argument("--baseline", metavar="REV",
                    help="also time the largest batch with fitting/solver.py of git revision REV, interleaved with ours "
                         "in this run (e.g. HEAD~1): the throughput check of a solver change")
    ap.add_argument("--profile", action="store_true", help="torch.profiler summary at the largest batch")
    ap.add_argument("--no-reexec", action="store_true", help="do not restart with OMP/MKL/OPENBLAS_NUM_THREADS set")
    args = ap.parse_args(argv)
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        ap.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        ap.error("--sizes needs positive batch sizes")
    if not args.no_reexec:
        _ensure_thread_env(list(sys.argv[1:] if argv is None else argv))
    out = run(sizes, args.quick, args.threads, args.profile, log=lambda s: print(s, file=sys.stderr, flush=True),
              baseline=args.baseline)
    print(format_report(out))
    if args.json:
        print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
