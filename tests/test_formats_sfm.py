"""eos / Surrey Face Model loader: hand-written cereal files, the real SFM file, eos-py agreement."""
import json
import struct

import numpy as np
import pytest
import torch
import trimesh

from morphable.errors import ModelFormatError, ModelNotFoundError
from morphable.formats.sfm import ibug68_from_mapping, load_sfm, read_blendshapes, read_eos_model, read_ibug_mapping
from tests.conftest import assert_close, need_shared

# ----------------------------------------------------------------------------- writers (test only)


def _mat(a) -> bytes:
    a = np.asarray(a, dtype=np.float32)
    a = a.reshape(-1, 1) if a.ndim == 1 else a
    return struct.pack("<ii", *a.shape) + a.tobytes(order="F")


def _pca(mean, basis, ev, tri) -> bytes:
    tri = np.asarray(tri, dtype=np.int32).reshape(-1, 3)
    return _mat(mean) + _mat(basis) + _mat(ev) + struct.pack("<Q", len(tri)) + tri.tobytes()


_EMPTY_PCA = struct.pack("<ii", 0, 1) + struct.pack("<ii", 0, 0) + struct.pack("<ii", 0, 1) + struct.pack("<Q", 0)


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _blendshapes(items) -> bytes:
    return struct.pack("<Q", len(items)) + b"".join(_string(n) + _mat(d) for n, d in items)


def _ico():
    m = trimesh.creation.icosphere(subdivisions=2, radius=75.0)  # 162 vertices, CCW outward
    return np.asarray(m.vertices), np.asarray(m.faces, dtype=np.int64)


@pytest.fixture()
def tiny(tmp_path):
    """A version-1 eos model on an icosphere: 3 components with unit basis vectors, 2 blendshapes."""
    V, F = _ico()
    N = len(V)
    B = np.zeros((3 * N, 3))
    B[3 * 5 + 1, 0] = 1.0   # component 0 moves vertex 5 along y
    B[3 * 7 + 0, 1] = 1.0   # component 1 moves vertex 7 along x
    B[3 * 9 + 2, 2] = 1.0   # component 2 moves vertex 9 along z
    ev = np.array([16.0, 4.0, 1.0])  # variances: std 4, 2, 1 mm
    tc = np.stack([np.linspace(0, 1, N), np.linspace(1, 0, N) ** 2], 1)
    data = (struct.pack("<I", 1) + _pca(V.reshape(-1), B, ev, F) + _EMPTY_PCA
            + struct.pack("<Q", N) + tc.astype("<f8").tobytes())
    (tmp_path / "tiny.bin").write_bytes(data)
    d0 = np.zeros(3 * N); d0[3 * 5 + 2] = 10.0  # "smile" pushes vertex 5 by +10 mm in z
    d1 = np.zeros(3 * N); d1[3 * 9 + 0] = -3.0
    (tmp_path / f"expression_blendshapes_{N}.bin").write_bytes(_blendshapes([("smile", d0), ("frown", d1)]))
    (tmp_path / "ibug_to_sfm.txt").write_text(
        "[landmark_mappings]\n" + "".join(f'"{i + 1}" = {i + 20}\n' for i in range(68)))
    return tmp_path, V, F, tc


# ----------------------------------------------------------------------------- synthetic files


def test_tiny_v1_known_answer(tiny):
    d, V, F, tc = tiny
    m = load_sfm(d / "tiny.bin")
    assert (m.n_vertices, m.n_shape, m.n_expr, m.n_landmarks) == (162, 3, 2, 68)
    assert m.info.expr_kind == "blendshape" and m.info.expression_names == ["smile", "frown"]
    assert_close(m.shape_std, torch.tensor([4.0, 2.0, 1.0]))
    assert_close(m.expr_lower, torch.zeros(2)) and torch.isinf(m.expr_upper).all()
    shape = torch.tensor([[1.0, -0.5, 2.0]], dtype=torch.float64)
    expr = torch.tensor([[0.5, 1.0]], dtype=torch.float64)
    X = m.vertices(shape, expr)[0]
    want = torch.tensor(V, dtype=torch.float64).clone()
    want[5, 1] += 4.0 * 1.0      # std 4 * coefficient 1
    want[7, 0] += 2.0 * -0.5     # std 2 * -0.5
    want[9, 2] += 1.0 * 2.0
    want[5, 2] += 0.5 * 10.0     # half a smile
    want[9, 0] += 1.0 * -3.0
    assert_close(X, want, atol=1e-4)
    assert torch.equal(m.triangles, torch.as_tensor(F))
    assert torch.equal(m.landmarks, torch.arange(20, 88))
    assert_close(m.uv, torch.tensor(np.stack([tc[:, 0], 1 - tc[:, 1]], 1), dtype=torch.float32))  # OBJ origin


