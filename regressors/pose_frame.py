"""The head frame that AFLW2000-3D's poses are read in, measured on training data.

AFLW2000-3D's ``Pose_Para`` is the rotation of a Basel Face Model fitted to each photo's landmarks.
Two different morphable models fitted to the same 68 points read different rotations: each explains
the points with its own mean shape, its own shape and expression modes and its own keypoints, and
pitch in particular is weakly fixed by 68 points in 2D. So the pose a user should read is the one
a BFM fit would give, which differs from our model's by a rotation ``D`` in the face's own frame.

This module measures ``D`` on *training* faces only. Each labelled face (a row of a label file,
:mod:`regressors.pseudolabels`) carries the 3D-style landmarks of our fitted face and that face's
rotation ``R_label``. The same landmarks are fitted with the BFM's 68-keypoint model (3DDFA_V2's
reduced basis in ``../shared/models/bfm/3ddfa-mean``: mean, 40 identity and 10 expression rows),
whose rotation ``R_bfm`` is in AFLW2000-3D's frame. Per face ``D_i = R_label^T R_bfm`` (so that
``R_bfm = R_label @ D_i``); ``D`` is the chordal mean of the ``D_i`` of faces with
|yaw| < :data:`YAW_LIMIT_DEG` in each training set, and the mean of the per-set means.

Loading our model in the frame ``F' = D^T @ F_label`` (``ModelInfo.frame_rotation``) makes every
fitted rotation read as the BFM fit's, and changes no projection (:mod:`morphable.geometry`). The
library keeps a model frame mirror-symmetric about x = 0 (mirror vertex maps, the training flip
``R -> M R M``), so only the pitch of ``F'`` is applied (:attr:`PoseFrame.symmetric_frame_pitch_deg`,
:data:`morphable.formats.ict.FRAME_PITCH_DEG`). The BFM keypoint basis is read from ``../shared``
and never shipped: only that one angle is.

Run ``python -m regressors.pose_frame --labels runs/labels_v5.npz`` to print the measurement, its
spread per set and its sensitivity to the BFM priors.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from morphable.errors import ModelNotFoundError
from morphable.geometry import as_rotation_matrix, rotmat_to_angles, rotvec_to_rotmat
from morphable.model import ModelInfo, MorphableModel

__all__ = ["YAW_LIMIT_DEG", "BFM_SHAPE_STD", "BFM_EXPR_STD", "PoseFrame", "SetOffset", "load_bfm_keypoint_model",
           "mean_rotation", "rotation_offsets", "measure_pose_frame"]

#: faces whose label |yaw| is below this (degrees) enter the mean (Euler angles and BFM fits are
#: well conditioned there)
YAW_LIMIT_DEG = 45.0
#: prior std of the BFM keypoint model's identity coefficients, BFM units (1e3 per mm); the basis
#: columns are unit-norm over the full mesh, so 1e6 moves a vertex by about 2.5 mm RMS per std
BFM_SHAPE_STD = 1e6
#: prior std of the expression coefficients (the basis rows move a keypoint about 0.9 mm per unit)
BFM_EXPR_STD = 2.0
_FILES = ("kp68_u_base.txt", "kp68_w_shp_base.txt", "kp68_w_exp_base.txt")


def load_bfm_keypoint_model(bfm_dir, shape_std: float = BFM_SHAPE_STD, expr_std: float = BFM_EXPR_STD,
                            dtype: torch.dtype = torch.float64) -> MorphableModel:
    """The 68-keypoint Basel model of 3DDFA_V2 as a :class:`MorphableModel` of 68 vertices.

    Args:
        bfm_dir: folder with ``kp68_u_base.txt`` (204 numbers), ``kp68_w_shp_base.txt`` (204 x 40)
            and ``kp68_w_exp_base.txt`` (204 x 10), 3DDFA's frame (y up, +z toward the camera).
        shape_std, expr_std: prior std of the coefficients (BFM units); the model's bases are scaled
            by them, so its coefficients are in std units like every other model's.

    Returns:
        A model in millimetres, centred on the keypoints' mean, landmark i = vertex i, no triangles.

    Raises:
        ModelNotFoundError: a file is missing. ValueError: a file has the wrong number of values.
    """
    d = Path(bfm_dir)
    arrs = []
    for name, cols in zip(_FILES, (1, 40, 10)):
        p = d / name
        if not p.is_file():
            raise ModelNotFoundError(f"{p}: missing; the BFM keypoint files are in ../shared/models/bfm/3ddfa-mean")
        a = np.loadtxt(p, dtype=np.float64).reshape(-1)
        if a.size != 204 * cols:
            raise ValueError(f"{p}: {a.size} numbers, expected 204 x {cols} (68 keypoints x 3 coordinates)")
        arrs.append(a.reshape(68, 3, cols) if cols > 1 else a.reshape(68, 3))
    u, S, E = arrs
    u = (u - u.mean(0)) / 1000.0
    model = MorphableModel(u, S * (shape_std / 1000.0), E * (expr_std / 1000.0), None, np.arange(68),
                           ModelInfo(name="bfm-68-keypoints", source=str(d), licence="BFM 2009 (research use; not shipped)"))
    return model.to(dtype)


def mean_rotation(R: np.ndarray) -> np.ndarray:
    """(3, 3) chordal L2 mean of rotations ``R`` (N, 3, 3): the rotation nearest their sum."""
    U, _, Vt = np.linalg.svd(np.asarray(R, np.float64).sum(0))
    M = U @ Vt
    if np.linalg.det(M) < 0:
        U[:, -1] *= -1
        M = U @ Vt
    return M


def _angles_deg(R) -> np.ndarray:
    return np.degrees(rotmat_to_angles(torch.as_tensor(np.asarray(R, np.float64))).numpy())


def rotation_offsets(model: MorphableModel, landmarks, rotations) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``model`` to ``landmarks`` and return each face's rotation offset from ``rotations``.

    Args:
        model: the reference model (e.g. :func:`load_bfm_keypoint_model`), 68 landmarks.
        landmarks: (N, 68, 2) image pixels, y down.
        rotations: (N, 3, 3) the rotation another model was fitted (or labelled) with.

    Returns:
        ``(D, rmse)``: (N, 3, 3) float64 ``D_i = rotations_i^T @ R_fit_i`` (face frame), and (N,)
        the fit's reprojection RMSE in pixels.
    """
    from fitting.solver import FitOptions, fit_landmarks

    L = torch.as_tensor(np.asarray(landmarks, np.float64))
    Rl = np.asarray(rotations, np.float64)
    if L.ndim != 3 or L.shape[1:] != (68, 2) or Rl.shape != (L.shape[0], 3, 3):
        raise ValueError(f"landmarks must be (N, 68, 2) and rotations (N, 3, 3), got {tuple(L.shape)} and {Rl.shape}")
    res = fit_landmarks(model.double(), L, options=FitOptions(max_iterations=50, contour="3d"))
    return np.swapaxes(Rl, 1, 2) @ res.params.rotation.numpy(), res.rmse.numpy()


