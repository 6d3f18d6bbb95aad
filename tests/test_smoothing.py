"""fitting.smoothing: the One-Euro filter on known signals, rotation projection, jitter and lag."""
import math

import numpy as np
import pytest

from fitting.smoothing import OneEuroFilter, SmoothingOptions, jitter, lag_frames, project_to_rotation
from morphable.errors import InputError

FPS = 25.0


def _run(f: OneEuroFilter, xs: np.ndarray, ts: np.ndarray) -> np.ndarray:
    return np.stack([f(x, t) for x, t in zip(xs, ts)])


def _moving_face(ts: np.ndarray, seed: int = 0, sigma: float = 1.0):
    """68 landmarks (px) riding a 0.3 Hz, 20 px sine (x; 10 px in y), plus N(0, sigma) px noise."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(100.0, 300.0, (68, 2))
    clean = base[None] + 20.0 * np.sin(2 * np.pi * 0.3 * ts)[:, None, None] * np.array([1.0, 0.5])
    return clean, clean + rng.normal(0.0, sigma, clean.shape)


def test_hand_computed_two_steps():
    # min_cutoff 1 Hz, beta 0.5, d_cutoff 2 Hz; x = 0, 1, 1.5 at t = 0, 0.1, 0.25 s.
    # alpha(fc, dt) = 1 / (1 + tau / dt), tau = 1 / (2 pi fc).
    # step 1: returned unchanged (0).
    # step 2, dt = 0.1: alpha_d = 1 / (1 + 0.0795775 / 0.1) = 0.5568627; dx = 10 /s;
    #   dxhat = 0.5568627 * 10 = 5.568627; fc = 1 + 0.5 * 5.568627 = 3.784314 Hz;
    #   alpha = 1 / (1 + 0.0420566 / 0.1) = 0.7039453; xhat = 0.7039453.
    # step 3, dt = 0.15: alpha_d = 1 / (1 + 0.0795775 / 0.15) = 0.6533742;
    #   dx = (1.5 - 0.7039453) / 0.15 = 5.307031; dxhat = 5.568627 + 0.6533742 (5.307031 - 5.568627) = 5.397707;
    #   fc = 1 + 0.5 * 5.397707 = 3.698854 Hz; alpha = 1 / (1 + 0.0430276 / 0.15) = 0.7770886;
    #   xhat = 0.7039453 + 0.7770886 (1.5 - 0.7039453) = 1.3225503.
    f = OneEuroFilter(SmoothingOptions(min_cutoff=1.0, beta=0.5, d_cutoff=2.0))
    assert f(np.array([0.0]), 0.0)[0] == 0.0
    assert f(np.array([1.0]), 0.1)[0] == pytest.approx(0.7039453, abs=1e-6)
    assert f(np.array([1.5]), 0.25)[0] == pytest.approx(1.3225503, abs=1e-6)
    # the same by the paper's formula, written out independently
    a = lambda fc, dt: 1.0 / (1.0 + 1.0 / (2 * math.pi * fc) / dt)  # noqa: E731
    dxh = a(2.0, 0.1) * 10.0
    x1 = a(1.0 + 0.5 * dxh, 0.1) * 1.0
    assert x1 == pytest.approx(0.7039453, abs=1e-7)


def test_constant_input_stays_exactly_constant():
    rng = np.random.default_rng(1)
    x = rng.uniform(-500, 500, (68, 2))
    ts = np.cumsum(rng.uniform(0.01, 0.2, 50))
    out = _run(OneEuroFilter(SmoothingOptions.from_strength(3.0)), np.repeat(x[None], 50, 0), ts)
    assert out.dtype == np.float64 and out.shape == (50, 68, 2)
    assert np.array_equal(out, np.repeat(x[None], 50, 0))


def test_strength_zero_is_identity_and_strength_mapping():
    rng = np.random.default_rng(2)
    xs = rng.normal(0, 10, (40, 5, 3))
    ts = np.arange(40) / FPS
    assert np.array_equal(_run(OneEuroFilter(SmoothingOptions.from_strength(0.0)), xs, ts), xs)
    assert SmoothingOptions.from_strength(1.0) == SmoothingOptions()
    s2 = SmoothingOptions.from_strength(2.0)
    assert (s2.min_cutoff, s2.beta) == (0.5, 0.025)
    # a nonzero strength does change a noisy signal
    assert not np.allclose(_run(OneEuroFilter(SmoothingOptions.from_strength(1.0)), xs, ts), xs)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(InputError, match="strength"):
            SmoothingOptions.from_strength(bad)
    with pytest.raises(InputError, match="beta"):
        SmoothingOptions(beta=-0.1)


def test_default_cuts_jitter_without_visible_lag():
    ts = np.arange(200) / FPS
    _, raw = _moving_face(ts)
    smooth = _run(OneEuroFilter(SmoothingOptions.from_strength(1.0)), raw, ts)
    size = np.full(200, 200.0)
    assert jitter(raw, size) >= 2.0 * jitter(smooth, size)
    assert lag_frames(raw, smooth) <= 1
    # and a heavy smoothing does lag: the metric can see it
    heavy = _run(OneEuroFilter(SmoothingOptions.from_strength(8.0)), raw, ts)
    assert lag_frames(raw, heavy) >= 3


def test_jitter_and_lag_known_answers():
    # one landmark, a single (3, 4) px spike at frame 2 of 5: second differences 5, 10, 5 px
    P = np.zeros((5, 1, 2))
    P[2, 0] = (3.0, 4.0)
    assert jitter(P, np.full(5, 100.0)) == pytest.approx(20.0 / 3.0)
    assert jitter(P * 0 + 7.0, np.full(5, 100.0)) == 0.0  # still = no jitter
    # a track delayed by exactly 3 frames
    rng = np.random.default_rng(3)
    raw = np.cumsum(rng.normal(0, 1, (120, 4, 2)), axis=0)
    delayed = np.concatenate([np.repeat(raw[:1], 3, 0), raw[:-3]])
    assert lag_frames(raw, delayed) == 3
    assert lag_frames(raw, raw) == 0
    with pytest.raises(InputError, match="face_size"):
        jitter(P, np.full(4, 100.0))
    with pytest.raises(InputError, match="max_lag"):
        lag_frames(raw[:5], raw[:5], max_lag=10)


def test_nan_frame_resets_without_poisoning():
    ts = np.arange(30) / FPS
    _, raw = _moving_face(ts, seed=4)
    raw[10] = np.nan
    f = OneEuroFilter(SmoothingOptions.from_strength(2.0))
    out = _run(f, raw, ts)
    assert np.isnan(out[10]).all()
    assert np.array_equal(out[11], raw[11])  # first frame after the reset: unchanged
    assert np.isfinite(out[11:]).all() and not np.array_equal(out[12], raw[12])
    # a long time gap restarts too
    g = OneEuroFilter(SmoothingOptions.from_strength(2.0), max_gap=0.5)
    g(np.zeros(3), 0.0)
    assert np.array_equal(g(np.ones(3), 1.0), np.ones(3))
    assert g(np.zeros(3), 1.04)[0] > 0.0  # then filtered again


def test_variable_time_steps_smooth_alike():
    uniform = np.arange(200) * 0.04
    varying = np.concatenate([[0.0], np.cumsum(np.resize([0.03, 0.05], 199))])  # the same 0.04 s on average
    size = np.full(200, 200.0)
    still_jitter, still_error, lags = [], [], []
    for ts in (uniform, varying):
        noise = 150.0 + np.random.default_rng(5).normal(0, 1, (200, 68, 2))  # a still face: noise only
        out = _run(OneEuroFilter(), noise, ts)
        still_jitter.append(jitter(out, size) / jitter(noise, size))
        still_error.append(np.sqrt(np.mean((out[20:] - 150.0) ** 2)))
        _, raw = _moving_face(ts, seed=6)
        lags.append(lag_frames(raw, _run(OneEuroFilter(), raw, ts)))
    assert still_jitter[0] < 0.3 and still_jitter[1] == pytest.approx(still_jitter[0], rel=0.15)
    assert still_error[0] < 0.5 and still_error[1] == pytest.approx(still_error[0], rel=0.15)
    assert lags == [1, 1]


def test_bad_calls_raise():
    f = OneEuroFilter()
    f(np.zeros(2), 1.0)
    with pytest.raises(InputError, match="strictly increase"):
        f(np.zeros(2), 1.0)
    with pytest.raises(InputError, match="strictly increase"):
        f(np.zeros(2), 0.5)
    with pytest.raises(InputError, match="shape"):
        f(np.zeros(3), 2.0)
    f.reset()
    assert np.array_equal(f(np.ones(3), 0.0), np.ones(3))  # a reset accepts a new track and any time
    with pytest.raises(InputError, match="max_gap"):
        OneEuroFilter(max_gap=0.0)


def _rot(axis, angle):
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def test_project_to_rotation():
    R = _rot([0.3, -1.0, 0.5], 0.7)
    assert np.allclose(project_to_rotation(R), R, atol=1e-12)
    assert np.allclose(project_to_rotation(2.5 * R), R, atol=1e-12)  # a scaled rotation: the rotation
    rng = np.random.default_rng(7)
    noisy = R[None] + rng.normal(0, 0.05, (6, 3, 3))
    P = project_to_rotation(noisy)
    assert P.shape == (6, 3, 3)
    assert np.allclose(P @ np.swapaxes(P, -1, -2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(P), 1.0, atol=1e-12)
    assert np.abs(P - R).max() < 0.1
    mirror = project_to_rotation(np.diag([1.0, 1.0, -1.0]) @ R)  # a reflection -> a proper rotation
    assert np.linalg.det(mirror) == pytest.approx(1.0)
    with pytest.raises(InputError, match="3, 3"):
        project_to_rotation(np.eye(2))