def test_blendshapes_can_be_skipped_or_given(tiny):
    d, *_ = tiny
    assert load_sfm(d / "tiny.bin", blendshapes=False).n_expr == 0
    other = d / "other.bin"
    other.write_bytes(_blendshapes([("x", np.ones(3 * 162))]))
    m = load_sfm(d / "tiny.bin", blendshapes=other)
    assert m.info.expression_names == ["x"]
    other.write_bytes(_blendshapes([("x", np.ones(3 * 100))]))
    with pytest.raises(ModelFormatError, match="100 vertices"):
        load_sfm(d / "tiny.bin", blendshapes=other)


@pytest.mark.parametrize("cut", [0, 3, 4, 11, 12, 1000, -100, -9, -1])
def test_truncated_model_is_a_format_error(tiny, cut):
    d, *_ = tiny
    data = (d / "tiny.bin").read_bytes()
    (d / "cut.bin").write_bytes(data[:cut] if cut >= 0 else data[:len(data) + cut])
    with pytest.raises(ModelFormatError, match="truncated"):
        read_eos_model(d / "cut.bin")


def test_absurd_counts_and_wrong_layouts(tiny):
    d, *_ = tiny
    data = bytearray((d / "tiny.bin").read_bytes())
    bad = d / "bad.bin"
    huge = data[:4] + struct.pack("<ii", 2**31 - 1, 2**31 - 1) + data[12:]  # 16 EiB claimed: must not allocate
    bad.write_bytes(huge)
    with pytest.raises(ModelFormatError, match="needs"):
        read_eos_model(bad)
    bad.write_bytes(struct.pack("<I", 7) + data[4:])
    with pytest.raises(ModelFormatError, match="class version 7"):
        read_eos_model(bad)
    bad.write_bytes(bytes(data) + b"\0\0\0\0")
    with pytest.raises(ModelFormatError, match="left over"):
        read_eos_model(bad)
    bs = bytearray((d / "expression_blendshapes_162.bin").read_bytes())
    bad.write_bytes(struct.pack("<Q", 2**40) + bs[8:])
    with pytest.raises(ModelFormatError, match="claims"):
        read_blendshapes(bad)
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelFormatError):
        load_sfm(bad)


def test_plain_68_id_list_as_mapping(tiny):
    d, *_ = tiny
    np.savetxt(d / "ids.txt", np.arange(68)[::-1] + 1, fmt="%d")
    assert load_sfm(d / "tiny.bin", mapping=d / "ids.txt").landmarks.tolist() == list(range(68, 0, -1))


def test_missing_files_are_named(tiny):
    d, *_ = tiny
    with pytest.raises(ModelNotFoundError, match="nope.bin"):
        load_sfm(d / "nope.bin")
    (d / "ibug_to_sfm.txt").unlink()
    with pytest.raises(ModelNotFoundError, match="ibug_to_sfm.txt"):
        load_sfm(d / "tiny.bin")


def test_mapping_gaps_are_listed(tmp_path):
    mean = np.zeros((100, 3))
    with pytest.raises(ModelFormatError, match=r"\[1, 2, .*68\]"):
        ibug68_from_mapping({}, mean)
    # inner mouth corners take the outer corners; everything else given
    mp = {i: i for i in range(68) if i not in (60, 64)}
    lm = ibug68_from_mapping(mp, mean)
    assert lm[60] == 48 and lm[64] == 54
    p = tmp_path / "m.txt"
    p.write_text('[landmark_mappings]\n"9" = 3\n"31" = "tip"\n')
    assert read_ibug_mapping(p, {"tip": 42}) == {8: 3, 30: 42}
    with pytest.raises(ModelFormatError, match="tip"):
        read_ibug_mapping(p)


