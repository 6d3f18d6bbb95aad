"""Regressor package: network outputs, augmentation geometry, label files, weights, ONNX, training smoke run."""
import json
import math
import pickle

import cv2
import numpy as np
import pytest
import torch

from morphable.errors import WeightsError
from morphable.geometry import angles_to_rotmat, project, rotmat_to_angles, rotvec_to_rotmat
from morphable.model import ModelInfo, MorphableModel
from regressors.data import (CONTOUR_POINTS, DEFAULT_DROP_TARGETS, parse_drop_labels, parse_drop_targets, IBUG68_FLIP, FaceLabelDataset, expression_flip_permutation, flip_labels,
                             load_labels, rotate_labels, save_labels, select_labels)
from regressors.losses import nme
from regressors.networks import Regressor, RegressorConfig, normalize_crops, rotmat_to_sixd, sixd_to_rotmat
from regressors.weights import OnnxRegressor, export_onnx, load_regressor, save_regressor
from tests.conftest import assert_close, int8_conv_weights

EXPR_NAMES = ["brow_L", "brow_R", "jawOpen", "mouthLeft", "mouthRight", "eyeBlink_L", "eyeBlink_R"]


# ------------------------------------------------------------------------------ fixtures
def _mirror_map(n_extra_pairs: int) -> np.ndarray:
    """Vertex mirror map of the synthetic mesh: 68 landmark vertices (iBUG flip), then mirrored pairs."""
    m = list(IBUG68_FLIP)
    for k in range(n_extra_pairs):
        a = 68 + 2 * k
        m += [a + 1, a]
    return np.array(m)


def synthetic_model(Ks=5, names=EXPR_NAMES, pairs=40, seed=0, bounded=True) -> MorphableModel:
    """A small left-right symmetric model: mean and expression bases mirror-symmetric (x -> -x) under
    the vertex map, ``_L``/``_R`` and ``Left``/``Right`` blendshapes mirrors of each other."""
    g = np.random.default_rng(seed)
    N = 68 + 2 * pairs
    mir = _mirror_map(pairs)
    M = np.diag([-1.0, 1.0, 1.0])
    mean = g.normal(0, 40, (N, 3))
    mean = 0.5 * (mean + mean[mir] @ M)  # symmetric: mean[mir[i]] = M mean[i]
    Ke = len(names)
    E = g.normal(0, 3, (N, 3, Ke))
    perm = expression_flip_permutation(names)
    mirE = np.einsum("ij,njk->nik", M, E[mir][:, :, perm])  # mirror of each blendshape
    E = 0.5 * (E + mirE)
    S = g.normal(0, 5, (N, 3, Ks))
    info = ModelInfo(name="synthetic", expr_kind="blendshape" if bounded else "pca", expression_names=list(names))
    kw = dict(expr_lower=np.zeros(Ke), expr_upper=np.ones(Ke)) if bounded else {}
    return MorphableModel(mean, S, E, np.zeros((0, 3)), np.arange(68), info, **kw)


def synthetic_labels(model, n, W=160, H=150, seed=0, shape_zero=False):
    """Label rows (image frame) whose landmarks3d are the model's projected landmarks."""
    g = torch.Generator().manual_seed(seed)
    shape, expr = model.sample(n, generator=g)
    if shape_zero:
        shape = torch.zeros_like(shape)
    expr = expr.double().clamp(0, 1)
    ang = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([0.6, 1.6, 0.5], dtype=torch.float64)
    R = angles_to_rotmat(ang)
    from morphable.geometry import rotmat_to_rotvec

    ext = float((model.mean.max(0).values - model.mean.min(0).values)[:2].max())
    s = torch.full((n,), 0.6 * min(W, H) / ext, dtype=torch.float64)
    t = torch.tensor([[W / 2.0, H / 2.0]], dtype=torch.float64) + (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * 10
    lm = project(model.landmark_points(shape.double(), expr).double(), R, s, t)
    target = lm + 0.3 * torch.randn(n, 68, 2, generator=g, dtype=torch.float64)
    target[:, 60:] = float("nan")  # some absent points
    vis = torch.ones(n, 68, dtype=torch.float64)
    vis[:, 60:] = 0
    return dict(shape=shape.double().numpy(), expr=expr.numpy(), rotvec=rotmat_to_rotvec(R).numpy(), scale=s.numpy(),
                translation=t.numpy(), landmarks3d=lm.numpy(), target=target.numpy(), visible=vis.numpy())


def _row(lab, i):
    return {k: np.asarray(v[i], dtype=np.float64) for k, v in lab.items()}


def _proj(model, row):
    R = rotvec_to_rotmat(torch.as_tensor(row["rotvec"])[None])
    X = model.landmark_points(torch.as_tensor(row["shape"])[None], torch.as_tensor(row["expr"])[None]).double()
    return project(X, R, torch.tensor([float(row["scale"])], dtype=torch.float64), torch.as_tensor(row["translation"])[None])[0].numpy()


def tiny(model, arch="mobilenet", **kw):
    cfg = RegressorConfig(arch=arch, width=0.25, n_shape=model.n_shape, n_expr=model.n_expr, model_name=model.name,
                          depth=10, **kw)
    return Regressor(cfg, model.expr_lower, model.expr_upper).eval()


# ---------------------------------------------------------------------------- networks
@pytest.mark.parametrize("arch", ["mobilenet", "resnet"])
def test_output_shapes_follow_model(arch):
    for Ks, names in ((3, EXPR_NAMES[:2]), (7, EXPR_NAMES)):
        m = synthetic_model(Ks=Ks, names=names)
        out = tiny(m, arch)(torch.randn(2, 3, 120, 120))
        assert out.shape.shape == (2, Ks) and out.expr.shape == (2, len(names))
        assert out.rotvec.shape == (2, 3) and out.rotmat.shape == (2, 3, 3)
        assert out.scale.shape == (2,) and out.translation.shape == (2, 2) and out.landmarks.shape == (2, 68, 2)
        assert out.param_landmarks(m).shape == (2, 68, 2)


def test_output_shapes_default_model(ict_model):
    reg = Regressor(RegressorConfig(width=0.5, n_shape=ict_model.n_shape, n_expr=ict_model.n_expr),
                    ict_model.expr_lower, ict_model.expr_upper).eval()
    out = reg.predict(np.zeros((3, 120, 120, 3), np.uint8))
    assert out.shape.shape == (3, 100) and out.expr.shape == (3, 53) and out.landmarks.shape == (3, 68, 2)
    assert 1e6 < sum(p.numel() for p in Regressor(RegressorConfig(n_shape=100, n_expr=53)).parameters()) < 3e6


def test_expr_stays_in_range_and_rotations_are_proper():
    m = synthetic_model()
    reg = tiny(m)
    with torch.no_grad():
        for h in reg.heads.values():
            h.weight.mul_(1e4)  # huge head outputs
    out = reg(torch.randn(4, 3, 120, 120) * 5)
    assert torch.isfinite(out.expr).all() and (out.expr >= 0).all() and (out.expr <= 1).all()
    eye = torch.eye(3).expand(4, 3, 3)
    assert_close(out.rotmat @ out.rotmat.transpose(-1, -2), eye, atol=1e-5)
    assert (torch.det(out.rotmat) > 0.999).all()
    assert_close(rotvec_to_rotmat(out.rotvec), out.rotmat, atol=1e-4)
    # unbounded (PCA) expression: passed through linearly
    mp = synthetic_model(bounded=False)
    assert not torch.isfinite(tiny(mp).expr_lower).any()
    R = angles_to_rotmat(torch.tensor([[0.3, -0.8, 0.2]]))
    assert_close(sixd_to_rotmat(rotmat_to_sixd(R)), R, atol=1e-6)


def test_nme_known_answer():
    gt = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [0.0, 40.0], [10.0, 40.0]]])
    assert_close(nme(gt, gt), torch.zeros(1))
    assert_close(nme(gt + torch.tensor([1.0, 0.0]), gt), torch.tensor([100.0 / 20.0]), atol=1e-5)


