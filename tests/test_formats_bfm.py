"""BFM loaders on small synthetic files written in the real layouts (the real files are not
redistributable): BFM 2009 .mat + Exp_Pca.bin + std_exp.txt + trimIndex, BFM 2017 Statismo .h5."""
import numpy as np
import pytest
import scipy.io as sio
import torch
import trimesh

from morphable.errors import InputError, ModelFormatError, ModelNotFoundError
from morphable.formats.bfm import load_bfm2009, load_bfm2017, read_exp_pca, resolve_landmarks
from morphable.registry import load_model_file
from tests.conftest import assert_close, need_shared

N, K = 162, 4          # vertices of the shape model, shape components
DROP = [3, 50, 161]    # vertices 3DDFA-style trimming removes (0-based)
KEEP = np.array([i for i in range(N) if i not in DROP])
M, KE = len(KEEP), 3   # expression-basis vertices, expression components
EV = np.array([2000.0, 1000.0, 500.0, 250.0])   # shapeEV: standard deviations, um
STD_EXP = np.array([3000.0, 1500.0, 10.0])      # std_exp.txt


def _sphere():
    m = trimesh.creation.icosphere(subdivisions=2, radius=75.0)  # mm, CCW seen from outside
    return np.asarray(m.vertices), np.asarray(m.faces, dtype=np.int64)


def _write_bfm2009(d, tl_dtype=np.float64, compress=False):
    """01_MorphableModel.mat with the real variable names, shapes and dtypes (um, 1-based, CW)."""
    V, F = _sphere()
    pc = np.zeros((3 * N, K), np.float32)       # orthonormal: unit vectors on chosen coordinates
    pc[3 * 10 + 1, 0] = 1.0                      # comp 0: vertex 10, y
    pc[3 * 20 + 0, 1] = 1.0                      # comp 1: vertex 20, x
    pc[3 * 30 + 2, 2] = 1.0                      # comp 2: vertex 30, z
    pc[3 * 40 + 1, 3] = 1.0                      # comp 3: vertex 40, y
    tl = (F[:, [0, 2, 1]] + 1).astype(tl_dtype)  # BFM: 1-based, wound clockwise seen from outside
    sio.savemat(d / "01_MorphableModel.mat", {
        "shapeMU": (V * 1000.0).reshape(-1, 1).astype(np.float32),
        "shapePC": pc, "shapeEV": EV.reshape(-1, 1).astype(np.float32),
        "texMU": np.full((3 * N, 1), 128, np.float32), "texPC": pc.copy(),
        "texEV": np.ones((K, 1), np.float32), "tl": tl,
        "segbin": np.zeros((N, 4), np.uint8)}, do_compression=compress)
    return V, F


def _write_exp(d, n_vertices=M):
    """Exp_Pca.bin (int32 dim, float32 mean[3M], float32 basis[dim*3M] component-major) + std_exp.txt."""
    mu = np.arange(3 * n_vertices, dtype=np.float32) * 0.5      # um
    pc = np.zeros((KE, 3 * n_vertices), np.float32)             # row k = component k
    pc[0, 3 * 7 + 2] = 1.0                                      # comp 0: trimmed vertex 7, z
    pc[1, 3 * 60 + 0] = 2.0                                     # comp 1: trimmed vertex 60, x (not unit norm)
    pc[2, 3 * 7 + 1] = 1.0
    with open(d / "Exp_Pca.bin", "wb") as f:
        np.array([KE], "<i4").tofile(f)
        mu.astype("<f4").tofile(f)
        pc.astype("<f4").tofile(f)
    np.savetxt(d / "std_exp.txt", STD_EXP)
    sio.savemat(d / "BFM_exp_idx.mat", {"trimIndex": (KEEP + 1).reshape(-1, 1).astype(np.float64)})
    return mu


def _landmarks(d, ids=None):
    ids = np.arange(68) + 70 if ids is None else ids  # vertices 70..137 (none trimmed)
    np.savetxt(d / "lm.txt", ids, fmt="%d")
    return d / "lm.txt"