# ----------------------------------------------------------------------------- the real SFM file

SFM = "models/sfm"


@pytest.fixture(scope="module")
def sfm():
    d = need_shared(SFM)
    return load_sfm(d / "sfm_shape_3448.bin")


def test_real_sfm_sizes_and_readme_known_answer(sfm):
    assert (sfm.n_vertices, sfm.n_shape, sfm.n_expr, sfm.triangles.shape[0]) == (3448, 63, 6, 6736)
    assert sfm.info.expression_names == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    assert abs(float(sfm.shape_std[0]) ** 2 - 56502.4) < 0.5
    c = torch.zeros(1, 63, dtype=torch.float64)
    c[0, :3] = torch.tensor([1.0, 0.5, -0.5])
    X = sfm.vertices(c)[0]
    # values from ../shared/models/sfm/README.md, measured with eos-py 1.5.0
    assert_close(X[0], torch.tensor([-55.24977, -52.43768, -78.17802], dtype=torch.float64), atol=1e-4)
    assert_close(X[100], torch.tensor([-12.45977, -14.62272, -17.11864], dtype=torch.float64), atol=1e-4)
    assert_close(X[3447], torch.tensor([23.21285, -37.12719, -27.69477], dtype=torch.float64), atol=1e-4)
    assert_close(X.sum(0), torch.tensor([-140.152, -2041.806, -121130.11], dtype=torch.float64), atol=0.05)


def test_real_sfm_landmarks_and_contours(sfm):
    d = need_shared(SFM)
    lm = sfm.landmarks.tolist()
    assert lm[8] == 33 and lm[30] == 114 and lm[36] == 177 and lm[45] == 610  # chin, nose tip, eye corners
    assert lm[60] == lm[48] == 398 and lm[64] == lm[54] == 812               # inner mouth = outer corners
    c = json.loads((d / "sfm_model_contours.json").read_text())["model_contour"]
    assert sfm.contour_right.tolist() == c["right_contour"] and sfm.contour_left.tolist() == c["left_contour"]
    assert set(lm[0:8]) <= set(c["right_contour"]) and set(lm[9:17]) <= set(c["left_contour"])
    L = sfm.mean[sfm.landmarks]
    y = L[:17, 1]
    assert (y[:8].diff() < 0).all() and (y[9:].diff() > 0).all()             # down to the chin and up again
    assert abs(float(L[0, 1] - L[36, 1])) < 5 and abs(float(L[16, 1] - L[45, 1])) < 5  # jaw starts at eye height
    assert (L[0:8, 0] < 0).all() and (L[9:17, 0] > 0).all()                   # subject's right is -x
    assert_close(L[:8, 0], -L[9:17, 0].flip(0), atol=2.0)                        # left/right mirror each other


def test_real_sfm_frame_and_winding(sfm):
    V, T = sfm.mean.double(), sfm.triangles
    P = V[T] - V.mean(0)
    vol = (P[:, 0] * torch.cross(P[:, 1], P[:, 2], dim=1)).sum() / 6
    assert vol > 0  # counter-clockwise seen from outside
    n = torch.cross(V[T[:, 1]] - V[T[:, 0]], V[T[:, 2]] - V[T[:, 0]], dim=1)
    at_tip = n[(T == 114).any(1)].sum(0)
    assert at_tip[2] > 0.9 * at_tip.norm()  # the nose tip's normal points along +z
    ext = V.max(0).values - V.min(0).values
    assert 140 < ext[0] < 160  # mm
    assert sfm.uv.shape == (3448, 2) and sfm.uv.min() >= 0 and sfm.uv.max() <= 1


# ----------------------------------------------------------------------------- eos-py agreement