def test_wing_loss_known_answers():
    from regressors.losses import wing

    x = torch.tensor([0.0, 1.0, -3.0, 10.0, 12.0], dtype=torch.float64)
    # w ln(1 + |x|/eps) below w; |x| - C above, C = w - w ln(1 + w/eps) (w 10, eps 2)
    C = 10 - 10 * math.log(6.0)
    want = [0.0, 10 * math.log(1.5), 10 * math.log(2.5), 10 * math.log(6.0), 12 - C]
    assert_close(wing(x), torch.tensor(want, dtype=torch.float64), atol=1e-12)
    # continuous at |x| = w, slope w / (eps + |x|) below it and 1 above it (float64 gradcheck of the pieces)
    assert abs(float(wing(torch.tensor(10.0 - 1e-9, dtype=torch.float64))) - float(wing(torch.tensor(10.0 + 1e-9, dtype=torch.float64)))) < 1e-6
    t = torch.tensor([0.5, 4.0, 11.0], dtype=torch.float64, requires_grad=True)
    wing(t).sum().backward()
    assert_close(t.grad, torch.tensor([10 / 2.5, 10 / 6.0, 1.0], dtype=torch.float64), atol=1e-12)
    assert torch.autograd.gradcheck(lambda v: wing(v, 4.0, 1.0), (torch.tensor([0.3, -2.0, 7.0], dtype=torch.float64, requires_grad=True),))
    with pytest.raises(ValueError, match="positive"):
        wing(x, 0.0, 2.0)


def _loss_batch(m, B: int, seed: int, image_seed: int):
    """A training batch of B synthetic 120 px labels of model ``m`` (crop frame) and random images."""
    lab = synthetic_labels(m, B, W=120, H=120, seed=seed)
    batch = {k: torch.as_tensor(np.nan_to_num(v), dtype=torch.float32) for k, v in lab.items()}
    batch["rotmat"] = rotvec_to_rotmat(batch.pop("rotvec").double()).float()
    batch["shape_w"] = torch.ones(B)
    batch["expr_w"] = torch.ones(B)
    return batch, torch.rand(B, 3, 120, 120, generator=torch.Generator().manual_seed(image_seed))


def test_head_loss_choice_changes_only_the_head_terms():
    from regressors.losses import RegressorLoss, wing

    m = synthetic_model()
    reg = tiny(m)
    batch, x = _loss_batch(m, 3, seed=3, image_seed=0)
    with torch.no_grad():
        z = reg.raw(x)
        out = reg.decode(z)
        _, sl1 = RegressorLoss(m).terms(reg, z, out, batch)
        _, wg = RegressorLoss(m, head_loss="wing", wing_width=4.0, wing_eps=1.0).terms(reg, z, out, batch)
    for k in sl1:
        if k not in ("head", "head_target"):
            assert sl1[k] == pytest.approx(wg[k], rel=1e-6), k
    want = float(wing(out.landmarks - batch["landmarks3d"], 4.0, 1.0).sum(-1).mean())
    assert wg["head"] == pytest.approx(want, rel=1e-5)
    assert wg["head"] != pytest.approx(sl1["head"], rel=1e-3)
    with pytest.raises(ValueError, match="head_loss"):
        RegressorLoss(m, head_loss="l2")
    with pytest.raises(ValueError, match="positive"):
        RegressorLoss(m, head_loss="wing", wing_eps=-1.0)


def test_best_checkpoint_selection_score():
    from regressors.train import selection_score

    m = {"nme_param": 3.0, "nme_head": 2.0}
    assert selection_score(m, "nme_param") == 3.0
    assert selection_score(m, "nme_head") == 2.0
    assert selection_score(m, "mean") == 2.5
    with pytest.raises(ValueError, match="select"):
        selection_score(m, "nme_target")


# -------------------------------------------------------------------------- augmentation
def test_flip_permutation():
    p = IBUG68_FLIP
    assert np.array_equal(p[p], np.arange(68))
    for a, b in ((36, 45), (39, 42), (0, 16), (17, 26), (31, 35), (48, 54), (60, 64), (41, 46)):
        assert p[a] == b and p[b] == a
    for a in (8, 27, 30, 33, 51, 57, 62, 66):
        assert p[a] == a
    e = expression_flip_permutation(EXPR_NAMES)
    assert [EXPR_NAMES[i] for i in e] == ["brow_R", "brow_L", "jawOpen", "mouthRight", "mouthLeft", "eyeBlink_R", "eyeBlink_L"]
    assert expression_flip_permutation([]) is None


def test_flip_twice_is_identity():
    m = synthetic_model()
    lab = _row(synthetic_labels(m, 3, seed=1), 2)
    perm = expression_flip_permutation(EXPR_NAMES)
    twice = flip_labels(flip_labels(lab, 160, perm), 160, perm)
    for k, v in lab.items():
        np.testing.assert_allclose(twice[k], v, atol=1e-12, err_msg=k)


