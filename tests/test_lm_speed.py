"""Smoke tests of benchmarks/lm_speed.py internals: data, the scipy reference problem, eos's
projection, FLOP model, report. Nothing here is timed."""
import math

import numpy as np
import pytest
import torch

from benchmarks import lm_speed as B
from fitting.solver import FitOptions, _points, _Problem, _residual
from morphable.geometry import rotvec_to_rotmat
from tests.conftest import assert_close


@pytest.fixture(scope="module")
def data(ict_model):
    return B.make_synthetic(ict_model, 8)


def test_synthetic_set_is_deterministic_and_as_specified(ict_model, data):
    m = ict_model
    assert data.noisy.shape == (8, 68, 2) and data.noisy.dtype == torch.float32
    assert m.mean.dtype == torch.float32  # the caller's model is not converted
    again = B.make_synthetic(m, 8)
    assert torch.equal(again.noisy, data.noisy) and torch.equal(again.init.shape, data.init.shape)
    noise = (data.noisy.double() - data.clean).flatten()
    assert 0.4 < float(noise.std()) < 0.6
    yaw = torch.rad2deg(data.angles[:, 1]).abs()
    assert float(yaw.max()) <= 70 and float(torch.rad2deg(data.angles[:, [0, 2]]).abs().max()) <= 20
    width = data.clean[..., 0].amax(1) - data.clean[..., 0].amin(1)
    assert 80 < float(width.min()) and float(width.max()) < 230  # ~200 px frontal, narrower when turned
    # the perturbed start: 5 deg rotation, +-5 % scale, +-3 px, expressions in [0, 1]
    Rg, Ri = rotvec_to_rotmat(data.gt.rotvec), rotvec_to_rotmat(data.init.rotvec.double())
    ang = torch.rad2deg(torch.arccos((((Ri @ Rg.transpose(1, 2)).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)))
    assert_close(ang, torch.full((8,), 5.0, dtype=torch.float64), atol=1e-3)
    assert float((data.init.scale.double() / data.gt.scale - 1).abs().max()) <= 0.05 + 1e-6
    assert float((data.init.translation.double() - data.gt.translation).abs().max()) <= 3 + 1e-5
    assert float(data.init.expr.min()) >= 0 and float(data.init.expr.max()) <= 1
    sd = (data.init.shape.double() - data.gt.shape).std()
    assert 0.4 < float(sd) < 0.6


def test_left_jacobian_of_so3():
    rng = np.random.default_rng(0)
    for w in (rng.normal(size=3), np.array([1e-7, 0, 0]), np.array([0.0, 2.5, 0.3])):
        dw = 1e-6 * rng.normal(size=3)
        lhs = B.rodrigues(w + dw)
        rhs = B.rodrigues(B.left_jacobian(w) @ dw) @ B.rodrigues(w)
        assert np.abs(lhs - rhs).max() < 1e-10


def test_scipy_problem_matches_solver_residual_and_analytic_jacobian(ict_model, data):
    m = ict_model
    opt = FitOptions()
    faces = B._scipy_faces(m, data, [0, 1], opt)
    starts = B._scipy_starts(m, data, [0, 1], faces, "perturbed")
    f, p = faces[0], starts[0]
    res = f.fun(p)
    assert res.shape == (136 + m.n_shape + m.n_expr,)
    # data part == the solver's residual (percent of face size) at the same parameters
    import copy

    md = copy.deepcopy(m).double()
    prob = _Problem(md, data.noisy[:2].double(), data.weights[:2].double(), opt)
    ini = data.init.index(slice(0, 2)).to(torch.float64)
    r, _, _ = _residual(_points(ini.shape, ini.expr, prob, None), rotvec_to_rotmat(ini.rotvec), ini.scale,
                        ini.translation, prob, opt)
    assert np.abs(r[0].reshape(-1).numpy() - res[:136]).max() < 1e-6  # f from float32 vs float64 targets
    assert np.allclose(res[136:], np.r_[ini.shape[0].numpy(), ini.expr[0].numpy()])  # priors 1 -> sqrt 1
    J = f.jac(p)
    eps = 1e-6
    Jn = np.stack([(f.fun(p + eps * e) - f.fun(p - eps * e)) / (2 * eps) for e in np.eye(len(p))], 1)
    assert np.abs(J - Jn).max() < 1e-5 * np.abs(J).max()
    # bounds: blendshapes in [0, 1], the rest free
    lo, hi = f.bounds
    assert (lo[m.n_shape:m.n_shape + m.n_expr] == 0).all() and (hi[m.n_shape:m.n_shape + m.n_expr] == 1).all()
    assert np.isinf(lo[:m.n_shape]).all() and np.isinf(lo[-6:]).all()


def test_scipy_fit_respects_budget_and_lowers_cost(ict_model, data):
    faces = B._scipy_faces(ict_model, data, [2], FitOptions())
    for start in ("perturbed", "mean-face"):
        p0 = B._scipy_starts(ict_model, data, [2], faces, start)[0]
        p, res = B.fit_scipy(faces[0], p0, 2)
        assert res.nfev <= 3
        assert res.cost < 0.5 * float(np.sum(faces[0].fun(np.clip(p0, *faces[0].bounds)) ** 2))


def test_flop_model():
    fl = B.flops_per_iteration(68, 153, gram=False)
    assert fl["M"] == 136 and fl["P"] == 159
    assert fl["JtWJ"] == 2 * 136 * 159 ** 2
    assert math.isclose(fl["cholesky"], 159 ** 3 / 3)
    assert fl["solves"] == 2 * 159 ** 2
    assert 8e6 < fl["total"] < 9e6
    # shared weights: Gram combination over the whole P x P matrix, pose rows as a (6, 3L) x (3L, K)
    # GEMM after forming Q_l = Jp_l^T D R2 (2 x 6 by 2 x 3 per point), the pose block
    g = B.flops_per_iteration(68, 153)
    assert g["JtWJ"] == 2 * 6 * 159 ** 2 + 2 * 6 * 204 * 153 + 2 * 68 * 6 * 2 * 3 + 2 * 136 * 36
    assert g["gradient"] == 2 * 204 * 153 + 2 * 136 * 6 and g["bound_pass"] == 0
    # bound pass with 4 of 53 weights crossing: d0 solve, Y = L^-1 E (4 columns), Y^T Y, 4 x 4 Cholesky, solves, Y lam
    b = B.flops_per_iteration(68, 153, k_bounded=53, k_cross=4)
    assert math.isclose(b["bound_pass"], 53 ** 2 + 53 ** 2 * 4 + 2 * 16 * 53 + 64 / 3 + 2 * 16 + 2 * 53 * 4)
    assert B.flops_per_iteration(68, 153, k_bounded=6, k_cross=8)["bound_pass"] == B.flops_per_iteration(
        68, 153, k_bounded=6, k_cross=6)["bound_pass"]  # no more crossings than bounded weights


def test_eos_projection_reproduces_landmarks():
    if not B.eos_available():
        pytest.skip("eos-py or the SFM files are not available")
    from morphable.formats.sfm import load_sfm

    sfm = load_sfm(B.SFM_DIR / "sfm_shape_3448.bin")
    pts = B.sfm_mapped_points()
    assert len(pts) == 50 and 0 not in pts and 60 not in pts  # jaw and inner mouth corners are unmapped
    fitter = B.EosFitter()
    assert all(int(fitter.mapper.convert(str(i + 1))) == int(sfm.landmarks[i]) for i in pts)
    w = torch.zeros(68)
    w[pts] = 1
    sdata = B.make_synthetic(sfm, 2, seed=1, weights=w)
    assert sdata.weights.sum(1).tolist() == [50.0, 50.0]
    assert B.eos_projection_check(fitter, sfm, sdata.gt.index(slice(0, 1)), pts) < 0.01


def _fake_out():
    size = {"batch": 1024, "calls": 1, "fits_per_s": 1200.0, "ms_per_fit": 0.83, "s_per_call": 0.85}
    acc = {"rmse_noisy": 0.8, "rmse_clean": 0.7, "rmse_noisy_median": 0.8, "rmse_clean_median": 0.7,
           "converged_frac": 0.0, "iterations_mean": 4.0}
    ours = {"sizes": {"1": dict(size, batch=1, fits_per_s=200.0), "1024": size}, **acc, "accuracy_faces": 1024,
            "subset": {"faces": 10, **acc}, "tuned": dict(size, chunk=64, fits_per_s=2400.0, **acc)}
    sp = {"solver": "scipy trf (analytic J)", "faces": 10, "fits_per_s": 20.0, "ms_per_fit": 50.0, "rmse_noisy": 0.9,
          "rmse_clean": 0.8, "nfev_mean": 6.0, "njev_mean": 6.0, "max_nfev": 6}
    case = lambda it: {"start": "x", "iterations": it, "ours": ours, "scipy": sp,  # noqa: E731
                       "ratio_ours_over_scipy": {"1": 10.0, "1024": 60.0}, "ratio_tuned_over_scipy": 120.0}
    kr = {"batch": 1024, "bmm_ms": 1.0, "bmm_gflops": 1.0, "cholesky_ms": 1.0, "cholesky_gflops": 1.0, "solves_ms": 1.0,
          "tril_ms": 1.0, "per_face_iteration_us": 100.0}
    eos = {"faces": 50, "fits_per_s": 500.0, "ms_per_fit": 2.0, "rmse_noisy": 2.0, "rmse_clean": 1.9,
           "projection_check_rmse_px": 1e-4}
    out = {"quick": True, "seed": 0, "sizes": [1, 1024], "elapsed_s": 1.0,
           "env": {"torch": "t", "torch_num_threads": 1, "torch_num_interop_threads": 1, "numpy": "n", "scipy": "s",
                   "eos_py": "e", "python": "p", "env": {"OMP_NUM_THREADS": "1"}, "cpu": "c", "cpus": 2,
                   "loadavg_start": [1.0], "loadavg_end": [1.0]},
           "limits": {"gemm_fp32_1024_gflops": 100.0, "kernels": kr, "kernels_chunk": dict(kr, batch=64),
                      "flops_per_face_iteration": B.flops_per_iteration(68, 153), "bound_fits_per_s_5it_gemm_rate": 2000.0,
                      "bound_fits_per_s_5it_kernel_rates": 1000.0, "bound_fits_per_s_5it_kernel_rates_chunk": 1500.0,
                      "bound_fits_per_s_20it_gemm_rate": 500.0},
           "default_model": {"model": "m", "n_shape": 100, "n_expr": 53, "expr_kind": "blendshape", "faces": 1024,
                             "cases": {"a": case(5), "b": case(20)}},
           "sfm_vs_eos": {"model": "sfm", "n_shape": 63, "n_expr": 6, "points": 50, "faces": 1024, "eos": eos,
                          "ours": {"5": dict(ours, ratio_ours_over_eos={"1": 0.4, "1024": 2.4}, ratio_tuned_over_eos=4.8)},
                          "bound_fits_per_s_5it_gemm_rate": 9000.0}}
    return out


def test_targets_and_report_are_honest():
    out = _fake_out()
    t = B._targets(out)
    assert t["default"]["ge_100x_scipy"] is False and t["tuned"]["ge_100x_scipy"] is True
    assert t["default"]["ge_1000_fits_per_s_5it"] and t["default"]["faster_than_eos_at_le_rmse_clean"]
    out["targets"] = t
    text = B.format_report(out)
    assert "NOT MET (a 60.0x" in text and "FitOptions(workers=1)" in text and "eos-py, 50 faces" in text
    # a slower-than-eos or less accurate result must not count
    out["sfm_vs_eos"]["eos"]["rmse_clean"] = 0.5
    assert B._targets(out)["default"]["faster_than_eos_at_le_rmse_clean"] is False


def test_cli_rejects_bad_sizes():
    with pytest.raises(SystemExit):
        B.main(["--sizes", "0,64", "--no-reexec"])
    with pytest.raises(SystemExit):
        B.main(["--sizes", "a", "--no-reexec"])


def test_woodbury_prototype_solves_the_same_system():
    """benchmarks.lm_woodbury's two paths solve A x = g for A = s^2 (G - Jz^T Jz) + c I, checked
    against a dense solve in float64 on a random basis."""
    from benchmarks.lm_woodbury import Paths, _faces

    g = torch.Generator().manual_seed(3)
    Bc = torch.randn(12, 3, 9, generator=g, dtype=torch.float64)
    p = Paths(Bc)
    _, s, c, rhs = (t.double() for t in _faces(5, 9, seed=1))
    R = rotvec_to_rotmat(torch.randn(5, 3, generator=g, dtype=torch.float64))  # orthonormal in float64
    r3 = R[:, 2, :]
    Jz = torch.einsum("na,lak->nlk", r3, Bc)
    G = torch.einsum("lak,lam->km", Bc, Bc)
    A = (s ** 2)[:, None, None] * (G - Jz.transpose(1, 2) @ Jz) + c[:, None, None] * torch.eye(9, dtype=torch.float64)
    x = torch.linalg.solve(A, rhs[..., None]).squeeze(-1)
    torch.testing.assert_close(p.cholesky(R, s, c, rhs), x, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(p.woodbury(R, s, c, rhs), x, rtol=1e-8, atol=1e-10)
