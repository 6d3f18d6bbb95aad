"""Known answers for the one geometry module: Rodrigues, AFLW2000-3D angles, projection."""
import math

import numpy as np
import pytest
import scipy.io as sio
import torch

from morphable.geometry import angles_to_rotmat, project, rotmat_to_angles, rotmat_to_rotvec, rotvec_to_rotmat
from tests.conftest import assert_close, need_shared


def _rand_rotvec(n, max_angle=math.pi, seed=0):
    g = torch.Generator().manual_seed(seed)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    return axis * torch.rand(n, 1, generator=g, dtype=torch.float64) * max_angle


def test_rodrigues_known_answer():
    R = rotvec_to_rotmat(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    assert_close(R, torch.tensor([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64), atol=1e-12)
    assert_close(rotvec_to_rotmat(torch.zeros(3, dtype=torch.float64)), torch.eye(3, dtype=torch.float64), atol=0)


@pytest.mark.parametrize("max_angle", [1e-9, 1e-5, 1.0, math.pi - 1e-6])
def test_rotvec_round_trip(max_angle):
    w = _rand_rotvec(64, max_angle)
    R = rotvec_to_rotmat(w)
    assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(64, 3, 3), atol=1e-12)
    assert_close(torch.linalg.det(R), torch.ones(64, dtype=torch.float64), atol=1e-12)
    assert_close(rotvec_to_rotmat(rotmat_to_rotvec(R)), R, atol=1e-9)
    if max_angle < 3:
        assert_close(rotmat_to_rotvec(R), w, atol=1e-9)


def test_rodrigues_gradcheck_including_zero():
    w = torch.cat([_rand_rotvec(3), torch.zeros(1, 3, dtype=torch.float64), 1e-6 * torch.ones(1, 3, dtype=torch.float64)])
    torch.autograd.gradcheck(rotvec_to_rotmat, (w.requires_grad_(),))
    torch.autograd.gradcheck(lambda w: rotmat_to_rotvec(rotvec_to_rotmat(w)), (_rand_rotvec(4, 2.5).requires_grad_(),))


def test_angles_round_trip_and_gimbal():
    g = torch.Generator().manual_seed(1)
    a = (torch.rand(200, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([3.0, 3.1, 6.2], dtype=torch.float64)
    assert_close(rotmat_to_angles(angles_to_rotmat(a)), a, atol=1e-10)
    lock = torch.tensor([[0.3, math.pi / 2, 0.0]], dtype=torch.float64)
    assert_close(angles_to_rotmat(rotmat_to_angles(angles_to_rotmat(lock))), angles_to_rotmat(lock), atol=1e-7)


def test_projection_flips_y_and_scales():
    X = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.float64)
    x = project(X, torch.eye(3, dtype=torch.float64)[None], torch.tensor([2.0], dtype=torch.float64),
                torch.tensor([[10.0, 20.0]], dtype=torch.float64))
    assert_close(x, torch.tensor([[[12.0, 16.0]]], dtype=torch.float64))
    torch.autograd.gradcheck(lambda X, s, t: project(X, angles_to_rotmat(torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)), s, t),
                             (X.requires_grad_(), torch.tensor([2.0], dtype=torch.float64, requires_grad=True),
                              torch.tensor([[1.0, 1.0]], dtype=torch.float64, requires_grad=True)))


def test_aflw2000_pose_para_round_trip_and_side(ict_model):
    """Pose_Para -> R -> Pose_Para exactly; the default face under the GT pose lands on pt3d_68
    (only scale/translation fitted) far better than under the transposed rotation."""
    d = need_shared("data/aflw2000-3d-dev")
    L = ict_model.landmark_points(torch.zeros(1, ict_model.n_shape, dtype=torch.float64))[0]
    errs, errs_t = [], []
    for f in sorted(d.glob("*.mat"))[:40]:
        m = sio.loadmat(f)
        pp = torch.tensor(m["Pose_Para"][0, :3], dtype=torch.float64)
        if pp.abs().max() > math.radians(99):
            continue
        R = angles_to_rotmat(pp)
        assert_close(rotmat_to_angles(R), pp, atol=1e-10)
        gt = torch.tensor(m["pt3d_68"][:2].T, dtype=torch.float64) - 1.0
        for RR, out in ((R, errs), (R.T, errs_t)):
            p = project(L[None], RR[None], torch.ones(1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64))[0]
            A = torch.zeros(136, 3, dtype=torch.float64)
            A[:, 0], A[0::2, 1], A[1::2, 2] = p.reshape(-1), 1, 1
            sol = torch.linalg.lstsq(A, gt.reshape(-1, 1)).solution
            assert sol[0] > 0, "scale must come out positive: image y-down handled by P"
            nme = (A @ sol - gt.reshape(-1, 1)).reshape(68, 2).norm(dim=1).mean() / (gt.max(0).values - gt.min(0).values).prod().sqrt()
            out.append(float(nme) * 100)
    assert np.median(errs) < 6.0 and np.median(errs_t) > 2 * np.median(errs), (np.median(errs), np.median(errs_t))


def test_yaw_sign_moves_nose_image_left():
    nose = torch.tensor([[[0.0, 0.0, 100.0]]], dtype=torch.float64)
    R = angles_to_rotmat(torch.tensor([[0.0, math.radians(30), 0.0]], dtype=torch.float64))
    x = project(nose, R, torch.ones(1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64))
    assert x[0, 0, 0] < 0


def test_frame_change_keeps_every_projection():
    """R_dst = R_src @ frame_change(F_src, F_dst) maps x_dst = F_dst @ x_file where R_src maps
    x_src = F_src @ x_file; and turning by Rx(a) then back by Rx(b) is Rx(a - b)."""
    from morphable.geometry import frame_change

    g = torch.Generator().manual_seed(3)
    F_src = rotvec_to_rotmat(torch.randn(3, generator=g, dtype=torch.float64) * 0.3).numpy()
    F_dst = rotvec_to_rotmat(torch.randn(3, generator=g, dtype=torch.float64) * 0.3).numpy()
    R_src = rotvec_to_rotmat(torch.randn(5, 3, generator=g, dtype=torch.float64)).numpy()
    x_file = np.random.default_rng(0).normal(size=(3, 40))
    R_dst = R_src @ frame_change(F_src, F_dst)
    np.testing.assert_allclose(R_dst @ (F_dst @ x_file), R_src @ (F_src @ x_file), atol=1e-12)
    a, b = np.radians([-4.95, 7.0])
    Rx = lambda t: angles_to_rotmat(torch.tensor([t, 0.0, 0.0], dtype=torch.float64)).numpy()  # noqa: E731
    np.testing.assert_allclose(frame_change(Rx(a), Rx(b)), Rx(a - b), atol=1e-12)


@pytest.mark.parametrize("bad, why", [(np.eye(2), "shape"), (np.diag([1.0, 1.0, -1.0]), "determinant"),
                                      (np.full((3, 3), np.nan), "NaN"), (2 * np.eye(3), "orthonormal")])
def test_as_rotation_matrix_names_the_problem(bad, why):
    from morphable.geometry import as_rotation_matrix

    with pytest.raises(ValueError, match=why):
        as_rotation_matrix(bad)
    np.testing.assert_array_equal(as_rotation_matrix(torch.eye(3)), np.eye(3))