@pytest.fixture()
def bfm(tmp_path):
    V, F = _write_bfm2009(tmp_path)
    mu = _write_exp(tmp_path)
    return tmp_path, V, F, mu


def _volume(V, T):
    P = V[T] - V.mean(0)
    return float((P[:, 0] * torch.cross(P[:, 1], P[:, 2], dim=1)).sum() / 6)


# ----------------------------------------------------------------------------- BFM 2009


def test_bfm2009_shape_only_known_answer(bfm):
    d, V, F, _ = bfm
    m = load_bfm2009(d / "01_MorphableModel.mat", landmarks=_landmarks(d), n_shape=None)
    assert (m.n_vertices, m.n_shape, m.n_expr) == (N, K, 0)
    assert_close(m.mean, torch.tensor(V, dtype=torch.float32), atol=1e-4)      # um -> mm
    assert_close(m.shape_std, torch.tensor(EV / 1000.0, dtype=torch.float32))  # std in mm
    X = m.vertices(torch.tensor([[1.0, -2.0, 0.0, 4.0]], dtype=torch.float64))[0]
    want = torch.tensor(V).clone()
    want[10, 1] += 2.0 * 1.0    # 2000 um = 2 mm per unit
    want[20, 0] += 1.0 * -2.0
    want[40, 1] += 0.25 * 4.0
    assert_close(X, want, atol=1e-4)
    assert torch.equal(m.triangles, torch.as_tensor(F))   # 0-based, winding flipped back to CCW
    assert _volume(m.mean.double(), m.triangles) > 0
    assert torch.equal(m.landmarks, torch.arange(70, 138))
    assert 140 < float(m.mean[:, 0].max() - m.mean[:, 0].min()) < 160


def test_bfm2009_int_triangles_and_n_shape(tmp_path):
    _, F = _write_bfm2009(tmp_path, tl_dtype=np.int32)
    m = load_bfm2009(tmp_path / "01_MorphableModel.mat", landmarks=np.arange(68), n_shape=2)
    assert m.n_shape == 2 and torch.equal(m.triangles, torch.as_tensor(F))
    assert load_bfm2009(tmp_path / "01_MorphableModel.mat", landmarks=np.arange(68), n_shape=9).n_shape == K
    with pytest.raises(InputError, match="n_shape=-1"):
        load_bfm2009(tmp_path / "01_MorphableModel.mat", landmarks=np.arange(68), n_shape=-1)


def test_bfm2009_with_expression_and_trim_known_answer(bfm):
    d, V, F, mu = bfm
    m = load_bfm2009(d / "01_MorphableModel.mat", exp_pca=d / "Exp_Pca.bin", trim_index=d / "BFM_exp_idx.mat",
                     landmarks=_landmarks(d), n_shape=None)
    assert (m.n_vertices, m.n_shape, m.n_expr) == (M, K, KE)
    assert m.info.expr_kind == "pca"
    assert_close(m.mean, torch.tensor(V[KEEP], dtype=torch.float32), atol=1e-4)  # expMU ignored by default
    assert_close(m.expr_std, torch.tensor(STD_EXP / 1000.0, dtype=torch.float32))
    alpha = torch.tensor([[1.0, 0.0, 3.0, 0.0]], dtype=torch.float64)
    beta = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    X = m.vertices(alpha, beta)[0]
    want = torch.tensor(V[KEEP]).clone()
    t = {int(v): i for i, v in enumerate(KEEP)}   # full id -> trimmed id
    want[t[10], 1] += 2.0          # shape comp 0 (2 mm) x 1
    want[t[30], 2] += 0.5 * 3.0    # shape comp 2 (0.5 mm) x 3
    want[7, 2] += 3.0 * 0.5        # expr comp 0: trimmed vertex 7, 3000 um x 1 x 0.5
    want[60, 0] += 1.5 * 2.0 * -1  # expr comp 1: 1500 um x basis entry 2 x -1
    want[7, 1] += 0.01 * 2.0       # expr comp 2: 10 um x 2
    assert_close(X, want, atol=1e-5)
    # triangles touching a removed vertex are dropped, the rest renumbered (still CCW)
    kept = F[~np.isin(F, DROP).any(1)]
    remap = np.full(N, -1)
    remap[KEEP] = np.arange(M)
    assert torch.equal(m.triangles, torch.as_tensor(remap[kept]))
    assert torch.equal(m.landmarks, torch.as_tensor(remap[np.arange(68) + 70]))
    m2 = load_bfm2009(d / "01_MorphableModel.mat", exp_pca=d / "Exp_Pca.bin", trim_index=KEEP + 1,
                      landmarks=np.arange(68) + 70, n_expr=2, exp_mean=True)
    assert m2.n_expr == 2 and m2.n_shape == K
    assert_close(m2.mean, torch.tensor(V[KEEP] + mu.reshape(M, 3) / 1000.0, dtype=torch.float32), atol=1e-4)