def test_flipped_labels_project_to_mirrored_landmarks():
    m = synthetic_model().double()
    W = 160
    lab = synthetic_labels(m, 5, W=W, seed=2, shape_zero=True)
    perm = expression_flip_permutation(EXPR_NAMES)
    for i in range(5):
        row = _row(lab, i)
        f = flip_labels(row, W, perm)
        mirrored = row["landmarks3d"][IBUG68_FLIP].copy()
        mirrored[:, 0] = W - 1 - mirrored[:, 0]
        np.testing.assert_allclose(f["landmarks3d"], mirrored, atol=1e-12)
        np.testing.assert_allclose(_proj(m, f), mirrored, atol=1e-8)
        # yaw and roll change sign, pitch stays
        a = rotmat_to_angles(rotvec_to_rotmat(torch.as_tensor(np.stack([row["rotvec"], f["rotvec"]]))))
        assert_close(a[1], a[0] * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64), atol=1e-9)


def test_rotation_known_answer_and_projection():
    m = synthetic_model().double()
    row = _row(synthetic_labels(m, 2, seed=3), 1)
    c = np.array([50.0, 50.0])
    row["landmarks3d"][0] = [60.0, 50.0]
    r = rotate_labels(row, math.pi / 2, c)
    np.testing.assert_allclose(r["landmarks3d"][0], [50.0, 60.0], atol=1e-12)  # right of centre -> below it
    for theta in (0.26, -0.2):
        row = _row(synthetic_labels(m, 2, seed=3), 1)
        r = rotate_labels(row, theta, c)
        Q = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        np.testing.assert_allclose(r["landmarks3d"], (row["landmarks3d"] - c) @ Q.T + c, atol=1e-10)
        np.testing.assert_allclose(_proj(m, r), r["landmarks3d"], atol=1e-8)
    # a pure in-plane pose gains exactly theta of roll
    row["rotvec"] = np.array([0.0, 0.0, 0.0])
    a = rotmat_to_angles(rotvec_to_rotmat(torch.as_tensor(rotate_labels(row, 0.2, c)["rotvec"])))
    assert_close(a, torch.tensor([0.0, 0.0, 0.2], dtype=torch.float64), atol=1e-12)


def _blob_image(points, W, H):
    img = np.zeros((H, W, 3), np.float32)
    ys, xs = np.mgrid[:H, :W]
    for p in points:
        img += 255 * np.exp(-((xs - p[0]) ** 2 + (ys - p[1]) ** 2) / (2 * 2.0 ** 2))[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_label_file(tmp_path, model, seed: int, n: int = 12, W: int = 130, H: int = 120):
    """``tmp_path/labels.npz`` of ``n`` synthetic faces (8 train, the rest val) with blob images under
    ``tmp_path/syn``: a tiny training set for smoke runs (``--data-root tmp_path``)."""
    lab = synthetic_labels(model, n, W=W, H=H, seed=seed)
    names = [f"syn/{i}.png" for i in range(n)]
    (tmp_path / "syn").mkdir()
    for i, nm in enumerate(names):
        cv2.imwrite(str(tmp_path / nm), _blob_image(lab["landmarks3d"][i][[36, 45, 30, 48, 54]], W, H))
    save_labels(tmp_path / "labels.npz", **lab, name=names, set=["ytf68"] * n, rmse=np.ones(n), ok=np.ones(n, bool),
                split=["train"] * 8 + ["val"] * (n - 8), model=model.name)
    return tmp_path / "labels.npz"


def test_dataset_image_and_labels_agree_under_augmentation():
    """Bright blobs drawn at 4 landmarks land at the crop-frame landmarks after flip + rotation + box jitter."""
    m = synthetic_model().double()
    W, H = 160, 150
    lab = synthetic_labels(m, 2, W=W, H=H, seed=4, shape_zero=True)  # shape 0: the flip is exact
    keys = [36, 45, 30, 54]
    img = _blob_image(lab["landmarks3d"][0][keys], W, H)
    rows = dict(lab, name=np.array(["a.png", "b.png"]), set=np.array(["ytf68"] * 2), split=np.array(["train"] * 2))
    for kwargs, flipped in ((dict(p_flip=1.0, p_rotate=1.0), True), (dict(p_flip=0.0, p_rotate=1.0), False)):
        ds = FaceLabelDataset(rows, expression_names=EXPR_NAMES, augment=True, photometric=False, seed=5,
                              images={"a.png": img}, **kwargs)
        it = ds[0]
        assert bool(it["flipped"]) == flipped and float(it["shape_w"]) == (0.0 if flipped else 1.0)
        crop = (it["image"].permute(1, 2, 0).numpy() * 128 + 127.5)[..., 0]
        lm = it["landmarks3d"].numpy()
        crop_keys = [IBUG68_FLIP[k] for k in keys] if flipped else keys  # the blob of point k is now point flip(k)
        for k in crop_keys:
            x, y = lm[k]
            ys, xs = np.mgrid[:120, :120]
            win = (np.abs(xs - x) <= 5) & (np.abs(ys - y) <= 5)
            wgt = np.where(win, crop, 0.0)
            cx, cy = (wgt * xs).sum() / wgt.sum(), (wgt * ys).sum() / wgt.sum()
            assert abs(cx - x) < 0.35 and abs(cy - y) < 0.35, (k, (cx, cy), (x, y))
        # labels stay consistent: projected crop-frame params == crop-frame landmarks3d
        proj = project(m.landmark_points(it["shape"][None].double(), it["expr"][None].double()), it["rotmat"][None].double(),
                       it["scale"][None].double(), it["translation"][None].double())[0]
        assert_close(proj, it["landmarks3d"].double(), atol=2e-3)
    # same (seed, epoch, index) -> same sample; another epoch -> another one
    a, b = ds[0], ds[0]
    ds.set_epoch(1)
    c = ds[0]
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])


def test_label_file_round_trip(tmp_path):
    m = synthetic_model()
    lab = synthetic_labels(m, 4)
    extra = dict(name=[f"x/{i}.jpg" for i in range(4)], set=["ytf68", "aflw21"] * 2, rmse=np.ones(4),
                 ok=[True, True, False, True], split=["train", "val", "train", "train"])
    save_labels(tmp_path / "l.npz", **lab, **extra, model="synthetic")
    d = load_labels(tmp_path / "l.npz")
    assert d["model"] == "synthetic" and d["name"][1] == "x/1.jpg" and d["ok"].dtype == bool
    np.testing.assert_allclose(d["landmarks3d"], lab["landmarks3d"], atol=1e-4)
    bad = dict(lab, visible=np.ones((4, 67)))
    with pytest.raises(ValueError, match="visible"):
        save_labels(tmp_path / "bad.npz", **bad, **extra)


