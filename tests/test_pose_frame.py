"""regressors.pose_frame: the BFM-frame offset of fitted rotations, with known answers."""
import numpy as np
import pytest
import torch

from morphable.errors import ModelNotFoundError
from morphable.geometry import angles_to_rotmat, frame_change, project, rotmat_to_angles, rotmat_to_rotvec
from regressors.pose_frame import load_bfm_keypoint_model, mean_rotation, measure_pose_frame, rotation_offsets
from tests.conftest import need_shared


def _rot(deg) -> np.ndarray:
    return angles_to_rotmat(torch.tensor(np.radians(np.asarray(deg, np.float64)))).numpy()


def _deg(R) -> np.ndarray:
    return np.degrees(rotmat_to_angles(torch.as_tensor(np.asarray(R, np.float64))).numpy())


@pytest.fixture(scope="module")
def bfm68():
    return load_bfm_keypoint_model(need_shared("models/bfm/3ddfa-mean"))


def _synthetic(model, n: int, seed: int = 0, coef: float = 0.05):
    """n faces of ``model`` (random coefficients small enough that the fit's priors barely pull) seen at random poses: landmarks (n, 68, 2) px
    and the true rotations (n, 3, 3)."""
    g = torch.Generator().manual_seed(seed)
    ang = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([40.0, 60.0, 30.0], dtype=torch.float64)
    R = angles_to_rotmat(torch.deg2rad(ang))
    shape = coef * torch.randn(n, model.n_shape, generator=g, dtype=torch.float64)
    expr = coef * torch.randn(n, model.n_expr, generator=g, dtype=torch.float64)
    X = model.landmark_points(shape, expr)
    s = torch.full((n,), 1.5, dtype=torch.float64)
    t = torch.tensor([120.0, 120.0], dtype=torch.float64).expand(n, 2)
    return project(X, R, s, t), R.numpy()


def test_bfm_keypoint_model_is_millimetres_and_centred(bfm68):
    m = bfm68.mean.numpy()
    assert m.shape == (68, 3) and bfm68.n_shape == 40 and bfm68.n_expr == 10
    np.testing.assert_allclose(m.mean(0), 0.0, atol=1e-5)  # stored in float32
    width = m[16, 0] - m[0, 0]  # jaw corner to jaw corner, subject's left minus right: x right in the image
    assert 120.0 < abs(width) < 170.0, width
    assert m[8, 1] < m[27, 1]  # chin below the nose bridge: y up


def test_offsets_of_the_same_model_in_a_turned_frame_are_the_turn(bfm68):
    """Labels made with the BFM model loaded in a frame turned by G (R_label = R_true G^T): fitting
    the BFM model to their landmarks gives D_i = G for every face."""
    L, R = _synthetic(bfm68, 24)
    G = _rot([3.0, -1.0, 2.0])
    D, rmse = rotation_offsets(bfm68, L, R @ G.T)
    assert float(rmse.max()) < 0.05  # px of a 200 px face
    for Di in D:
        np.testing.assert_allclose(Di, G, atol=1e-2)  # 0.6 degrees: pitch trades with shape a little
    np.testing.assert_allclose(_deg(mean_rotation(D)), [3.0, -1.0, 2.0], atol=0.1)


def test_measure_pose_frame_recovers_the_frame_and_uses_training_rows_only(bfm68):
    """The measured model frame D^T F_label is the frame in which fitted rotations equal the BFM
    fits' (frame_change gives D); validation rows and bad rows are never used."""
    L, R = _synthetic(bfm68, 40, seed=1)
    F_label = _rot([-4.95, 0.0, 0.0])
    G = _rot([-2.0, 0.5, 0.5])
    n = len(L)
    split = np.array(["train"] * (n - 8) + ["val"] * 8)
    ok = np.ones(n, bool)
    ok[0] = False
    rv = rotmat_to_rotvec(torch.as_tensor(R @ G.T)).numpy()  # the labels' rotations, frame turned by G
    Lbad = L.numpy().copy()
    Lbad[n - 8:] += 40.0  # validation rows would ruin the fit if they were used
    Lbad[0] = np.nan
    labels = {"landmarks3d": Lbad, "rotvec": rv, "ok": ok, "split": split,
              "set": np.array(["a", "b"] * (n // 2)), "frame_rotation": F_label}
    pf = measure_pose_frame(labels, need_shared("models/bfm/3ddfa-mean"))
    assert [s.name for s in pf.sets] == ["a", "b"] and sum(s.n for s in pf.sets) == n - 9
    np.testing.assert_allclose(pf.offset, G, atol=2e-3)  # 0.1 degrees
    np.testing.assert_allclose(frame_change(F_label, pf.model_frame), pf.offset, atol=1e-12)
    np.testing.assert_allclose(pf.model_frame, G.T @ F_label, atol=2e-3)
    assert pf.symmetric_frame_pitch_deg == pytest.approx(_deg(G.T @ F_label)[0], abs=0.1)
    j = pf.to_json()
    assert np.allclose(j["offset_deg"], [-2.0, 0.5, 0.5], atol=0.1) and len(j["sets"]) == 2


def test_mean_rotation_of_symmetric_spread_is_the_centre():
    C = _rot([10.0, -20.0, 5.0])
    E = [_rot(a) for a in ([4, 0, 0], [-4, 0, 0], [0, 3, 0], [0, -3, 0], [0, 0, 2], [0, 0, -2])]
    np.testing.assert_allclose(mean_rotation(np.stack([C @ e for e in E])), C, atol=1e-3)
    M = mean_rotation(np.stack([C, C]))
    np.testing.assert_allclose(M, C, atol=1e-12)
    assert np.linalg.det(M) > 0


def test_bad_inputs_name_the_problem(tmp_path, bfm68):
    with pytest.raises(ModelNotFoundError, match="kp68_u_base.txt"):
        load_bfm_keypoint_model(tmp_path)
    for name, n in (("kp68_u_base.txt", 204), ("kp68_w_shp_base.txt", 204 * 40), ("kp68_w_exp_base.txt", 204 * 9)):
        np.savetxt(tmp_path / name, np.zeros(n))
    with pytest.raises(ValueError, match="kp68_w_exp_base.txt.*204 x 10"):
        load_bfm_keypoint_model(tmp_path)
    with pytest.raises(ValueError, match=r"\(N, 68, 2\)"):
        rotation_offsets(bfm68, np.zeros((3, 67, 2)), np.tile(np.eye(3), (3, 1, 1)))
    labels = {"landmarks3d": np.zeros((2, 68, 2)), "rotvec": np.zeros((2, 3)), "ok": np.ones(2, bool),
              "split": np.array(["val", "val"]), "set": np.array(["a", "a"])}
    with pytest.raises(ValueError, match="no usable training rows"):
        measure_pose_frame(labels, need_shared("models/bfm/3ddfa-mean"))
