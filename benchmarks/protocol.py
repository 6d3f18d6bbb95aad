r"""The AFLW2000-3D protocol: reading the data and scoring predictions (the reusable core).

Everything that decides a number lives here, once:

* **Reading.** ``pt3d_68`` (3x68) is in MATLAB's 1-based pixel frame. It is moved into the
  library's image frame (0-based, pixel centres on integers, see :mod:`morphable.geometry`) by
  subtracting 1 from x and y exactly once, in :func:`read_annotation`; z is left as stored
  (larger = nearer the camera, the same sense as the library's depth). ``Pose_Para[0, :3]`` is
  [pitch, yaw, roll] in radians, the order of :func:`morphable.geometry.angles_to_rotmat`.
* **Crop box** (for methods that need one): :func:`morphable.crop.box_from_landmarks` on the
  0-based GT x,y (3DDFA's ``benchmarkCrop.m`` rule), **unclipped** (3DDFA's saved boxes are
  clipped to the image for 55 of 2000 images; ours are not, and nothing is scaled by a box).
* **2D NME** per image: mean over the 68 points of the Euclidean (x, y) error, divided by
  ``sqrt(w * h)`` of the GT landmarks' bounding box, times 100 (3DDFA ``calc_nme``).
* **3D NME** per image: the same with (x, y, z), after removing the mean z offset between
  prediction and GT (the depth origin is arbitrary); same ``sqrt(w * h)`` of the 2D GT box.
* **Yaw bins** by |GT yaw| in degrees: [0, 30], (30, 60], > 60 (keyed ``"60-90"``; it keeps the
  |yaw| > 90 images as 3DDFA does). ``mean`` = unweighted mean of the three bin means
  ("balanced", 3DDFA's ``ana()``); ``all`` = mean over all images.
* **Pose MAE** on images with |yaw|, |pitch|, |roll| all <= 99 degrees (FSA-Net's subset): mean
  absolute error per angle in degrees, no wrapping, and their mean. Predicted angles come from
  the predicted rotation through :func:`morphable.geometry.rotmat_to_angles`, the inverse of the
  GT's construction. Also the median geodesic angle between predicted and GT rotations, which
  needs no Euler convention.
* **Diagnostics** (not published metrics): per-point and per-region errors in percent of the same
  face size ``sqrt(w * h)``, unsigned (point NME) and signed (predicted - GT, x and y separately,
  image frame: x right, y down), each summarised by yaw bin and balanced like the NME
  (:func:`signed_errors`, :data:`DIAGNOSTIC_REGIONS`). A constant offset of a group of points,
  e.g. a landmark-definition difference, shows as a signed error; noise averages out of it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import scipy.io as sio
import torch

from morphable.crop import box_from_landmarks
from morphable.errors import InputError
from morphable.geometry import POSE_LIMIT_DEG, angles_to_rotmat, rotation_angle, rotmat_to_angles

__all__ = [
    "YAW_BINS",
    "POSE_LIMIT_DEG",
    "N_POINTS",
    "PROTOCOL",
    "Annotation",
    "Dataset",
    "BinnedNME",
    "PoseMAE",
    "Scores",
    "list_names",
    "read_annotation",
    "load_dataset",
    "load_image",
    "yaw_bin",
    "nme_2d",
    "nme_3d",
    "REGIONS",
    "nme_2d_by_region",
    "DIAGNOSTIC_REGIONS",
    "SIGNED_ERRORS_NOTE",
    "RegionErrors",
    "PointErrors",
    "point_errors",
    "signed_errors",
    "bin_means",
    "geodesic_deg",
    "pose_mae",
    "check_landmarks",
    "check_rotations",
    "score",
    "subset_counts",
]

#: Keys of the three |yaw| bins, in order: [0, 30], (30, 60], > 60 degrees.
YAW_BINS: tuple[str, str, str] = ("0-30", "30-60", "60-90")
# Pose MAE uses images whose three GT angles all lie within +-POSE_LIMIT_DEG degrees
# (morphable.geometry.POSE_LIMIT_DEG, shared with regressors.validate).
#: Landmarks per face.
N_POINTS = 68

#: iBUG-68 regions (0-based point ids) for the error breakdown; the 68-point NME is their
#: point-count-weighted mean.
REGIONS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)), "brows": tuple(range(17, 27)), "nose": tuple(range(27, 36)),
    "eyes": tuple(range(36, 48)), "mouth": tuple(range(48, 68)),
}

#: iBUG-68 regions (0-based point ids) of the per-region signed-error diagnostics: :data:`REGIONS`
#: with the mouth split into the outer (48-59) and inner (60-67) lip contours. They partition the
#: 68 points.
DIAGNOSTIC_REGIONS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)), "brows": tuple(range(17, 27)), "nose": tuple(range(27, 36)),
    "eyes": tuple(range(36, 48)), "outer_lips": tuple(range(48, 60)), "inner_lips": tuple(range(60, 68)),
}

#: What the per-point / per-region diagnostics are; stored in the JSON beside them.
SIGNED_ERRORS_NOTE = (
    "Per-point 2D errors in % of face size sqrt(w*h) of the image's GT landmark bbox (the NME normaliser). "
    "signed_x, signed_y = predicted - GT in the image frame (x right, y down: signed_y > 0 = prediction "
    "below GT); nme = Euclidean point error. Each is averaged over the images of each |yaw| bin; "
    "'mean' = unweighted mean of the non-empty bin means (balanced, as the NME), 'all' = mean over images. "
    "A region's value is the mean of its points' values; opposite offsets inside a region cancel in its "
    "signed mean (e.g. a jaw too wide in x, or upper and lower lip moving apart), so read the per-point "
    "values too."
)

#: One paragraph that states the protocol; printed with every table and stored in the JSON.
PROTOCOL = (
    "AFLW2000-3D, 'original' GT = pt3d_68 (68 points of the fitted 3DMM), moved from MATLAB 1-based "
    "to 0-based pixels once on reading (x-1, y-1; z untouched). "
    "NME 2D = mean point-to-point (x,y) error / sqrt(w*h) of the GT landmark bbox * 100. "
    "NME 3D = same with (x,y,z) after removing the mean z offset between prediction and GT. "
    "Bins by |GT yaw| (degrees, Pose_Para[0,1]): [0,30], (30,60], >60 (incl. >90); "
    "'mean' = unweighted mean of the 3 bin means (balanced), 'all' = mean over images. "
    "Pose MAE: degrees, no wrapping, on images with |yaw|,|pitch|,|roll| <= 99; predicted angles = "
    "morphable.geometry.rotmat_to_angles(R_pred) ([pitch,yaw,roll], R = Rx(pitch) Ry(yaw) Rz(roll)); "
    "plus the median geodesic angle between R_pred and the GT rotation. "
    "Crop box for methods: morphable.crop.box_from_landmarks(GT x,y) (3DDFA benchmarkCrop rule), "
    "UNCLIPPED; no score depends on the box."
)


@dataclass(frozen=True)
class Annotation:
    """One image's ground truth, in the library's frames.

    Attributes:
        name: file stem, e.g. ``"image00019"``.
        landmarks: (68, 3) float64; x, y in 0-based image pixels, z as stored (pixels, larger =
            nearer, arbitrary origin).
        angles: (3,) float64 [pitch, yaw, roll] in radians (``Pose_Para[0, :3]``).
    """

    name: str
    landmarks: np.ndarray
    angles: np.ndarray


@dataclass
class Dataset:
    """An ordered set of AFLW2000-3D images and their ground truth.

    Attributes:
        root: the folder holding ``<name>.jpg`` and ``<name>.mat``.
        names: (N,) file stems in evaluation order.
        landmarks: (N, 68, 3) float64 GT; x, y 0-based image pixels, z as stored.
        angles: (N, 3) float64 GT [pitch, yaw, roll], radians.
        boxes: (N, 3) int64 crop boxes ``[x0, y0, side]`` (image pixels, unclipped).
    """

    root: Path
    names: list[str]
    landmarks: np.ndarray
    angles: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    @property
    def yaw_deg(self) -> np.ndarray:
        """(N,) GT yaw in degrees."""
        return np.degrees(self.angles[:, 1])

    @property
    def bins(self) -> np.ndarray:
        """(N,) int index into :data:`YAW_BINS` of each image."""
        return yaw_bin(self.yaw_deg)

    @property
    def pose_subset(self) -> np.ndarray:
        """(N,) bool: all three GT angles within +-:data:`POSE_LIMIT_DEG` degrees."""
        return (np.abs(np.degrees(self.angles)) <= POSE_LIMIT_DEG).all(1)

    def image_path(self, i: int) -> Path:
        """Path of the i-th image."""
        return self.root / f"{self.names[i]}.jpg"


def list_names(data_dir: Path | str, list_file: Path | str | None = None) -> list[str]:
    """The evaluation order: the stems of ``list_file`` (one per line; ``#`` comments, blank lines
    and a ``.jpg``/``.mat`` suffix allowed), else every ``*.mat`` stem of ``data_dir`` sorted.

    Raises:
        InputError: missing folder or list file, no annotations, duplicates, or a listed name
            without its ``.mat``/``.jpg``.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"data folder {root} does not exist: pass --data DIR with imageXXXXX.jpg + .mat files")
    if list_file is not None:
        lf = Path(list_file)
        if not lf.is_file():
            raise InputError(f"list file {lf} does not exist")
        names = []
        for line in lf.read_text().splitlines():
            s = line.split("#", 1)[0].strip()
            if s:
                names.append(Path(s).stem if s.endswith((".jpg", ".mat")) else s)
        if not names:
            raise InputError(f"list file {lf} names no images")
    else:
        names = sorted(p.stem for p in root.glob("*.mat"))
        if not names:
            raise InputError(f"no *.mat annotations in {root}: expected the AFLW2000-3D layout imageXXXXX.jpg + .mat")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"duplicate names in the evaluation list: {', '.join(dup[:5])}")
    for n in names:
        for ext in (".mat", ".jpg"):
            if not (root / f"{n}{ext}").is_file():
                raise InputError(f"{root / (n + ext)} is missing (every listed image needs its .jpg and .mat)")
    return names