def test_matches_eos(sfm):
    eos = pytest.importorskip("eos", reason="eos-py (pip install eos-py==1.5.0) is not installed")
    d = need_shared(SFM)
    em = eos.morphablemodel.load_model(str(d / "sfm_shape_3448.bin"))
    sm = em.get_shape_model()
    N = sfm.n_vertices
    assert_close(sfm.mean.reshape(-1), torch.tensor(np.asarray(sm.get_mean())).reshape(-1), atol=0)
    assert_close(sfm.shape_basis.reshape(3 * N, -1), torch.tensor(np.asarray(sm.get_rescaled_pca_basis())), atol=1e-4)
    g = np.random.default_rng(3).normal(size=63)
    want = np.asarray(sm.draw_sample(g.tolist())).reshape(-1)
    got = sfm.vertices(torch.tensor(g, dtype=torch.float64)[None])[0].reshape(-1)
    assert_close(got, torch.tensor(want, dtype=torch.float64), atol=1e-3)
    assert torch.equal(sfm.triangles, torch.tensor(np.asarray(sm.get_triangle_list())))
    tc = np.asarray(em.get_texture_coordinates())
    assert_close(sfm.uv, torch.tensor(np.stack([tc[:, 0], 1 - tc[:, 1]], 1), dtype=torch.float32), atol=1e-6)
    bs = eos.morphablemodel.load_blendshapes(str(d / "expression_blendshapes_3448.bin"))
    assert [b.name for b in bs] == sfm.info.expression_names
    E = np.stack([np.asarray(b.deformation).reshape(N, 3) for b in bs], -1)
    assert_close(sfm.expr_basis, torch.tensor(E), atol=0)


@pytest.mark.parametrize("kind", ["blendshapes", "pca", "none"])
def test_reads_eos_version4_files(tmp_path, kind):
    """eos writes class version 4 (expression model, landmark definitions, texture triangles)."""
    eos = pytest.importorskip("eos", reason="eos-py (pip install eos-py==1.5.0) is not installed")
    M = eos.morphablemodel
    V, F = _ico()
    N = len(V)
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(3 * N, 4)))
    ev = np.array([9.0, 4.0, 1.0, 0.25])
    shape = M.PcaModel(V.reshape(-1, 1).astype(np.float32), Q.astype(np.float32), ev.reshape(-1, 1).astype(np.float32),
                       F.tolist())
    if kind == "blendshapes":
        expr = [M.Blendshape("a", rng.normal(size=(3 * N, 1)).astype(np.float32)),
                M.Blendshape("b", rng.normal(size=(3 * N, 1)).astype(np.float32))]
    elif kind == "pca":
        Qe, _ = np.linalg.qr(rng.normal(size=(3 * N, 2)))
        expr = M.PcaModel(rng.normal(size=(3 * N, 1)).astype(np.float32), Qe.astype(np.float32),
                          np.array([[4.0], [1.0]], np.float32), F.tolist())
    tc = rng.random((N, 2)).tolist()
    if kind == "none":
        em = M.MorphableModel(shape, M.PcaModel(), {"tip": 7}, tc, [[0, 1, 2]])
    else:
        em = M.MorphableModel(shape, expr, M.PcaModel(), {"tip": 7}, tc, [[0, 1, 2]])
    M.save_model(em, str(tmp_path / "v4.bin"))
    assert read_eos_model(tmp_path / "v4.bin").version == 4
    (tmp_path / "ibug_to_sfm.txt").write_text(
        "[landmark_mappings]\n" + "".join(f'"{i + 1}" = {i}\n' for i in range(67)) + '"68" = "tip"\n')
    m = load_sfm(tmp_path / "v4.bin")
    assert m.landmarks[67] == 7
    coef = rng.normal(size=4)
    got = m.vertices(torch.tensor(coef)[None])[0].reshape(-1).numpy()
    ref = np.asarray(em.get_shape_model().draw_sample(coef.tolist())).reshape(-1)
    if kind == "pca":
        ref = ref + np.asarray(em.get_expression_model().get_mean()).reshape(-1)
        assert m.info.expr_kind == "pca" and m.n_expr == 2
        e = np.array([0.5, -1.0])
        ex = m.vertices(torch.zeros(1, 4, dtype=torch.float64), torch.tensor(e)[None])[0].reshape(-1).numpy()
        eref = np.asarray(em.get_expression_model().draw_sample(e.tolist())).reshape(-1) + V.reshape(-1)
        np.testing.assert_allclose(ex, eref, atol=1e-3)
    elif kind == "blendshapes":
        assert m.info.expression_names == ["a", "b"]
        assert_close(m.expr_basis[..., 1].reshape(-1), torch.tensor(np.asarray(expr[1].deformation)).reshape(-1))
    else:
        assert m.n_expr == 0
    np.testing.assert_allclose(got, ref, atol=1e-3)