def test_exp_pca_layout_is_component_major(bfm):
    d, *_ = bfm
    mean, basis, std = read_exp_pca(d / "Exp_Pca.bin")
    assert mean.shape == (M, 3) and basis.shape == (M, 3, KE) and std.tolist() == STD_EXP.tolist()
    assert basis[7, 2, 0] == 1.0 and basis[60, 0, 1] == 2.0 and basis[7, 1, 2] == 1.0 and np.count_nonzero(basis) == 3
    assert mean[1, 0] == 1.5  # mean is xyz interleaved: element 3 = 1.5


def test_bfm2009_clear_errors(bfm):
    d, *_ = bfm
    mat, exp = d / "01_MorphableModel.mat", d / "Exp_Pca.bin"
    with pytest.raises(InputError, match="landmarks="):
        load_bfm2009(mat)
    with pytest.raises(ModelFormatError, match="BFM_exp_idx.mat"):
        load_bfm2009(mat, exp_pca=exp, landmarks=np.arange(68))
    with pytest.raises(ModelNotFoundError, match="nothere.mat"):
        load_bfm2009(d / "nothere.mat", landmarks=np.arange(68))
    with pytest.raises(InputError, match="0-based"):
        load_bfm2009(mat, landmarks=np.arange(68) + 100)       # 168 > N - 1
    with pytest.raises(InputError, match="68"):
        load_bfm2009(mat, landmarks=np.arange(10))
    with pytest.raises(ModelFormatError, match="lie on vertices"):
        load_bfm2009(mat, exp_pca=exp, trim_index=d / "BFM_exp_idx.mat", landmarks=np.arange(68))  # 3, 50 trimmed
    np.savetxt(d / "std_exp.txt", STD_EXP[:2])
    with pytest.raises(ModelFormatError, match="2 standard deviations"):
        load_bfm2009(mat, exp_pca=exp, trim_index=KEEP + 1, landmarks=np.arange(68) + 70)
    (d / "std_exp.txt").unlink()
    with pytest.raises(ModelNotFoundError, match="std_exp.txt"):
        load_bfm2009(mat, exp_pca=exp, trim_index=KEEP + 1, landmarks=np.arange(68) + 70)


def test_bfm2009_winding_and_one_based_checks(tmp_path):
    V, F = _sphere()
    base = {"shapeMU": (V * 1000).reshape(-1, 1).astype(np.float32), "shapePC": np.eye(3 * N, 2, dtype=np.float32),
            "shapeEV": np.ones((2, 1), np.float32)}
    sio.savemat(tmp_path / "zero.mat", {**base, "tl": F.astype(np.float64)})  # contains 0: not 1-based
    with pytest.raises(ModelFormatError, match="1-based"):
        load_bfm2009(tmp_path / "zero.mat", landmarks=np.arange(68))
    sio.savemat(tmp_path / "nomu.mat", {"shapePC": base["shapePC"], "tl": F + 1})
    with pytest.raises(ModelFormatError, match="shapeMU"):
        load_bfm2009(tmp_path / "nomu.mat", landmarks=np.arange(68))


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("frac", [0.0, 0.1, 0.5, 0.99])
def test_truncated_bfm2009_files(bfm, frac, compress):
    d, *_ = bfm
    _write_bfm2009(d, compress=compress)
    load_bfm2009(d / "01_MorphableModel.mat", landmarks=np.arange(68))  # the whole file loads
    mat = (d / "01_MorphableModel.mat").read_bytes()
    (d / "cut.mat").write_bytes(mat[:int(len(mat) * frac)])
    with pytest.raises(ModelFormatError):
        load_bfm2009(d / "cut.mat", landmarks=np.arange(68))
    exp = (d / "Exp_Pca.bin").read_bytes()
    (d / "cut.bin").write_bytes(exp[:int(len(exp) * frac)])
    with pytest.raises(ModelFormatError):
        read_exp_pca(d / "cut.bin", d / "std_exp.txt")


