"""regressors.validate: the yaw-balanced validation score is the benchmark's rule, by hand."""
import math

import numpy as np

from regressors.validate import balanced, yaw_bins


def test_yaw_bins_follow_the_benchmark_edges():
    assert yaw_bins(np.array([0.0, -30.0, 30.01, 60.0, -60.5, 95.0])).tolist() == [0, 0, 1, 1, 2, 2]


def test_balanced_is_the_mean_of_the_bin_means():
    v = np.array([1.0, 3.0, 10.0, 20.0, 30.0])
    b = np.array([0, 0, 1, 2, 2])
    bal, means, counts = balanced(v, b)
    assert means == [2.0, 10.0, 25.0] and counts == [2, 1, 2] and math.isclose(bal, 37.0 / 3)
    bal, means, counts = balanced(v[:3], b[:3])  # no >60 face: left out, not zero
    assert math.isnan(means[2]) and counts[2] == 0 and math.isclose(bal, 6.0)


def test_score_pipeline_known_answers(monkeypatch):
    """score_pipeline with a stand-in pipeline that returns the labels moved by known amounts: every
    landmark 3 px to the right in a 60 x 40 px box gives 3 / sqrt(60 * 40) of NME in every bin, and
    rotations 2 degrees of pitch off give a pitch MAE of 2 and no yaw or roll error. One face's label
    pitch is 179 degrees, so its prediction reads -179: the benchmark's +-99 degree rule leaves it out
    of the pose MAE (else the pitch MAE would be (5 * 2 + 358) / 6), and its geodesic error is 2."""
    from types import SimpleNamespace

    import torch

    import fitting.pipeline as pipeline
    import regressors.data as data
    from morphable.geometry import angles_to_rotmat, rotmat_to_rotvec
    from regressors.validate import score_pipeline

    rng = np.random.default_rng(0)
    yaws = np.array([5.0, -20.0, 40.0, -50.0, 70.0, -80.0])
    ang = np.radians(np.stack([rng.uniform(-10, 10, 6), yaws, rng.uniform(-10, 10, 6)], 1))  # [pitch, yaw, roll]
    ang[5, 0] = np.radians(179.0)
    gt = np.stack([np.c_[rng.uniform(100, 160, 68), rng.uniform(50, 90, 68)] for _ in range(6)])
    gt[:, 0] = [100, 50]
    gt[:, 1] = [160, 90]  # the box of every face: exactly 60 x 40 px
    target = np.full_like(gt, np.nan)
    target[:, :10] = gt[:, :10] + [0.0, 4.0]  # 10 annotated points, 4 px above the prediction's row
    visible = np.zeros((6, 68))
    visible[:, :10] = 1.0
    visible[5] = 0.0  # a row without annotated points: left out of its set's mean
    labels = {"landmarks3d": gt, "name": np.array([f"f{i}.jpg" for i in range(6)]),
              "rotvec": rotmat_to_rotvec(angles_to_rotmat(torch.as_tensor(ang))).numpy(),
              "set": np.array(["a", "b", "a", "b", "a", "b"]), "target": target, "visible": visible}

    class Stand:
        def __init__(self, config):
            pass

        def fit_crops(self, images, boxes):
            moved = ang + np.radians([2.0, 0.0, 0.0])
            return SimpleNamespace(landmarks=torch.as_tensor(gt + [3.0, 0.0]),
                                   rotation=angles_to_rotmat(torch.as_tensor(moved)))

    monkeypatch.setattr(pipeline, "Fitter", Stand)
    monkeypatch.setattr(data, "_read_rgb", lambda path: np.zeros((4, 4, 3), np.uint8))
    r = score_pipeline(labels, model=None, data_root=".")
    want = 100 * 3 / math.sqrt(60 * 40)
    assert r["fit"]["counts"] == [2, 2, 2]
    np.testing.assert_allclose(r["fit"]["bins"] + [r["fit"]["balanced"]], want, rtol=1e-9)
    pm = r["pose_mae"]
    np.testing.assert_allclose([pm["pitch"], pm["yaw"], pm["roll"], pm["mean"]], [2.0, 0.0, 0.0, 2.0 / 3], atol=1e-9)
    assert pm["n"] == 5
    np.testing.assert_allclose([pm["geodesic_mean"], pm["geodesic_median"]], [2.0, 2.0], atol=1e-9)
    # per set: the 3 px shift against the annotation 4 px lower is 5 px; pitch 2 deg high in [0,30]
    for name in "ab":
        v = r["sets"][name]
        assert v["n"] == 3
        np.testing.assert_allclose([v["nme"], v["annotated"], v["pitch_bias_frontal"]],
                                   [want, 100 * 5 / math.sqrt(60 * 40), 2.0], rtol=1e-9)


def test_annotated_nme_by_hand():
    """Only finite points with visible > 0 count; the box is the label landmarks'; none -> NaN."""
    from regressors.validate import annotated_nme

    gt = np.zeros((2, 68, 2))
    gt[:, 1] = [30.0, 120.0]  # box 30 x 120: sqrt = 60
    pred = gt.copy()
    pred[:, 2] += [6.0, 8.0]  # 10 px off at point 2
    target = gt.copy()
    target[:, 3] = np.nan  # point 3: no annotation (NaN target), ignored whatever its weight
    vis = np.zeros((2, 68))
    vis[0, [2, 3, 4]] = [0.5, 1.0, 1.0]  # row 0: points 2 (10 px) and 4 (0 px) count
    got = annotated_nme(pred, target, vis, gt)
    assert math.isclose(got[0], 100 * 5 / 60) and math.isnan(got[1])