def _three_row_label_file(tmp_path, seed: int, **contour):
    """Synthetic labels of a 300w, an aflw21 and a ytf68 row saved and loaded: (labels dict, lab, extra)."""
    lab = synthetic_labels(synthetic_model(), 3, seed=seed)
    extra = dict(name=["a.png", "b.png", "c.png"], set=["300w", "aflw21", "ytf68"], rmse=np.ones(3), ok=np.ones(3, bool),
                 split=["train"] * 3)
    save_labels(tmp_path / "l.npz", **lab, **extra, model="synthetic", **contour)
    return load_labels(tmp_path / "l.npz"), lab, extra


def test_label_contour_round_trips_and_masks_the_silhouette_jaw(tmp_path):
    """``contour`` survives save/load; on "2d" rows the dataset gives the sliding jaw points (iBUG
    0-7, 9-16) no annotation weight, the chin and interior keep theirs; "3d" rows and files
    without the key are untouched; a wrong value or shape is refused."""
    d, lab, extra = _three_row_label_file(tmp_path, 2, contour=["2d", "3d", "2d"])
    assert list(d["contour"]) == ["2d", "3d", "2d"]
    assert list(select_labels(d, np.array([2, 1]))["contour"]) == ["2d", "3d"]
    save_labels(tmp_path / "old.npz", **lab, **extra, model="synthetic")
    old = load_labels(tmp_path / "old.npz")
    assert "contour" not in old
    from regressors.mixing import concat_labels

    assert list(concat_labels([(d, None), (old, None)])["contour"]) == ["2d", "3d", "2d", "3d", "3d", "3d"]
    assert "contour" not in concat_labels([(old, None), (old, None)])
    img = np.zeros((120, 130, 3), np.uint8)
    images = {n: img for n in extra["name"]}
    jaw = list(CONTOUR_POINTS)
    assert jaw == list(range(8)) + list(range(9, 17))
    for labels, masked in ((d, [True, False, True]), (old, [False, False, False])):
        ds = FaceLabelDataset(labels, expression_names=EXPR_NAMES, augment=False, images=images)
        for i in range(3):
            vis = ds[i]["visible"].numpy()
            want = np.asarray(labels["visible"][i], np.float32).copy()
            assert (want[jaw] > 0).all() and want[8] > 0  # the synthetic annotation has a jaw to mask
            if masked[i]:
                want[jaw] = 0.0
            np.testing.assert_array_equal(vis, want)
    with pytest.raises(ValueError, match="contour values"):
        save_labels(tmp_path / "bad.npz", **lab, **extra, contour=["2d", "silhouette", "3d"])
    with pytest.raises(ValueError, match="contour"):
        save_labels(tmp_path / "bad2.npz", **lab, **extra, contour=["2d", "3d"])


def test_drop_targets_by_set_and_contour(tmp_path):
    """``parse_drop_targets`` adds SEL:POINTS to the default rule; the dataset zeroes exactly those
    annotation weights on the selected rows, names the photo's own points under a mirror flip, and a
    malformed spec is refused with the format in the message."""
    assert parse_drop_targets([]) == DEFAULT_DROP_TARGETS
    rule = parse_drop_targets(["aflw21:31,35", "contour=2d:8", "300w:50-52"])
    assert rule["contour=2d"] == tuple(range(17)) and rule["aflw21"] == (31, 35) and rule["300w"] == (50, 51, 52)
    assert parse_drop_targets(["ytf68:all"], base={})["ytf68"] == tuple(range(68))
    for bad in ("aflw21", "aflw21:", ":8", "aflw21:68", "aflw21:5-2", "aflw21:x", "contour=4d:1"):
        with pytest.raises(ValueError, match="drop target"):
            parse_drop_targets([bad])
    with pytest.raises(ValueError, match="no rows of set 'aflw'"):
        parse_drop_targets(["aflw:31"], sets=["300w", "aflw21", "ytf68"])
    assert parse_drop_targets(["aflw21:31", "contour=2d:8"], sets=["aflw21"])["aflw21"] == (31,)
    d, _, extra = _three_row_label_file(tmp_path, 3, contour=["2d", "3d", "2d"])
    images = {n: np.zeros((120, 130, 3), np.uint8) for n in extra["name"]}
    ds = FaceLabelDataset(d, expression_names=EXPR_NAMES, augment=False, images=images, drop_targets=rule)
    for i, dropped in enumerate((list(range(17)) + [50, 51, 52], [31, 35], list(range(17)))):
        want = np.asarray(d["visible"][i], np.float32).copy()
        assert (want[dropped] > 0).all()
        want[dropped] = 0.0
        np.testing.assert_array_equal(ds[i]["visible"].numpy(), want)
    # an asymmetric drop follows the photo's point through a mirror flip (to its mirror index)
    one = FaceLabelDataset(d, expression_names=EXPR_NAMES, augment=True, images=images, p_flip=1.0,
                           drop_targets={"aflw21": (31,)}, photometric=False)
    vis = one[1]["visible"].numpy()
    assert vis[IBUG68_FLIP[31]] == 0.0 and vis[31] > 0 and (vis > 0).sum() == (np.asarray(d["visible"][1]) > 0).sum() - 1


