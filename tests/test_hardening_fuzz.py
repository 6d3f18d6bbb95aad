"""Issue 8, property-based and fuzz tests (hypothesis): valid inputs round-trip, invalid ones raise
the project's own exception types (never a bare IndexError/struct.error/TypeError), nothing hangs.

Each example runs under a 20 s ``signal.alarm`` (a hang fails the test instead of stalling CI);
segfaults are covered by the corpus test, which runs every input in a watched subprocess. The
budgets are modest and derandomised for CI; ``python -m benchmarks.robustness`` runs more.
"""
import contextlib
import math
import signal
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from morphable.errors import InputError, MorphableError, WeightsError
from tests.corruption import _MAGIC, mutate, save_tiny_regressor, sfm_bytes, tiny_model

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
SLOW = settings(FAST, max_examples=20)


@contextlib.contextmanager
def time_limit(seconds=20):
    def hang(signum, frame):
        raise TimeoutError(f"no answer in {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def refused_clearly(fn, *args, allowed=(MorphableError,), **kw):
    """Run ``fn``; a failure must be one of ``allowed`` with a one-line message. Returns the result or None."""
    with time_limit():
        try:
            return fn(*args, **kw)
        except allowed as e:
            msg = str(e)
            assert msg.strip() and "\n" not in msg, f"{type(e).__name__} without a one-line message: {msg!r}"
            return None


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# =========================================================================== geometry round trips
finite = dict(allow_nan=False, allow_infinity=False)


@FAST
@given(st.lists(st.floats(-1, 1, **finite), min_size=3, max_size=3), st.floats(0.0, math.pi - 1e-3))
def test_rotvec_rotmat_round_trip(axis, angle):
    from morphable.geometry import rotmat_to_rotvec, rotvec_to_rotmat

    a = torch.tensor(axis, dtype=torch.float64)
    assume(float(a.norm()) > 1e-3)
    w = a / a.norm() * angle
    R = rotvec_to_rotmat(w[None])[0]
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert abs(float(torch.linalg.det(R)) - 1.0) < 1e-12
    assert torch.allclose(rotmat_to_rotvec(R[None])[0], w, atol=1e-9)


@FAST
@given(st.floats(-math.pi + 1e-6, math.pi - 1e-6), st.floats(-math.pi / 2 + 1e-3, math.pi / 2 - 1e-3),
       st.floats(-math.pi + 1e-6, math.pi - 1e-6))
def test_angles_round_trip(pitch, yaw, roll):
    from morphable.geometry import angles_to_rotmat, rotmat_to_angles

    ang = torch.tensor([pitch, yaw, roll], dtype=torch.float64)
    back = rotmat_to_angles(angles_to_rotmat(ang))
    d = torch.remainder(back - ang + math.pi, 2 * math.pi) - math.pi  # angles modulo 2 pi
    assert d.abs().max() < 1e-7


@FAST
@given(st.integers(-10_000, 10_000), st.integers(-10_000, 10_000), st.integers(1, 5_000), st.sampled_from([64, 120, 256]),
       hnp.arrays(np.float64, (5, 2), elements=st.floats(-1e4, 1e4, **finite)),
       st.floats(1e-3, 1e3, **finite), st.tuples(st.floats(-1e4, 1e4, **finite), st.floats(-1e4, 1e4, **finite)))
def test_crop_mapping_round_trip(x0, y0, side, size, pts, scale, trans):
    from morphable.crop import camera_to_crop, camera_to_image, to_crop, to_image
    from morphable.geometry import project, rotvec_to_rotmat

    boxes = np.array([[x0, y0, side]])
    p = torch.tensor(pts[None])
    tol = 1e-9 * (1 + np.abs(pts).max() + abs(x0) + abs(y0) + side)
    assert torch.allclose(to_crop(to_image(p, boxes, size), boxes, size), p, atol=tol)
    s, t = torch.tensor([scale], dtype=torch.float64), torch.tensor([trans], dtype=torch.float64)
    s2, t2 = camera_to_crop(*camera_to_image(s, t, boxes, size), boxes, size)
    assert torch.allclose(s2, s, rtol=1e-12) and torch.allclose(t2, t, atol=tol)
    # a point projected with the crop camera, mapped to the image == projected with the image camera
    X = torch.tensor(np.c_[pts, pts[:, :1]][None] / 100.0)
    R = rotvec_to_rotmat(torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64))
    si, ti = camera_to_image(s, t, boxes, size)
    a = to_image(project(X, R, s, t), boxes, size)
    b = project(X, R, si, ti)
    assert torch.allclose(a, b, atol=1e-7 * float(b.abs().max() + 1))


# =========================================================================== file round trips
names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


