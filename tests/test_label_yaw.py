"""The labels' yaw calibration (regressors.label_yaw): a known offset is learned back from noisy
annotated yaws, the map is odd and continuous, and recalibrated labels are the same face turned to
the new yaw, which the LM reads back from their landmarks."""
import numpy as np
import pytest
import torch

from fitting.solver import FitOptions, fit_landmarks
from morphable.errors import InputError
from morphable.geometry import project, rotvec_to_rotmat
from regressors.label_yaw import YawCalibration, label_angles, learn_yaw_calibration, recalibrate_labels
from tests.test_regressors import synthetic_labels, synthetic_model


def _h(abs_yaw):
    """A made-up offset (deg): 0 at 0, +3 at 20, back to +1 at 60 and beyond."""
    return np.interp(abs_yaw, [0, 20, 60, 90], [0.0, 3.0, 1.0, 1.0])


def test_a_known_offset_is_learned_back_from_noisy_annotations():
    g = np.random.default_rng(0)
    fitted = g.uniform(-90, 90, 40000)
    annotated = fitted + np.sign(fitted) * _h(np.abs(fitted)) + g.normal(0, 6, fitted.size)
    annotated[:50] = np.nan  # rows without an annotated yaw are skipped
    annotated[50:60] = 170.0  # and so are yaws beyond the usable range
    cal = learn_yaw_calibration(fitted, annotated)
    assert cal.centres == tuple(float(c) for c in range(5, 95, 10))
    np.testing.assert_allclose(cal.offsets, _h(np.array(cal.centres)), atol=0.35)
    assert sum(cal.counts) == 40000 - 60


def test_the_map_is_odd_continuous_and_held_beyond_the_last_bin():
    cal = YawCalibration(centres=(5.0, 15.0, 25.0), offsets=(0.5, 3.0, 2.0), counts=(1, 1, 1))
    y = np.array([-40.0, -15.0, -1e-9, 0.0, 1e-9, 2.5, 15.0, 20.0, 40.0])
    np.testing.assert_allclose(cal.apply(y), y + np.sign(y) * np.array([2.0, 3.0, 0.0, 0.0, 0.0, 0.25, 3.0, 2.5, 2.0]), atol=1e-8)
    np.testing.assert_allclose(cal.apply(-y), -cal.apply(y))


def test_bad_inputs_name_the_problem():
    with pytest.raises(InputError, match="differ in length"):
        learn_yaw_calibration(np.zeros(5), np.zeros(4))
    with pytest.raises(InputError, match="no \\|yaw\\| bin"):
        learn_yaw_calibration(np.ones(10), np.full(10, np.nan))


def test_recalibrated_labels_are_the_same_face_turned_and_the_lm_reads_the_new_yaw():
    m = synthetic_model()
    lab = synthetic_labels(m, 6, seed=3)
    lab["landmark_ids"] = None  # an old label file: the model's own landmark vertices
    cal = YawCalibration(centres=(5.0, 50.0), offsets=(4.0, 4.0), counts=(1, 1))
    new = recalibrate_labels(lab, m, cal)
    a0, a1 = label_angles(lab), label_angles(new)
    np.testing.assert_allclose(a1[:, 1], cal.apply(a0[:, 1]), atol=1e-9)
    np.testing.assert_allclose(a1[:, [0, 2]], a0[:, [0, 2]], atol=1e-9)
    for k in ("shape", "expr", "scale", "target", "visible"):
        assert new[k] is lab[k]
    # the stored landmarks are the same face projected with the new rotation and translation
    X = m.landmark_points(torch.as_tensor(lab["shape"]), torch.as_tensor(lab["expr"])).double()
    P = project(X, rotvec_to_rotmat(torch.as_tensor(new["rotvec"])), torch.as_tensor(lab["scale"]),
                torch.as_tensor(new["translation"]))
    np.testing.assert_allclose(new["landmarks3d"], P.numpy(), atol=1e-9)
    # the annotated points (visible > 0) keep their mean; the whole face does not
    vis = lab["visible"] > 0
    mean = lambda L: np.stack([L[i][vis[i]].mean(0) for i in range(len(L))])  # noqa: E731
    np.testing.assert_allclose(mean(new["landmarks3d"]), mean(lab["landmarks3d"]), atol=1e-9)
    assert np.abs(new["landmarks3d"] - lab["landmarks3d"]).max() > 1.0
    # the LM, started from the old labels, reads the new yaw back from the new landmarks
    from fitting.solver import FitParams

    init = FitParams(*(torch.as_tensor(lab[k]) for k in ("shape", "expr", "rotvec", "scale", "translation")))
    res = fit_landmarks(m.double(), torch.as_tensor(new["landmarks3d"]), init=init, options=FitOptions(max_iterations=50))
    got = label_angles({"rotvec": res.params.rotvec.numpy()})[:, 1]
    np.testing.assert_allclose(got, a1[:, 1], atol=0.05)