def test_drop_labels_unannotated_points_below_a_yaw(tmp_path):
    """``--drop-label SEL:unannotated`` zeroes the head's label weight exactly on the selected rows'
    points without an annotation (absent or invisible), only below the yaw limit, follows the photo's
    points through a mirror flip, and the head term then ignores those label points; bad specs are
    refused with the format in the message."""
    from regressors.losses import RegressorLoss
    from regressors.mixing import label_yaw

    assert parse_drop_labels([]).empty
    rule = parse_drop_labels(["aflw21:unannotated", "300w:0-2", "300w:5"], 45.0, sets=["300w", "aflw21", "ytf68"])
    assert rule.unannotated == ("aflw21",) and rule.ids == {"300w": (0, 1, 2, 5)} and rule.max_yaw == 45.0
    for bad in ("aflw21:unannotatd", "aflw21", ":unannotated"):
        with pytest.raises(ValueError, match="label drop .*'unannotated'"):
            parse_drop_labels([bad])
    with pytest.raises(ValueError, match="no rows of set 'aflw'"):
        parse_drop_labels(["aflw:unannotated"], sets=["aflw21"])
    for bad_yaw in (0.0, -5.0, 200.0):
        with pytest.raises(ValueError, match="yaw limit"):
            parse_drop_labels(["aflw21:unannotated"], bad_yaw)
    d, _, extra = _three_row_label_file(tmp_path, 4)
    absent, hidden = [0, 1, 2, 3], [40]
    d["target"][1, absent] = np.nan
    d["visible"][1, hidden] = 0.0
    images = {n: np.zeros((120, 130, 3), np.uint8) for n in extra["name"]}
    yaw = np.abs(label_yaw(d))
    ds = FaceLabelDataset(d, expression_names=EXPR_NAMES, augment=False, images=images,
                          drop_labels=parse_drop_labels(["aflw21:unannotated", "300w:5"], float(yaw.max()) + 1.0))
    want = np.ones((3, 68), np.float32)
    want[1, absent + hidden] = 0.0
    want[1, 60:] = 0.0  # the synthetic annotation has no inner lips
    want[0, 5] = 0.0
    for i in range(3):
        np.testing.assert_array_equal(ds[i]["label_w"].numpy(), want[i])
    below = FaceLabelDataset(d, expression_names=EXPR_NAMES, augment=False, images=images,
                             drop_labels=parse_drop_labels(["aflw21:unannotated"], float(yaw[1]) - 1e-3))
    assert (below[1]["label_w"].numpy() == 1.0).all()  # the row's |yaw| is not below the limit
    assert (FaceLabelDataset(d, expression_names=EXPR_NAMES, augment=False, images=images)[1]["label_w"].numpy() == 1.0).all()
    flipped = FaceLabelDataset(d, expression_names=EXPR_NAMES, augment=True, images=images, p_flip=1.0, photometric=False,
                               drop_labels=parse_drop_labels(["aflw21:unannotated"]))[1]["label_w"].numpy()
    np.testing.assert_array_equal(flipped, want[1][IBUG68_FLIP])
    assert flipped[IBUG68_FLIP[40]] == 0.0 and flipped[40] == 1.0
    # the head term: label points of weight 0 do not count, the rest are averaged as before
    m = synthetic_model()
    reg = tiny(m)
    batch, x = _loss_batch(m, 3, seed=5, image_seed=1)
    loss = RegressorLoss(m)
    with torch.no_grad():
        z = reg.raw(x)
        out = reg.decode(z)
        batch["label_w"] = torch.as_tensor(want)
        _, a = loss.terms(reg, z, out, batch)
        moved = dict(batch, landmarks3d=batch["landmarks3d"].clone())
        moved["landmarks3d"][torch.as_tensor(want) == 0] += 50.0
        _, b = loss.terms(reg, z, out, moved)
    e = torch.nn.functional.smooth_l1_loss(out.landmarks, batch["landmarks3d"], reduction="none").sum(-1)
    keep = torch.as_tensor(want) > 0
    assert a["head"] == pytest.approx(float(e[keep].mean()), rel=1e-5)
    assert b["head"] == pytest.approx(a["head"], rel=1e-6)
    assert a["head"] != pytest.approx(float(e.mean()), rel=1e-3)


# ------------------------------------------------------------------------- weights/ONNX
def test_onnx_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    m = synthetic_model()
    reg = tiny(m)
    with torch.no_grad():  # non-trivial outputs
        for h in reg.heads.values():
            h.weight.normal_(0, 0.05)
    crops = np.random.default_rng(0).integers(0, 256, (3, 120, 120, 3), dtype=np.uint8)
    p = export_onnx(reg, tmp_path / "r.onnx")
    a, b = reg.predict(crops), OnnxRegressor(p, threads=1).predict(crops)
    for k in ("shape", "expr", "rotvec", "scale", "translation", "landmarks", "rotmat"):
        assert np.abs(getattr(a, k) - getattr(b, k)).max() < 1e-4, k


@pytest.mark.parametrize("recipe, weight_dtype", [("u8u8", "uint8"), ("u8s8", "int8"), ("u8s8-7bit", "int8")])
def test_quantize_recipes_write_their_weight_type(tmp_path, recipe, weight_dtype):
    """Each int8 recipe stores the convolution weights in its own type (U8U8: unsigned; 7-bit, the
    default: signed within +-64; neither saturates onnxruntime's x86 kernels without VNNI), records
    the source file's SHA-256, and stays near the float network on the calibration crops."""
    pytest.importorskip("onnxruntime")
    import onnx

    from regressors.quantize import INT8_META, file_sha256, quantize_static_onnx

    m = synthetic_model()
    reg = tiny(m, arch="resnet")
    w = tmp_path / "w.pt"
    save_regressor(reg, w)
    crops = np.random.default_rng(0).integers(0, 256, (8, 120, 120, 3), dtype=np.uint8)
    calib = normalize_crops(crops).numpy()
    out = quantize_static_onnx(reg, w, calib, tmp_path / "w.int8.onnx", recipe=recipe)
    conv_w = int8_conv_weights(out)
    assert conv_w and all(str(a.dtype) == weight_dtype for a in conv_w)
    if recipe == "u8s8-7bit":
        assert max(int(np.abs(a.astype(np.int32)).max()) for a in conv_w) <= 64
    meta = {e.key: e.value for e in onnx.load(str(out)).metadata_props}
    assert meta[INT8_META[0]] == file_sha256(w)
    a, b = reg.predict(crops), OnnxRegressor(out, threads=1).predict(crops)
    assert np.abs(a.landmarks - b.landmarks).mean() < 1.0
    with pytest.raises(KeyError):
        quantize_static_onnx(reg, w, calib, tmp_path / "x.onnx", recipe="u4")


def test_weight_file_errors(tmp_path):
    m = synthetic_model()
    reg = tiny(m)
    good = tmp_path / "good.pt"
    save_regressor(reg, good)
    r2 = load_regressor(good, model=m)
    x = torch.randn(1, 3, 120, 120)
    assert_close(r2(x).landmarks, reg(x).landmarks, atol=1e-6)
    with pytest.raises(WeightsError, match="not found"):
        load_regressor(tmp_path / "missing.pt")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated"):
        load_regressor(trunc)
    with pytest.raises(WeightsError, match="asked for"):
        load_regressor(good, arch="resnet")
    d = torch.load(good, weights_only=True)
    d["config"]["arch"] = "resnet"
    other = tmp_path / "other.pt"
    torch.save(d, other)
    with pytest.raises(WeightsError, match="do not fit"):
        load_regressor(other)
    with pytest.raises(WeightsError, match="Ks=5, Ke=7"):
        load_regressor(good, model=synthetic_model(Ks=4))
    with pytest.raises(WeightsError, match="not a morphable regressor"):
        torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pt")
        load_regressor(tmp_path / "plain.pt")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch " + str(_Evil.flag),))