@st.composite
def models(draw):
    from morphable.model import ModelInfo, MorphableModel

    N = draw(st.integers(3, 24))
    Ks, Ke = draw(st.integers(0, 4)), draw(st.integers(0, 3))
    fl = st.floats(-1e3, 1e3, width=32, **finite)
    mean = draw(hnp.arrays(np.float32, (N, 3), elements=fl))
    S = draw(hnp.arrays(np.float32, (N, 3, Ks), elements=fl))
    E = draw(hnp.arrays(np.float32, (N, 3, Ke), elements=fl))
    T = draw(hnp.arrays(np.int64, (draw(st.integers(0, 10)), 3), elements=st.integers(0, N - 1)))
    L = draw(hnp.arrays(np.int64, (68,), elements=st.integers(0, N - 1)))
    blend = draw(st.booleans())
    uv = draw(st.none() | hnp.arrays(np.float32, (N, 2), elements=st.floats(0, 1, width=32)))
    cr = draw(hnp.arrays(np.int64, (draw(st.integers(0, 5)),), elements=st.integers(0, N - 1)))
    info = ModelInfo(name=draw(names), source=draw(names), licence=draw(names), units="mm", shape_kind="pca",
                     expr_kind="blendshape" if blend else "pca", expression_names=[draw(names) for _ in range(Ke)])
    return MorphableModel(mean, S, E, T, L, info, shape_std=np.abs(draw(hnp.arrays(np.float32, (Ks,), elements=fl))),
                          expr_lower=np.zeros(Ke) if blend else None, expr_upper=np.ones(Ke) if blend else None,
                          contour_right=cr, contour_left=cr[::-1], uv=uv)


@SLOW
@given(models())
def test_native_h5_round_trip(work, m):
    from morphable.formats.native import load_native, save_native

    p = work / "rt.h5"
    with time_limit():
        save_native(m, p)
        back = load_native(p)
    for name, buf in m.named_buffers():
        other = getattr(back, name)
        assert other.shape == buf.shape and other.dtype == buf.dtype and torch.equal(other, buf), name
    assert back.info == m.info


@SLOW
@given(st.integers(3, 40).flatmap(lambda n: st.tuples(
    hnp.arrays(np.float64, (n, 3), elements=st.floats(-1e3, 1e3, **finite)),
    hnp.arrays(np.int64, (min(n, 12), 3), elements=st.integers(0, n - 1)),
    st.none() | hnp.arrays(np.uint8, (n, 3)),
    st.none() | hnp.arrays(np.float64, (n, 2), elements=st.floats(0, 1, **finite)))),
    st.sampled_from([".obj", ".ply"]))
def test_mesh_write_read_round_trip(work, mesh, suffix):
    from morphable.export import read_mesh, write_mesh

    V, F, C, UV = mesh
    p = work / f"m{suffix}"
    with time_limit():
        write_mesh(p, V, F, colors=C, uv=UV)
        V2, F2, C2, UV2 = read_mesh(p)
    tol = 1e-8 if suffix == ".obj" else 1e-4  # 8 decimals / float32
    assert V2.shape == V.shape and np.allclose(V2, V, atol=tol * max(1.0, np.abs(V).max()))
    assert np.array_equal(F2, F)
    if C is not None:
        assert C2 is not None and np.array_equal(C2, C)
    if UV is not None:
        assert UV2 is not None and np.allclose(UV2, UV, atol=1e-6)


# =========================================================================== invalid bytes
def _bytes(magic_keys):
    raw = st.binary(max_size=1500)
    return st.one_of(raw, st.tuples(st.sampled_from([_MAGIC[k] for k in magic_keys]), raw).map(lambda t: t[0] + t[1]))


@FAST
@given(_bytes([".png", ".jpg", ".gif", ".bmp", ".tiff", ".webp"]), st.sampled_from([".jpg", ".png", ".tiff", ".gif"]))
def test_random_bytes_are_refused_as_images(work, data, suffix):
    from fitting.images import load_image

    p = work / f"img{suffix}"
    p.write_bytes(data)
    for src in (p, data):
        img = refused_clearly(load_image, src, allowed=(InputError,))
        if img is not None:  # it happened to decode: then it is a proper image
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


@pytest.fixture(scope="module")
def valid_files(work):
    from PIL import Image

    from morphable.formats.native import save_native

    save_native(tiny_model(), work / "valid.h5")
    rng = np.random.default_rng(0)
    jpg = work / "valid.jpg"
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(jpg, quality=80)
    png = work / "valid.png"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(png)
    model_bin, _ = sfm_bytes()
    (work / "valid.bin").write_bytes(model_bin)
    return {".h5": (work / "valid.h5").read_bytes(), ".jpg": jpg.read_bytes(), ".png": png.read_bytes(),
            ".bin": model_bin}


edits = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8)


def _edit(data: bytes, ed) -> bytes:
    b = bytearray(data)
    for pos, val in ed:
        b[min(int(pos * len(b)), len(b) - 1)] = val
    return bytes(b)


@FAST
@given(st.sampled_from([".jpg", ".png"]), edits, st.floats(0.05, 1.0))
def test_edited_images_load_or_are_refused(work, valid_files, suffix, ed, keep):
    from fitting.images import load_image

    data = _edit(valid_files[suffix], ed)
    data = data[: max(1, int(len(data) * keep))]
    img = refused_clearly(load_image, data, allowed=(InputError,))
    if img is not None:
        assert img.dtype == np.uint8 and img.shape[2] == 3


