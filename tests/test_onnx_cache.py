"""onnxruntime twins of the torch networks: cached exports, same outputs, the pipeline's default."""
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from morphable.onnx_cache import cached_session, state_hash  # noqa: E402


class _Tiny(torch.nn.Module):
    def __init__(self, k: float = 2.0):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.register_buffer("k", torch.tensor(k))

    def forward(self, x):
        return self.lin(x) * self.k


def _files(tmp_path):
    return sorted((tmp_path / "onnx").glob("*.onnx"))


def test_export_once_then_reuse_and_a_new_key_for_new_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHABLE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    m = _Tiny()
    x = torch.randn(5, 4)
    args = ((torch.zeros(1, 4),), "tiny")
    io = (["x"], ["y"], {"x": {0: "b"}, "y": {0: "b"}})
    s1 = cached_session(m, *args, state_hash(m), *io, threads=1)
    np.testing.assert_allclose(s1.run(None, {"x": x.numpy()})[0], m(x).detach().numpy(), atol=1e-6)
    (f1,) = _files(tmp_path)
    mtime = f1.stat().st_mtime_ns
    cached_session(m, *args, state_hash(m), *io, threads=1)  # reused, not exported again
    assert _files(tmp_path) == [f1] and f1.stat().st_mtime_ns == mtime
    m2 = _Tiny(k=3.0)
    m2.load_state_dict({**m.state_dict(), "k": torch.tensor(3.0)})
    assert state_hash(m2) != state_hash(m)
    s2 = cached_session(m2, *args, state_hash(m2), *io, threads=1)
    assert len(_files(tmp_path)) == 2
    np.testing.assert_allclose(s2.run(None, {"x": x.numpy()})[0], 1.5 * s1.run(None, {"x": x.numpy()})[0], rtol=1e-5)


def test_a_damaged_cache_file_is_exported_again(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHABLE_CACHE", str(tmp_path))
    m = _Tiny()
    io = (["x"], ["y"], None)
    cached_session(m, (torch.zeros(1, 4),), "tiny", state_hash(m), *io)
    (f,) = _files(tmp_path)
    f.write_bytes(f.read_bytes()[:40])  # truncated
    s = cached_session(m, (torch.zeros(1, 4),), "tiny", state_hash(m), *io)
    x = torch.ones(1, 4)
    np.testing.assert_allclose(s.run(None, {"x": x.numpy()})[0], m(x).detach().numpy(), atol=1e-6)


def test_regressor_on_onnxruntime_equals_torch(tmp_path, monkeypatch):
    from regressors.weights import load_regressor, onnx_runtime_for

    monkeypatch.setenv("MORPHABLE_CACHE", str(tmp_path))
    reg = load_regressor()
    S = reg.cfg.crop_size
    crops = np.random.default_rng(0).integers(0, 256, (3, S, S, 3), dtype=np.uint8)
    a, b = reg.predict(crops), onnx_runtime_for(reg, threads=1).predict(crops)
    for name in ("shape", "expr", "rotvec", "scale", "translation", "landmarks"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), atol=2e-3, rtol=1e-3, err_msg=name)


def test_blazeface_on_onnxruntime_equals_torch(tmp_path, monkeypatch):
    from fitting.blazeface import BlazeFace, _SESSIONS, letterbox

    monkeypatch.setenv("MORPHABLE_CACHE", str(tmp_path))
    _SESSIONS.clear()
    img = np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    for model in ("short", "full"):
        t, o = BlazeFace(model, backend="torch"), BlazeFace(model, backend="onnx")
        assert t.session is None and o.session is not None
        x, _ = letterbox(img, t.size)
        (bt, st), (bo, so) = t.raw(x), o.raw(x)
        np.testing.assert_allclose(bo, bt, atol=1e-3)
        np.testing.assert_allclose(so, st, atol=1e-3)
    _SESSIONS.clear()  # sessions of this test's temporary cache


def test_fitter_uses_onnxruntime_by_default_and_matches_torch(tmp_path, monkeypatch):
    from fitting.pipeline import FitConfig, Fitter
    from regressors.weights import OnnxRegressor

    monkeypatch.setenv("MORPHABLE_CACHE", str(tmp_path))
    f_auto = Fitter(FitConfig(int8=False))
    f_torch = Fitter(FitConfig(backend="torch"))
    assert isinstance(f_auto.predictor, OnnxRegressor) and f_torch.predictor is f_torch.regressor
    from pathlib import Path

    import fitting
    from fitting.images import load_image

    img = load_image(Path(fitting.__file__).parent / "examples" / "astronaut.jpg")
    a, t = f_auto.fit_all(img), f_torch.fit_all(img)
    assert len(a) == len(t) == 1
    np.testing.assert_allclose(a[0].landmarks, t[0].landmarks, atol=0.05)
    with pytest.raises(Exception, match="backend"):
        Fitter(FitConfig(backend="tensorrt"))