def test_malicious_pickle_is_refused(tmp_path):
    _Evil.flag = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"format": "morphable-regressor", "config": {}, "state_dict": {}, "x": _Evil()}, bad)
    with pytest.raises(WeightsError, match="unsafe"):
        load_regressor(bad)
    assert not _Evil.flag.exists()
    with open(tmp_path / "evil2.pt", "wb") as f:  # a bare pickle, not a torch zip file
        pickle.dump(_Evil(), f)
    with pytest.raises(WeightsError):
        load_regressor(tmp_path / "evil2.pt")
    assert not _Evil.flag.exists()


# -------------------------------------------------------------------------------- training
def test_training_smoke_and_resume(tmp_path):
    from regressors import train as T

    m = synthetic_model()
    synthetic_label_file(tmp_path, m, seed=6)
    out = tmp_path / "run"
    common = ["--labels", str(tmp_path / "labels.npz"), "--out", str(out), "--data-root", str(tmp_path), "--batch", "4",
              "--width", "0.25", "--threads", "1", "--epochs", "3", "--no-progress", "--warmup", "1"]
    threads = torch.get_num_threads()
    try:
        T.train(T.build_parser().parse_args(common + ["--max-steps", "3"]), model=m)
        ck = torch.load(out / "last.pt", weights_only=True)
        assert ck["step"] == 3 and ck["epoch"] == 1 and ck["epoch_step"] == 1  # 2 steps per epoch
        assert (out / "best.pt").is_file()
        T.train(T.build_parser().parse_args(common + ["--max-steps", "5", "--resume"]), model=m)
    finally:
        torch.set_num_threads(threads)
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["step"] == 5 and ck["epoch"] == 2 and ck["epoch_step"] == 1
    assert ck["select"] == "nme_param"  # the score ``best`` holds, so a resume with another --select starts afresh
    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["type"] for r in recs].count("resume") == 1
    assert all(math.isfinite(r["nme_param"]) for r in recs if r["type"] == "val")
    reg = load_regressor(out / "best.pt", model=m)
    assert reg.predict(np.zeros((1, 120, 120, 3), np.uint8)).shape.shape == (1, m.n_shape)


def test_time_budget_run_resumes_past_the_epoch_count(tmp_path):
    """A --time-budget run sizes its schedule in steps, not epochs; interrupted after more epochs than
    --epochs, --resume continues it to its planned step count (it used to stop at once)."""
    from regressors import train as T

    m = synthetic_model()
    synthetic_label_file(tmp_path, m, seed=7)
    out = tmp_path / "run"
    common = ["--labels", str(tmp_path / "labels.npz"), "--out", str(out), "--data-root", str(tmp_path), "--batch", "4",
              "--width", "0.25", "--threads", "1", "--epochs", "1", "--no-progress", "--warmup", "1", "--time-budget", "10"]
    threads = torch.get_num_threads()
    try:
        T.train(T.build_parser().parse_args(common + ["--max-steps", "7"]), model=m)
        ck = torch.load(out / "last.pt", weights_only=True)
        assert ck["step"] == 7 and ck["epoch"] == 3  # 2 steps per epoch: past --epochs 1
        ck["total_steps"] = 9  # as if the budget had planned 9 steps and the run was stopped at 7
        torch.save(ck, out / "last.pt")
        T.train(T.build_parser().parse_args(common + ["--resume"]), model=m)
    finally:
        torch.set_num_threads(threads)
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["step"] == 9 and ck["total_steps"] == 9


def test_label_file_and_weights_carry_the_landmark_definition(tmp_path):
    """landmark_ids survive the label file (and row selection) and the weight file; bad ids are refused."""
    from regressors.data import select_labels
    from regressors.weights import save_regressor

    m = synthetic_model()
    lab = synthetic_labels(m, 4)
    extra = dict(name=[f"x/{i}.jpg" for i in range(4)], set=["ytf68"] * 4, rmse=np.ones(4), ok=[True] * 4,
                 split=["train"] * 4)
    ids = np.arange(68)[::-1] % m.n_vertices
    save_labels(tmp_path / "l.npz", **lab, **extra, model="synthetic", landmark_ids=ids)
    d = load_labels(tmp_path / "l.npz")
    assert d["landmark_ids"] == tuple(int(i) for i in ids)
    assert select_labels(d, np.array([True, False, True, False]))["landmark_ids"] == d["landmark_ids"]
    save_labels(tmp_path / "old.npz", **lab, **extra)
    assert load_labels(tmp_path / "old.npz")["landmark_ids"] is None

    reg = Regressor(RegressorConfig(arch="mobilenet", width=0.25, n_shape=m.n_shape, n_expr=m.n_expr))
    save_regressor(reg, tmp_path / "w.pt", landmark_ids=torch.as_tensor(ids))
    assert torch.equal(load_regressor(tmp_path / "w.pt", model=m).landmark_ids, torch.as_tensor(ids))
    save_regressor(reg, tmp_path / "none.pt")
    assert load_regressor(tmp_path / "none.pt", model=m).landmark_ids is None
    save_regressor(reg, tmp_path / "bad.pt", landmark_ids=torch.arange(67))
    with pytest.raises(WeightsError, match="landmark_ids"):
        load_regressor(tmp_path / "bad.pt", model=m)


# --------------------------------------------------------------------------- model frame
def _rx(deg: float) -> np.ndarray:
    return angles_to_rotmat(torch.tensor([math.radians(deg), 0.0, 0.0], dtype=torch.float64)).numpy()


def _framed(m: MorphableModel, F: np.ndarray) -> MorphableModel:
    """``m`` with every vertex turned by F (what a loader's frame_rotation does)."""
    Ft = torch.as_tensor(F, dtype=m.mean.dtype)
    info = ModelInfo(**{**m.info.__dict__, "frame_rotation": F.tolist()})
    return MorphableModel(m.mean @ Ft.T, torch.einsum("ij,njk->nik", Ft, m.shape_basis),
                          torch.einsum("ij,njk->nik", Ft, m.expr_basis), m.triangles, m.landmarks, info,
                          expr_lower=m.expr_lower, expr_upper=m.expr_upper)