@FAST
@given(st.sampled_from([".h5", ".mat", ".bin"]), _bytes([".h5"]) | st.binary(max_size=600).map(
    lambda b: b"MATLAB 5.0 MAT-file".ljust(124) + b"\x00\x01IM" + b))
def test_random_bytes_are_refused_as_models(work, suffix, data):
    from morphable.registry import load_model_file

    p = work / f"model{suffix}"
    p.write_bytes(data)
    refused_clearly(load_model_file, p)


@FAST
@given(st.sampled_from([".h5", ".bin"]), edits, st.floats(0.02, 1.0))
def test_edited_model_files_load_or_are_refused(work, valid_files, suffix, ed, keep):
    from morphable.formats.native import load_native
    from morphable.formats.sfm import read_eos_model

    data = _edit(valid_files[suffix], ed)
    p = work / f"edited{suffix}"
    p.write_bytes(data[: max(1, int(len(data) * keep))])
    refused_clearly(load_native if suffix == ".h5" else read_eos_model, p)


@FAST
@given(st.lists(st.tuples(st.sampled_from(["<i", "<I", "<Q"]), st.integers(0, 2**32 - 1)), min_size=1, max_size=4),
       st.integers(0, 60))
def test_sfm_absurd_counts_never_allocate_or_crash(work, fields, at):
    """Overwrite header counts of a valid eos file with arbitrary integers."""
    from morphable.formats.sfm import read_eos_model

    b = bytearray(sfm_bytes()[0])
    pos = 4 * at
    for fmt, v in fields:
        n = struct.calcsize(fmt)
        if pos + n <= len(b):
            struct.pack_into(fmt, b, pos, v % (1 << (8 * n)) if fmt != "<i" else (v % (1 << 32)) - (1 << 31))
        pos += n
    p = work / "counts.bin"
    p.write_bytes(bytes(b))
    refused_clearly(read_eos_model, p)


@pytest.fixture(scope="module")
def weights_file(work):
    return save_tiny_regressor(work / "w.pt", n_shape=3, n_expr=2).read_bytes()


@SLOW
@given(st.one_of(_bytes([".pt"]), st.integers(0, 2**31).map(lambda s: ("mutate", s))))
def test_random_weight_files_are_refused(work, weights_file, data):
    from regressors.weights import load_regressor

    if isinstance(data, tuple):
        data = mutate(weights_file, np.random.default_rng(data[1]))
    p = work / "w-fuzz.pt"
    p.write_bytes(data)
    refused_clearly(load_regressor, p, allowed=(WeightsError,))


# =========================================================================== invalid arrays
dtypes = st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8, np.uint16, np.bool_,
                          np.complex64])


@FAST
@given(hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=40),
                  elements=None))
def test_random_arrays_as_images(arr):
    from fitting.images import load_image

    img = refused_clearly(load_image, arr, allowed=(InputError,))
    if img is not None:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.flags["C_CONTIGUOUS"]
        assert img.shape[:2] == arr.shape[:2]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@FAST
@given(st.one_of(
    hnp.arrays(dtypes, st.sampled_from([(1, 68, 2), (3, 68, 2), (68, 2), (1, 67, 2), (0, 68, 2), (2, 68, 3), ()])),
    hnp.arrays(np.float64, st.sampled_from([(1, 68, 2), (2, 68, 2)]), elements=st.floats(allow_nan=True, allow_infinity=True))),
    st.none() | hnp.arrays(np.float64, st.sampled_from([(1, 68), (2, 68), (3, 68), (68,)]),
                           elements=st.floats(allow_nan=True, allow_infinity=True)))
def test_random_landmark_arrays(model, L, W):
    from fitting.solver import FitOptions, fit_landmarks

    res = refused_clearly(fit_landmarks, model, L, W, options=FitOptions(max_iterations=3), allowed=(InputError,))
    if res is not None:
        for f in ("shape", "expr", "rotvec", "scale", "translation"):
            assert torch.isfinite(getattr(res.params, f)).all(), f
        assert torch.isfinite(res.landmarks).all()
        ok = np.isfinite(L.astype(np.float64)).all(-1) if L.dtype.kind in "fiub" else None
        if ok is not None and W is not None:
            ok = ok & (W > 0)
        if ok is not None:  # faces with fewer than 4 usable points are flagged
            assert not res.valid[torch.as_tensor(ok.sum(-1) < 4)].any()


@FAST
@given(hnp.arrays(np.float64, (68, 2), elements=st.floats(-1e5, 1e5, **finite)), st.floats(1e-2, 1e4),
       st.floats(-1e6, 1e6, **finite))
def test_valid_landmarks_give_finite_fits(model, L, scale, shift):
    from fitting.solver import FitOptions, fit_landmarks

    with time_limit():
        res = fit_landmarks(model, torch.tensor(L[None] * scale / 1e5 * 100 + shift), options=FitOptions(max_iterations=3))
    for f in ("shape", "expr", "rotvec", "scale", "translation"):
        assert torch.isfinite(getattr(res.params, f)).all(), f
    assert bool(torch.isfinite(res.rmse).all()) or not bool(res.valid.all())