def read_annotation(mat_path: Path | str) -> Annotation:
    """Read one AFLW2000-3D ``.mat``: ``pt3d_68`` -> (68, 3) with x, y moved to 0-based pixels
    (the single place where 1 is subtracted), ``Pose_Para[0, :3]`` -> [pitch, yaw, roll] radians.

    Raises:
        InputError: unreadable file, missing fields or wrong shapes.
    """
    from morphable.errors import ModelFormatError
    from morphable.formats.bfm import _check_mat_numeric, _mat_variables

    p = Path(mat_path)
    try:  # headers first: scipy can crash the process (not raise) on some damaged .mat files
        _check_mat_numeric(p, _mat_variables(p), ["pt3d_68", "Pose_Para"])
    except (ModelFormatError, OSError) as e:
        raise InputError(str(e) if isinstance(e, ModelFormatError) else f"cannot read {p}: {e}") from None
    try:
        m = sio.loadmat(p, variable_names=["pt3d_68", "Pose_Para"])
    except Exception as e:  # scipy raises several types for corrupt files
        raise InputError(f"cannot read {p}: {e}") from e
    if "pt3d_68" not in m or "Pose_Para" not in m:
        raise InputError(f"{p} lacks pt3d_68 or Pose_Para: not an AFLW2000-3D annotation")
    pts = np.asarray(m["pt3d_68"], dtype=np.float64)
    pose = np.asarray(m["Pose_Para"], dtype=np.float64).reshape(-1)
    if pts.shape != (3, N_POINTS) or pose.size < 3:
        raise InputError(f"{p}: pt3d_68 {pts.shape} (want (3, 68)) / Pose_Para size {pose.size} (want >= 3)")
    lm = pts.T.copy()
    lm[:, :2] -= 1.0  # MATLAB 1-based -> 0-based pixel centres; the only such shift in the project
    return Annotation(name=p.stem, landmarks=lm, angles=pose[:3].copy())