def test_weights_are_corrected_to_the_model_frame(tmp_path):
    """Weights trained in one frame and loaded for a model turned by F give R' = R F^T, so every
    projected landmark stays where it was; weights saved after that keep their raw frame."""
    m = synthetic_model(bounded=False)
    F = _rx(-7.0) @ angles_to_rotmat(torch.tensor([0.0, 0.1, 0.05], dtype=torch.float64)).numpy()
    mf = _framed(m, F)
    reg = tiny(m)
    with torch.no_grad():
        for h in reg.heads.values():
            h.weight.normal_(0, 0.05)
    save_regressor(reg, tmp_path / "w.pt")  # raw frame = identity (m's own)
    crops = np.random.default_rng(1).integers(0, 256, (3, 120, 120, 3), dtype=np.uint8)
    a = load_regressor(tmp_path / "w.pt", model=m).predict(crops)
    b = load_regressor(tmp_path / "w.pt", model=mf).predict(crops)
    np.testing.assert_allclose(b.rotmat, a.rotmat @ F.T, atol=1e-5)
    t = lambda v: torch.as_tensor(v, dtype=torch.float32)  # noqa: E731
    pa = project(m.landmark_points(t(a.shape), t(a.expr)), t(a.rotmat), t(a.scale), t(a.translation))
    pb = project(mf.landmark_points(t(b.shape), t(b.expr)), t(b.rotmat), t(b.scale), t(b.translation))
    assert_close(pb, pa, atol=1e-3)
    assert not np.allclose(a.rotmat, b.rotmat, atol=1e-3)  # the correction did something
    rb = load_regressor(tmp_path / "w.pt", model=mf)
    save_regressor(rb, tmp_path / "again.pt")
    np.testing.assert_allclose(load_regressor(tmp_path / "again.pt", model=mf).predict(crops).rotmat, b.rotmat, atol=1e-6)
    torch.save({**torch.load(tmp_path / "w.pt", weights_only=True), "frame_rotation": torch.ones(3, 3)}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="frame_rotation"):
        load_regressor(tmp_path / "bad.pt", model=m)


def test_labels_move_between_frames(tmp_path):
    """to_frame re-expresses rotvec so projections are unchanged; files keep their frame; joining
    label sets of two frames is refused."""
    from regressors.data import to_frame
    from regressors.mixing import concat_labels

    m = synthetic_model(bounded=False)
    F = _rx(-4.95)
    mf = _framed(m, F)
    lab = synthetic_labels(m, 5)
    extra = dict(name=[f"x/{i}.jpg" for i in range(5)], set=["ytf68"] * 5, rmse=np.ones(5), ok=[True] * 5,
                 split=["train"] * 5)
    save_labels(tmp_path / "l.npz", **lab, **extra, model="synthetic")
    d = load_labels(tmp_path / "l.npz")
    np.testing.assert_allclose(d["frame_rotation"], np.eye(3))  # no key: the file's own frame
    e = to_frame(d, F)
    np.testing.assert_allclose(e["frame_rotation"], F)
    keys = list(lab)
    for i in range(5):
        assert_close(_proj(mf, _row({k: e[k] for k in keys}, i)), _proj(m, _row({k: d[k] for k in keys}, i)), atol=1e-3)
    back = to_frame(e, np.eye(3))
    np.testing.assert_allclose(back["rotvec"], d["rotvec"], atol=1e-5)
    save_labels(tmp_path / "f.npz", **{k: e[k] for k in lab}, **extra, model="synthetic", frame_rotation=F)
    np.testing.assert_allclose(load_labels(tmp_path / "f.npz")["frame_rotation"], F, atol=1e-12)
    with pytest.raises(ValueError, match="frame"):
        concat_labels([(d, None), (e, None)])
    assert len(concat_labels([(d, None), (to_frame(e, np.eye(3)), None)])["name"]) == 10


def test_ict_frame_rotation(ict_model, tmp_path):
    """The default model is ICT-FaceKit turned by FRAME_PITCH_DEG about x: its mean is the neutral
    OBJ (cm -> mm) turned by that rotation, and the native cache keeps the frame."""
    from pathlib import Path

    from morphable.formats.ict import FRAME_PITCH_DEG, frame_rotation
    from morphable.formats.native import load_native, save_native
    from morphable.registry import find_ict
    from tests.conftest import need_shared

    need_shared("models/ict-facekit")

    F = frame_rotation()
    np.testing.assert_allclose(F, _rx(FRAME_PITCH_DEG), atol=1e-12)
    np.testing.assert_allclose(np.asarray(ict_model.info.frame_rotation), F, atol=1e-12)
    folder = Path(find_ict())
    obj = folder / "FaceXModel" / "generic_neutral_mesh.obj" if (folder / "FaceXModel").is_dir() else folder / "generic_neutral_mesh.obj"
    v = []
    for line in obj.read_text().splitlines():
        if line.startswith("v "):
            v.append([float(x) for x in line.split()[1:4]])
            if len(v) == 3000:
                break
    raw = np.asarray(v) * 10.0
    np.testing.assert_allclose(ict_model.mean[:3000].double().numpy(), raw @ F.T, atol=1e-3)
    pitch, yaw, roll = np.degrees(rotmat_to_angles(torch.as_tensor(F)).numpy())
    assert abs(pitch - FRAME_PITCH_DEG) < 1e-9 and abs(yaw) < 1e-9 and abs(roll) < 1e-9
    again = load_native(save_native(ict_model, tmp_path / "m.h5"))
    np.testing.assert_allclose(np.asarray(again.info.frame_rotation), F, atol=1e-12)


def test_half_precision_weight_file_is_half_the_size_and_gives_the_same_outputs(tmp_path):
    """save_regressor(half=True): parameters in float16, buffers float32; read back into float32, the
    outputs move by far less than a pixel."""
    import numpy as np

    from regressors.networks import Regressor, RegressorConfig
    from regressors.weights import load_regressor, save_regressor

    torch.manual_seed(0)
    reg = Regressor(RegressorConfig(arch="mobilenet", width=0.5, n_shape=10, n_expr=5)).eval()
    save_regressor(reg, tmp_path / "f.pt")
    save_regressor(reg, tmp_path / "h.pt", half=True)
    assert (tmp_path / "h.pt").stat().st_size < 0.6 * (tmp_path / "f.pt").stat().st_size
    d = torch.load(tmp_path / "h.pt", weights_only=True)["state_dict"]
    assert d["heads.landmarks.weight"].dtype == torch.float16 and d["landmarks_mean"].dtype == torch.float32
    back = load_regressor(tmp_path / "h.pt")
    assert next(back.parameters()).dtype == torch.float32
    x = np.random.default_rng(0).integers(0, 256, (4, 120, 120, 3), dtype=np.uint8)
    assert np.abs(back.predict(x).landmarks - reg.predict(x).landmarks).max() < 0.1