def test_eos_mapping_and_contours(bfm):
    """An eos [landmark_mappings] file: the jaw comes from the contour json beside it."""
    d, V, F, _ = bfm
    # a face-like landmark layout on the sphere's front: eyes at y=+20, chin at the bottom
    def near(p):
        return int(np.argmin(np.linalg.norm(V - p, axis=1)))
    order = np.argsort(-V[:, 1])
    right = [int(i) for i in order if V[i, 0] < -30 and V[i, 2] > -10][:10]
    left = [int(i) for i in order if V[i, 0] > 30 and V[i, 2] > -10][:10]
    mp = {9: near([0, -75, 0]), 37: near([-40, 20, 60]), 46: near([40, 20, 60])}
    free = [i for i in range(N) if i not in mp.values()]
    lines = [f"{k} = {v}" for k, v in mp.items()]
    rest = [i for i in range(18, 69) if i not in (37, 46, 61, 65)]
    lines += [f"{k} = {free[j]}" for j, k in enumerate(rest)]
    (d / "ibug_to_tiny.txt").write_text("[landmark_mappings]\n" + "\n".join(lines) + "\n")
    import json
    (d / "tiny_model_contours.json").write_text(json.dumps({"model_contour": {"right_contour": right, "left_contour": left}}))
    m = load_bfm2009(d / "01_MorphableModel.mat", landmarks=d / "ibug_to_tiny.txt")
    lm = m.landmarks.tolist()
    assert set(lm[0:8]) <= set(right) and set(lm[9:17]) <= set(left)
    assert lm[8] == mp[9] and lm[60] == lm[48] and lm[64] == lm[54]
    assert m.contour_right.tolist() == right and m.contour_left.tolist() == left
    (d / "ibug_to_tiny.txt").write_text("[landmark_mappings]\n31 = 5\n")  # eos's real BFM files are partial too
    with pytest.raises(ModelFormatError, match=r"iBUG points \[1, 2, 3"):
        load_bfm2009(d / "01_MorphableModel.mat", landmarks=d / "ibug_to_tiny.txt")


# ----------------------------------------------------------------------------- BFM 2017 (Statismo h5)


def _write_bfm2017(path, scale=1.0, clockwise=False, expression=True, basis_scale=1.0):
    import h5py

    V, F = _sphere()
    rng = np.random.default_rng(0)
    Qs, _ = np.linalg.qr(rng.normal(size=(3 * N, 5)))
    Qe, _ = np.linalg.qr(rng.normal(size=(3 * N, 3)))
    var_s, var_e = np.array([16.0, 9.0, 4.0, 1.0, 0.25]), np.array([4.0, 1.0, 0.01])
    emean = rng.normal(size=3 * N) * 0.1
    cells = F[:, [0, 2, 1]] if clockwise else F
    with h5py.File(path, "w") as f:
        for g, (mu, Q, var) in {"shape": (V.reshape(-1), Qs, var_s), "expression": (emean, Qe, var_e),
                                "color": (np.full(3 * N, 0.5), Qs, var_s)}.items():
            if g == "expression" and not expression:
                continue
            f[f"{g}/model/mean"] = (mu * scale).astype(np.float32)
            f[f"{g}/model/pcaBasis"] = (Q * basis_scale).astype(np.float32)
            f[f"{g}/model/pcaVariance"] = (var * scale**2).astype(np.float32)
            f[f"{g}/model/noiseVariance"] = np.array([0.0], np.float32)
            f[f"{g}/representer/points"] = (V.T * scale).astype(np.float32)   # (3, N)
            f[f"{g}/representer/cells"] = cells.T.astype(np.int32)             # (3, T), 0-based
        f["version/majorVersion"] = np.array([1]); f["version/minorVersion"] = np.array([0])
        f["metadata/landmarks/json"] = "[]"
    return V, F, Qs, Qe, var_s, var_e, emean