def load_dataset(data_dir: Path | str, list_file: Path | str | None = None, limit: int | None = None) -> Dataset:
    """Read the annotations of ``data_dir`` in evaluation order (:func:`list_names`), keeping the
    first ``limit`` images if given. Images are not decoded here (see :func:`load_image`)."""
    names = list_names(data_dir, list_file)
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be >= 1, got {limit}")
        names = names[:limit]
    root = Path(data_dir)
    anns = [read_annotation(root / f"{n}.mat") for n in names]
    lms = np.stack([a.landmarks for a in anns])
    boxes = np.array([[b.x0, b.y0, b.side] for b in (box_from_landmarks(a.landmarks[:, :2]) for a in anns)], dtype=np.int64)
    return Dataset(root=root, names=names, landmarks=lms, angles=np.stack([a.angles for a in anns]), boxes=boxes)


def load_image(path: Path | str) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB.

    Raises:
        InputError: the file is missing or not a decodable image.
    """
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"cannot decode image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def yaw_bin(yaw_deg: np.ndarray) -> np.ndarray:
    """|yaw| (degrees, any shape) -> bin index 0 for [0, 30], 1 for (30, 60], 2 for > 60."""
    a = np.abs(np.asarray(yaw_deg, dtype=np.float64))
    return np.where(a <= 30.0, 0, np.where(a <= 60.0, 1, 2))


def _norm(gt_xy: np.ndarray) -> np.ndarray:
    """(N, 68, 2) GT pixels -> (N,) sqrt(w * h) of each landmark bounding box, pixels."""
    wh = gt_xy.max(1) - gt_xy.min(1)
    return np.sqrt(wh[:, 0] * wh[:, 1])


def nme_2d(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-image 68-point 2D NME in percent.

    Args:
        pred: (N, 68, >=2) predicted image pixels (only x, y used), same frame as ``gt``.
        gt: (N, 68, >=2) GT image pixels.

    Returns:
        (N,) ``mean_k ||pred_k - gt_k||_2 / sqrt(w * h) * 100`` with w, h of the GT x,y bbox.
    """
    p, g = np.asarray(pred, np.float64)[..., :2], np.asarray(gt, np.float64)[..., :2]
    return np.linalg.norm(p - g, axis=-1).mean(-1) / _norm(g) * 100.0


