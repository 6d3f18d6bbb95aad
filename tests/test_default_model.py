"""The default model shipped inside the package: compact storage, regions, lookup without ../shared."""
import h5py
import numpy as np
import pytest
import torch

from morphable import registry
from morphable.default_model import PACKAGED_LICENCE, PACKAGED_MODEL, storage_error
from morphable.errors import ModelFormatError, ModelNotFoundError
from morphable.formats.ict import REGIONS, crop_region
from morphable.formats.native import COMPACT_DECIMALS, load_native, save_native
from morphable.model import ModelInfo, MorphableModel
from tests.conftest import assert_close, need_shared


def _synthetic(n=40, ks=5, ke=3, seed=0) -> MorphableModel:
    g = np.random.default_rng(seed)
    tri = np.array([[i, i + 1, i + 2] for i in range(n - 2)])
    return MorphableModel(g.normal(0, 50, (n, 3)), g.normal(0, 3, (n, 3, ks)), g.normal(0, 10, (n, 3, ke)), tri,
                          np.arange(68) % 30, ModelInfo(name="synthetic", expr_kind="blendshape"),
                          expr_lower=np.zeros(ke), expr_upper=np.ones(ke), contour_right=[1, 2], contour_left=[3],
                          uv=g.uniform(0, 1, (n, 2)))


@pytest.fixture
def fresh_registry(monkeypatch, tmp_path):
    """No memo, an empty cache, no MORPHABLE_ICT_DIR, and no ../shared reachable from anywhere."""
    monkeypatch.setattr(registry, "_MEMO", {})
    monkeypatch.setenv("MORPHABLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MORPHABLE_ICT_DIR", raising=False)
    monkeypatch.setattr(registry, "_REPO", tmp_path / "nowhere" / "repo")
    (tmp_path / "user").mkdir()
    monkeypatch.chdir(tmp_path / "user")
    return tmp_path


def test_compact_round_trip_is_within_the_stated_precision(tmp_path):
    m = _synthetic()
    p = save_native(m, tmp_path / "m.h5", compact=True, extra_attrs={"licence_text": "MIT, hello"})
    r = load_native(p)
    tol = 10.0 ** -COMPACT_DECIMALS
    for b in ("shape_basis", "expr_basis"):
        err = (getattr(r, b) - getattr(m, b)).abs().max().item()
        assert 0 < err <= tol, f"{b}: {err}"  # lossy, but within 1e-4 mm
    for b in ("mean", "triangles", "landmarks", "contour_right", "contour_left", "uv", "expr_lower", "expr_upper"):
        assert torch.equal(getattr(r, b), getattr(m, b)), b  # exact
    with h5py.File(p) as f:
        assert f.attrs["licence_text"] == "MIT, hello"
        assert f["shape_basis"].scaleoffset == COMPACT_DECIMALS and f["mean"].compression == "gzip"
    e = storage_error(m, r, samples=16)
    assert 0 < e.basis_max_um <= 1e3 * tol and 0 < e.vertex_mean_um <= e.vertex_max_um
    assert storage_error(m, m, samples=4).vertex_max_um == 0.0


def _crop_at(m, n):
    """crop_region to 'narrow' with the narrow region resized to ``n`` vertices (the model is tiny)."""
    old = REGIONS["narrow"]
    REGIONS["narrow"] = n
    try:
        return crop_region(m, "narrow")
    finally:
        REGIONS["narrow"] = old


def test_crop_region_keeps_the_prefix_and_its_triangles():
    m = _synthetic(n=40)
    c = _crop_at(m, 30)
    assert c.n_vertices == 30 and c.name == "ict-facekit-narrow"
    assert torch.equal(c.triangles, m.triangles[:28])  # triangle i uses i..i+2
    assert torch.equal(c.mean, m.mean[:30]) and torch.equal(c.uv, m.uv[:30])
    with pytest.raises(ModelFormatError, match="landmark"):
        _crop_at(m.with_landmarks(np.arange(68) % 40), 30)
    with pytest.raises(ModelFormatError, match="needs 9409"):
        crop_region(m, "face")
    with pytest.raises(ModelFormatError, match="unknown ICT region"):
        crop_region(m, "full")


def test_packaged_file_ships_with_its_notice():
    assert PACKAGED_MODEL.is_file() and PACKAGED_MODEL.stat().st_size < 10 * 2**20
    assert "MIT License" in PACKAGED_LICENCE.read_text()
    with h5py.File(PACKAGED_MODEL) as f:
        assert "USC Institute for Creative Technologies" in f.attrs["licence_text"]
        assert f.attrs["licence"].startswith("MIT")


def test_default_model_loads_without_shared(fresh_registry):
    with pytest.raises(ModelNotFoundError):
        registry.find_ict()  # nothing to find: this is a user's machine
    m = registry.load_model(region="narrow", landmarks="refined")
    assert (m.n_vertices, m.n_shape, m.n_expr) == (6706, 100, 53)
    assert m.info.landmark_definition == "refined" and m.uv.shape == (6706, 2)
    f = registry.load_model(landmarks="upstream")
    assert f.n_vertices == 9409 and f.info.landmark_definition == "upstream"
    assert registry.load_model().info.landmark_definition == "3d"
    assert torch.equal(m.mean, f.mean[:6706]) and torch.equal(m.shape_basis, f.shape_basis[:6706])
    assert list((fresh_registry / "cache").glob("packaged-*.h5")), "decompressed once into the cache"
    registry._MEMO.clear()
    m2 = registry.load_model(region="narrow", landmarks="refined")  # from the cache this time
    assert torch.equal(m2.shape_basis, m.shape_basis) and torch.equal(m2.landmarks, m.landmarks)
    with pytest.raises(ModelNotFoundError, match="MORPHABLE_ICT_DIR"):
        registry.load_model(region="head")  # not shipped: needs the upstream folder


def test_packaged_model_equals_the_upstream_folder(monkeypatch):
    """The shipped file against a fresh conversion of ../shared's ICT-FaceKit: exact but for the bases."""
    folder = need_shared("models/ict-facekit")
    from morphable.formats.ict import load_ict

    monkeypatch.setattr(registry, "_MEMO", {})
    stored = registry.load_model(region="face", landmarks="upstream")
    exact = load_ict(folder, region="face")
    for b in ("mean", "triangles", "landmarks", "contour_right", "contour_left", "uv", "expr_lower", "expr_upper"):
        assert torch.equal(getattr(stored, b), getattr(exact, b)), b
    assert stored.info.expression_names == exact.info.expression_names
    assert_close(stored.info.frame_rotation, exact.info.frame_rotation, atol=1e-12)
    e = storage_error(exact, stored, samples=64)
    assert e.basis_max_um <= 0.1 and e.vertex_max_um < 5.0, e
    narrow = registry.load_model(region="narrow", landmarks="refined", packaged=False, cache=False)
    packed = registry.load_model(region="narrow", landmarks="refined")
    assert torch.equal(narrow.landmarks, packed.landmarks) and torch.equal(narrow.triangles, packed.triangles)