def test_fit_points_can_come_from_the_label_definition(tmp_path, capsys):
    """``--fit-from-label 8``: the fitted model takes the label definition's chin vertex and keeps
    every other point; an empty list keeps the model; bad point lists are refused by name."""
    from regressors.pseudolabels import main, with_points_from

    fit = synthetic_model().with_landmarks(np.arange(68), definition="refined")
    label = fit.with_landmarks(np.arange(68)[::-1] + 10, definition="3d")
    both = with_points_from(fit, label, [8])
    ids = both.landmarks.numpy()
    assert ids[8] == label.landmarks[8] == 69 and ids[8] != fit.landmarks[8]
    assert np.array_equal(np.delete(ids, 8), np.delete(fit.landmarks.numpy(), 8))
    assert both.info.landmark_definition == "refined+3d[8]"
    assert with_points_from(fit, label, []) is fit
    for bad, why in (("x", "comma-separated point numbers"), ("68", "0..67")):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "l.npz"), "--fit-from-label", bad, "--limit", "1"])
        assert why in capsys.readouterr().err


def test_label_chin_lands_on_the_annotated_chin():
    """Real aflw21 faces (the AFLW annotations AFLW2000-3D's ground truth was fitted to): with the
    chin fitted through the 3D-style vertex (the default), the stored 3D-style chin lies on the
    annotated chin; fitted through the refined vertex it lies about 3 % of face size below it (3.00 measured)."""
    from morphable.registry import load_model
    from regressors.pseudolabels import fit_set, mouth_opening_prior, read_aflw21, with_points_from
    from tests.conftest import SHARED, skip_without_shared

    if not (SHARED / "data/aflw21/aflw21.csv").is_file():
        skip_without_shared("../shared/data/aflw21/aflw21.csv is missing")
    names, pts, w, _, yaw = read_aflw21(SHARED)
    keep = np.where((np.abs(yaw) < 30) & (w[:, 8] > 0))[0][:128]
    pts, w = pts[keep], w[keep]
    fit, label = load_model(region="face", landmarks="refined"), load_model(region="face", landmarks="3d")
    kw = dict(max_iterations=30, shape_prior=1.0, robust="huber",
              expr_prior=mouth_opening_prior(fit.info.expression_names, 1.0, 20.0))
    size = np.sqrt(np.prod(np.nanmax(pts, 1) - np.nanmin(pts, 1), axis=1))
    dy = {}
    for name, model in (("refined", fit), ("chin from 3d", with_points_from(fit, label, [8]))):
        r = fit_set(model, pts, w, "3d", 128, kw, label)
        dy[name] = float(np.mean((r["landmarks3d"][:, 8, 1] - pts[:, 8, 1]) / size * 100))
    assert abs(dy["chin from 3d"]) < 0.5, dy
    assert dy["refined"] > 1.5, dy


def test_weighted_chin_holds_against_the_sliding_jaw():
    """Real 300-W training faces (hand-annotated, 300-W-style silhouette jaw), fitted with the 2D
    contour and the chin through its 3D-style vertex: at chin weight 1 the sliding jaw outvotes the
    chin and the stored chin sits well below the annotated one (3.5 % of face size measured on 600
    faces); at weight 10 it lies on it. Faces whose fit turns beyond 45 deg of yaw keep weight 1."""
    from morphable.geometry import angles_to_rotmat, project, rotmat_to_angles, rotvec_to_rotmat
    from morphable.registry import load_model
    from regressors.pseudolabels import CHIN_SILHOUETTE_YAW, fit_chin_weighted, fit_set, read_300w, with_points_from
    from tests.conftest import SHARED, skip_without_shared

    if not (SHARED / "data/300w/afw").is_dir():
        skip_without_shared("../shared/data/300w is missing")
    names, pts, w, splits, _ = read_300w(SHARED)
    keep = np.flatnonzero(np.char.startswith(np.array(names), "300w/afw/"))[:96]
    pts, w = pts[keep], w[keep]
    fit = with_points_from(load_model(region="face", landmarks="refined"), load_model(region="face", landmarks="3d"), [8])
    label = load_model(region="face", landmarks="3d")
    kw = dict(max_iterations=30, shape_prior=1.0, expr_prior=1.0, robust="huber")
    # 300-W holds no face beyond 45 deg of fitted yaw: add four, the model's own points turned by
    # +-60 / +-70 deg of yaw with the chin pulled 6 px down, which must keep weight 1
    X = fit.landmark_points(torch.zeros(1, fit.n_shape), torch.zeros(1, fit.n_expr)).double()
    ang = torch.tensor([[0.0, a, 0.0] for a in (60.0, -60.0, 70.0, -70.0)], dtype=torch.float64).deg2rad()
    turned = project(X.expand(4, -1, -1), angles_to_rotmat(ang), torch.full((4,), 1.5, dtype=torch.float64),
                     torch.tensor([[200.0, 200.0]] * 4, dtype=torch.float64)).numpy()
    turned[:, 8, 1] += 6.0
    pts, w = np.concatenate([pts, turned]), np.concatenate([w, np.ones((4, 68))])
    r1 = fit_chin_weighted(fit, pts, w, 1.0, 128, kw, label)
    r10 = fit_chin_weighted(fit, pts, w, 10.0, 128, kw, label)
    yaw = np.degrees(rotmat_to_angles(rotvec_to_rotmat(torch.as_tensor(r10["rotvec"], dtype=torch.float64)))[:, 1].numpy())
    side = np.abs(yaw) > CHIN_SILHOUETTE_YAW
    front = np.abs(yaw) < 30
    assert side.tolist()[-4:] == [True] * 4 and side.sum() == 4 and front.sum() >= 40, (yaw[-4:], front.sum())
    size = np.sqrt(np.prod(pts.max(1) - pts.min(1), axis=1))
    dy = {k: float(np.mean((r["landmarks3d"][front, 8, 1] - pts[front, 8, 1]) / size[front] * 100))
          for k, r in (("w1", r1), ("w10", r10))}
    assert dy["w1"] > 2.0 and abs(dy["w10"]) < 0.8, dy
    # the same fits up to float32 noise of a different batch (0.012 px measured)
    np.testing.assert_allclose(r10["landmarks3d"][side], r1["landmarks3d"][side], atol=0.05)
    # weighted, the turned faces would have followed the pulled chin
    w_all = w.copy()
    w_all[:, 8] *= 10.0
    forced = fit_set(fit, pts[side], w_all[side], "2d", 128, kw, label)
    assert np.abs(forced["landmarks3d"][:, 8] - r1["landmarks3d"][side][:, 8]).max() > 0.5