def test_shipped_int8_is_used_only_for_the_weights_it_was_made_from(tmp_path, monkeypatch):
    """The int8 twin beside the weights runs by default; a changed weight file (another SHA-256) or
    int8=False gets the float export; the int8 landmarks stay within a pixel of the float ones."""
    import shutil

    from regressors.weights import DEFAULT_WEIGHTS, load_regressor, onnx_runtime_for

    monkeypatch.setenv("MORPHABLE_CACHE", str(tmp_path))
    q = DEFAULT_WEIGHTS.with_suffix(".int8.onnx")
    if not q.is_file():
        pytest.skip("no shipped int8 file")
    from morphable.registry import load_model

    model = load_model()  # the frame correction baked into the int8 file is the default model's
    reg = load_regressor(model=model)
    o8, of = onnx_runtime_for(reg, threads=1), onnx_runtime_for(reg, threads=1, int8=False)
    assert Path(o8.session._model_path).name == q.name and Path(of.session._model_path).name != q.name
    # on faces (the example photo's crop, mirrored and moved as fit does; random-noise crops, far
    # from any training image, differ by up to about 6 px)
    import fitting
    from fitting.images import load_image
    from morphable.crop import box_from_landmarks, crop_image

    img = load_image(Path(fitting.__file__).parent / "examples" / "astronaut.jpg")
    box = box_from_landmarks(np.array([[178.0, 88.0], [272.0, 179.0]]))  # the face's landmark extent
    S = reg.cfg.crop_size
    c = crop_image(img, box, S)
    crops = np.stack([c, c[:, ::-1], np.roll(c, (5, 5), (0, 1)), np.roll(c, (-5, -5), (0, 1))])
    d = np.abs(o8.predict(crops).landmarks - of.predict(crops).landmarks)
    assert d.max() < 1.0 and d.mean() < 0.3, (d.max(), d.mean())
    # the same weights under another name with a changed byte: no int8 (its SHA-256 differs)
    w2 = tmp_path / "w.pt"
    shutil.copy(DEFAULT_WEIGHTS, w2)
    shutil.copy(q, tmp_path / "w.int8.onnx")
    assert Path(onnx_runtime_for(load_regressor(w2, model=model), threads=1).session._model_path).name == "w.int8.onnx"
    assert Path(onnx_runtime_for(load_regressor(w2), threads=1).session._model_path).name != "w.int8.onnx"  # other frame
    d = torch.load(w2, map_location="cpu", weights_only=True)
    d["note"] = "re-saved"  # the same network, another file: its SHA-256 differs
    torch.save(d, w2)
    r2 = load_regressor(w2, model=model)
    assert Path(onnx_runtime_for(r2, threads=1).session._model_path).name != "w.int8.onnx"


def test_fast_preset_runs_its_int8_network_on_full_size_crops(tmp_path, monkeypatch):
    """FitConfig(preset="fast") loads fast.pt and its int8 twin, whose input is the 96 px working
    resolution: the 120 px crops are resized on the way in, and the fit lands near the main one."""
    from fitting.images import load_image
    from fitting.pipeline import FitConfig, Fitter
    from regressors.weights import FAST_WEIGHTS

    if not FAST_WEIGHTS.is_file():
        pytest.skip("no fast weights shipped")
    monkeypatch.setenv("MORPHABLE_CACHE", str(tmp_path))
    monkeypatch.delenv("MORPHABLE_WEIGHTS", raising=False)
    fast, main = Fitter(FitConfig(preset="fast")), Fitter()
    assert fast.regressor.cfg.input_size == 96 and fast.predictor.crop_size == 120
    assert Path(fast.predictor.session._model_path).name == "fast.int8.onnx"
    import fitting

    img = load_image(Path(fitting.__file__).parent / "examples" / "astronaut.jpg")
    a, b = fast.fit_all(img)[0], main.fit_all(img)[0]
    size = float(np.ptp(b.landmarks, 0).max())
    assert np.linalg.norm(a.landmarks - b.landmarks, axis=1).mean() < 0.05 * size
    with pytest.raises(Exception, match="preset"):
        Fitter(FitConfig(preset="turbo"))


def test_shipped_int8_twins_use_the_default_recipe():
    """Both shipped int8 twins store their convolution weights as regressors.quantize's default recipe
    says: signed and within +-64 (7 bits), so that onnxruntime's x86 kernels cannot saturate their
    16-bit pair sums on CPUs without VNNI (a full-range signed twin lost 0.12 NME points there)."""
    pytest.importorskip("onnxruntime")
    import inspect

    from regressors.quantize import RECIPES, quantize_static_onnx
    from regressors.weights import DEFAULT_WEIGHTS, FAST_WEIGHTS
    from tests.conftest import int8_conv_weights

    recipe = inspect.signature(quantize_static_onnx).parameters["recipe"].default
    wtype, reduce_range = RECIPES[recipe]
    assert (wtype, reduce_range) == ("QInt8", True)
    for w in (DEFAULT_WEIGHTS, FAST_WEIGHTS):
        q = w.with_suffix(".int8.onnx")
        if not q.is_file():
            pytest.skip(f"no shipped int8 file {q.name}")
        conv_w = int8_conv_weights(q)
        assert conv_w, q.name
        assert all(a.dtype == np.int8 for a in conv_w), q.name
        assert max(int(np.abs(a.astype(np.int32)).max()) for a in conv_w) <= 64, q.name
