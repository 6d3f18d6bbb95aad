r"""Pseudo-label files and the training dataset of the regressors.

Label file (npz, written with :func:`save_labels`, read with :func:`load_labels`); N rows:

=============== ============ =================================================================
key             shape/dtype  meaning
=============== ============ =================================================================
``name``        (N,) str     image path relative to ``../shared/data`` (``ytf68/train/x.jpg``)
``set``         (N,) str     ``'ytf68'``, ``'300w'`` or ``'aflw21'``
``shape``       (N, Ks)      shape coefficients of the fit
``expr``        (N, Ke)      expression coefficients of the fit
``rotvec``      (N, 3)       rotation vector, radians (``R = exp([w]_x)``)
``scale``       (N,)         weak-perspective scale, image px per mm
``translation`` (N, 2)       image px: ``x = s * P @ R @ X + t`` in the ORIGINAL image's frame
``landmarks3d`` (N, 68, 2)   the fit's 68 model landmarks projected, image px (3D-style)
``target``      (N, 68, 2)   annotated points mapped to iBUG-68, image px, NaN where absent
``visible``     (N, 68)      float weights of ``target`` (0 where absent)
``rmse``        (N,)         fit residual, px
``ok``          (N,) bool    the fit is usable
``split``       (N,) str     ``'train'`` or ``'val'``
``model``       () str       optional: name of the morphable model the labels belong to
``contour``     (N,) str     optional: ``'2d'`` where ``target``'s jaw is a 300-W silhouette
                             (ytf68, 300-W), else ``'3d'``; on ``'2d'`` rows the dataset gives
                             the sliding jaw (:data:`CONTOUR_POINTS`) no ``visible`` weight
                             (:data:`DEFAULT_DROP_TARGETS`, :func:`parse_drop_targets`)
=============== ============ =================================================================

Image pixels are 0-based with pixel centres on integers (:mod:`morphable.crop`).

The dataset crops each image with the standard box of :func:`morphable.crop.box_from_landmarks`
on ``landmarks3d`` (the benchmark's rule on its GT 3D landmarks) and returns the crop and the
labels in the crop frame. Training augmentation (seeded per ``(seed, epoch, index)``):

* horizontal flip (p=0.5): image mirrored, landmarks mirrored and permuted with
  :data:`IBUG68_FLIP`, pose mirrored ``R -> M R M`` (M = diag(-1, 1, 1)), translation mirrored,
  expression coefficients swapped between mirror-named pairs (``_L``/``_R``, ``Left``/``Right``);
  identity coefficients are not mirror-symmetric, so flipped samples get ``shape_w = 0`` (the
  shape-parameter loss is masked; landmark and vertex losses stay);
* a random similarity of the box: scale 0.9-1.1, shift +-5% of its side and (p=0.5) an in-plane
  rotation of +-15 degrees about its centre, composed into the labels exactly
  (:func:`rotate_labels`: ``R' = Rz(theta) @ R``, points and translation rotated in the image);
* brightness/contrast/colour, grey (p=0.1), Gaussian blur (p=0.2), random occlusion boxes (p=0.3).

Without augmentation the crop is :func:`morphable.crop.crop_image`, exactly as in the benchmark.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from fitting.solver import JAW_LEFT, JAW_RIGHT
from morphable.crop import CROP_SIZE, CropBox, box_from_landmarks, camera_to_crop, crop_image, to_crop
from morphable.geometry import angles_to_rotmat, as_rotation_matrix, rotmat_to_rotvec, rotvec_to_rotmat
from morphable.landmark_definition import IBUG68_MIRROR

from .networks import PIXEL_MEAN, PIXEL_SCALE

__all__ = [
    "IBUG68_FLIP",
    "LABEL_KEYS",
    "OPTIONAL_LABEL_KEYS",
    "CONTOUR_POINTS",
    "DEFAULT_DROP_TARGETS",
    "parse_drop_targets",
    "LabelDrop",
    "parse_drop_labels",
    "UNANNOTATED",
    "expression_flip_permutation",
    "save_labels",
    "load_labels",
    "model_for_labels",
    "to_frame",
    "default_data_root",
    "flip_labels",
    "rotate_labels",
    "labels_to_crop",
    "crop_labels",
    "FaceLabelDataset",
]

_REPO = Path(__file__).resolve().parent.parent


#: iBUG-68 mirror permutation: point j of a mirrored face is the mirror of point ``IBUG68_FLIP[j]``.
IBUG68_FLIP = IBUG68_MIRROR

#: name -> (trailing shape after N, dtype kind) of the label file's per-row arrays.
LABEL_KEYS = {
    "name": ((), "U"), "set": ((), "U"), "shape": (("Ks",), "f"), "expr": (("Ke",), "f"), "rotvec": ((3,), "f"),
    "scale": ((), "f"), "translation": ((2,), "f"), "landmarks3d": ((68, 2), "f"), "target": ((68, 2), "f"),
    "visible": ((68,), "f"), "rmse": ((), "f"), "ok": ((), "b"), "split": ((), "U"),
}
#: Optional per-row label keys: ``contour`` is ``"2d"`` where ``target`` is a 300-W-style annotation
#: whose jaw follows the visible silhouette (ytf68, 300-W), ``"3d"`` where it is not (files without
#: it: all ``"3d"``). The training losses compare ``target`` with the 3D-style landmarks, so on
#: ``"2d"`` rows the sliding jaw points (:data:`CONTOUR_POINTS`) get no weight there.
OPTIONAL_LABEL_KEYS = {"contour": ((), "U")}
#: The jaw points that slide on the silhouette in the 2D-contour definition: the solver's
#: ``contour="2d"`` points, iBUG 0-7 and 9-16 (the chin, 8, is a fixed vertex in both definitions).
CONTOUR_POINTS = JAW_RIGHT + JAW_LEFT
#: Which annotated points get no weight in the annotation terms, by row selector: a set name
#: (``ytf68``, ``aflw21``, ``300w``) or ``contour=2d`` / ``contour=3d``. The default drops the silhouette jaw
#: of ``"2d"`` rows, which is not the 3D-style jaw the losses compare it with.
DEFAULT_DROP_TARGETS = {"contour=2d": tuple(CONTOUR_POINTS)}


def parse_drop_targets(specs: Sequence[str], base: Optional[dict] = None, sets: Optional[Sequence[str]] = None) -> dict:
    """Row selector -> iBUG ids whose annotation gets no weight, from ``SEL:POINTS`` strings.

    ``SEL`` is a set name or ``contour=2d`` / ``contour=3d``; ``POINTS`` is ``all`` or a comma list of
    0-based iBUG ids and ranges (``8``, ``31,35``, ``0-16``). The result is ``base`` (default
    :data:`DEFAULT_DROP_TARGETS`) with these points added. The drop is applied before a mirror flip,
    so ids name points of the unflipped photo. ``sets``: the set names the labels hold; a set
    selector outside them (a typo would otherwise drop nothing) is refused. Raises ValueError naming
    a malformed spec.
    """
    out = {k: tuple(v) for k, v in (DEFAULT_DROP_TARGETS if base is None else base).items()}
    for spec in specs:
        sel, sep, pts = str(spec).partition(":")
        sel, pts = sel.strip(), pts.strip()
        if not sep or not sel or not pts or (sel.startswith("contour=") and sel not in ("contour=2d", "contour=3d")):
            raise ValueError(f"drop target {spec!r}: expected SEL:POINTS, SEL a set name or contour=2d/3d, "
                             f"POINTS 'all' or ids like 8 or 31,35 or 0-16")
        if sets is not None and not sel.startswith("contour=") and sel not in set(sets):
            raise ValueError(f"drop target {spec!r}: no rows of set {sel!r}; the rows hold {sorted(str(x) for x in set(sets))}")
        ids = set(out.get(sel, ()))
        try:
            if pts == "all":
                ids.update(range(68))
            else:
                for part in pts.split(","):
                    a, dash, b = part.strip().partition("-")
                    lo, hi = int(a), int(b) if dash else int(a)
                    if not 0 <= lo <= hi < 68:
                        raise ValueError
                    ids.update(range(lo, hi + 1))
        except ValueError:
            raise ValueError(f"drop target {spec!r}: points must be 'all' or 0-based iBUG ids 0-67 "
                             f"(comma list, ranges a-b)") from None
        out[sel] = tuple(sorted(ids))
    return out


#: ``POINTS`` word of :func:`parse_drop_labels`: a row's points without annotation weight (absent,
#: unannotated by its set, or marked invisible), whose label comes only from the label fit's priors.
UNANNOTATED = "unannotated"


@dataclass(frozen=True)
class LabelDrop:
    """Label points the landmark head's label term (``head``) gives no weight.

    ``ids``: row selector (set name or ``contour=2d`` / ``contour=3d``) -> iBUG ids (0-based, of the
    unflipped photo). ``unannotated``: selectors whose rows also drop their own unannotated points.
    ``max_yaw``: only rows whose label |yaw| (degrees) is below it drop points (None = every row).
    """

    ids: dict = field(default_factory=dict)
    unannotated: tuple = ()
    max_yaw: Optional[float] = None

    @property
    def empty(self) -> bool:
        return not self.ids and not self.unannotated


def parse_drop_labels(specs: Sequence[str], max_yaw: Optional[float] = None,
                      sets: Optional[Sequence[str]] = None) -> LabelDrop:
    """:class:`LabelDrop` from ``SEL:POINTS`` strings: the grammar of :func:`parse_drop_targets`,
    plus ``POINTS`` = ``unannotated`` (the row's points without annotation weight: not annotated by
    its set, absent or marked invisible; their labels come only from the label fit's priors). No
    spec gives an empty rule. Raises ValueError naming a malformed spec or a ``max_yaw`` outside
    (0, 180]."""
    if max_yaw is not None and not 0.0 < float(max_yaw) <= 180.0:
        raise ValueError(f"label drop yaw limit {max_yaw!r}: expected degrees in (0, 180]")
    ids: dict = {}
    unannotated = []
    for spec in specs:
        sel, _, pts = str(spec).partition(":")
        try:
            if pts.strip() == UNANNOTATED:
                parse_drop_targets([f"{sel}:all"], base={}, sets=sets)  # the selector's checks
                unannotated.append(sel.strip())
            else:
                ids = parse_drop_targets([spec], base=ids, sets=sets)
        except ValueError as e:
            raise ValueError(f"label drop {spec!r}: {e} (or POINTS '{UNANNOTATED}')") from None
    return LabelDrop(ids, tuple(dict.fromkeys(unannotated)), None if max_yaw is None else float(max_yaw))


def expression_flip_permutation(names: Sequence[str]) -> Optional[np.ndarray]:
    """Mirror permutation of expression coefficients from their names, or None if unknown.

    ``_L``/``_R`` suffixes and ``Left``/``Right`` words swap (``eyeBlink_L <-> eyeBlink_R``,
    ``jawLeft <-> jawRight``); unpaired names (``jawOpen``) map to themselves. Unnamed (PCA)
    bases give None: their mirror is not a permutation.
    """
    names = list(names)
    if not names:
        return None
    pos = {n: i for i, n in enumerate(names)}
    swap = {"_L": "_R", "_R": "_L", "Left": "Right", "Right": "Left", "_l": "_r", "_r": "_l", "left": "right", "right": "left"}
    pat = re.compile(r"(_L|_R|_l|_r)$|(Left|Right|left|right)")
    perm = np.arange(len(names))
    for i, n in enumerate(names):
        m = pat.sub(lambda mo: swap[mo.group(0)], n)
        if m != n and m in pos:
            perm[i] = pos[m]
    if not np.array_equal(perm[perm], np.arange(len(names))):
        return None
    return perm


# -------------------------------------------------------------------------------- label file
def save_labels(path, *, name, set, shape, expr, rotvec, scale, translation, landmarks3d, target, visible,
                rmse, ok, split, model: str = "", landmark_ids=None, frame_rotation=None, contour=None) -> None:
    """Write a pseudo-label file (npz, uncompressed) after checking every array's shape.

    Arguments are the keys of the module docstring's table. Strings are stored as fixed-width
    unicode arrays so that :func:`load_labels` never needs pickle. ``contour``: optional (N,)
    ``"2d"``/``"3d"`` per row (:data:`OPTIONAL_LABEL_KEYS`).
    """
    arrays = dict(name=name, set=set, shape=shape, expr=expr, rotvec=rotvec, scale=scale, translation=translation,
                  landmarks3d=landmarks3d, target=target, visible=visible, rmse=rmse, ok=ok, split=split)
    if contour is not None:
        arrays["contour"] = contour
    out = {}
    for k, v in arrays.items():
        kind = {**LABEL_KEYS, **OPTIONAL_LABEL_KEYS}[k][1]
        a = np.asarray(v)
        out[k] = a.astype(str) if kind == "U" else a.astype(bool) if kind == "b" else a.astype(np.float32)
    _validate(out, str(path))
    out["model"] = np.asarray(str(model))
    if landmark_ids is not None:  # the model's 68 landmark vertex ids that landmarks3d were made with
        out["landmark_ids"] = np.asarray(landmark_ids, dtype=np.int64).reshape(68)
    if frame_rotation is not None:  # the model frame (ModelInfo.frame_rotation) rotvec is expressed in
        out["frame_rotation"] = np.asarray(frame_rotation, dtype=np.float64).reshape(3, 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # np.savez on a handle: no ".npz" suffix appended
        np.savez(f, **out)


def _validate(d: dict, where: str) -> int:
    missing = [k for k in LABEL_KEYS if k not in d]
    if missing:
        raise ValueError(f"{where}: label file lacks keys {missing}")
    N = len(d["name"])
    Ks, Ke = d["shape"].shape[-1] if d["shape"].ndim == 2 else -1, d["expr"].shape[-1] if d["expr"].ndim == 2 else -1
    for k, (trail, _) in LABEL_KEYS.items():
        want = (N,) + tuple(Ks if t == "Ks" else Ke if t == "Ke" else t for t in trail)
        if d[k].shape != want:
            raise ValueError(f"{where}: label '{k}' must be {want}, got {d[k].shape}")
    bad = set(np.unique(d["split"])) - {"train", "val"}
    if bad:
        raise ValueError(f"{where}: split values must be 'train' or 'val', got {sorted(bad)}")
    if "contour" in d:
        if d["contour"].shape != (N,):
            raise ValueError(f"{where}: label 'contour' must be {(N,)}, got {d['contour'].shape}")
        bad = set(np.unique(d["contour"]).astype(str)) - {"2d", "3d"}
        if bad:
            raise ValueError(f"{where}: contour values must be '2d' or '3d', got {sorted(bad)}; "
                             "re-create the labels with regressors.pseudolabels")
    return N


def load_labels(path) -> dict:
    """Read and check a pseudo-label file; returns a dict of numpy arrays (``model`` a str)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such label file") from None
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable npz label file ({e})") from None
    _validate(d, str(path))
    # file-level arrays of the aflw21 label correction (regressors.label_correction): kept as one
    # dict, not per-row arrays, so that select_labels does not slice them by rows
    corr = {k: d.pop(k) for k in [k for k in d if k.startswith("correction_")]}
    d["label_correction"] = corr or None
    d["model"] = str(d["model"]) if "model" in d else ""
    # a tuple (not an array): select_labels must not slice it by rows
    d["landmark_ids"] = tuple(int(i) for i in d["landmark_ids"]) if "landmark_ids" in d else None
    if "fit_landmark_ids" in d:  # the definition fitted to the annotations (regressors.pseudolabels)
        d["fit_landmark_ids"] = tuple(int(i) for i in d["fit_landmark_ids"])
    # the model frame of rotvec (files without it: the model file's own frame, identity); a tuple so
    # that select_labels does not slice it by rows
    try:
        fr = as_rotation_matrix(d.get("frame_rotation", np.eye(3)))
    except ValueError as e:
        raise ValueError(f"{path}: frame_rotation is {e}; re-create the labels with regressors.pseudolabels") from None
    d["frame_rotation"] = tuple(tuple(float(v) for v in row) for row in fr)
    return d


def to_frame(labels: dict, frame) -> dict:
    """``labels`` with ``rotvec`` re-expressed in the model frame ``frame`` ((3, 3), a
    ``ModelInfo.frame_rotation``): ``R' = R @ F_labels @ F^T``, so that ``R' @ x_model`` equals
    ``R @ x_labels_model`` for every vertex. Projections, shape and expression are unchanged."""
    from morphable.geometry import frame_change

    F = as_rotation_matrix(frame)
    C = frame_change(labels.get("frame_rotation", np.eye(3)), F)
    out = dict(labels)
    out["frame_rotation"] = tuple(tuple(float(v) for v in row) for row in F)
    if np.abs(C - np.eye(3)).max() < 1e-9 or not len(labels["rotvec"]):
        return out
    R = rotvec_to_rotmat(torch.as_tensor(np.asarray(labels["rotvec"], dtype=np.float64))) @ torch.as_tensor(C)
    out["rotvec"] = rotmat_to_rotvec(R).numpy().astype(np.asarray(labels["rotvec"]).dtype)
    return out


def model_for_labels(name_or_path, labels: dict):
    """The morphable model with the landmark definition the labels' ``landmarks3d`` were made with:
    the ids stored in the file, or (files written before ids were stored) the model file's own
    ("upstream") landmarks."""
    from morphable.registry import load_model

    ids = labels.get("landmark_ids")
    kw = {}
    name = str(labels.get("model", ""))
    if name_or_path is None and name.startswith("ict-facekit-"):  # the default model, in the labels' region
        kw["region"] = name[len("ict-facekit-"):]
    if ids is None:
        return load_model(name_or_path, landmarks="upstream", **kw)
    return load_model(name_or_path, **kw).with_landmarks(np.asarray(ids), definition="labels")


def select_labels(labels: dict, mask) -> dict:
    """Rows ``mask`` (bool or index array) of a label dict."""
    return {k: (v[mask] if isinstance(v, np.ndarray) and v.ndim >= 1 else v) for k, v in labels.items()}


def default_data_root() -> Path:
    """``$MORPHABLE_DATA`` or ``../shared/data`` next to the checkout."""
    env = os.environ.get("MORPHABLE_DATA")
    return Path(env) if env else _REPO.parent / "shared" / "data"


# ------------------------------------------------------------------------- label transforms
def flip_labels(lab: dict, width: int, expr_perm: Optional[np.ndarray] = None) -> dict:
    """Labels of the horizontally mirrored image (x -> width - 1 - x). An involution.

    ``lab`` holds image-frame arrays of one sample: ``rotvec`` (3,), ``scale`` (), ``translation``
    (2,), ``landmarks3d`` (68, 2), ``target`` (68, 2), ``visible`` (68,), ``expr`` (Ke,), ``shape``.
    Pose: ``R -> M R M`` (M = diag(-1, 1, 1)), i.e. rotvec (wx, wy, wz) -> (wx, -wy, -wz). Shape is
    returned unchanged (the caller masks its loss); expression is permuted by ``expr_perm``.
    """
    out = dict(lab)
    p = IBUG68_FLIP
    for k in ("landmarks3d", "target"):
        pts = np.asarray(lab[k], dtype=np.float64)[p].copy()
        pts[:, 0] = (width - 1) - pts[:, 0]
        out[k] = pts
    out["visible"] = np.asarray(lab["visible"])[p].copy()
    w = np.asarray(lab["rotvec"], dtype=np.float64)
    out["rotvec"] = np.array([w[0], -w[1], -w[2]])
    t = np.asarray(lab["translation"], dtype=np.float64)
    out["translation"] = np.array([(width - 1) - t[0], t[1]])
    if expr_perm is not None:
        out["expr"] = np.asarray(lab["expr"])[expr_perm].copy()
    return out


def _rot2(theta: float) -> np.ndarray:
    """Image-plane rotation Q (y down): Q = [[c, -s], [s, c]]."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def rotate_labels(lab: dict, theta: float, center) -> dict:
    """Labels of the image rotated in-plane by ``theta`` (radians) about ``center`` (image px).

    A point p maps to ``Q (p - c) + c`` with ``Q = [[cos, -sin], [sin, cos]]`` (positive theta turns
    the picture clockwise on screen, y down). Because ``Q P = P Rz(theta)`` with P of
    :mod:`morphable.geometry` and ``Rz`` its elementary matrix, the pose becomes
    ``R' = Rz(theta) @ R``, the translation ``Q (t - c) + c``; the scale is unchanged.
    """
    out = dict(lab)
    Q, c = _rot2(theta), np.asarray(center, dtype=np.float64)
    for k in ("landmarks3d", "target"):
        out[k] = (np.asarray(lab[k], dtype=np.float64) - c) @ Q.T + c
    out["translation"] = Q @ (np.asarray(lab["translation"], dtype=np.float64) - c) + c
    Rz = angles_to_rotmat(torch.tensor([0.0, 0.0, theta], dtype=torch.float64))
    R = rotvec_to_rotmat(torch.as_tensor(np.asarray(lab["rotvec"], dtype=np.float64)))
    out["rotvec"] = rotmat_to_rotvec(Rz @ R).numpy()
    return out


def labels_to_crop(lab: dict, box: CropBox, size: int = CROP_SIZE) -> dict:
    """Image-frame labels of one sample -> crop frame (points with ``to_crop``, camera with ``camera_to_crop``)."""
    out = dict(lab)
    for k in ("landmarks3d", "target"):
        out[k] = to_crop(torch.as_tensor(np.asarray(lab[k], dtype=np.float64))[None], [box], size)[0].numpy()
    s, t = camera_to_crop(torch.tensor([float(lab["scale"])], dtype=torch.float64),
                          torch.as_tensor(np.asarray(lab["translation"], dtype=np.float64))[None], [box], size)
    out["scale"], out["translation"] = float(s[0]), t[0].numpy()
    return out


def crop_labels(labels: dict, size: int = CROP_SIZE):
    """All label rows in the frame of their standard (unaugmented) crop: returns
    (boxes (N, 3) [x0, y0, side], scale (N,), translation (N, 2), landmarks3d (N, 68, 2))."""
    boxes = np.array([[b.x0, b.y0, b.side] for b in (box_from_landmarks(p) for p in labels["landmarks3d"])])
    bt = torch.as_tensor(boxes)
    s, t = camera_to_crop(torch.as_tensor(labels["scale"], dtype=torch.float64),
                          torch.as_tensor(labels["translation"], dtype=torch.float64), bt, size)
    lm = to_crop(torch.as_tensor(labels["landmarks3d"], dtype=torch.float64), bt, size)
    return boxes, s.numpy(), t.numpy(), lm.numpy()


def _affine_to_crop(box: CropBox, size: int) -> np.ndarray:
    """3x3 matrix of image px -> crop px for ``box`` (the mapping of :func:`morphable.crop.to_crop`)."""
    k = box.side / size
    return np.array([[1 / k, 0, (-box.x0 + 0.5) / k - 0.5], [0, 1 / k, (-box.y0 + 0.5) / k - 0.5], [0, 0, 1]])


def _read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{path}: missing or unreadable image (set --data-root or MORPHABLE_DATA)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------ dataset
class FaceLabelDataset(Dataset):
    """Crops + crop-frame labels of a pseudo-label file (see the module docstring).

    Args:
        labels: dict from :func:`load_labels` (already filtered to the rows to use).
        data_root: folder the label names are relative to (default :func:`default_data_root`).
        expression_names: the model's expression names (for the flip permutation).
        size: crop side S.
        augment: training augmentation on/off.
        seed: base seed; the augmentation of item i in epoch e depends only on (seed, e, i).
        p_flip, p_rotate, max_rotate_deg, scale_range, shift, p_occlude, p_blur, p_gray: augmentation knobs.
        photometric: colour/blur/occlusion on (geometry-only augmentation when False).
        images: optional in-memory images ``{name: (H, W, 3) uint8 RGB}`` (tests, caching).
        drop_targets: row selector -> iBUG ids whose annotation gets no ``visible`` weight
            (:func:`parse_drop_targets`; default :data:`DEFAULT_DROP_TARGETS`).
        drop_labels: label points the head's label term gives no weight (:class:`LabelDrop`,
            :func:`parse_drop_labels`; default none).

    Items are dicts of tensors: ``image`` (3, S, S) float normalised; ``shape`` (Ks,), ``expr`` (Ke,),
    ``rotmat`` (3, 3), ``rotvec`` (3,), ``scale`` (), ``translation`` (2,), ``landmarks3d`` (68, 2),
    ``target`` (68, 2) (0 where absent), ``visible`` (68,), ``label_w`` (68,) the weight of each label
    point in the head's label term (0 where ``drop_labels`` drops it), all in the crop frame; ``shape_w`` and
    ``expr_w`` () loss masks; ``flipped`` (), ``set_id`` () the index in ``SETS`` (ytf68, aflw21, 300w), ``len(SETS)`` = other; ``index``.
    """

    SETS = ("ytf68", "aflw21", "300w")

    def __init__(self, labels: dict, data_root=None, expression_names: Sequence[str] = (), size: int = CROP_SIZE,
                 augment: bool = False, seed: int = 0, p_flip: float = 0.5, p_rotate: float = 0.5,
                 max_rotate_deg: float = 15.0, scale_range=(0.9, 1.1), shift: float = 0.05, p_occlude: float = 0.3,
                 p_blur: float = 0.2, p_gray: float = 0.1, photometric: bool = True, images: Optional[dict] = None,
                 drop_targets: Optional[dict] = None, drop_labels: Optional[LabelDrop] = None):
        self.labels = labels
        self.drop_mask = self._drop_mask(DEFAULT_DROP_TARGETS if drop_targets is None else drop_targets)
        self.label_mask = self._label_mask(drop_labels or LabelDrop())
        self.root = Path(data_root) if data_root is not None else default_data_root()
        self.size = size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.expr_perm = expression_flip_permutation(expression_names)
        self.p_flip, self.p_rotate, self.max_rot = p_flip, p_rotate, math.radians(max_rotate_deg)
        self.scale_range, self.shift = scale_range, shift
        self.p_occlude, self.p_blur, self.p_gray = p_occlude, p_blur, p_gray
        self.photometric = photometric
        self.images = images

    def __len__(self) -> int:
        return len(self.labels["name"])

    def _rows(self, sel: str) -> np.ndarray:
        """(N,) bool: the rows a selector (set name or ``contour=2d`` / ``contour=3d``) names."""
        if sel.startswith("contour="):
            N = len(self.labels["name"])
            contour = np.asarray(self.labels["contour"]).astype(str) if "contour" in self.labels else np.full(N, "3d")
            return contour == sel.split("=", 1)[1]
        return np.asarray(self.labels["set"]).astype(str) == sel

    def _drop_mask(self, drop_targets: dict) -> np.ndarray:
        """(N, 68) bool: the annotated points the rule ``drop_targets`` gives no weight."""
        mask = np.zeros((len(self.labels["name"]), 68), bool)
        for sel, ids in drop_targets.items():
            mask[np.ix_(self._rows(sel), list(ids))] = True
        return mask

    def _label_mask(self, rule: LabelDrop) -> np.ndarray:
        """(N, 68) bool: the label points the rule ``rule`` gives no weight in the head's label term."""
        mask = self._drop_mask(rule.ids)
        if rule.empty:
            return mask
        if rule.unannotated:
            tgt = np.asarray(self.labels["target"], dtype=np.float64)
            none = ~np.isfinite(tgt).all(-1) | (np.asarray(self.labels["visible"], dtype=np.float64) <= 0)
            rows = np.any([self._rows(sel) for sel in rule.unannotated], axis=0)
            mask |= none & rows[:, None]
        if rule.max_yaw is not None:
            from .mixing import label_yaw  # mixing imports this module
            mask &= (np.abs(label_yaw(self.labels)) < rule.max_yaw)[:, None]
        return mask

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def image(self, i: int) -> np.ndarray:
        name = str(self.labels["name"][i])
        if self.images is not None and name in self.images:
            return self.images[name]
        return _read_rgb(self.root / name)

    def raw_labels(self, i: int) -> dict:
        L = self.labels
        lab = {k: np.asarray(L[k][i], dtype=np.float64) for k in
               ("shape", "expr", "rotvec", "scale", "translation", "landmarks3d", "target", "visible")}
        bad = ~np.isfinite(lab["target"]).all(1) | self.drop_mask[i]  # before any flip: ids of this photo
        lab["visible"] = np.where(bad, 0.0, lab["visible"])
        return lab

    def sample(self, i: int, rng: Optional[np.random.Generator] = None):
        """(crop uint8 (S, S, 3) RGB, crop-frame labels dict, flags dict) of item i."""
        img = self.image(i)
        H, W = img.shape[:2]
        lab = self.raw_labels(i)
        S = self.size
        flags = {"flipped": False, "theta": 0.0}
        if rng is None:
            box = box_from_landmarks(lab["landmarks3d"])
            return crop_image(img, box, S), labels_to_crop(lab, box, S), flags
        A = np.eye(3)
        if rng.random() < self.p_flip:
            lab = flip_labels(lab, W, self.expr_perm)
            A = np.array([[-1.0, 0, W - 1], [0, 1, 0], [0, 0, 1]])
            flags["flipped"] = True
        box = box_from_landmarks(lab["landmarks3d"])
        c = np.array([box.x0 + (box.side - 1) / 2.0, box.y0 + (box.side - 1) / 2.0])
        theta = rng.uniform(-self.max_rot, self.max_rot) if rng.random() < self.p_rotate else 0.0
        sf = rng.uniform(*self.scale_range)
        sh = rng.uniform(-self.shift, self.shift, 2) * box.side
        if theta != 0.0:
            lab = rotate_labels(lab, theta, c)
            Q = _rot2(theta)
            A = np.block([[Q, (c - Q @ c)[:, None]], [np.zeros((1, 2)), np.ones((1, 1))]]) @ A
            flags["theta"] = theta
        side = max(int(round(box.side * sf)), 4)
        cc = c + sh
        box = CropBox(int(round(cc[0] - (side - 1) / 2.0)), int(round(cc[1] - (side - 1) / 2.0)), side)
        lab = labels_to_crop(lab, box, S)
        A = _affine_to_crop(box, S) @ A
        src = img
        k = box.side / S
        if k > 1.5:  # shrink first with area averaging (what crop_image does), then warp
            f = k / 1.25
            w2, h2 = max(int(round(W / f)), 1), max(int(round(H / f)), 1)
            src = cv2.resize(img, (w2, h2), interpolation=cv2.INTER_AREA)
            fx, fy = w2 / W, h2 / H  # cv2.resize: p_small = (p + 0.5) * f - 0.5
            Sm = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]])
            A = A @ np.linalg.inv(Sm)
        crop = cv2.warpAffine(src, A[:2], (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if self.photometric:
            crop = self._photometric(crop, rng)
        return crop, lab, flags

    def _photometric(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = crop.astype(np.float32)
        contrast = rng.uniform(0.7, 1.3)
        bright = rng.uniform(-25, 25)
        gains = rng.uniform(0.92, 1.08, 3).astype(np.float32)
        m = x.mean()
        x = (x - m) * contrast + m + bright
        x = x * gains
        if rng.random() < self.p_gray:
            x[:] = x.mean(-1, keepdims=True)
        if rng.random() < self.p_blur:
            x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.5))
        S = self.size
        if rng.random() < self.p_occlude:
            for _ in range(rng.integers(1, 3)):
                w, h = (rng.uniform(0.15, 0.45, 2) * S).astype(int)
                x0, y0 = rng.integers(0, S - w), rng.integers(0, S - h)
                if rng.random() < 0.5:
                    x[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, 3)
                else:
                    x[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, (h, w, 3))
        return np.clip(x, 0, 255).astype(np.uint8)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, int(i)]) if self.augment else None
        crop, lab, flags = self.sample(int(i), rng)
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        R = rotvec_to_rotmat(torch.as_tensor(lab["rotvec"], dtype=torch.float64))
        vis = np.where(np.isfinite(lab["target"]).all(1), lab["visible"], 0.0)
        st = str(self.labels["set"][i])
        return {
            "image": (torch.from_numpy(crop).permute(2, 0, 1).float() - PIXEL_MEAN) / PIXEL_SCALE,
            "shape": f32(lab["shape"]),
            "expr": f32(lab["expr"]),
            "rotmat": R.float(),
            "rotvec": f32(lab["rotvec"]),
            "scale": torch.tensor(float(lab["scale"]), dtype=torch.float32),
            "translation": f32(lab["translation"]),
            "landmarks3d": f32(lab["landmarks3d"]),
            "target": f32(np.nan_to_num(lab["target"], nan=0.0)),
            "visible": f32(vis),
            "label_w": f32(~self.label_mask[i][IBUG68_FLIP] if flags["flipped"] else ~self.label_mask[i]),
            "shape_w": torch.tensor(0.0 if flags["flipped"] else 1.0),
            "expr_w": torch.tensor(0.0 if flags["flipped"] and self.expr_perm is None else 1.0),
            "flipped": torch.tensor(flags["flipped"]),
            "set_id": torch.tensor(self.SETS.index(st) if st in self.SETS else len(self.SETS)),
            "index": torch.tensor(int(i)),
        }
