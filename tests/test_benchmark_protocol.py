"""Known answers for the AFLW2000-3D benchmark: reading convention, NME, bins, pose MAE, CLI.

No timings are asserted. Most tests run on a small synthetic folder in the official layout; the
ones marked by ``need_shared`` check the real dev set in ../shared.
"""
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io as sio
import torch

from benchmarks import aflw2000_3d as runner
from benchmarks import protocol as P
from morphable.errors import InputError
from morphable.geometry import angles_to_rotmat
from tests.conftest import need_shared

ROOT = Path(__file__).resolve().parent.parent

# yaw (degrees) of the synthetic images: bins 0,0,1,1,2,2; the last one is outside +-99
SYN_YAWS = (10.0, -25.0, 45.0, -50.0, 75.0, 120.0)
SYN_SIZE = 100


def _rad(*deg):
    return np.radians(np.asarray(deg, dtype=np.float64))


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    """A folder of 6 synthetic images in the official layout: 100x100 pure-red JPEGs, ``.mat`` with
    1-based ``pt3d_68`` (float32) and ``Pose_Para`` (1x7 float32, [pitch, yaw, roll] radians)."""
    d = tmp_path_factory.mktemp("aflw_syn")
    rng = np.random.default_rng(7)
    red_bgr = np.zeros((SYN_SIZE, SYN_SIZE, 3), np.uint8)
    red_bgr[..., 2] = 255
    for i, yaw in enumerate(SYN_YAWS):
        name = f"image{i:05d}"
        xy0 = rng.uniform([20, 25], [80, 75], size=(68, 2))  # 0-based pixels
        z = rng.uniform(-30, 30, size=(68, 1))
        pt = np.concatenate([xy0 + 1.0, z], 1).T.astype(np.float32)  # stored 1-based, as MATLAB
        pose = np.zeros((1, 7), np.float32)
        pose[0, :3] = _rad(5.0 * (i - 2), yaw, -3.0 * i)
        sio.savemat(d / f"{name}.mat", {"pt3d_68": pt, "Pose_Para": pose})
        cv2.imwrite(str(d / f"{name}.jpg"), red_bgr)
    return d


@pytest.fixture(scope="module")
def syn_ds(syn) -> P.Dataset:
    return P.load_dataset(syn)


def _rotations(ds: P.Dataset) -> np.ndarray:
    return angles_to_rotmat(torch.as_tensor(ds.angles)).numpy()


def _norm(lm: np.ndarray) -> np.ndarray:
    wh = lm[..., :2].max(-2) - lm[..., :2].min(-2)
    return np.sqrt(wh[..., 0] * wh[..., 1])


def _run(argv, capsys):
    rc = runner.main(argv + ["--quiet"])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ---------------------------------------------------------------- reading and known answers

def test_reading_subtracts_one_from_xy_only(syn):
    raw = sio.loadmat(syn / "image00000.mat")
    a = P.read_annotation(syn / "image00000.mat")
    pt = raw["pt3d_68"].astype(np.float64)
    np.testing.assert_array_equal(a.landmarks[:, :2], pt[:2].T - 1.0)
    np.testing.assert_array_equal(a.landmarks[:, 2], pt[2])
    np.testing.assert_array_equal(a.angles, raw["Pose_Para"][0, :3].astype(np.float64))


def test_gt_as_prediction_scores_zero(syn_ds):
    s = P.score(syn_ds, syn_ds.landmarks, _rotations(syn_ds))
    assert np.all(s.nme_2d == 0) and np.all(s.nme_3d == 0)
    assert s.summary_2d.mean == 0 and s.summary_2d.all == 0
    assert s.pose.n == 5  # the 120 degree yaw is outside +-99
    for k in ("yaw", "pitch", "roll", "mean", "geodesic_median"):
        assert abs(getattr(s.pose, k)) < 1e-9, k


