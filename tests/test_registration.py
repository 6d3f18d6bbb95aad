"""Known-answer tests of morphable.registration: the similarity, the non-rigid registration of a
synthetic morphable model to a moved copy of one of its instances, point transfer, and the
shipped 3D-style landmark definition."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from morphable.errors import InputError, ModelFormatError
from morphable.geometry import angles_to_rotmat
from morphable.landmark_definition import read_landmark_file
from morphable.model import ModelInfo, MorphableModel
from morphable.registration import (
    IBUG68_REGIONS,
    closest_points_on_mesh,
    landmark_definition_dict,
    register_model,
    similarity_align,
    transfer_points,
    write_landmark_definition,
)

from tests.conftest import need_shared

SHIPPED = Path(__file__).resolve().parent.parent / "morphable" / "data" / "ict_landmarks_68_bfm.json"
FACE_VERTICES = 9409


def _rot(pitch, yaw, roll):
    return angles_to_rotmat(torch.tensor(np.radians([pitch, yaw, roll]), dtype=torch.float64)).numpy()


# --------------------------------------------------------------------------- similarity


def test_similarity_align_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(50, 3)) * 40.0
    R = _rot(12.0, -35.0, 7.0)
    s, t = 987.5, np.array([3.0e3, -1.2e4, 5.0e2])
    dst = s * src @ R.T + t
    s_, R_, t_ = similarity_align(src, dst)
    assert abs(s_ - s) / s < 1e-12
    assert np.abs(R_ - R).max() < 1e-9
    assert np.abs(t_ - t).max() / s < 1e-9
    # batched, with weights, and rigid-only
    src_b = rng.normal(size=(4, 20, 3))
    Rb = np.stack([_rot(*a) for a in rng.uniform(-60, 60, size=(4, 3))])
    sb = rng.uniform(0.5, 3.0, size=4)
    tb = rng.normal(size=(4, 3))
    dst_b = sb[:, None, None] * np.einsum("bij,bpj->bpi", Rb, src_b) + tb[:, None]
    s2, R2, t2 = similarity_align(src_b, dst_b, weights=rng.uniform(0.1, 1.0, size=(4, 20)))
    assert np.abs(s2 - sb).max() < 1e-9 and np.abs(R2 - Rb).max() < 1e-9 and np.abs(t2 - tb).max() < 1e-9
    s3, R3, _ = similarity_align(src_b, np.einsum("bij,bpj->bpi", Rb, src_b) + tb[:, None], allow_scale=False)
    assert np.allclose(s3, 1.0) and np.abs(R3 - Rb).max() < 1e-9


def test_similarity_align_never_reflects_and_checks_input():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(30, 3))
    dst = src * np.array([1.0, 1.0, -1.0])  # a mirror image: best proper rotation, det +1
    _, R, _ = similarity_align(src, dst)
    assert np.linalg.det(R) == pytest.approx(1.0)
    with pytest.raises(InputError, match="at least 3"):
        similarity_align(src[:2], dst[:2])
    with pytest.raises(InputError, match="must both be"):
        similarity_align(src, dst[:10])
    bad = src.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        similarity_align(bad, dst)


# --------------------------------------------------------------------------- synthetic model


def _grid_model(n: int = 25) -> MorphableModel:
    """A 100 x 100 mm curved patch (n x n vertices) with 3 smooth shape modes and 2 bounded
    blendshapes; every mode is mostly normal to the surface, so closest points can see it."""
    u = np.linspace(-1.0, 1.0, n)
    x, y = np.meshgrid(u, u, indexing="xy")
    x, y = x.reshape(-1), y.reshape(-1)
    z = 25.0 * np.exp(-(x ** 2 + 1.7 * y ** 2) / 0.6) + 6.0 * x * y + 4.0 * x ** 2 * y
    mean = np.stack([50.0 * x, 50.0 * y, z], 1)

    def bump(cx, cy, w, h):
        return h * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / w)

    zmode = lambda b: np.stack([np.zeros_like(b), np.zeros_like(b), b], 1)  # noqa: E731
    shape = np.stack([zmode(bump(0.45, 0.3, 0.08, 4.0)), zmode(bump(-0.4, -0.25, 0.12, 3.0)),
                      zmode(bump(0.0, -0.6, 0.1, -3.5))], 2)
    expr = np.stack([zmode(bump(-0.5, 0.5, 0.06, 5.0)), zmode(bump(0.5, -0.45, 0.06, -4.0))], 2)
    tri = []
    for r in range(n - 1):
        for c in range(n - 1):
            a, b, d, e = r * n + c, r * n + c + 1, (r + 1) * n + c, (r + 1) * n + c + 1
            tri += [(a, b, e), (a, e, d)]  # counter-clockwise seen from +z
    landmarks = np.linspace(n + 1, n * n - n - 2, 68).astype(np.int64)
    return MorphableModel(mean, shape, expr, np.array(tri), landmarks, ModelInfo(name="synthetic", expr_kind="blendshape"),
                          expr_lower=np.zeros(2), expr_upper=np.ones(2))


def test_register_synthetic_recovers_similarity_coefficients_and_points():
    model = _grid_model()
    alpha = np.array([0.8, -1.1, 0.6])
    beta = np.array([0.35, 0.7])
    X = model.vertices(torch.tensor(alpha[None], dtype=torch.float64),
                       torch.tensor(beta[None], dtype=torch.float64))[0].numpy()
    R, s, t = _rot(8.0, -15.0, 4.0), 1000.0, np.array([2.0e3, -4.0e3, 1.5e4])  # e.g. micrometres
    Y = s * X @ R.T + t
    F = model.triangles.numpy()
    perm = np.random.default_rng(2).permutation(len(Y))  # the target's vertex order is its own
    inv = np.argsort(perm)
    Yp, Fp = Y[perm], inv[F]
    lm = model.landmarks.numpy()[::4]
    reg = register_model(model, Yp, Fp, init_pairs=(lm, Y[lm]), iterations=100, rigid_iterations=3,
                         shape_prior=0.0, expr_prior=0.0, max_distance_start=10.0, max_distance=5.0)
    assert reg.scale == pytest.approx(s, rel=1e-9)
    assert np.abs(reg.rotation - R).max() < 1e-9
    assert np.abs(reg.translation - t).max() / s < 1e-7
    assert np.abs(reg.shape - alpha).max() < 1e-7
    assert np.abs(reg.expr - beta).max() < 1e-7
    assert np.abs(reg.vertices - X).max() < 1e-7
    assert reg.rms_mm < 1e-7 and reg.n_forward > 300
    # target points on target triangles come back as the same triangle + barycentric
    rng = np.random.default_rng(3)
    k = rng.choice(len(F), 40, replace=False)
    b = rng.uniform(0.1, 1.0, size=(40, 3))
    b /= b.sum(1, keepdims=True)
    pts = np.einsum("pk,pkc->pc", b, Yp[Fp[k]])
    tr = transfer_points(reg.vertices, F, reg.to_model(pts))
    assert np.array_equal(tr.triangle, k)
    assert np.abs(tr.barycentric - b).max() < 1e-6
    assert tr.residual_mm.max() < 1e-6
    # the nearest vertex is the nearest of all vertices to the surface point
    d_all = np.linalg.norm(reg.vertices[None] - tr.surface[:, None], axis=2)
    assert np.allclose(tr.snap_mm, d_all.min(1))
    # round trip of the similarity helpers
    assert np.abs(reg.to_target(reg.to_model(pts)) - pts).max() < 1e-6


def test_register_respects_expression_bounds():
    model = _grid_model(15)
    X = model.vertices(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([[0.0, 1.0]], dtype=torch.float64))[0].numpy()
    # push the second blendshape beyond its upper bound: the fit must stop at 1
    X = X + 0.8 * model.expr_basis[:, :, 1].double().numpy()
    reg = register_model(model, X, model.triangles.numpy(), init_similarity=(1.0, np.eye(3), np.zeros(3)),
                         iterations=15, rigid_iterations=0, fit_shape=False, expr_prior=0.0)
    assert np.all(reg.expr >= 0.0) and np.all(reg.expr <= 1.0)
    assert reg.expr[1] == pytest.approx(1.0)


def test_closest_points_on_mesh_matches_brute_force():
    model = _grid_model(12)
    V, F = model.mean.double().numpy(), model.triangles.numpy()
    rng = np.random.default_rng(4)
    P = rng.uniform(V.min(0) - 20, V.max(0) + 20, size=(300, 3))
    tri, bary, sp, d = closest_points_on_mesh(V, F, P)
    assert np.allclose(np.einsum("pk,pkc->pc", bary, V[F[tri]]), sp)
    assert np.all(bary >= -1e-12) and np.allclose(bary.sum(1), 1.0)
    # brute force: dense samples of every triangle can only be farther
    g = np.array([(i / 20, j / 20) for i in range(21) for j in range(21 - i)])
    B = np.stack([1 - g.sum(1), g[:, 0], g[:, 1]], 1)
    S = np.einsum("sk,tkc->tsc", B, V[F]).reshape(-1, 3)
    brute = np.sqrt(((P[:, None] - S[None]) ** 2).sum(-1)).min(1)
    assert np.all(d <= brute + 1e-9) and np.all(brute - d < 1.0)
    near = closest_points_on_mesh(V, F, P, max_distance=5.0)[3]
    assert np.allclose(near[d < 5.0], d[d < 5.0])


# --------------------------------------------------------------------------- definition files


def test_definition_file_round_trip_and_bad_files(tmp_path):
    ids = np.random.default_rng(5).choice(FACE_VERTICES, 68, replace=False)
    d = landmark_definition_dict("ict-facekit-face", ids, description="test", definition="3d-style", region="face")
    p = write_landmark_definition(tmp_path / "def.json", d)
    assert np.array_equal(read_landmark_file(p, FACE_VERTICES), ids)
    bad = dict(d)
    del bad["ids"]
    (tmp_path / "missing.json").write_text(json.dumps(bad))
    with pytest.raises(ModelFormatError, match="not a landmark definition file"):
        read_landmark_file(tmp_path / "missing.json", FACE_VERTICES)
    bad = dict(d, ids=[int(i) for i in ids[:-1]] + [FACE_VERTICES])
    (tmp_path / "range.json").write_text(json.dumps(bad))
    with pytest.raises(ModelFormatError, match=f"68 vertex ids below {FACE_VERTICES}"):
        read_landmark_file(tmp_path / "range.json", FACE_VERTICES)
    (tmp_path / "short.json").write_text(json.dumps(dict(d, ids=d["ids"][:60])))
    with pytest.raises(ModelFormatError, match="expected 68"):
        read_landmark_file(tmp_path / "short.json", FACE_VERTICES)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="not a landmark definition file"):
        read_landmark_file(tmp_path / "junk.json", FACE_VERTICES)


def test_shipped_3d_definition_file():
    ids = read_landmark_file(SHIPPED, FACE_VERTICES)
    assert ids.shape == (68,) and ids.max() < FACE_VERTICES
    d = json.loads(SHIPPED.read_text())
    assert d["definition"] == "3d-style" and d["region"] == "face"
    assert "AFLW2000-3D" in d["source"] and "BFM" in d["source"]
    bary = np.array(d["barycentric"])
    assert bary.shape == (68, 3) and np.all(bary >= 0) and np.allclose(bary.sum(1), 1.0, atol=1e-6)
    assert len(d["triangles"]) == 68
    res, snap = np.array(d["residual_mm"]), np.array(d["snap_mm"])
    # the registration puts every BFM keypoint within 2 mm of our surface (eyelid margins are
    # the worst: BFM's closed eye surface vs our open lids), and each vertex is within about one
    # ICT edge (~2.8 mm median, larger back at the jaw) of its surface point
    assert res.max() < 2.0 and res.mean() < 0.6
    assert snap.max() < 3.0
    assert d["registration"]["rms_mm"] < 1.0
    assert set(IBUG68_REGIONS) == {"jaw", "brows", "nose", "eyes", "outer lips", "inner lips"}


def test_shipped_3d_definition_is_reproduced():
    """Re-running the CLI's registration gives the shipped ids (about 25 s)."""
    bfm = need_shared("models/bfm/3ddfa-mean")
    from morphable.registration import register_bfm_keypoints
    from morphable.registry import load_model

    model = load_model(region="face", landmarks="refined")
    d = json.loads(SHIPPED.read_text())
    res = register_bfm_keypoints(model, bfm, compare_rigid=False)
    tr = res.transfer
    F = model.triangles.numpy()
    assert np.all(np.array(d["triangles"]) < len(F))
    assert np.array_equal(tr.vertex, np.array(d["ids"]))
    # the same point on the surface: a point on an edge shared by two triangles (one barycentric weight
    # 0) may be given by either of them, depending on the last bit of the closest-point search
    V = model.mean.detach().cpu().double().numpy().reshape(-1, 3)
    here = np.einsum("pk,pkd->pd", tr.barycentric, V[F[tr.triangle]])
    shipped = np.einsum("pk,pkd->pd", np.array(d["barycentric"]), V[F[np.array(d["triangles"])]])
    assert np.abs(here - shipped).max() < 1e-5  # mm
    same = tr.triangle == np.array(d["triangles"])
    assert same.sum() >= len(same) - 2 and np.abs(tr.barycentric[same] - np.array(d["barycentric"])[same]).max() < 1e-6
    assert res.registration.rms_mm == pytest.approx(d["registration"]["rms_mm"], abs=1e-3)


