"""onnxruntime twins of the torch networks: cached exports, same outputs, the pipeline's default."""
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
    f_auto = Fitter(FitConfig())
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