def test_known_offset_hand_computed():
    # GT bbox 40 x 10 px -> sqrt(w h) = 20 px
    gt = np.zeros((1, 68, 3))
    gt[0, :, 0] = np.linspace(0, 40, 68)
    gt[0, :, 1] = np.linspace(0, 10, 68) ** 2 / 10
    pred = gt.copy()
    pred[..., 0] += 3.0
    pred[..., 1] += 4.0
    assert P.nme_2d(pred, gt)[0] == pytest.approx(5.0 / 20.0 * 100.0, rel=1e-12)
    pred[..., 2] += 123.0  # a constant depth offset is removed by the 3D NME
    assert P.nme_3d(pred, gt)[0] == pytest.approx(25.0, rel=1e-12)
    # one point 68 px nearer: mean offset 1 is removed -> errors 67 once and 1 on 67 points
    pz = gt.copy()
    pz[0, 0, 2] += 68.0
    assert P.nme_3d(pz, gt)[0] == pytest.approx((67.0 + 67.0) / 68.0 / 20.0 * 100.0, rel=1e-12)
    assert P.nme_2d(pz, gt)[0] == 0.0


def test_region_breakdown_hand_computed():
    """Only the jaw (17 points) off by 5 px on a 20 px face: jaw 25 %, other regions 0, and the
    68-point NME is the point-weighted mean 17 * 25 / 68 = 6.25 %."""
    gt = np.zeros((1, 68, 2))
    gt[0, :, 0] = np.linspace(0, 40, 68)
    gt[0, :, 1] = np.linspace(0, 10, 68) ** 2 / 10
    pred = gt.copy()
    pred[0, :17] += [3.0, 4.0]
    r = P.nme_2d_by_region(pred, gt)
    assert list(r) == ["jaw", "brows", "nose", "eyes", "mouth"]
    assert sorted(i for ids in P.REGIONS.values() for i in ids) == list(range(68))
    assert r["jaw"][0] == pytest.approx(25.0, rel=1e-12)
    assert all(r[k][0] == 0.0 for k in ("brows", "nose", "eyes", "mouth"))
    assert P.nme_2d(pred, gt)[0] == pytest.approx(6.25, rel=1e-12)