def nme_3d(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-image 68-point 3D NME in percent.

    Args:
        pred: (N, 68, 3) predicted x, y image pixels and z depth (pixels, larger = nearer).
        gt: (N, 68, 3) GT in the same frame (z origin may differ).

    Returns:
        (N,) mean 3D Euclidean error after shifting the prediction's z by the mean z offset
        ``mean_k(gt_z - pred_z)``, divided by ``sqrt(w * h)`` of the 2D GT bbox, times 100.
    """
    p, g = np.asarray(pred, np.float64).copy(), np.asarray(gt, np.float64)
    p[..., 2] += (g[..., 2] - p[..., 2]).mean(-1, keepdims=True)
    return np.linalg.norm(p - g, axis=-1).mean(-1) / _norm(g[..., :2]) * 100.0


def nme_2d_by_region(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image 2D NME (percent) of each :data:`REGIONS` entry, same normalisation as
    :func:`nme_2d` (the whole face's GT bbox): ``{region: (N,)}``. Diagnostic only, not a
    published metric; ``sum_r len(REGIONS[r]) * nme_r / 68 == nme_2d``."""
    p, g = np.asarray(pred, np.float64)[..., :2], np.asarray(gt, np.float64)[..., :2]
    e = np.linalg.norm(p - g, axis=-1) / _norm(g)[:, None] * 100.0
    return {k: e[:, list(ids)].mean(-1) for k, ids in REGIONS.items()}


def point_errors(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image, per-point 2D errors in percent of face size (the :func:`nme_2d` normaliser).

    Args:
        pred: (N, 68, >=2) predicted image pixels (only x, y used), same frame as ``gt``.
        gt: (N, 68, >=2) GT image pixels.

    Returns:
        ``(signed, dist)``: signed (N, 68, 2) = ``(pred - gt)[x, y] / sqrt(w * h) * 100`` with w, h
        of each image's GT x,y bbox, in the image frame (x right, y down); dist (N, 68) = its
        Euclidean norm, so ``dist.mean(-1) == nme_2d(pred, gt)``.
    """
    p, g = np.asarray(pred, np.float64)[..., :2], np.asarray(gt, np.float64)[..., :2]
    signed = (p - g) / _norm(g)[:, None, None] * 100.0
    return signed, np.linalg.norm(signed, axis=-1)


def _bin_stats(values: np.ndarray, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Summarise per-image values (N, ...) by bin index (N,) -> (per-bin means (3, ...) with NaN for an
    empty bin, balanced mean over the non-empty bins (...), mean over all images (...), counts (3,))."""
    v, b = np.asarray(values, np.float64), np.asarray(bins)
    counts = np.array([int((b == i).sum()) for i in range(len(YAW_BINS))])
    per = np.full((len(YAW_BINS),) + v.shape[1:], np.nan)
    for i in range(len(YAW_BINS)):
        if counts[i]:
            per[i] = v[b == i].mean(0)
    present = counts > 0
    nan = np.full(v.shape[1:], np.nan)
    balanced = per[present].mean(0) if present.any() else nan
    overall = v.mean(0) if v.shape[0] else nan
    return per, balanced, overall, counts


@dataclass
class BinnedNME:
    """NME (percent) summarised by |yaw| bin.

    Attributes:
        bins: bin key (:data:`YAW_BINS`) -> mean NME of its images (NaN if empty).
        mean: unweighted mean of the non-empty bin means ("balanced").
        all: mean over all images.
        counts: bin key -> number of images.
    """

    bins: dict[str, float]
    mean: float
    all: float
    counts: dict[str, int]

    def to_json(self) -> dict:
        """``{"0-30", "30-60", "60-90", "mean", "all", "counts"}``; empty bins are null."""
        out = {k: _json_float(v) for k, v in self.bins.items()}
        out.update(mean=_json_float(self.mean), all=_json_float(self.all), counts=dict(self.counts))
        return out


def bin_means(values: np.ndarray, bins: np.ndarray) -> BinnedNME:
    """Summarise per-image values (N,) by bin index (N,) into :class:`BinnedNME`."""
    v, b = np.asarray(values, np.float64), np.asarray(bins)
    means = {k: float(v[b == i].mean()) if (b == i).any() else math.nan for i, k in enumerate(YAW_BINS)}
    present = [m for m in means.values() if not math.isnan(m)]
    return BinnedNME(
        bins=means,
        mean=float(np.mean(present)) if present else math.nan,
        all=float(v.mean()) if v.size else math.nan,
        counts={k: int((b == i).sum()) for i, k in enumerate(YAW_BINS)},
    )


def _binned(per: np.ndarray, balanced: float, overall: float, counts: dict[str, int]) -> BinnedNME:
    return BinnedNME(bins={k: float(per[i]) for i, k in enumerate(YAW_BINS)}, mean=float(balanced),
                     all=float(overall), counts=dict(counts))


@dataclass
class RegionErrors:
    """2D errors of one region (percent of face size), each a :class:`BinnedNME` summary by |yaw| bin
    (balanced ``mean``, ``all``); see :data:`SIGNED_ERRORS_NOTE`.

    Attributes:
        points: the region's 0-based iBUG point ids.
        nme: mean Euclidean point error (the region NME of :func:`nme_2d_by_region`).
        signed_x: mean signed x error, predicted - GT (> 0: prediction right of GT).
        signed_y: mean signed y error, predicted - GT (> 0: prediction below GT; y down).
    """

    points: tuple[int, ...]
    nme: BinnedNME
    signed_x: BinnedNME
    signed_y: BinnedNME

    def to_json(self) -> dict:
        """``{"points": "lo-hi", "nme", "signed_x", "signed_y"}`` (each as :meth:`BinnedNME.to_json`)."""
        return {"points": f"{self.points[0]}-{self.points[-1]}", "nme": self.nme.to_json(),
                "signed_x": self.signed_x.to_json(), "signed_y": self.signed_y.to_json()}


@dataclass
class PointErrors:
    """Per-point 2D errors of a set of predictions, summarised by |yaw| bin (percent of face size;
    see :data:`SIGNED_ERRORS_NOTE`). Bin axes follow :data:`YAW_BINS`; an empty bin is NaN and is
    left out of the balanced mean.

    Attributes:
        signed_bins: (3, 68, 2) per-bin mean signed error [x, y], predicted - GT, image frame (y down).
        signed_mean: (68, 2) balanced: mean of the non-empty bins of ``signed_bins``.
        signed_all: (68, 2) mean over all images.
        nme_bins: (3, 68) per-bin mean Euclidean error of each point.
        nme_mean: (68,) balanced.
        nme_all: (68,) mean over all images.
        counts: bin key -> number of images.
    """

    signed_bins: np.ndarray
    signed_mean: np.ndarray
    signed_all: np.ndarray
    nme_bins: np.ndarray
    nme_mean: np.ndarray
    nme_all: np.ndarray
    counts: dict[str, int]

    def region(self, ids: tuple[int, ...] | list[int]) -> RegionErrors:
        """Errors of the points ``ids`` (0-based): every summary is the mean of the points' summaries
        (equal to summarising each image's mean over ``ids``, since every image has all 68 points)."""
        ids = tuple(int(i) for i in ids)
        j = list(ids)
        sb, nb = self.signed_bins[:, j].mean(1), self.nme_bins[:, j].mean(1)  # (3, 2), (3,)
        sm, sa = self.signed_mean[j].mean(0), self.signed_all[j].mean(0)  # (2,), (2,)
        return RegionErrors(
            points=ids,
            nme=_binned(nb, self.nme_mean[j].mean(), self.nme_all[j].mean(), self.counts),
            signed_x=_binned(sb[:, 0], sm[0], sa[0], self.counts),
            signed_y=_binned(sb[:, 1], sm[1], sa[1], self.counts),
        )

    def regions(self, regions: dict[str, tuple[int, ...]] | None = None) -> dict[str, RegionErrors]:
        """:meth:`region` of each entry of ``regions`` (default :data:`DIAGNOSTIC_REGIONS`), in order."""
        return {k: self.region(ids) for k, ids in (DIAGNOSTIC_REGIONS if regions is None else regions).items()}

    def to_json(self) -> dict:
        """``{"definition", "counts", "signed_x", "signed_y", "nme"}``; each of the last three maps
        ``"0-30"``, ``"30-60"``, ``"60-90"``, ``"mean"`` (balanced), ``"all"`` to a list of 68 values
        (point id order; null for an empty bin)."""

        def lists(per: np.ndarray, bal: np.ndarray, overall: np.ndarray) -> dict:
            out = {k: [_json_float(float(x)) for x in per[i]] for i, k in enumerate(YAW_BINS)}
            out["mean"] = [_json_float(float(x)) for x in bal]
            out["all"] = [_json_float(float(x)) for x in overall]
            return out

        return {
            "definition": SIGNED_ERRORS_NOTE,
            "counts": dict(self.counts),
            "signed_x": lists(self.signed_bins[..., 0], self.signed_mean[:, 0], self.signed_all[:, 0]),
            "signed_y": lists(self.signed_bins[..., 1], self.signed_mean[:, 1], self.signed_all[:, 1]),
            "nme": lists(self.nme_bins, self.nme_mean, self.nme_all),
        }


def signed_errors(pred: np.ndarray, gt: np.ndarray, yaw_deg: np.ndarray) -> PointErrors:
    """Per-point signed and unsigned 2D errors summarised by |yaw| bin (a diagnostic, not a
    published metric).

    Args:
        pred: (N, 68, >=2) predicted image pixels (only x, y used), same frame as ``gt``.
        gt: (N, 68, >=2) GT image pixels.
        yaw_deg: (N,) GT yaw in degrees (binned by :func:`yaw_bin`).

    Returns:
        :class:`PointErrors` in percent of face size ``sqrt(w * h)`` of each image's GT bbox: signed
        (predicted - GT, x and y, image frame with y down) and Euclidean, per yaw bin, balanced
        (unweighted mean of the non-empty bin means) and over all images. Per-region values:
        ``.regions()``.
    """
    signed, dist = point_errors(pred, gt)
    bins = yaw_bin(yaw_deg)
    if bins.shape != (signed.shape[0],):
        raise InputError(f"yaw_deg has shape {bins.shape}; expected ({signed.shape[0]},), one per image")
    sb, sm, sa, counts = _bin_stats(signed, bins)
    nb, nm, na, _ = _bin_stats(dist, bins)
    return PointErrors(signed_bins=sb, signed_mean=sm, signed_all=sa, nme_bins=nb, nme_mean=nm, nme_all=na,
                       counts={k: int(counts[i]) for i, k in enumerate(YAW_BINS)})


def geodesic_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    """Angle (degrees) of the rotation ``Ra^T Rb`` for (N, 3, 3) rotation matrices -> (N,).

    Computed through the rotation vector (accurate near 0 and near 180 degrees).
    """
    Ra, Rb = (torch.as_tensor(np.asarray(R, np.float64)) for R in (Ra, Rb))
    return np.degrees(rotation_angle(Ra, Rb).numpy())


@dataclass
class PoseMAE:
    """Head-pose errors on the +-99 degree subset.

    Attributes:
        yaw, pitch, roll: mean absolute error, degrees (no wrapping).
        mean: mean of the three.
        n: number of images in the subset.
        geodesic_median: median angle between predicted and GT rotation, degrees.
    """

    yaw: float
    pitch: float
    roll: float
    mean: float
    n: int
    geodesic_median: float

    def to_json(self) -> dict:
        return {k: (_json_float(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def pose_mae(rotations: np.ndarray, gt_angles: np.ndarray) -> tuple[PoseMAE, np.ndarray, np.ndarray]:
    """Score predicted rotations against GT ``Pose_Para`` angles.

    Args:
        rotations: (N, 3, 3) predicted rotation matrices (library convention, model -> camera).
        gt_angles: (N, 3) GT [pitch, yaw, roll], radians.

    Returns:
        (summary over the +-99 degree subset, (N, 3) per-image signed errors predicted - GT
        [pitch, yaw, roll] in degrees (the MAE is the mean of their absolute values over the
        subset), (N,) per-image geodesic errors in degrees).
    """
    R = torch.as_tensor(np.asarray(rotations, np.float64))
    pred_deg = np.degrees(rotmat_to_angles(R).numpy())
    gt = np.asarray(gt_angles, np.float64)
    gt_deg = np.degrees(gt)
    signed = pred_deg - gt_deg
    err = np.abs(signed)
    geo = geodesic_deg(angles_to_rotmat(torch.as_tensor(gt)).numpy(), R.numpy())
    keep = (np.abs(gt_deg) <= POSE_LIMIT_DEG).all(1)
    if not keep.any():
        nan = math.nan
        return PoseMAE(nan, nan, nan, nan, 0, nan), signed, geo
    pitch, yaw, roll = (float(x) for x in err[keep].mean(0))
    summary = PoseMAE(
        yaw=yaw, pitch=pitch, roll=roll, mean=(yaw + pitch + roll) / 3.0, n=int(keep.sum()),
        geodesic_median=float(np.median(geo[keep])),
    )
    return summary, signed, geo


def check_landmarks(pred: np.ndarray, n: int, what: str = "predictions") -> np.ndarray:
    """Validate predicted landmarks: (n, 68, 2) or (n, 68, 3), all finite -> float64 copy.

    Raises:
        InputError: wrong shape or count, or NaN/inf values (naming the first bad image).
    """
    a = np.asarray(pred)
    if a.ndim != 3 or a.shape[1:] not in ((N_POINTS, 2), (N_POINTS, 3)):
        raise InputError(f"{what} have shape {a.shape}; expected (N, 68, 2) or (N, 68, 3) image pixels")
    if a.shape[0] != n:
        raise InputError(f"{what} hold {a.shape[0]} faces but the evaluation list has {n} images")
    if not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{what} have dtype {a.dtype}; expected floats")
    a = a.astype(np.float64)
    bad = ~np.isfinite(a).all((1, 2))
    if bad.any():
        raise InputError(f"{what} contain NaN/inf for {int(bad.sum())} face(s) (first: index {int(np.argmax(bad))})")
    return a


def check_rotations(rot: np.ndarray, n: int, what: str = "rotations", tol: float = 1e-3) -> np.ndarray:
    """Validate predicted rotations: (n, 3, 3), finite, orthonormal within ``tol``, det +1.

    Raises:
        InputError: wrong shape/count, NaN/inf, or a matrix that is not a rotation.
    """
    a = np.asarray(rot)
    if a.shape != (n, 3, 3):
        raise InputError(f"{what} have shape {a.shape}; expected ({n}, 3, 3) rotation matrices")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{what} contain NaN/inf")
    dev = np.abs(a.transpose(0, 2, 1) @ a - np.eye(3)).max((1, 2))
    det = np.linalg.det(a)
    bad = (dev > tol) | (det <= 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{what}[{i}] is not a rotation (|R^T R - I| = {dev[i]:.3g}, det = {det[i]:.3g})")
    return a


@dataclass
class Scores:
    """Everything the protocol computes for one set of predictions.

    Attributes:
        names: (N,) image stems.
        bins: (N,) yaw-bin index per image.
        yaw_deg: (N,) GT yaw, degrees.
        nme_2d: (N,) per-image 2D NME, percent.
        nme_3d: (N,) per-image 3D NME, percent, or None for 2D predictions.
        summary_2d: :class:`BinnedNME` of ``nme_2d``.
        summary_3d: :class:`BinnedNME` of ``nme_3d`` or None.
        pose: :class:`PoseMAE` or None when no rotations were given.
        pose_err: (N, 3) signed angle error (predicted - GT) [pitch, yaw, roll] degrees, or None.
        geodesic: (N,) geodesic error degrees, or None.
        regions_2d: region name -> :class:`BinnedNME` of :func:`nme_2d_by_region` (diagnostic).
        points_2d: :class:`PointErrors` of :func:`signed_errors` (diagnostic: per-point signed and
            unsigned errors; per-region ones through ``points_2d.regions()``).
    """

    names: list[str]
    bins: np.ndarray
    yaw_deg: np.ndarray
    nme_2d: np.ndarray
    nme_3d: np.ndarray | None
    summary_2d: BinnedNME
    summary_3d: BinnedNME | None
    pose: PoseMAE | None
    pose_err: np.ndarray | None = field(default=None, repr=False)
    geodesic: np.ndarray | None = field(default=None, repr=False)
    regions_2d: dict[str, BinnedNME] = field(default_factory=dict, repr=False)
    points_2d: PointErrors | None = field(default=None, repr=False)

    def per_image(self) -> list[dict]:
        """One JSON-ready record per image: name, yaw, bin, NMEs, pose errors where known."""
        out = []
        for i, n in enumerate(self.names):
            r = {"name": n, "yaw_deg": round(float(self.yaw_deg[i]), 4), "yaw_bin": YAW_BINS[int(self.bins[i])],
                 "nme_2d": float(self.nme_2d[i])}
            if self.nme_3d is not None:
                r["nme_3d"] = float(self.nme_3d[i])
            if self.geodesic is not None:
                r["geodesic_deg"] = float(self.geodesic[i])
            if self.pose_err is not None:
                r["pose_err_deg"] = {k: round(float(self.pose_err[i, j]), 4)
                                     for j, k in enumerate(("pitch", "yaw", "roll"))}
            out.append(r)
        return out


def score(dataset: Dataset, landmarks: np.ndarray, rotations: np.ndarray | None = None) -> Scores:
    """Score predictions against ``dataset`` with the protocol of this module.

    Args:
        dataset: the GT, N images.
        landmarks: (N, 68, 2) or (N, 68, 3) predictions, 0-based image pixels (z = depth, larger =
            nearer, any origin), in ``dataset.names`` order.
        rotations: optional (N, 3, 3) predicted rotations for the pose metrics.

    Raises:
        InputError: predictions of the wrong shape or count, or non-finite.
    """
    n = len(dataset)
    lm = check_landmarks(landmarks, n)
    bins = dataset.bins
    e2 = nme_2d(lm, dataset.landmarks)
    e3 = nme_3d(lm, dataset.landmarks) if lm.shape[-1] == 3 else None
    pose = err = geo = None
    if rotations is not None:
        pose, err, geo = pose_mae(check_rotations(rotations, n), dataset.angles)
    return Scores(
        names=list(dataset.names), bins=bins, yaw_deg=dataset.yaw_deg, nme_2d=e2, nme_3d=e3,
        summary_2d=bin_means(e2, bins), summary_3d=bin_means(e3, bins) if e3 is not None else None,
        pose=pose, pose_err=err, geodesic=geo,
        regions_2d={k: bin_means(v, bins) for k, v in nme_2d_by_region(lm, dataset.landmarks).items()},
        points_2d=signed_errors(lm, dataset.landmarks, dataset.yaw_deg),
    )


def _json_float(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def subset_counts(dataset: Dataset) -> dict[str, int]:
    """Image counts per yaw bin plus ``"pose_subset"`` (the +-99 degree subset)."""
    b = dataset.bins
    out = {k: int((b == i).sum()) for i, k in enumerate(YAW_BINS)}
    out["pose_subset"] = int(dataset.pose_subset.sum())
    return out