@dataclass
class SetOffset:
    """The offset measured on one training set.

    Attributes:
        name: the label file's ``set`` value.
        n: faces used (split ``train``, ``ok``, |yaw| < :data:`YAW_LIMIT_DEG`).
        angles_deg: (3,) [pitch, yaw, roll] degrees of the set's mean offset ``D``.
        std_deg: (3,) std over the faces of the per-face offsets' angles, degrees.
        rmse_px: median reprojection RMSE of the BFM fits, pixels of the label crops.
    """

    name: str
    n: int
    angles_deg: np.ndarray
    std_deg: np.ndarray
    rmse_px: float


@dataclass
class PoseFrame:
    """Result of :func:`measure_pose_frame`.

    Attributes:
        offset: (3, 3) ``D``, the mean over sets of the per-set mean offsets: ``R_bfm ~= R @ D`` for
            a rotation ``R`` in the labels' frame.
        label_frame: (3, 3) the labels' ``frame_rotation`` (``x_model = F @ x_file``).
        sets: one :class:`SetOffset` per training set.
        shape_std, expr_std: the BFM priors used.
    """

    offset: np.ndarray
    label_frame: np.ndarray
    sets: list[SetOffset] = field(default_factory=list)
    shape_std: float = BFM_SHAPE_STD
    expr_std: float = BFM_EXPR_STD

    @property
    def offset_deg(self) -> np.ndarray:
        """(3,) [pitch, yaw, roll] degrees of :attr:`offset`."""
        return _angles_deg(self.offset)

    @property
    def model_frame(self) -> np.ndarray:
        """(3, 3) ``D^T @ label_frame``: the ``frame_rotation`` in which fitted rotations read as
        the BFM fit's (:func:`morphable.geometry.frame_change` of the two is ``D``)."""
        return self.offset.T @ self.label_frame

    @property
    def model_frame_deg(self) -> np.ndarray:
        """(3,) [pitch, yaw, roll] degrees of :attr:`model_frame`."""
        return _angles_deg(self.model_frame)

    @property
    def symmetric_frame_pitch_deg(self) -> float:
        """The pitch of :attr:`model_frame`, degrees: the frame a mirror-symmetric model gets
        (``Rx(pitch)``; its yaw and roll would tilt the model's symmetry plane away from x = 0)."""
        return float(self.model_frame_deg[0])

    def to_json(self) -> dict:
        r = lambda a: np.round(np.asarray(a, np.float64), 3).tolist()  # noqa: E731
        return {"offset_deg": r(self.offset_deg), "model_frame_deg": r(self.model_frame_deg),
                "label_frame_deg": r(_angles_deg(self.label_frame)),
                "symmetric_frame_pitch_deg": round(self.symmetric_frame_pitch_deg, 3), "shape_std": self.shape_std,
                "expr_std": self.expr_std, "yaw_limit_deg": YAW_LIMIT_DEG,
                "sets": [{"name": s.name, "n": s.n, "angles_deg": r(s.angles_deg), "std_deg": r(s.std_deg),
                          "rmse_px": round(s.rmse_px, 3)} for s in self.sets]}


