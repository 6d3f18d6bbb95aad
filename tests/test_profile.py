"""Face profiling (regressors.profile): a synthetic face rendered from the model itself is profiled
with a known yaw change; its landmarks must land where the model puts them, the labels must be
exact and round-trip through regressors.data, the run deterministic and resumable, and the
surroundings warp must leave the image border in place."""
import json
import math

import cv2
import numpy as np
import pytest
import torch

from morphable.geometry import angles_to_rotmat, project, rotmat_to_angles, rotmat_to_rotvec, rotvec_to_rotmat
from morphable.render import barycentric, rasterize, vertex_normals
from regressors.data import LABEL_KEYS, load_labels, save_labels, select_labels
from regressors.profile import (ProfileOptions, ProfileTopology, main, profile_face, project_mesh, radial_warp_map,
                                sample_target)

# landmarks whose surface patch is a full disk (not on an eye/mouth hole)
PATCH_LANDMARKS = [8, 17, 19, 21, 22, 24, 26, 30, 31, 33, 35]
RED = np.array([0, 0, 255], np.float64)  # BGR
SKIN = np.array([150, 160, 170], np.float64)


@pytest.fixture(scope="module")
def topo(ict_model):
    return ProfileTopology(ict_model, neck_cut=-100.0)


def _render_colors(X: np.ndarray, tri: np.ndarray, colors: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Vertex-colour rendering (z-buffer + barycentric interpolation) over a background image."""
    H, W = background.shape[:2]
    _, tid = rasterize(X, tri, H, W)
    m = tid >= 0
    bc = barycentric(tid, X, tri)[m]
    out = background.astype(np.float64).copy()
    out[m] = np.einsum("mk,mkc->mc", bc, colors[tri[tid[m]]])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _background(H: int, W: int) -> np.ndarray:
    gy, gx = np.mgrid[0:H, 0:W]
    return np.stack([40 + 0.5 * gx, 60 + 0.4 * gy, 90 + 30 * np.sin(gx / 7.0) * np.cos(gy / 9.0)], -1).astype(np.uint8)


def _synthetic_face(model, topo, seed=0):
    """(photo, V (n, 3), R0, s, t0, patch colours) of a random model face at a near-frontal pose."""
    g = torch.Generator().manual_seed(seed)
    shape, expr = model.sample(1, generator=g)
    shape = 0.5 * shape
    expr = torch.zeros_like(expr)
    V = topo.extend_np(model.vertices(shape.double(), expr.double()).numpy())[0]
    R0 = angles_to_rotmat(torch.tensor(np.radians([4.0, 8.0, 3.0]), dtype=torch.float64)).numpy()
    H, W, s = 240, 220, 0.95
    t0 = np.array([W / 2 - 0.3, H / 2 + 3.2])
    colors = np.tile(SKIN, (topo.n, 1))
    for j in PATCH_LANDMARKS:
        d = np.linalg.norm(V - V[topo.landmarks[j]], axis=1)
        w = np.clip((3.0 - d) / 1.0, 0.0, 1.0)[:, None]  # 2 mm disk, 1 mm soft edge
        colors = w * RED + (1 - w) * colors
    img = _render_colors(project_mesh(V, R0, s, t0), topo.tri, colors, _background(H, W))
    return img, V, R0, s, t0, colors, shape, expr


def _redness(img: np.ndarray) -> np.ndarray:
    f = img.astype(np.float64)
    return np.clip((f[..., 2] - 0.5 * (f[..., 0] + f[..., 1]) - 10.0) / 150.0, 0.0, 1.0)


def test_profiled_synthetic_face_landmarks_land_on_model_landmarks(ict_model, topo):
    img, V, R0, s, t0, colors, shape, expr = _synthetic_face(ict_model, topo)
    yaw, pitch = 45.0, 8.0  # from (4, 8, 3) deg: +37 deg of yaw, +4 of pitch
    v = profile_face(img, V, R0, s, t0, yaw, pitch, topo)
    H, W = img.shape[:2]

    # labels: the new rotation has the asked yaw/pitch and the fit's roll; landmarks are the model's
    R1 = rotvec_to_rotmat(torch.as_tensor(v.rotvec)).numpy()
    ang = np.degrees(rotmat_to_angles(torch.as_tensor(R1)).numpy())
    np.testing.assert_allclose(ang, [pitch, yaw, 3.0], atol=1e-6)
    lm = project(ict_model.landmark_points(shape.double(), expr.double()), torch.as_tensor(R1)[None],
                 torch.tensor([s], dtype=torch.float64), torch.as_tensor(v.translation)[None])[0].numpy()
    np.testing.assert_allclose(v.landmarks3d, lm, atol=1e-6)
    # the head turned about the mesh centroid: its pixel did not move
    c = V[:topo.n_face].mean(0)
    np.testing.assert_allclose(s * np.array([[1, 0, 0], [0, -1, 0]]) @ R1 @ c + v.translation,
                               s * np.array([[1, 0, 0], [0, -1, 0]]) @ R0 @ c + t0, atol=1e-9)

    # rendered landmarks: centroid of each red patch in the profiled image vs the projected vertex,
    # for patches that face the camera at the new pose (a grazing patch's centroid is not its centre)
    X1 = project_mesh(V, R1, s, v.translation)
    nz = vertex_normals(X1, topo.tri)[:, 2]
    facing = [j for j in PATCH_LANDMARKS if nz[topo.landmarks[j]] > 0.4]
    assert len(facing) >= 6
    direct = _render_colors(X1, topo.tri, colors, np.zeros_like(img))
    red, red_direct = _redness(v.image), _redness(direct)
    gy, gx = np.mgrid[0:H, 0:W]

    def centroid(r, x, y):
        win = (np.hypot(gx - x, gy - y) < 7.0) * r
        assert win.sum() > 3.0, f"no red patch near ({x:.1f}, {y:.1f})"
        return np.array([(win * gx).sum(), (win * gy).sum()]) / win.sum()

    errs = [np.linalg.norm(centroid(red, *lm[j]) - lm[j]) for j in facing]
    assert max(errs) < 1.0, f"patch centroid errors (px) of {facing}: {np.round(errs, 2)}"
    assert all(v.lm_visible[j] for j in facing)
    # every patch visible at both poses and off the silhouette (where the 1 px feathered edge cuts
    # into it) lands where a direct rendering of the textured model puts it
    both = [j for j in PATCH_LANDMARKS if nz[topo.landmarks[j]] > 0.25]
    errs = [np.linalg.norm(centroid(red, *lm[j]) - centroid(red_direct, *lm[j])) for j in both]
    assert max(errs) < 0.5, f"profiled vs direct patch centroids (px) of {both}: {np.round(errs, 2)}"

    # the face region matches a direct rendering of the textured model at the new pose
    _, tid = rasterize(X1, topo.tri, H, W)
    inner = cv2.erode((tid >= 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    diff = np.abs(v.image.astype(np.float64) - direct)[inner]
    assert np.median(diff) < 2.0 and np.mean(diff) < 8.0, (np.median(diff), np.mean(diff))

    # 2D-style jaw: the far side (subject's right, image-left at positive yaw) sits on the silhouette,
    # at or left of the 3D-style points; the inner points are the 3D-style ones
    assert (v.landmarks2d[0:5, 0] <= v.landmarks3d[0:5, 0] + 1e-9).all()
    np.testing.assert_array_equal(v.landmarks2d[17:], v.landmarks3d[17:])
    # the image border is where the photo's was (the face does not reach it)
    for sl in (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1]):
        np.testing.assert_array_equal(v.image[sl], img[sl])


def test_radial_warp_keeps_border_and_maps_outline():
    H, W = 90, 110
    m0 = np.zeros((H, W), np.uint8)
    m1 = np.zeros((H, W), np.uint8)
    cv2.ellipse(m0, (55, 45), (25, 30), 0, 0, 360, 1, -1)
    cv2.ellipse(m1, (60, 44), (15, 28), 10, 0, 360, 1, -1)
    mx, my = radial_warp_map(m0 > 0, m1 > 0, (56.0, 45.0))
    gy, gx = np.mgrid[0:H, 0:W].astype(np.float32)
    border = np.zeros((H, W), bool)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    np.testing.assert_allclose(mx[border], gx[border], atol=1e-3)
    np.testing.assert_allclose(my[border], gy[border], atol=1e-3)
    # outside the new face every pixel reads from outside the old one (no ghost of the old face)
    out1 = cv2.dilate(m1, np.ones((5, 5), np.uint8)) == 0
    src_in_old = cv2.remap(m0.astype(np.float32), mx, my, cv2.INTER_NEAREST) > 0
    assert not (src_in_old & out1).any()
    assert np.isfinite(mx).all() and np.isfinite(my).all()


def test_target_sampling_respects_limits():
    opt = ProfileOptions()
    for y0 in (-70.0, -20.0, 0.0, 5.0, 40.0, 88.0):
        for k in range(40):
            y, p = sample_target(np.random.default_rng([1, k]), y0, 3.0, opt)
            assert opt.min_yaw - 1e-9 <= abs(y) <= opt.max_yaw + 1e-9
            assert opt.min_delta - 1e-9 <= abs(y - y0) <= opt.max_delta + 1e-9
            assert abs(p - 3.0) <= opt.max_dpitch + 1e-9
    a = sample_target(np.random.default_rng([0, 7, 1]), 12.0, 0.0, opt)
    assert a == sample_target(np.random.default_rng([0, 7, 1]), 12.0, 0.0, opt)


def _write_dataset(tmp_path, model, topo, n=4):
    """n labelled synthetic photos; the last one's image is missing (a face the run must skip)."""
    root = tmp_path / "data"
    (root / "toy").mkdir(parents=True)
    rows = {k: [] for k in ("name", "shape", "expr", "rotvec", "scale", "translation", "landmarks3d")}
    for i in range(n):
        img, V, R0, s, t0, _, shape, expr = _synthetic_face(model, topo, seed=i)
        img = cv2.resize(img, (110, 120), interpolation=cv2.INTER_AREA)  # small: a fast test
        k = 110 / 220
        s, t0 = s * k, (t0 + 0.5) * k - 0.5
        name = f"toy/face{i}.jpg"
        if i < n - 1:
            cv2.imwrite(str(root / name), img)
        Rt = torch.as_tensor(R0)[None]
        rows["name"].append(name)
        rows["shape"].append(shape[0].numpy())
        rows["expr"].append(expr[0].numpy())
        rows["rotvec"].append(rotmat_to_rotvec(Rt)[0].numpy())
        rows["scale"].append(s)
        rows["translation"].append(t0)
        lm = project(model.landmark_points(shape.double(), expr.double()), Rt, torch.tensor([s], dtype=torch.float64),
                     torch.as_tensor(t0)[None])
        rows["landmarks3d"].append(lm[0].numpy())
    lab = tmp_path / "labels.npz"
    lm = np.stack(rows["landmarks3d"])
    save_labels(lab, name=rows["name"], set=["toy"] * n, shape=np.stack(rows["shape"]), expr=np.stack(rows["expr"]),
                rotvec=np.stack(rows["rotvec"]), scale=np.array(rows["scale"]),
                translation=np.stack(rows["translation"]), landmarks3d=lm, target=lm, visible=np.ones((n, 68)),
                rmse=np.zeros(n), ok=[True] * n, split=["train"] * n, model=model.name,
                landmark_ids=model.landmarks.numpy())
    return root, lab


def test_cli_labels_roundtrip_deterministic_resumable(tmp_path, ict_model, topo):
    root, lab = _write_dataset(tmp_path, ict_model, topo)
    args = ["--labels", str(lab), "--data-root", str(root), "--per-face", "2", "--seed", "3", "--chunk", "3",
            "--render-region", "narrow", "--no-progress"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(args + ["--out", str(a)]) == 0
    assert main(args + ["--out", str(b), "--contact-sheet", str(tmp_path / "sheet.png")]) == 0
    la, lb = load_labels(a / "labels.npz"), load_labels(b / "labels.npz")
    assert len(la["name"]) == 6 and la["model"] == ict_model.name
    assert la["landmark_ids"] == tuple(ict_model.landmarks.tolist())  # the source labels' definition is kept
    for k in la:
        if k != "model":
            np.testing.assert_array_equal(la[k], lb[k], err_msg=k)
    for nm in la["name"]:
        assert (a / nm).read_bytes() == (b / nm).read_bytes()
    assert cv2.imread(str(tmp_path / "sheet.png")) is not None
    # the contract: exact labels, 3D-style targets with visibility 1, profiled set names
    assert set(la["set"]) == {"profiled-toy"} and la["ok"].all() and (la["split"] == "train").all()
    np.testing.assert_array_equal(la["target"], la["landmarks3d"])
    assert (la["visible"] == 1).all() and (la["rmse"] == 0).all()
    assert (np.abs(la["yaw"]) >= 15 - 1e-4).all()
    src = load_labels(lab)
    np.testing.assert_array_equal(la["shape"], src["shape"][la["source_index"]])
    np.testing.assert_allclose(la["scale"], src["scale"][la["source_index"]])
    R = rotvec_to_rotmat(torch.as_tensor(la["rotvec"], dtype=torch.float64))
    lm = project(ict_model.landmark_points(torch.as_tensor(la["shape"]).double(), torch.as_tensor(la["expr"]).double()),
                 R, torch.as_tensor(la["scale"]).double(), torch.as_tensor(la["translation"]).double()).numpy()
    np.testing.assert_allclose(la["landmarks3d"], lm, atol=1e-3)
    # resume after a crash: a lost shard, a lost image and no merged file -> the same result
    assert len(load_labels(b / "shards" / "chunk_00001.npz")["name"]) == 0  # face 3 has no image: skipped
    (b / "shards" / "chunk_00000.npz").unlink()
    (b / la["name"][0]).unlink()
    (b / "labels.npz").unlink()
    assert main(args + ["--out", str(b), "--resume"]) == 0
    lb = load_labels(b / "labels.npz")
    for k in la:
        if k != "model":
            np.testing.assert_array_equal(la[k], lb[k], err_msg=k)
    assert (a / la["name"][0]).read_bytes() == (b / la["name"][0]).read_bytes()
    with pytest.raises(SystemExit):  # an earlier run's folder is not silently mixed into a new one
        main(args + ["--out", str(b)])

    # the profiled file mixes into training: one dataset reads real and profiled rows
    from types import SimpleNamespace

    from regressors.data import FaceLabelDataset
    from regressors.mixing import plan_mixing

    real = select_labels(src, np.arange(3))  # the faces with images
    save_labels(tmp_path / "real.npz", **{k: real[k] for k in LABEL_KEYS}, model=real["model"])
    plan = plan_mixing(real, SimpleNamespace(extra_labels=str(a / "labels.npz"), extra_root=None, mix=0.5,
                                            balance_yaw=True))
    assert (plan.n_real, plan.n_extra) == (3, 6) and plan.active
    ds = FaceLabelDataset(plan.labels, data_root=root, expression_names=ict_model.info.expression_names)
    for i in (0, 3, 8):
        item = ds[i]
        assert item["image"].shape == (3, 120, 120) and torch.isfinite(item["landmarks3d"]).all()
    assert int(ds[4]["set_id"]) == len(FaceLabelDataset.SETS)  # profiled views: "other"
    batches = plan.sampler(2, 0, 0).batches()
    assert sum(len(x) for x in batches) == 6

    # and regressors.train takes it: --extra-labels / --mix / --balance-yaw
    from regressors import train as T

    run = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        T.train(T.build_parser().parse_args(
            ["--labels", str(tmp_path / "real.npz"), "--data-root", str(root), "--out", str(run),
             "--extra-labels", str(a / "labels.npz"),
             "--mix", "0.5", "--balance-yaw", "--batch", "2", "--width", "0.25", "--threads", "1", "--max-steps", "2",
             "--no-progress", "--warmup", "1"]), model=ict_model)
    finally:
        torch.set_num_threads(threads)
    start = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()][0]
    assert start["n_train"] == 3 and start["n_extra"] == 6 and start["steps_per_epoch"] == 3
    args = json.loads((run / "args.json").read_text())  # records the network actually built
    assert args["network"]["width"] == 0.25 and args["network"]["arch"] == args["arch"] == "mobilenet"


# ----------------------------------------------------------------------------- mixing
def _rows(n, yaw_deg, prefix):
    rv = np.zeros((n, 3))
    rv[:, 1] = -np.radians(yaw_deg)  # Ry(yaw) of morphable.geometry turns by -yaw about +y
    return {"name": np.array([f"{prefix}{i}.jpg" for i in range(n)]), "set": np.array(["x"] * n),
            "shape": np.zeros((n, 4)), "expr": np.zeros((n, 2)), "rotvec": rv, "scale": np.ones(n),
            "translation": np.zeros((n, 2)), "landmarks3d": np.zeros((n, 68, 2)), "target": np.zeros((n, 68, 2)),
            "visible": np.ones((n, 68)), "rmse": np.zeros(n), "ok": np.ones(n, bool), "split": np.array(["train"] * n),
            "model": "m"}


def test_mixing_sampler_share_determinism_and_yaw_balance(tmp_path):
    from regressors.mixing import MixedEpochBatches, concat_labels, label_yaw, yaw_balance_weights

    real = _rows(100, np.linspace(-20, 20, 100), "r")
    extra = _rows(60, np.linspace(-89, 89, 60), "e")
    j = concat_labels([(real, None), (extra, tmp_path)])
    assert len(j["name"]) == 160 and j["name"][0] == "r0.jpg" and j["name"][100] == str(tmp_path.resolve() / "e0.jpg")
    np.testing.assert_allclose(label_yaw(j)[:100], np.linspace(-20, 20, 100), atol=1e-9)
    s = MixedEpochBatches(100, 60, 10, seed=1, epoch=2, mix=0.5)
    b = s.batches()
    assert len(b) == len(s) == 20 and b == MixedEpochBatches(100, 60, 10, seed=1, epoch=2, mix=0.5).batches()
    flat = np.concatenate(b)
    assert (np.sort(flat[flat < 100]) == np.arange(100)).all()  # every real row once
    assert (flat >= 100).sum() == 100 and flat.max() < 160
    assert b != MixedEpochBatches(100, 60, 10, seed=1, epoch=3, mix=0.5).batches()
    assert MixedEpochBatches(100, 60, 10, seed=1, epoch=2, mix=0.5, start=5).batches()[5:] == b[5:]
    assert len(list(MixedEpochBatches(100, 60, 10, seed=1, epoch=2, mix=0.5, start=5))) == 15
    # yaw balance: the 6 bins of |yaw| get equal mass (the real rows fill only the first two)
    w = yaw_balance_weights(label_yaw(extra))
    bins = np.minimum(np.abs(label_yaw(extra)) // 15, 5).astype(int)
    mass = np.bincount(bins, weights=w, minlength=6)
    np.testing.assert_allclose(mass, 1 / 6, atol=1e-9)
    skew = yaw_balance_weights(np.r_[np.zeros(1000), [80.0]])
    assert skew[-1] <= 10 / 1001 + 1e-12 and abs(skew.sum() - 1) < 1e-12  # a lone row is capped


def test_remap_points_beyond_opencvs_map_limit():
    """More sample points than cv2.remap's SHRT_MAX rows (a 320 px 300-W face): bilinear samples of a
    linear image are exact."""
    from regressors.profile import _remap_points

    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    img = np.dstack([xx, yy, xx + 2 * yy])
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 63, (70_000, 2)).astype(np.float32)
    out = _remap_points(img, xy)
    assert out.shape == (70_000, 3)
    np.testing.assert_allclose(out[:, :2], xy, atol=2e-2)
    np.testing.assert_allclose(out[:, 2], xy[:, 0] + 2 * xy[:, 1], atol=5e-2)
