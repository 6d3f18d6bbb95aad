r"""Temporal smoothing of video tracks: the One-Euro filter, rotation projection and two metrics.

The One-Euro filter (Casiez, Roussel, Vogel, "1 Euro Filter: A Simple Speed-based Low-pass Filter
for Noisy Input in Interactive Systems", CHI 2012) is a first-order low-pass filter whose cutoff
rises with the speed of the signal: still stretches are smoothed hard (little jitter), fast motion
lightly (little lag). Per sample ``x_i`` at time ``t_i`` (seconds), with ``dt = t_i - t_{i-1}``::

    alpha(fc)  = 1 / (1 + tau / dt),   tau = 1 / (2 pi fc)         (fc in Hz)
    dx_i       = (x_i - xhat_{i-1}) / dt                           (units of x per second)
    dxhat_i    = alpha(d_cutoff) dx_i + (1 - alpha(d_cutoff)) dxhat_{i-1}
    fc_i       = min_cutoff + beta |dxhat_i|                       (elementwise, Hz)
    xhat_i     = alpha(fc_i) x_i + (1 - alpha(fc_i)) xhat_{i-1}

as in the paper's pseudocode: the derivative is taken against the previous *filtered* value and
the derivative filter starts at 0; the first sample (and the first after a reset) is returned
unchanged. Every element of an array is filtered independently (its own derivative and cutoff),
so one filter smooths a whole (L, 2) landmark track, a (3,) translation or a (Ke,) weight vector.
``beta`` is in Hz per (unit of x per second): for pixel tracks, Hz per px/s.

Rotations are smoothed entrywise as 3x3 matrices and mapped back with
:func:`project_to_rotation` (the nearest rotation in the Frobenius norm).

:func:`jitter` and :func:`lag_frames` measure what smoothing buys and costs on a track.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from morphable.errors import InputError

__all__ = ["SmoothingOptions", "OneEuroFilter", "project_to_rotation", "jitter", "lag_frames"]

#: Parameters of strength 1.0 (see :meth:`SmoothingOptions.from_strength`).
_MIN_CUTOFF_1 = 1.0  # Hz
_BETA_1 = 0.05  # Hz per (px/s)
_D_CUTOFF = 1.0  # Hz


@dataclass
class SmoothingOptions:
    """Parameters of the One-Euro filter.

    Attributes:
        min_cutoff: cutoff frequency (Hz) when the signal is still; lower = smoother, more lag.
            ``math.inf`` turns the filter into the identity.
        beta: speed coefficient (Hz per unit-of-x per second): the cutoff grows by
            ``beta * |speed|``; higher = less lag in fast motion.
        d_cutoff: cutoff frequency (Hz) of the low-pass filter on the speed estimate.
    """

    min_cutoff: float = 1.0
    beta: float = 0.05
    d_cutoff: float = 1.0

    def __post_init__(self):
        mc, b, dc = float(self.min_cutoff), float(self.beta), float(self.d_cutoff)
        if math.isnan(mc) or mc <= 0:
            raise InputError(f"SmoothingOptions.min_cutoff={self.min_cutoff!r}: must be > 0 Hz "
                             "(math.inf = no smoothing)")
        if not math.isfinite(b) or b < 0:
            raise InputError(f"SmoothingOptions.beta={self.beta!r}: must be a finite number >= 0")
        if not math.isfinite(dc) or dc <= 0:
            raise InputError(f"SmoothingOptions.d_cutoff={self.d_cutoff!r}: must be a finite number > 0 Hz")
        self.min_cutoff, self.beta, self.d_cutoff = mc, b, dc

    @property
    def is_identity(self) -> bool:
        """True when the filter returns its input unchanged (``min_cutoff`` infinite)."""
        return math.isinf(self.min_cutoff)

    @classmethod
    def from_strength(cls, strength: float) -> "SmoothingOptions":
        """Options from one "how much smoothing" knob ``strength >= 0``.

        ``strength = 0`` is no smoothing (``min_cutoff = inf``: the filter is the identity). For
        ``strength = s > 0``::

            min_cutoff = 1.0 / s   Hz
            beta       = 0.05 / s  Hz per (px/s)
            d_cutoff   = 1.0       Hz

        so doubling the strength halves both the still cutoff and the speed gain. Strength 1.0 is
        ``SmoothingOptions()``, the default for 68 face landmarks in pixels at 25 fps: on a 0.3 Hz, 20 px head motion
        with 1 px landmark noise it cuts :func:`jitter` by more than 2x with at most one frame
        of :func:`lag_frames`.
        """
        s = float(strength)
        if not math.isfinite(s) or s < 0:
            raise InputError(f"smoothing strength {strength!r}: must be a finite number >= 0 (0 = no smoothing)")
        if s == 0:
            return cls(min_cutoff=math.inf, beta=0.0, d_cutoff=_D_CUTOFF)
        return cls(min_cutoff=_MIN_CUTOFF_1 / s, beta=_BETA_1 / s, d_cutoff=_D_CUTOFF)


def _alpha(cutoff, dt: float):
    """Smoothing factor ``1 / (1 + tau / dt)``, ``tau = 1 / (2 pi cutoff)``; 1 for an infinite cutoff."""
    return 1.0 / (1.0 + 1.0 / (2.0 * math.pi * np.asarray(cutoff, dtype=np.float64) * dt))


class OneEuroFilter:
    """One-Euro filter of an array track (any shape, fixed along the track), variable time steps.

    Args:
        options: the filter parameters (default :class:`SmoothingOptions` ()).
        max_gap: seconds; a time step longer than this (a cut, a dropped stretch) restarts the
            filter, so the new frame is returned unchanged instead of being dragged toward a
            stale value.

    Call it once per frame: ``y = f(x, t)`` with ``x`` an array (the same shape every call) and
    ``t`` its time in seconds, strictly increasing. Returns a new float64 array of ``x``'s shape.
    A frame with any non-finite entry (e.g. NaN for "no face") is returned as is (float64 copy)
    and restarts the filter: it never enters the state, and the next finite frame is passed
    through unchanged.
    """

    def __init__(self, options: Optional[SmoothingOptions] = None, max_gap: float = 0.5):
        self.options = options if options is not None else SmoothingOptions()
        if not isinstance(self.options, SmoothingOptions):
            raise InputError(f"OneEuroFilter options must be a SmoothingOptions, not {type(self.options).__name__}")
        g = float(max_gap)
        if math.isnan(g) or g <= 0:
            raise InputError(f"OneEuroFilter max_gap={max_gap!r}: must be > 0 seconds (math.inf = never restart)")
        self.max_gap = g
        self.reset()

    def reset(self) -> None:
        """Forget the track: the next call returns its input unchanged and accepts any time."""
        self._restart()
        self._t_last: Optional[float] = None  # time of the last call (also NaN frames), for monotonicity
        self._shape: Optional[tuple] = None

    def _restart(self) -> None:
        self._x: Optional[np.ndarray] = None  # last filtered value
        self._dx: Optional[np.ndarray] = None  # last filtered derivative
        self._t: Optional[float] = None  # time of the last filtered value

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.array(x, dtype=np.float64)  # a copy: the caller's array is never aliased
        t = float(t)
        if not math.isfinite(t):
            raise InputError(f"OneEuroFilter: time t={t!r} is not finite; pass the frame time in seconds")
        if self._t_last is not None and t <= self._t_last:
            raise InputError(f"OneEuroFilter: time t={t} s is not after the previous call's t={self._t_last} s; "
                             "times must strictly increase (call reset() to start a new track)")
        if self._shape is not None and x.shape != self._shape:
            raise InputError(f"OneEuroFilter: frame of shape {x.shape} after frames of shape {self._shape}; "
                             "one filter smooths one fixed-shape track (call reset() to start another)")
        self._shape, self._t_last = x.shape, t
        if not np.isfinite(x).all():
            self._restart()
            return x
        if self._x is None or self.options.is_identity or t - self._t > self.max_gap:
            self._x, self._dx, self._t = x, np.zeros_like(x), t
            return x.copy()
        o, dt = self.options, t - self._t
        dx = (x - self._x) / dt
        dx_hat = self._dx + _alpha(o.d_cutoff, dt) * (dx - self._dx)
        a = _alpha(o.min_cutoff + o.beta * np.abs(dx_hat), dt)
        x_hat = self._x + a * (x - self._x)
        self._x, self._dx, self._t = x_hat, dx_hat, t
        return x_hat.copy()


def project_to_rotation(M: np.ndarray) -> np.ndarray:
    """The nearest rotation to each 3x3 matrix (Frobenius norm), by SVD.

    Args:
        M: (..., 3, 3) finite matrices, e.g. entrywise-smoothed rotation matrices.

    Returns:
        (..., 3, 3) float64 rotations ``U diag(1, 1, d) V^T`` with ``M = U S V^T`` and
        ``d = det(U V^T)`` (so ``det = +1``; a reflection is turned into the nearest rotation).
        A rotation is returned unchanged (to rounding).
    """
    M = np.asarray(M, dtype=np.float64)
    if M.ndim < 2 or M.shape[-2:] != (3, 3):
        raise InputError(f"project_to_rotation: expected (..., 3, 3) matrices, got shape {M.shape}")
    if not np.isfinite(M).all():
        raise InputError("project_to_rotation: the matrices contain NaN/inf; drop or fill those frames first")
    U, _, Vt = np.linalg.svd(M)
    d = np.sign(np.linalg.det(U @ Vt))
    d = np.where(d == 0, 1.0, d)
    U = U.copy()
    U[..., :, 2] *= d[..., None]
    return U @ Vt


def jitter(points: np.ndarray, face_size: np.ndarray) -> float:
    """Frame-to-frame jitter of landmark tracks, in percent of the face size.

    ``mean over t = 1..T-2 and l of || x[t+1, l] - 2 x[t, l] + x[t-1, l] || / face_size[t] * 100``:
    the second difference (discrete acceleration) is ~0 for smooth motion and large for noise, so
    on a still (or slowly moving) stretch this measures the noise the viewer sees as shaking.
    Terms touching a non-finite point or face size are left out.

    Args:
        points: (T, L, 2) landmark trajectories, image px (T >= 3).
        face_size: (T,) face size per frame, px (> 0), e.g. sqrt of the landmark box area.

    Returns:
        the mean normalised second difference, percent.
    """
    P = np.asarray(points, dtype=np.float64)
    s = np.asarray(face_size, dtype=np.float64)
    if P.ndim != 3 or P.shape[0] < 3:
        raise InputError(f"jitter: points must be (T, L, 2) with T >= 3 frames, got shape {P.shape}")
    if s.shape != (P.shape[0],):
        raise InputError(f"jitter: face_size must be (T,) = ({P.shape[0]},), got shape {s.shape}")
    if np.any(s[np.isfinite(s)] <= 0):
        raise InputError("jitter: face_size has values <= 0; pass the face size in px (> 0) per frame")
    d2 = np.linalg.norm(P[2:] - 2.0 * P[1:-1] + P[:-2], axis=-1) / s[1:-1, None] * 100.0  # (T-2, L)
    ok = np.isfinite(d2)
    if not ok.any():
        raise InputError("jitter: no three consecutive frames with finite points and face size; "
                         "pass a stretch where the face was found")
    return float(d2[ok].mean())


def lag_frames(raw: np.ndarray, smooth: np.ndarray, max_lag: int = 10) -> int:
    """How many frames a smoothed track trails the raw one.

    Both (T, ...) tracks are flattened per frame to (T, D). For each shift ``k`` in ``0..max_lag``
    the pairs ``(smooth[t], raw[t - k])``, ``t = k..T-1``, are taken (pairs with a non-finite entry
    left out), each side's per-coordinate mean over those frames removed (so fixed landmark
    positions do not count, only motion), and the correlation ``<a, b> / (|a| |b|)`` of the
    flattened remainders computed, and the ``k`` with the highest correlation returned
    (the smallest such ``k`` on ties). A causal filter's lag is >= 0 frames; 0 = no visible lag.

    Args:
        raw: (T, ...) the unfiltered track.
        smooth: (T, ...) the filtered track, same shape.
        max_lag: largest shift tried, frames (0 <= max_lag <= T - 2).

    Returns:
        the best shift, frames.
    """
    r = np.asarray(raw, dtype=np.float64)
    s = np.asarray(smooth, dtype=np.float64)
    if r.shape != s.shape or r.ndim < 1:
        raise InputError(f"lag_frames: raw {r.shape} and smooth {s.shape} must be (T, ...) arrays of one shape")
    T = r.shape[0]
    if isinstance(max_lag, bool) or int(max_lag) != max_lag or not 0 <= max_lag <= T - 2:
        raise InputError(f"lag_frames: max_lag={max_lag!r} must be an integer in [0, T-2] = [0, {T - 2}]; "
                         "pass a longer track or a smaller max_lag")
    r, s = r.reshape(T, -1), s.reshape(T, -1)
    best_k, best_c = 0, -np.inf
    for k in range(int(max_lag) + 1):
        a, b = s[k:], r[: T - k]
        ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
        if ok.sum() < 2:
            continue
        a = a[ok] - a[ok].mean(0)
        b = b[ok] - b[ok].mean(0)
        den = np.sqrt((a * a).sum() * (b * b).sum())
        c = (a * b).sum() / den if den > 0 else -np.inf
        if c > best_c:
            best_k, best_c = k, c
    if not np.isfinite(best_c):
        raise InputError("lag_frames: the tracks are constant or have too few finite frames to correlate")
    return best_k