@pytest.mark.parametrize("scale,clockwise", [(1.0, False), (1000.0, True)])  # mm / um; either winding
def test_bfm2017_known_answer(tmp_path, scale, clockwise):
    V, F, Qs, Qe, var_s, var_e, emean = _write_bfm2017(tmp_path / "m.h5", scale, clockwise)
    m = load_bfm2017(tmp_path / "m.h5", landmarks=np.arange(68), n_expr=2)
    assert (m.n_vertices, m.n_shape, m.n_expr) == (N, 5, 2)
    assert_close(m.shape_std, torch.tensor(np.sqrt(var_s), dtype=torch.float32), atol=1e-5)
    a = np.array([1.0, -1.0, 0.5, 0.0, 2.0])
    b = np.array([-1.0, 3.0])
    want = V.reshape(-1) + emean + Qs @ (a * np.sqrt(var_s)) + Qe[:, :2] @ (b * np.sqrt(var_e[:2]))
    X = m.vertices(torch.tensor(a)[None], torch.tensor(b)[None])[0]
    assert_close(X.reshape(-1), torch.tensor(want), atol=2e-4)
    assert torch.equal(m.triangles, torch.as_tensor(F))  # oriented outward whatever the file's winding
    assert _volume(m.mean.double(), m.triangles) > 0


def test_bfm2017_without_expression_and_errors(tmp_path):
    p = tmp_path / "m.h5"
    _write_bfm2017(p, expression=False)
    assert load_bfm2017(p, landmarks=np.arange(68), n_shape=3).n_expr == 0
    with pytest.raises(InputError, match="landmarks="):
        load_bfm2017(p)
    with pytest.raises(InputError, match="landmarks="):
        load_model_file(p)  # the registry dispatches Statismo .h5 here
    _write_bfm2017(p, scale=0.01)  # 1.5 units wide: no known unit
    with pytest.raises(ModelFormatError, match="units"):
        load_bfm2017(p, landmarks=np.arange(68))
    _write_bfm2017(p, basis_scale=3.0)
    with pytest.raises(ModelFormatError, match="unit-norm"):
        load_bfm2017(p, landmarks=np.arange(68))
    import h5py
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ModelFormatError, match="shape/model"):
        load_bfm2017(tmp_path / "other.h5", landmarks=np.arange(68))


@pytest.mark.parametrize("frac", [0.05, 0.5, 0.9])
def test_truncated_bfm2017(tmp_path, frac):
    _write_bfm2017(tmp_path / "m.h5")
    data = (tmp_path / "m.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[:int(len(data) * frac)])
    with pytest.raises(ModelFormatError):
        load_bfm2017(tmp_path / "cut.h5", landmarks=np.arange(68))


def test_registry_dispatches_mat(bfm):
    d, *_ = bfm
    with pytest.raises(InputError, match="morphable convert"):
        load_model_file(d / "01_MorphableModel.mat")


def test_eos_bfm2009_mapping_is_partial_and_says_so():
    """eos's ibug_to_bfm2009.txt maps 20 points and no chin: the loader names the rest, it does not guess."""
    d = need_shared("models/bfm")
    mean = np.random.default_rng(0).normal(size=(53490, 3)) * 50.0
    with pytest.raises(ModelFormatError, match=r"\[1, 2, .*68\] \(1-based\) undefined.*--landmarks"):
        resolve_landmarks(d / "ibug_to_bfm2009.txt", mean)
