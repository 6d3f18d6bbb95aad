r"""Every geometric convention of morphable, stated once.

Frames
------
* **Model frame**: millimetres, right-handed, +y up, the face looks along +z, +x is the
  subject's left.
* **Image frame**: pixels, origin at the top-left pixel's centre (0-based, pixel centres on
  integers), +x right, +y down.
* **Weak perspective**: ``x = s * P @ R @ X + t`` where ``P = [[1, 0, 0], [0, -1, 0]]`` drops z
  and flips y, ``s`` is pixels per millimetre, ``R`` a rotation matrix and ``t`` the image
  position (pixels) of the model origin. Depth for z-buffering is ``s * (R @ X)_z``: larger
  is nearer the camera.
* **Rotations** are rotation matrices acting on column vectors, ``Y = R @ X``; a rotation
  vector (Rodrigues/axis-angle, radians) ``w`` has ``R = exp([w]_x)``.
* **Pose angles** follow AFLW2000-3D (its ``Code/RotationMatrix.m``, used to build
  ``Pose_Para``): ``R = Rx(pitch) @ Ry(yaw) @ Rz(roll)`` with the elementary matrices

  .. code-block:: text

      Rx(a) = [[1, 0, 0], [0, cos a, sin a], [0, -sin a, cos a]]
      Ry(a) = [[cos a, 0, -sin a], [0, 1, 0], [sin a, 0, cos a]]
      Rz(a) = [[cos a, sin a, 0], [-sin a, cos a, 0], [0, 0, 1]]

  Radians inside the library, degrees at the user-facing API (``fit``'s ``Pose``).
  With this convention a positive yaw turns the face toward image-left (the subject's own
  right; the nose tip moves to smaller x), a positive pitch raises the face (the nose tip moves
  up in the image) and a positive roll moves the top of the head toward image-right. Checked
  against AFLW2000-3D's ``Pose_Para`` + ``pt3d_68`` in ``tests/test_geometry.py``.

* **Model frames**: a model's vertices may be stored turned from its file's axes,
  ``x_model = F @ x_file`` (``ModelInfo.frame_rotation``). A pose ``R`` fitted in frame ``F_src``
  moves to frame ``F_dst`` as ``R' = R @ frame_change(F_src, F_dst)`` (``= R @ F_src @ F_dst^T``),
  so that every vertex projects to the same pixel.

All functions are batched (leading dims ``...``) and run on the device/dtype of their inputs.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "rotvec_to_rotmat",
    "rotmat_to_rotvec",
    "angles_to_rotmat",
    "rotmat_to_angles",
    "project",
    "project_numpy",
    "rotvec_to_rotmat_numpy",
    "rotmat_to_rotvec_numpy",
    "skew",
    "PROJECTION",
    "as_rotation_matrix",
    "frame_change",
]

#: The 2x3 matrix P of the weak-perspective model: drops z, flips y (model y up -> image y down).
PROJECTION = ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0))


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrix ``[v]_x`` of ``v`` ((..., 3) -> (..., 3, 3))."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack(
        [torch.stack([o, -z, y], -1), torch.stack([z, o, -x], -1), torch.stack([-y, x, o], -1)], -2
    )


def rotvec_to_rotmat(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotation vector (..., 3), radians -> rotation matrix (..., 3, 3).

    Exact and differentiable at and near zero: ``sin(t)/t`` and ``(1-cos t)/t^2`` switch to their
    Taylor series below t = 1e-4 rad.
    """
    t2 = (w * w).sum(-1, keepdim=True)
    small = t2 < 1e-8
    t2s = torch.where(small, torch.ones_like(t2), t2)
    ts = t2s.sqrt()
    a = torch.where(small, 1.0 - t2 / 6.0 + t2 * t2 / 120.0, torch.sin(ts) / ts)
    b = torch.where(small, 0.5 - t2 / 24.0 + t2 * t2 / 720.0, (1.0 - torch.cos(ts)) / t2s)
    K = skew(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(K.shape)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


def _rotmat_to_quat(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (..., 3, 3) -> unit quaternion (..., 4) as (w, x, y, z), w >= 0.

    Shepperd's method: picks the numerically best of four formulas per element (no branching
    on the host).
    """
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    cands = torch.stack(
        [
            torch.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),
            torch.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),
            torch.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),
        ],
        -2,
    )  # (..., 4 candidates, 4)
    diag = torch.stack([m00 + m11 + m22, m00, m11, m22], -1)
    best = diag.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(R.dtype).tiny)
    return torch.where(q[..., :1] < 0, -q, q)


def rotmat_to_rotvec(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (..., 3, 3) -> rotation vector (..., 3), radians, angle in [0, pi].

    Goes through a unit quaternion so it is accurate near 0 and near pi.
    """
    q = _rotmat_to_quat(R)
    w, v = q[..., :1], q[..., 1:]
    n = v.norm(dim=-1, keepdim=True)
    angle = 2.0 * torch.atan2(n, w)
    small = n < 1e-7
    # angle / n -> 2 / w as n -> 0 (w -> 1)
    scale = torch.where(small, 2.0 / w.clamp_min(1e-12), angle / torch.where(small, torch.ones_like(n), n))
    return v * scale


def _elementary(a: torch.Tensor, axis: int) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, i = torch.zeros_like(a), torch.ones_like(a)
    if axis == 0:
        rows = [[i, o, o], [o, c, s], [o, -s, c]]
    elif axis == 1:
        rows = [[c, o, -s], [o, i, o], [s, o, c]]
    else:
        rows = [[c, s, o], [-s, c, o], [o, o, i]]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def angles_to_rotmat(angles: torch.Tensor) -> torch.Tensor:
    """(..., 3) [pitch, yaw, roll] in radians (AFLW2000-3D order) -> R (..., 3, 3).

    ``R = Rx(pitch) @ Ry(yaw) @ Rz(roll)`` with the elementary matrices of the module
    docstring; ``angles_to_rotmat(Pose_Para[0, :3])`` is the dataset's own rotation.
    """
    p, y, r = angles.unbind(-1)
    return _elementary(p, 0) @ _elementary(y, 1) @ _elementary(r, 2)


def rotmat_to_angles(R: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`angles_to_rotmat`: R (..., 3, 3) -> [pitch, yaw, roll] (..., 3), radians.

    yaw is in [-pi/2, pi/2]; at gimbal lock (|yaw| = pi/2) roll is set to 0 and the whole
    in-plane angle is given to pitch.
    """
    # Row 0 of R is [cos(yaw) cos(roll), cos(yaw) sin(roll), -sin(yaw)];
    # column 2 is [-sin(yaw), sin(pitch) cos(yaw), cos(pitch) cos(yaw)].
    sy = (-R[..., 0, 2]).clamp(-1.0, 1.0)
    yaw = torch.asin(sy)
    cy = torch.sqrt(R[..., 0, 0] ** 2 + R[..., 0, 1] ** 2)
    locked = cy < 1e-6
    pitch = torch.atan2(R[..., 1, 2], R[..., 2, 2])
    roll = torch.atan2(R[..., 0, 1], R[..., 0, 0])
    # gimbal lock: R = Rx(p) Ry(+-pi/2) -> use the rows 1,2 of column 1
    pitch_l = torch.atan2(-R[..., 2, 1], R[..., 1, 1])
    pitch = torch.where(locked, pitch_l, pitch)
    roll = torch.where(locked, torch.zeros_like(roll), roll)
    return torch.stack([pitch, yaw, roll], -1)


#: AFLW2000-3D's pose MAE counts only faces whose three ground-truth angles all lie within
#: +-POSE_LIMIT_DEG degrees (FSA-Net's subset, used by every published table): beyond it the
#: Euler read-out wraps (a pitch of +179 read as -179 is a 358 degree "error").
POSE_LIMIT_DEG = 99.0


def rotation_angle(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    """Angle (radians, in [0, pi]) of the rotation ``Ra^T @ Rb`` between two batches of rotation
    matrices (..., 3, 3) -> (...): the geodesic distance, which needs no Euler convention.

    Computed through the rotation vector, so it is accurate near 0 and near pi.
    """
    return rotmat_to_rotvec(Ra.transpose(-1, -2) @ Rb).norm(dim=-1)


def project(points: torch.Tensor, R: torch.Tensor, scale: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Weak-perspective projection ``x = s * P @ R @ X + t`` to image pixels (y down).

    Args:
        points: (B, N, 3) model-frame points, mm.
        R: (B, 3, 3) rotation matrices.
        scale: (B,) pixels per mm.
        translation: (B, 2) pixels, image position of the model origin.

    Returns:
        (B, N, 2) image pixels, x right, y down.
    """
    Y = points @ R.transpose(-1, -2)
    xy = Y[..., :2] * torch.stack([torch.ones_like(Y[..., 0]), -torch.ones_like(Y[..., 0])], -1)
    return scale[..., None, None] * xy + translation[..., None, :]


def project_numpy(points: np.ndarray, R: np.ndarray, scale, translation: np.ndarray) -> np.ndarray:
    """:func:`project` for one face in numpy (the solver's small-batch path): points (N, 3) mm,
    R (3, 3), scale (pixels per mm), translation (2,) px -> (N, 2) image px, y down; the dtype of
    ``points``."""
    Y = points @ R[:2].T
    out = Y * scale
    out[:, 1] *= -1.0
    return out + translation


def rotvec_to_rotmat_numpy(w: np.ndarray) -> np.ndarray:
    """:func:`rotvec_to_rotmat` for one rotation vector (3,) in numpy -> (3, 3), in its dtype, with
    the same Taylor switch below t = 1e-4 rad."""
    x, y, z = (float(v) for v in w)
    t2 = x * x + y * y + z * z
    if t2 < 1e-8:
        a, b = 1.0 - t2 / 6.0 + t2 * t2 / 120.0, 0.5 - t2 / 24.0 + t2 * t2 / 720.0
    else:
        t = math.sqrt(t2)
        a, b = math.sin(t) / t, (1.0 - math.cos(t)) / t2
    # I + a K + b K^2 with K = [w]_x, K^2 = w w^T - t2 I
    return np.array([[1.0 + b * (x * x - t2), -a * z + b * x * y, a * y + b * x * z],
                     [a * z + b * x * y, 1.0 + b * (y * y - t2), -a * x + b * y * z],
                     [-a * y + b * x * z, a * x + b * y * z, 1.0 + b * (z * z - t2)]], dtype=w.dtype)


def rotmat_to_rotvec_numpy(R: np.ndarray) -> np.ndarray:
    """:func:`rotmat_to_rotvec` in numpy for a few matrices, the same quaternion route (Shepperd's
    best-conditioned formula, then the angle by atan2): (..., 3, 3) -> (..., 3) radians, angle in
    [0, pi], in the dtype of ``R``."""
    R = np.asarray(R)
    out = np.empty((int(np.prod(R.shape[:-2], dtype=np.int64)), 3), dtype=np.float64)
    for k, m in enumerate(R.reshape(-1, 3, 3).astype(np.float64)):
        (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = m
        diag = (m00 + m11 + m22, m00, m11, m22)
        best = max(range(4), key=diag.__getitem__)  # the first of equal maxima, as argmax
        q = ((1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01),
             (m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20),
             (m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21),
             (m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22))[best]
        norm = max(math.sqrt(sum(c * c for c in q)), np.finfo(np.float64).tiny)
        w, x, y, z = (c / norm for c in q)
        if w < 0:
            w, x, y, z = -w, -x, -y, -z
        n = math.sqrt(x * x + y * y + z * z)
        scale = 2.0 / max(w, 1e-12) if n < 1e-7 else 2.0 * math.atan2(n, w) / n
        out[k] = (x * scale, y * scale, z * scale)
    return out.reshape(*R.shape[:-2], 3).astype(R.dtype)


def depth(points: torch.Tensor, R: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Depth (B, N) of model points toward the camera, pixels: ``s * (R @ X)_z``, larger = nearer."""
    return scale[..., None] * (points @ R[..., 2, :, None]).squeeze(-1)


def as_rotation_matrix(value, tol: float = 1e-5):
    """``value`` as a (3, 3) float64 numpy rotation matrix (finite, orthonormal to ``tol``,
    determinant +1), or ``ValueError`` saying which of these fails. Used to check stored frames."""
    F = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
    if F.shape != (3, 3):
        raise ValueError(f"not a 3x3 rotation matrix: shape {F.shape}")
    if not np.isfinite(F).all():
        raise ValueError("not a 3x3 rotation matrix: it holds NaN or inf")
    if np.abs(F @ F.T - np.eye(3)).max() > tol or np.linalg.det(F) < 0:
        raise ValueError("not a 3x3 rotation matrix: not orthonormal with determinant +1")
    return F


def frame_change(src, dst):
    """(3, 3) float64 numpy matrix ``C = F_src @ F_dst^T`` that re-expresses a model-frame
    rotation: ``R_dst = R_src @ C`` gives ``R_dst @ x_dst == R_src @ x_src`` for every vertex
    (``x = F @ x_file``). ``src``/``dst``: (3, 3) ``ModelInfo.frame_rotation`` values."""
    return as_rotation_matrix(src) @ as_rotation_matrix(dst).T
