"""The small-batch (numpy/LAPACK) path of the LM solver gives what the batched torch path gives."""
import copy
import math

import numpy as np
import pytest
import torch

from fitting import lm_small
from fitting.solver import FitOptions, FitParams, fit_landmarks
from morphable.geometry import (angles_to_rotmat, project, project_numpy, rotmat_to_rotvec, rotmat_to_rotvec_numpy,
                                rotvec_to_rotmat, rotvec_to_rotmat_numpy)
from morphable.model import ModelInfo, MorphableModel


def _faces(model, B, dtype, seed=0, noise=0.5):
    """B synthetic faces (yaw -70..70 deg, sparse blendshapes so that bounds are active), noisy
    targets, and a perturbed start."""
    g = torch.Generator().manual_seed(seed)
    shape = torch.randn(B, model.n_shape, generator=g, dtype=torch.float64)
    expr = (torch.rand(B, model.n_expr, generator=g, dtype=torch.float64) * 0.6 - 0.3).clamp_min(0)
    if model.info.expr_kind == "pca":
        expr = torch.randn(B, model.n_expr, generator=g, dtype=torch.float64)
    ang = torch.stack([(torch.rand(B, generator=g, dtype=torch.float64) - 0.5) * 0.6,
                       torch.linspace(-math.radians(70), math.radians(70), B, dtype=torch.float64),
                       (torch.rand(B, generator=g, dtype=torch.float64) - 0.5) * 0.4], -1)
    R = angles_to_rotmat(ang)
    s = 1.5 + torch.rand(B, generator=g, dtype=torch.float64)
    t = 250 + 20 * torch.rand(B, 2, generator=g, dtype=torch.float64)
    m64 = copy.deepcopy(model).double()
    y = project(m64.landmark_points(shape, expr), R, s, t) + noise * torch.randn(B, 68, 2, generator=g, dtype=torch.float64)
    init = FitParams(shape + 0.5 * torch.randn(B, model.n_shape, generator=g, dtype=torch.float64),
                     (expr + 0.1).clamp(0, 1) if model.info.expr_kind != "pca" else expr * 0.5,
                     rotmat_to_rotvec(rotvec_to_rotmat(0.08 * torch.randn(B, 3, generator=g, dtype=torch.float64)) @ R),
                     s * 1.03, t + 2.0)
    return y.to(dtype), init.to(dtype)


def _both(model, y, w, init, **kw):
    a = fit_landmarks(model, y, w, init=init, options=FitOptions(small_batch=0, check_every=0, **kw))
    b = fit_landmarks(model, y, w, init=init, options=FitOptions(small_batch=len(y), **kw))
    return a, b


def _same(a, b, tol):
    assert torch.equal(a.iterations, b.iterations)
    assert torch.equal(a.converged, b.converged) and torch.equal(a.valid, b.valid)
    for f in ("shape", "expr", "rotvec", "scale", "translation"):
        torch.testing.assert_close(getattr(a.params, f), getattr(b.params, f), atol=tol, rtol=tol)
    torch.testing.assert_close(a.landmarks, b.landmarks, atol=tol * 100, rtol=0)
    torch.testing.assert_close(a.cost, b.cost, atol=tol, rtol=tol)
    torch.testing.assert_close(a.rmse, b.rmse, atol=tol, rtol=tol, equal_nan=True)
    assert torch.equal(a.landmark_vertices, b.landmark_vertices)


@pytest.mark.parametrize("start,iters", [("perturbed", 5), ("mean", 20)])
def test_small_path_equals_batched_path_float64(default_model, start, iters):
    """Same accepted steps, convergence flags and parameters (float64: to rounding) at batch 1 and
    for a batch of 12 with an invalid face (NaN points) and a face with hidden points."""
    m = copy.deepcopy(default_model).double()  # .double() is in place: never on the shared fixture
    y, init = _faces(m, 12, torch.float64)
    w = torch.ones(12, 68, dtype=torch.float64)
    y[3] = float("nan")  # invalid: keeps its start
    w[5, :20] = 0.0  # a partly hidden face: its own Gram blocks
    init = init if start == "perturbed" else None
    for sl in (slice(0, 1), slice(0, 12)):
        a, b = _both(m, y[sl], w[sl], init.index(sl) if init is not None else None, max_iterations=iters)
        _same(a, b, 1e-8)
    assert not b.valid[3] and b.valid[[0, 5]].all()
    assert (b.params.expr == 0).any() and (b.params.expr > 0).any()  # the lower bound was active somewhere