def test_yaw_bins_edges_and_balanced_mean():
    yaw = np.array([0.0, 30.0, -30.0, 30.001, 60.0, -60.0, 60.001, 89.0, -95.0, 351.0])
    np.testing.assert_array_equal(P.yaw_bin(yaw), [0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    b = P.bin_means(np.array([1.0, 3.0, 10.0, 2.0, 2.0, 2.0]), np.array([0, 0, 1, 2, 2, 2]))
    assert b.bins == {"0-30": 2.0, "30-60": 10.0, "60-90": 2.0}
    assert b.mean == pytest.approx(14.0 / 3.0) and b.all == pytest.approx(20.0 / 6.0)
    assert b.counts == {"0-30": 2, "30-60": 1, "60-90": 3}



# ---------------------------------------------------------------- signed-error diagnostics

def _face20(n: int = 1) -> np.ndarray:
    """(n, 68, 2) GT with bbox 40 x 10 px -> sqrt(w h) = 20 px; point 67 sits on the box corner."""
    gt = np.zeros((n, 68, 2))
    gt[:, :, 0] = np.linspace(0, 40, 68)
    gt[:, :, 1] = np.linspace(0, 10, 68) ** 2 / 10
    return gt


def test_signed_errors_lip_shift_hand_computed():
    """Lips (48-67) moved by (+1, -2) px on a 20 px face, one image per yaw bin (different
    positions): outer and inner lips (+5, -10) % exactly, every other region and point 0; point NME
    sqrt(1 + 4) / 20 * 100 on the lips. Point 67 moves off the GT box, so a normaliser taken from
    the prediction's box would show."""
    gt = _face20(3) + np.array([[[0.0, 0.0]], [[100.0, 7.0]], [[-3.0, 250.0]]])
    pred = gt.copy()
    pred[:, 48:68] += [1.0, -2.0]
    pe = P.signed_errors(pred, gt, np.array([5.0, -45.0, 80.0]))
    assert pe.counts == {"0-30": 1, "30-60": 1, "60-90": 1}
    reg = pe.regions()
    assert list(reg) == ["jaw", "brows", "nose", "eyes", "outer_lips", "inner_lips"]
    for k in ("outer_lips", "inner_lips"):
        for summary, want in ((reg[k].signed_x, 5.0), (reg[k].signed_y, -10.0), (reg[k].nme, math.sqrt(5.0) * 5.0)):
            assert summary.mean == pytest.approx(want, rel=1e-12) and summary.all == pytest.approx(want, rel=1e-12)
            assert all(v == pytest.approx(want, rel=1e-12) for v in summary.bins.values())
    for k in ("jaw", "brows", "nose", "eyes"):
        assert reg[k].signed_x.mean == 0.0 and reg[k].signed_y.mean == 0.0 and reg[k].nme.mean == 0.0
    want_xy = np.zeros((68, 2))
    want_xy[48:] = [5.0, -10.0]
    np.testing.assert_allclose(pe.signed_mean, want_xy, rtol=1e-12, atol=0)
    np.testing.assert_allclose(pe.signed_bins, np.broadcast_to(want_xy, (3, 68, 2)), rtol=1e-12, atol=0)
    np.testing.assert_allclose(pe.nme_mean, np.linalg.norm(want_xy, axis=-1), rtol=1e-12, atol=0)
    # the per-point NME averages to the image NME
    signed, dist = P.point_errors(pred, gt)
    np.testing.assert_allclose(dist.mean(-1), P.nme_2d(pred, gt), rtol=1e-12)
    np.testing.assert_allclose(signed[1], want_xy, rtol=1e-12, atol=0)


def test_signed_errors_balanced_over_unequal_bins():
    """5 faces in bins 3 / 1 / 1, sizes 20 or 40 px, every point moved by (dx, dy) px:
    x % = 5, 5, 30 | -15 | 30 -> bins 40/3, -15, 30, balanced 85/9, all 11;
    y % = 0, 10, -10 | 5 | -20 -> bins 0, 5, -20, balanced -5, all -3."""
    scale = np.array([1.0, 2.0, 1.0, 1.0, 2.0])
    gt = _face20(5) * scale[:, None, None]
    shift = np.array([[1.0, 0.0], [2.0, 4.0], [6.0, -2.0], [-3.0, 1.0], [12.0, -8.0]])
    pred = gt + shift[:, None, :]
    yaw = np.array([10.0, -30.0, 25.0, 45.0, -70.0])
    pe = P.signed_errors(pred, gt, yaw)
    assert pe.counts == {"0-30": 3, "30-60": 1, "60-90": 1}
    want_bins = np.array([[40 / 3, 0.0], [-15.0, 5.0], [30.0, -20.0]])  # (3 bins, x y)
    np.testing.assert_allclose(pe.signed_bins, np.broadcast_to(want_bins[:, None, :], (3, 68, 2)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pe.signed_mean, np.tile([85 / 9, -5.0], (68, 1)), rtol=1e-12)
    np.testing.assert_allclose(pe.signed_all, np.tile([11.0, -3.0], (68, 1)), rtol=1e-12)
    norms = np.sqrt([25.0, 125.0, 1000.0, 250.0, 1300.0])  # |(x, y)| % per image
    want_nme = ((norms[0] + norms[1] + norms[2]) / 3 + norms[3] + norms[4]) / 3
    np.testing.assert_allclose(pe.nme_mean, want_nme, rtol=1e-12)
    np.testing.assert_allclose(pe.nme_all, norms.mean(), rtol=1e-12)
    eyes = pe.regions()["eyes"]
    assert eyes.signed_x.bins == pytest.approx({"0-30": 40 / 3, "30-60": -15.0, "60-90": 30.0}, rel=1e-12)
    assert eyes.signed_x.mean == pytest.approx(85 / 9, rel=1e-12) and eyes.signed_x.all == pytest.approx(11.0, rel=1e-12)
    assert eyes.signed_y.mean == pytest.approx(-5.0, rel=1e-12) and eyes.signed_y.all == pytest.approx(-3.0, rel=1e-12)
    j = pe.to_json()
    assert j["signed_x"]["mean"] == pytest.approx([85 / 9] * 68, rel=1e-12)
    assert j["signed_y"]["60-90"] == pytest.approx([-20.0] * 68, rel=1e-12)
    assert j["counts"] == {"0-30": 3, "30-60": 1, "60-90": 1} and len(j["nme"]["all"]) == 68
    # without the (30,60] face: that bin is empty (null) and left out of the balanced mean
    keep = [0, 1, 2, 4]
    pe2 = P.signed_errors(pred[keep], gt[keep], yaw[keep])
    np.testing.assert_allclose(pe2.signed_mean, np.tile([(40 / 3 + 30.0) / 2, (0.0 - 20.0) / 2], (68, 1)), rtol=1e-12)
    j2 = pe2.to_json()
    assert j2["signed_x"]["30-60"] == [None] * 68 and j2["counts"]["30-60"] == 0
    assert pe2.regions()["jaw"].signed_x.to_json()["30-60"] is None
    with pytest.raises(InputError, match="one per image"):
        P.signed_errors(pred, gt, yaw[:4])


def test_signed_regions_cancel_partition_and_match_region_nme():
    """A jaw widened by 2 px on each side: region signed x 0 (it cancels), per-point -10 / +10 %,
    jaw NME 16 * 10 / 17 %. The six regions partition the 68 points; with random errors the region
    summaries equal summarising each image's region mean, and the two lip contours together give
    the 'mouth' of nme_2d_by_region."""
    gt = _face20(1)
    pred = gt.copy()
    pred[0, 0:8, 0] -= 2.0
    pred[0, 9:17, 0] += 2.0
    pe = P.signed_errors(pred, gt, np.array([0.0]))
    jaw = pe.regions()["jaw"]
    assert jaw.signed_x.mean == pytest.approx(0.0, abs=1e-12) and jaw.signed_y.mean == 0.0
    assert jaw.nme.mean == pytest.approx(16 * 10.0 / 17, rel=1e-12)
    np.testing.assert_allclose(pe.signed_mean[:17, 0], [-10.0] * 8 + [0.0] + [10.0] * 8, rtol=1e-12)
    assert sorted(i for ids in P.DIAGNOSTIC_REGIONS.values() for i in ids) == list(range(68))

    rng = np.random.default_rng(3)
    gt = rng.uniform(0, 120, (9, 68, 2))
    pred = gt + rng.normal(0.5, 3.0, gt.shape)
    yaw = np.array([3.0, -20.0, 50.0, 40.0, -35.0, 75.0, 10.0, 29.0, -88.0])
    bins = P.yaw_bin(yaw)
    reg = P.signed_errors(pred, gt, yaw).regions()
    signed, _ = P.point_errors(pred, gt)
    for k, ids in P.DIAGNOSTIC_REGIONS.items():
        for axis, summary in ((0, reg[k].signed_x), (1, reg[k].signed_y)):
            b = P.bin_means(signed[:, list(ids), axis].mean(1), bins)
            assert summary.mean == pytest.approx(b.mean, rel=1e-12) and summary.all == pytest.approx(b.all, rel=1e-12)
            assert summary.bins == pytest.approx(b.bins, rel=1e-12)
    old = {k: P.bin_means(v, bins) for k, v in P.nme_2d_by_region(pred, gt).items()}
    for k in ("jaw", "brows", "nose", "eyes"):
        assert reg[k].nme.mean == pytest.approx(old[k].mean, rel=1e-12)
    mouth = (12 * reg["outer_lips"].nme.mean + 8 * reg["inner_lips"].nme.mean) / 20
    assert mouth == pytest.approx(old["mouth"].mean, rel=1e-12)

def test_pose_known_errors():
    gt = _rad([0.0, 20.0, 0.0], [10.0, -40.0, 5.0], [0.0, 0.0, 0.0], [0.0, 100.0, 0.0]).reshape(4, 3)
    pred = gt.copy()
    pred[:, 1] += math.radians(6.0)  # yaw error 6 deg everywhere
    R = angles_to_rotmat(torch.as_tensor(pred)).numpy()
    s, err, geo = P.pose_mae(R, gt)
    assert s.n == 3  # the 100 degree yaw is excluded
    assert s.yaw == pytest.approx(6.0, abs=1e-9) and s.pitch == pytest.approx(0.0, abs=1e-9)
    assert s.roll == pytest.approx(0.0, abs=1e-9) and s.mean == pytest.approx(2.0, abs=1e-9)
    np.testing.assert_allclose(err[:3, 1], 6.0, atol=1e-9)  # signed: predicted - GT
    np.testing.assert_allclose(err[:3, [0, 2]], 0.0, atol=1e-9)
    # geodesic: pure yaw offset of image 0 and 2 is exactly 6 deg
    assert geo[0] == pytest.approx(6.0, abs=1e-9) and geo[2] == pytest.approx(6.0, abs=1e-9)
    # a rotation about an arbitrary axis by 7 deg has geodesic error 7 whatever the Euler angles
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    from morphable.geometry import rotvec_to_rotmat

    Rg = angles_to_rotmat(torch.as_tensor(gt[:1]))
    Rp = Rg @ rotvec_to_rotmat(axis / axis.norm() * math.radians(7.0))
    assert P.geodesic_deg(Rg.numpy(), Rp.numpy())[0] == pytest.approx(7.0, abs=1e-9)


def test_validation_errors(syn_ds):
    n = len(syn_ds)
    with pytest.raises(InputError, match="shape"):
        P.score(syn_ds, np.zeros((n, 68)))
    with pytest.raises(InputError, match="hold 5 faces"):
        P.score(syn_ds, syn_ds.landmarks[:5])
    bad = syn_ds.landmarks.copy()
    bad[3, 10, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        P.score(syn_ds, bad)
    R = _rotations(syn_ds)
    R[1] *= 2.0
    with pytest.raises(InputError, match="not a rotation"):
        P.score(syn_ds, syn_ds.landmarks, R)


# ---------------------------------------------------------------- the real dev set

def test_one_pixel_convention_on_real_mat():
    """Scoring the raw 1-based pt3d_68 as 0-based predictions costs exactly a (1, 1) shift."""
    d = need_shared("data/aflw2000-3d-dev")
    names = P.list_names(d)[:25]
    ds = P.load_dataset(d, limit=25)
    raw = np.stack([sio.loadmat(d / f"{n}.mat")["pt3d_68"].T.astype(np.float64) for n in names])
    got = P.nme_2d(raw, ds.landmarks)
    want = math.sqrt(2.0) / _norm(ds.landmarks) * 100.0
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def _score_predictions(data, pred, tmp_path, capsys, limit=5):
    """Run the benchmark CLI on ``pred`` saved as .npy; returns (JSON result, stdout)."""
    np.save(tmp_path / "p.npy", pred)
    out = tmp_path / "r.json"
    rc, stdout, err = _run(["--data", str(data), "--limit", str(limit), "--predictions", str(tmp_path / "p.npy"),
                            "--out", str(out)], capsys)
    assert rc == 0, err
    return json.loads(out.read_text()), stdout


def test_cli_round_trip_on_real_images(tmp_path, capsys):
    d = need_shared("data/aflw2000-3d-dev")
    ds = P.load_dataset(d, limit=5)
    pred = ds.landmarks.copy()
    pred[..., :2] += (3.0, 4.0)
    r, stdout = _score_predictions(d, pred, tmp_path, capsys)
    assert [x["name"] for x in r["per_image"]] == P.list_names(d)[:5]
    np.testing.assert_allclose([x["nme_2d"] for x in r["per_image"]], 5.0 / _norm(ds.landmarks) * 100, rtol=1e-12)
    assert "| 5 |" in stdout


def test_dev_set_counts():
    d = need_shared("data/aflw2000-3d-dev")
    ds = P.load_dataset(d)
    assert len(ds) == 300
    assert P.subset_counts(ds) == {"0-30": 197, "30-60": 57, "60-90": 46, "pose_subset": 297}
    s = P.score(ds, ds.landmarks, _rotations(ds))
    assert s.summary_2d.counts == {"0-30": 197, "30-60": 57, "60-90": 46}
    assert s.pose.n == 297 and s.pose.mean < 1e-9 and s.summary_2d.mean == 0.0


# ---------------------------------------------------------------- the command line

def test_cli_predictions_round_trip(syn, syn_ds, tmp_path, capsys):
    pred = syn_ds.landmarks.copy()
    pred[..., 0] += 3.0
    pred[..., 1] += 4.0
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "r.npy", _rotations(syn_ds))
    out = tmp_path / "res.json"
    rc, stdout, err = _run(["--data", str(syn), "--predictions", str(tmp_path / "p.npy"), "--rotations",
                            str(tmp_path / "r.npy"), "--out", str(out), "--plots", str(tmp_path / "plots")], capsys)
    assert rc == 0, err
    r = json.loads(out.read_text())
    want = 5.0 / _norm(syn_ds.landmarks) * 100.0
    np.testing.assert_allclose([x["nme_2d"] for x in r["per_image"]], want, rtol=1e-12)
    assert [x["name"] for x in r["per_image"]] == syn_ds.names
    assert [x["yaw_bin"] for x in r["per_image"]] == ["0-30", "0-30", "30-60", "30-60", "60-90", "60-90"]
    assert r["n_images"] == 6 and r["nme_2d"]["counts"] == {"0-30": 2, "30-60": 2, "60-90": 2}
    assert r["nme_2d"]["mean"] == pytest.approx(np.mean([want[0:2].mean(), want[2:4].mean(), want[4:6].mean()]), rel=1e-12)
    assert r["nme_2d"]["all"] == pytest.approx(want.mean(), rel=1e-12)
    assert r["nme_3d"]["all"] == pytest.approx(want.mean(), rel=1e-12)  # z untouched
    assert r["pose_mae"]["n"] == 5 and r["pose_mae"]["mean"] < 1e-9
    for region in P.REGIONS:  # every point off by the same 5 px: every region equals the 68-point NME
        assert r["nme_2d_by_region"][region]["all"] == pytest.approx(want.mean(), rel=1e-12)
    assert "| jaw | 0-16 |" in stdout
    for key in ("method", "protocol", "time_per_face_ms", "per_image"):
        assert key in r
    assert "unclipped" in r["protocol"].lower()
    assert "SynergyNet" in stdout and "3DDFA_V2 x0.5" in stdout and "| 6 |" in stdout
    assert (tmp_path / "plots" / "ced.png").stat().st_size > 0 and (tmp_path / "plots" / "worst.png").stat().st_size > 0



def test_cli_signed_error_table_and_json(syn, syn_ds, tmp_path, capsys):
    """Lips moved by (+1, -2) px on the first 5 faces (bins of 2 / 2 / 1): the JSON's region and
    point diagnostics and the printed table show +100/size and -200/size balanced over the bins,
    zero elsewhere; the existing keys and the region-NME table's 5 regions stay as they were."""
    from benchmarks import report

    pred = syn_ds.landmarks[:5].copy()
    pred[:, 48:68, :2] += [1.0, -2.0]
    r, stdout = _score_predictions(syn, pred, tmp_path, capsys)
    size = _norm(syn_ds.landmarks[:5])
    wx = np.mean([(100.0 / size[i: j]).mean() for i, j in ((0, 2), (2, 4), (4, 5))])  # balanced over the bins
    assert wx != pytest.approx((100.0 / size).mean(), rel=1e-6)  # differs from the mean over images here
    assert list(r["nme_2d_by_region"]) == ["jaw", "brows", "nose", "eyes", "mouth"]
    assert list(r["region_errors_2d"]) == list(P.DIAGNOSTIC_REGIONS)
    lips = r["region_errors_2d"]["outer_lips"]
    assert lips["points"] == "48-59"
    assert lips["signed_x"]["mean"] == pytest.approx(wx, rel=1e-12)
    assert lips["signed_y"]["mean"] == pytest.approx(-2.0 * wx, rel=1e-12)
    assert lips["signed_x"]["all"] == pytest.approx((100.0 / size).mean(), rel=1e-12)
    assert r["region_errors_2d"]["inner_lips"]["nme"]["mean"] == pytest.approx(math.sqrt(5.0) * wx, rel=1e-12)
    assert r["region_errors_2d"]["jaw"]["signed_x"]["mean"] == 0.0 and r["region_errors_2d"]["nose"]["nme"]["mean"] == 0.0
    pts = r["point_errors_2d"]
    assert pts["signed_x"]["mean"] == pytest.approx([0.0] * 48 + [wx] * 20, rel=1e-12, abs=1e-15)
    assert pts["signed_y"]["mean"] == pytest.approx([0.0] * 48 + [-2.0 * wx] * 20, rel=1e-12, abs=1e-15)
    assert pts["nme"]["0-30"] == pytest.approx([0.0] * 48 + [math.sqrt(5.0) * (100.0 / size[:2]).mean()] * 20,
                                               rel=1e-12, abs=1e-15)
    assert pts["counts"] == {"0-30": 2, "30-60": 2, "60-90": 1} and "predicted - GT" in pts["definition"]
    assert "| outer lips | 48-59 |" in stdout and f"| {wx:+.2f} | {-2.0 * wx:+.2f} |" in stdout
    assert "| jaw | 0-16 | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 | +0.00 | +0.00 |" in stdout
    assert stdout.count("| jaw |") == 1  # one region table, not two
    assert "Largest balanced signed errors per point" in stdout and f"48: {wx:+.2f}, {-2.0 * wx:+.2f}" in stdout
    # a result file from before the diagnostics still renders its 5-region NME table
    old = {k: v for k, v in r.items() if k not in ("region_errors_2d", "point_errors_2d")}
    assert "| mouth | 48-67 |" in report.markdown(old)

def test_cli_one_based_list_and_limit(syn, syn_ds, tmp_path, capsys):
    raw = syn_ds.landmarks[:, :, :2] + 1.0  # the dataset's own MATLAB frame
    np.save(tmp_path / "raw.npy", raw)
    (tmp_path / "list.txt").write_text("# reversed\nimage00005\nimage00004.jpg\nimage00003\n\nimage00002\n")
    out = tmp_path / "r.json"
    rc, _, err = _run(["--data", str(syn), "--predictions", str(tmp_path / "raw.npy"), "--one-based", "--out", str(out)], capsys)
    assert rc == 0, err
    assert json.loads(out.read_text())["nme_2d"]["all"] == 0.0
    # without the flag: exactly a (1, 1) shift
    rc, _, err = _run(["--data", str(syn), "--predictions", str(tmp_path / "raw.npy"), "--out", str(out)], capsys)
    r = json.loads(out.read_text())
    np.testing.assert_allclose([x["nme_2d"] for x in r["per_image"]], math.sqrt(2) / _norm(syn_ds.landmarks) * 100, rtol=1e-12)
    assert r["nme_3d"] is None and r["pose_mae"] is None
    # --list order and --limit (a full-length file is cut to the first N of the list)
    np.save(tmp_path / "rev.npy", syn_ds.landmarks[::-1][:4])
    rc, _, err = _run(["--data", str(syn), "--list", str(tmp_path / "list.txt"), "--limit", "3",
                       "--predictions", str(tmp_path / "rev.npy"), "--out", str(out)], capsys)
    assert rc == 0, err
    r = json.loads(out.read_text())
    assert [x["name"] for x in r["per_image"]] == ["image00005", "image00004", "image00003"]
    assert r["nme_2d"]["all"] == 0.0


@pytest.mark.parametrize("case", ["no_folder", "wrong_shape", "wrong_count", "nan", "missing_file", "bad_rot"])
def test_cli_bad_input_one_line(case, syn, syn_ds, tmp_path, capsys):
    p = tmp_path / "p.npy"
    argv = ["--data", str(syn), "--predictions", str(p)]
    lm = syn_ds.landmarks.copy()
    if case == "no_folder":
        argv[1] = str(tmp_path / "nowhere")
        np.save(p, lm)
    elif case == "wrong_shape":
        np.save(p, lm[:, :5])
    elif case == "wrong_count":
        np.save(p, lm[:4])
    elif case == "nan":
        lm[2, 0, 1] = np.nan
        np.save(p, lm)
    elif case == "bad_rot":
        np.save(p, lm)
        np.save(tmp_path / "r.npy", np.tile(np.eye(3), (len(lm), 1, 1))[:, :2])
        argv += ["--rotations", str(tmp_path / "r.npy")]
    rc, stdout, err = _run(argv, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert stdout == ""


def test_cli_exit_status_through_python_m(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.aflw2000_3d", "--data", str(tmp_path / "missing"),
                        "--predictions", str(tmp_path / "p.npy")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: data folder {tmp_path / 'missing'} does not exist: "
                                             "pass --data DIR with imageXXXXX.jpg + .mat files"]


# ---------------------------------------------------------------- methods

def test_fake_method_batches_boxes_and_stage_times(syn, syn_ds, monkeypatch, tmp_path, capsys):
    calls = []

    def fake(images, boxes):
        i0 = sum(len(c) for c in calls)
        calls.append([im.shape for im in images])
        assert all(im.dtype == np.uint8 and im.shape == (SYN_SIZE, SYN_SIZE, 3) for im in images)
        assert all(im[..., 0].mean() > 200 and im[..., 2].mean() < 50 for im in images), "images must be RGB"
        np.testing.assert_array_equal(boxes, syn_ds.boxes[i0: i0 + len(images)])
        assert boxes.dtype.kind == "i" and boxes.shape == (len(images), 3)
        lm = syn_ds.landmarks[i0: i0 + len(images)].copy()
        lm[..., 0] += 3.0
        lm[..., 1] += 4.0
        R = torch.as_tensor(_rotations(syn_ds)[i0: i0 + len(images)])  # torch is accepted too
        return runner.MethodOutput(landmarks=lm, rotation=R, timings={"regress": 0.002 * len(images)})

    monkeypatch.setitem(runner.METHODS, "fake", lambda: fake)
    out = tmp_path / "r.json"
    rc, stdout, err = _run(["--data", str(syn), "--method", "fake", "--batch-size", "4", "--out", str(out)], capsys)
    assert rc == 0, err
    assert [len(c) for c in calls] == [4, 2]
    r = json.loads(out.read_text())
    assert r["method"] == "fake"
    assert r["time_per_face_ms"]["regress"] == pytest.approx(2.0)
    assert {"decode", "method_wall", "regress"} <= set(r["time_per_face_ms"])
    np.testing.assert_allclose([x["nme_2d"] for x in r["per_image"]], 5.0 / _norm(syn_ds.landmarks) * 100, rtol=1e-12)
    assert r["pose_mae"]["mean"] < 1e-9
    assert "ms/face" in stdout


def test_builtin_method_wraps_fit_crops(syn, syn_ds, monkeypatch, tmp_path, capsys):
    """The interface expected of fitting.pipeline.fit_crops, pinned with a stand-in module."""
    seen = []

    def fit_crops(images, boxes, refine):
        seen.append((len(images), refine))
        i0 = sum(k for k, _ in seen[:-1])
        gt = torch.as_tensor(syn_ds.landmarks[i0: i0 + len(images)])
        lm3 = gt.clone()
        lm3[..., 2] += 40.0  # depth origin differs: removed by the 3D NME
        return types.SimpleNamespace(landmarks=gt[..., :2].float(), landmarks3d=lm3.float(),
                                     rotation=torch.as_tensor(_rotations(syn_ds)[i0: i0 + len(images)]),
                                     timings={"regressor": 0.01, "lm": 0.02})

    mod = types.ModuleType("fitting.pipeline")
    mod.fit_crops = fit_crops
    monkeypatch.setitem(sys.modules, "fitting.pipeline", mod)
    out = tmp_path / "r.json"
    rc, _, err = _run(["--data", str(syn), "--out", str(out)], capsys)  # default method regressor+lm
    assert rc == 0, err
    assert seen == [(6, True)]
    r = json.loads(out.read_text())
    assert r["method"] == "regressor+lm" and r["nme_2d"]["all"] < 1e-4 and r["nme_3d"]["all"] < 1e-4
    assert r["time_per_face_ms"]["lm"] == pytest.approx(20.0 / 6)
    seen.clear()
    rc, _, err = _run(["--data", str(syn), "--method", "regressor", "--batch-size", "5"], capsys)
    assert rc == 0 and seen == [(5, False), (1, False)]


def test_missing_pipeline_is_one_clear_error(syn, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fitting.pipeline", None)  # makes the import fail
    rc, stdout, err = _run(["--data", str(syn), "--method", "regressor"], capsys)
    assert rc == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "fitting.pipeline.fit_crops" in lines[0] and "--predictions" in lines[0]


def test_onnx_methods_match_torch_on_real_images(tmp_path, capsys):
    """regressor:onnx and regressor:onnx-int8 run the shipped weights through onnxruntime: float
    ONNX gives the torch method's per-image NME to 0.001 points, dynamic int8 and the default method
    (what fit runs: the shipped static-int8 file) within 0.5 points."""
    pytest.importorskip("onnxruntime")
    d = need_shared("data/aflw2000-3d-dev")
    from regressors.weights import DEFAULT_WEIGHTS

    if not Path(DEFAULT_WEIGHTS).is_file():
        pytest.skip("no shipped weights")
    res = {}
    for m in ("regressor", "regressor:torch", "regressor:onnx", "regressor:onnx-int8"):
        out = tmp_path / f"{m}.json"
        rc, _, err = _run(["--data", str(d), "--limit", "3", "--method", m, "--batch-size", "3", "--out", str(out)], capsys)
        assert rc == 0, err
        res[m] = np.array([x["nme_2d"] for x in json.loads(out.read_text())["per_image"]])
    np.testing.assert_allclose(res["regressor:onnx"], res["regressor:torch"], atol=1e-3)
    assert np.abs(res["regressor:onnx-int8"] - res["regressor:torch"]).max() < 0.5  # NME points
    assert np.abs(res["regressor"] - res["regressor:torch"]).max() < 0.5