def test_symmetric_transfer_picks_mirror_pairs():
    """A left/right pair of points whose vertices are not mirror images gets the mirror pair that
    lies closer to the two surface points; a midline point keeps its vertex."""
    from morphable.registration import symmetric_transfer

    V = np.array([[x, y, 0.0] for y in range(3) for x in range(-3, 4)], dtype=np.float64)  # id = 7 y + x + 3
    mirror = np.array([7 * int(v[1]) + 3 - int(v[0]) for v in V])
    P = np.array([[-2.1, 1.0, 0.0], [1.6, 1.0, 0.0], [0.0, 2.0, 0.0]])
    tr = transfer_points(V, np.array([[0, 1, 7], [7, 8, 14]]), P)
    tr = dataclasses.replace(tr, surface=P.copy(), vertex=np.array([8, 11, 17]))  # x = -2 and x = +1: not mirrors
    out = symmetric_transfer(tr, V, mirror, np.array([1, 0, 2]))
    # (x -2, x +2) costs 0.1 + 0.4; (x -1, x +1) costs 1.1 + 0.6
    assert out.vertex.tolist() == [8, 12, 17]
    assert np.allclose(out.snap_mm, [0.1, 0.4, 0.0]) and np.allclose(out.vertex_residual_mm, out.snap_mm)


def test_3d_definition_is_the_registered_jaw_with_the_refined_interior():
    """The default 3D-style definition: jaw ids of the BFM registration, interior ids of the refined
    definition; loadable by name, and refused (with the fix) on the narrow region its jaw leaves."""
    from morphable.landmark_definition import ICT_LANDMARKS_3D, REFINED_ICT_LANDMARKS
    from morphable.registry import load_model

    d3 = read_landmark_file(ICT_LANDMARKS_3D, FACE_VERTICES)
    bfm = read_landmark_file(SHIPPED, FACE_VERTICES)
    refined = read_landmark_file(REFINED_ICT_LANDMARKS, FACE_VERTICES)
    assert np.array_equal(d3[:17], bfm[:17]) and np.array_equal(d3[17:], refined[17:])
    m = load_model()
    assert m.info.landmark_definition == "3d" and np.array_equal(m.landmarks.numpy(), d3)
    assert np.array_equal(load_model(landmarks="bfm").landmarks.numpy(), bfm)
    with pytest.raises(ModelFormatError, match="region='face'"):
        load_model(region="narrow", landmarks="3d")
    assert load_model(region="narrow").info.landmark_definition == "refined"  # the narrow default