def test_small_path_equals_batched_path_float32(default_model):
    """float32: the same fit to float rounding (the order of sums differs between the two paths)."""
    y, init = _faces(default_model, 8, torch.float32, seed=1)
    w = torch.ones(8, 68)
    a, b = _both(default_model, y, w, init, max_iterations=5)
    torch.testing.assert_close(a.landmarks, b.landmarks, atol=0.02, rtol=0)
    torch.testing.assert_close(a.rmse, b.rmse, atol=2e-3, rtol=0)
    assert a.landmarks.dtype == b.landmarks.dtype == torch.float32


def test_small_path_with_pca_expressions_and_fixed_components(default_model):
    """An unbounded (PCA) expression model, fewer optimised components and per-component priors."""
    m = copy.deepcopy(default_model).double()  # .double() is in place: never on the shared fixture
    pca = MorphableModel(m.mean, m.shape_basis, m.expr_basis[..., :10], m.triangles, m.landmarks,
                         ModelInfo(name="toy-pca", expr_kind="pca"))
    y, init = _faces(pca.double(), 4, torch.float64, seed=2)
    w = torch.ones(4, 68, dtype=torch.float64)
    prior = [0.5 + 0.1 * k for k in range(10)]
    a, b = _both(pca.double(), y, w, init, max_iterations=8, n_shape=40, n_expr=6, expr_prior=prior)
    _same(a, b, 1e-8)
    a, b = _both(pca.double(), y, w, None, max_iterations=8, fit_expression=False)
    _same(a, b, 1e-8)


def test_dispatch_rules(default_model):
    """The small path takes CPU l2 3D-contour fits without autograd; everything else stays batched."""
    y, init = _faces(default_model, 2, torch.float32)
    opt = FitOptions()
    assert lm_small.supported(y, opt, default_model, init)
    assert not lm_small.supported(y, FitOptions(robust="huber"), default_model, init)
    if default_model.contour_right.numel():
        assert not lm_small.supported(y, FitOptions(contour="2d"), default_model, init)
    grad_init = FitParams(*(getattr(init, f).clone().requires_grad_() for f in ("shape", "expr", "rotvec", "scale", "translation")))
    assert not lm_small.supported(y, opt, default_model, grad_init)
    with torch.no_grad():
        assert lm_small.supported(y, opt, default_model, grad_init)


def test_model_blocks_follow_in_place_changes(default_model):
    """The cached landmark blocks are rebuilt when the model's tensors change in place."""
    m = copy.deepcopy(default_model).double()  # .double() is in place: never on the shared fixture
    y, init = _faces(m, 1, torch.float64, seed=3)
    before = fit_landmarks(m, y, None, init=init, options=FitOptions(max_iterations=5))
    m.mean.add_(torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64))
    after = fit_landmarks(m, y, None, init=init, options=FitOptions(max_iterations=5))
    ref = fit_landmarks(m, y, None, init=init, options=FitOptions(max_iterations=5, small_batch=0))
    assert not torch.allclose(before.params.translation, after.params.translation)
    _same(ref, after, 1e-8)


def test_numpy_geometry_twins_equal_the_torch_functions():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(200, 3, generator=g, dtype=torch.float64) * 1.2
    w[0] = 0.0
    w[1] = torch.tensor([1e-6, -2e-6, 0.5e-6])
    w[2] = torch.tensor([math.pi - 1e-9, 0.0, 0.0])
    R = rotvec_to_rotmat(w)
    for k in range(len(w)):
        np.testing.assert_allclose(rotvec_to_rotmat_numpy(w[k].numpy()), R[k].numpy(), atol=1e-14)
    np.testing.assert_allclose(rotmat_to_rotvec_numpy(R.numpy()), rotmat_to_rotvec(R).numpy(), atol=1e-7)
    X = torch.randn(30, 3, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(project_numpy(X.numpy(), R[5].numpy(), 2.5, np.array([10.0, 20.0])),
                               project(X[None], R[5:6], torch.tensor([2.5], dtype=torch.float64),
                                       torch.tensor([[10.0, 20.0]], dtype=torch.float64))[0].numpy(), atol=1e-12)