def measure_pose_frame(labels: dict, bfm_dir, *, shape_std: float = BFM_SHAPE_STD, expr_std: float = BFM_EXPR_STD,
                       sets: Optional[Sequence[str]] = None, max_per_set: int = 0, seed: int = 0) -> PoseFrame:
    """Measure the offset ``D`` between the labels' rotations and BFM fits of their landmarks.

    Args:
        labels: a label dict (:func:`regressors.data.load_labels`) with ``landmarks3d`` (N, 68, 2),
            ``rotvec`` (N, 3), ``ok``, ``split``, ``set`` and ``frame_rotation``.
        bfm_dir: the BFM keypoint folder (:func:`load_bfm_keypoint_model`).
        sets: training sets to use (default: every set in the file).
        max_per_set: at most this many faces per set, drawn with ``seed`` (0 = all).

    Returns:
        :class:`PoseFrame`. Only rows of split ``train`` are used: validation faces stay unseen.

    Raises:
        ValueError: no usable training rows.
    """
    model = load_bfm_keypoint_model(bfm_dir, shape_std, expr_std)
    rot = rotvec_to_rotmat(torch.as_tensor(np.asarray(labels["rotvec"], np.float64))).numpy()
    yaw = np.degrees(rotmat_to_angles(torch.as_tensor(rot)).numpy()[:, 1])
    use = np.asarray(labels["ok"], bool) & (np.asarray(labels["split"]) == "train") & (np.abs(yaw) < YAW_LIMIT_DEG)
    names = sorted(set(np.asarray(labels["set"])[use].tolist())) if sets is None else list(sets)
    rng = np.random.default_rng(seed)
    out, means = [], []
    for name in names:
        idx = np.where(use & (np.asarray(labels["set"]) == name))[0]
        if not len(idx):
            raise ValueError(f"no usable training rows of set {name!r} (ok, split 'train', |yaw| < {YAW_LIMIT_DEG})")
        if max_per_set and len(idx) > max_per_set:
            idx = np.sort(rng.choice(idx, max_per_set, replace=False))
        D, rmse = rotation_offsets(model, np.asarray(labels["landmarks3d"])[idx], rot[idx])
        M = mean_rotation(D)
        means.append(M)
        out.append(SetOffset(name, len(idx), _angles_deg(M), _angles_deg(D).std(0), float(np.median(rmse))))
    if not means:
        raise ValueError("no usable training rows (ok, split 'train', |yaw| < %g)" % YAW_LIMIT_DEG)
    F = as_rotation_matrix(labels.get("frame_rotation", np.eye(3)))
    return PoseFrame(mean_rotation(np.stack(means)), F, out, shape_std, expr_std)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m regressors.pose_frame", description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", required=True, help="label file (regressors.pseudolabels)")
    ap.add_argument("--bfm-dir", default=None, help="BFM keypoint folder (default ../shared/models/bfm/3ddfa-mean)")
    ap.add_argument("--max-per-set", type=int, default=0, help="at most this many faces per set (0 = all)")
    ap.add_argument("--sensitivity", action="store_true", help="also measure with the priors x0.3 and x3")
    ap.add_argument("--json", default=None, help="write the measurement here")
    a = ap.parse_args(argv)
    from .data import load_labels
    from .pseudolabels import _default_shared

    bfm = Path(a.bfm_dir) if a.bfm_dir else _default_shared() / "models/bfm/3ddfa-mean"
    torch.set_num_threads(1)
    labels = load_labels(a.labels)
    runs = [(BFM_SHAPE_STD, BFM_EXPR_STD)]
    if a.sensitivity:
        runs += [(BFM_SHAPE_STD * f, BFM_EXPR_STD * g) for f in (0.3, 3.0) for g in (0.3, 3.0)]
    results = []
    for s, e in runs:
        pf = measure_pose_frame(labels, bfm, shape_std=s, expr_std=e, max_per_set=a.max_per_set)
        results.append(pf)
        print(f"BFM priors shape {s:g}, expression {e:g}:")
        for so in pf.sets:
            print(f"  {so.name:8s} n={so.n:6d}  offset [pitch, yaw, roll] {np.round(so.angles_deg, 2).tolist()} deg"
                  f"  (per-face std {np.round(so.std_deg, 2).tolist()}; BFM fit RMSE {so.rmse_px:.2f} px)")
        print(f"  mean offset D {np.round(pf.offset_deg, 2).tolist()} deg; label frame "
              f"{np.round(_angles_deg(pf.label_frame), 2).tolist()} -> model frame {np.round(pf.model_frame_deg, 3).tolist()} deg; "
              f"mirror-symmetric frame: pitch {pf.symmetric_frame_pitch_deg:.3f} deg")
    if a.json:
        Path(a.json).write_text(json.dumps([r.to_json() for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
