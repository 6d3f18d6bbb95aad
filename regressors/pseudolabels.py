"""3DMM pseudo-labels for the training faces: fit the model to each face's annotated landmarks.

``python -m regressors.pseudolabels --out labels.npz [--shared DIR] [--batch 1024] [--limit N]``

* ytf68 (68 iBUG points, 300-W style jaw on the visible silhouette): fitted with
  ``contour="2d"`` so the jaw points slide along the model's outline; ``train/`` -> split
  ``train``, ``test/`` -> split ``val``.
* 300w (2,548 hand-annotated AFW / HELEN / LFPW faces, 68 points, 300-W style jaw): fitted with
  ``contour="2d"``; the training folders -> ``train``, the common subset (``helen_test``,
  ``lfpw_test``, 541 faces) -> ``val``.
* aflw21 (up to 21 visible AFLW points, NOTES §2): mapped to iBUG-68 ids; eye centres, mouth
  centre and ears have no single 68-point equivalent and are left out; the nose wings are
  down-weighted (0.5), the chin too beyond 45 deg of annotated yaw (it becomes a silhouette
  point). 5 % of the faces (by a hash of the name) form the ``val`` split. Only the mouth corners
  of the lips are annotated, so nothing holds the lips' opening: with the common expression prior
  the fits open the mouth to move the chin (median inner-lip gap 11.0 % of face size against
  3.4 % on ytf68 and 2.1 % on 300-W, 2,000 faces each), and a landmark head trained on them learns
  open mouths. The blendshapes that open the lips (:data:`MOUTH_OPENING`) get
  ``--unannotated-mouth-prior`` times the prior there (default 20: gap 2.9 %, outer lip height
  14.0 % against 13.8 % on ytf68 and 300-W).

Every face is fitted by :func:`fitting.fit_landmarks` in batches (Huber loss) with the 2D-contour
definition (``--fit-landmarks``, default ``refined``: the points re-selected on 300-W-style
annotations, the jaw sliding on the outline where the annotation is 300-W style). The stored
``landmarks3d`` are the 68 vertices of the *output* definition (``--label-landmarks``, default
``3d``: the Basel-registered 3D-style points of AFLW2000-3D) projected with the fitted parameters;
the file records those vertex ids (``landmark_ids``, :mod:`morphable.landmark_definition`). The chin
(``--fit-from-label 8``, the default) is fitted with the output definition's own vertex: AFLW2000-3D's
ground truth fits the Basel keypoints themselves to the annotations, so its 3D-style chin sits on the
annotated chin, whereas the refined chin vertex lies 3.4 mm higher on the mean face and left the
stored chin 2.5 % (aflw21) to 5.1 % (300-W) of face size below the annotated one (labels v3,
near-frontal faces); with it 0.1 % (aflw21) to 3.1 % (300-W). The 300-W gap is the fit, not the
vertex: in a 2D-contour fit the chin is the one jaw point that does not slide, and the Huber loss lets
the sliding jaw beside it outvote it. ``--chin-weight F`` weights the annotated chin by F there (and in
aflw21's corrected refit, whose moved jaw would otherwise lift it). Labels v8 use F = 10, which leaves
the near-frontal 3D-style chin 0.3 % (300-W, ytf68) of face size from the annotated one; the network
trained on them scored worse (model card, session 20), so the default stays 1 (labels v7, shipped).
``ok`` marks fits whose weighted RMSE is below ``--max-nme`` percent of the face size; the rest are kept
but flagged. Each row's ``contour`` records how its annotation's jaw was fitted (``"2d"``: ytf68 and
300-W, whose jaw is the silhouette), so that training does not pull the 3D-style jaw toward it
(:mod:`regressors.data`).

aflw21's 52 unannotated points (jaw, eyelids, lips, nose bridge) are placed by the model's prior,
which is biased: on 300-W faces fitted to the AFLW-like subset, the 3D-style jaw comes out wider and
the lips lower than when the same faces are fitted to all 68 annotations. With
``--aflw21-correction LAM`` (default 1e4) those points are moved by a ridge correction learned on
the 300-W *training* faces (:mod:`regressors.label_correction`) and the face is refitted to them, so
the labels stay a face of the model; the correction is stored in the file (``correction_*``).
On the 541 300-W validation faces this brought the 21-point labels from 2.56 to 2.27 % (NME against
the 68-point labels; jaw 5.59 to 5.20 %). Labels v5 are made this way; v4 had no correction.
"""
from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from fitting.solver import FitOptions, fit_landmarks
from morphable.formats.pts import read_pts
from morphable.geometry import project, rotvec_to_rotmat
from morphable.registry import load_model

from .label_correction import LabelCorrection
from .mixing import label_yaw

#: AFLW 21-point index -> (iBUG-68 index, weight); NOTES §2. Eye/mouth centres and ears omitted.
AFLW21_TO_68 = {0: (17, 1.0), 1: (19, 1.0), 2: (21, 1.0), 3: (22, 1.0), 4: (24, 1.0), 5: (26, 1.0),
                6: (36, 1.0), 8: (39, 1.0), 9: (42, 1.0), 11: (45, 1.0),
                13: (31, 0.5), 14: (30, 1.0), 15: (35, 0.5), 17: (48, 1.0), 19: (54, 1.0), 20: (8, 1.0)}


#: Blendshape name prefixes that open or close the lips vertically (ICT-FaceKit / ARKit names).
MOUTH_OPENING = ("jawOpen", "jawForward", "mouthClose", "mouthFunnel", "mouthPucker", "mouthLowerDown",
                 "mouthUpperUp", "mouthRoll", "mouthShrug", "noseSneer")


def mouth_opening_prior(names, base: float, factor: float) -> np.ndarray:
    """(Ke,) expression prior weights: ``base`` everywhere, ``base * factor`` on :data:`MOUTH_OPENING`."""
    return np.array([base * factor if n.startswith(MOUTH_OPENING) else base for n in names], dtype=np.float64)


def _default_shared() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "shared"


def read_ytf68(shared: Path):
    """(names, points (N, 68, 2), weights (N, 68), splits) of ytf68, image px 0-based."""
    names, pts, splits = [], [], []
    for split, sub in (("train", "train"), ("val", "test")):
        rows = np.genfromtxt(shared / "data/ytf68" / f"{sub}.csv", delimiter=",", skip_header=1, dtype=str)
        for r in rows:
            names.append(f"ytf68/{sub}/{r[0]}")
            pts.append(np.asarray(r[1:137], dtype=np.float64).reshape(68, 2))
            splits.append(split)
    p = np.stack(pts)
    return names, p, np.ones(p.shape[:2]), splits, np.full(len(names), np.nan)


#: 300-W folders -> split: the training folders train, the common subset validates
W300_SPLITS = {"afw": "train", "helen_train": "train", "lfpw_train": "train", "helen_test": "val", "lfpw_test": "val"}


def read_300w(shared: Path):
    """(names, points (N, 68, 2), weights (N, 68), splits, yaw) of the 300-W faces, image px 0-based."""
    names, pts, splits = [], [], []
    for folder, split in W300_SPLITS.items():
        for f in sorted((shared / "data/300w" / folder).glob("*.pts")):
            names.append(f"300w/{folder}/{f.stem}.jpg")
            pts.append(read_pts(f))
            splits.append(split)
    p = np.stack(pts)
    return names, p, np.ones(p.shape[:2]), splits, np.full(len(names), np.nan)


#: |yaw| (degrees) beyond which an annotated chin lies on the silhouette (aflw21 halves its weight there)
CHIN_SILHOUETTE_YAW = 45.0


def read_aflw21(shared: Path):
    """(names, points (N, 68, 2) NaN where absent, weights (N, 68), splits, yaw) of aflw21."""
    rows = np.genfromtxt(shared / "data/aflw21/aflw21.csv", delimiter=",", skip_header=1, dtype=str)
    N = len(rows)
    pts = np.full((N, 68, 2), np.nan)
    w = np.zeros((N, 68))
    vals = rows[:, 1:64].astype(np.float64).reshape(N, 21, 3)
    yaw = rows[:, 64].astype(np.float64)
    for a, (i, wt) in AFLW21_TO_68.items():
        vis = vals[:, a, 2] > 0
        pts[vis, i] = vals[vis, a, :2]
        w[vis, i] = wt
    chin_side = np.abs(yaw) > CHIN_SILHOUETTE_YAW
    w[chin_side, 8] *= 0.5
    names = [f"aflw21/images/{n}" for n in rows[:, 0]]
    splits = ["val" if int(hashlib.md5(n.encode()).hexdigest()[:4], 16) % 20 == 0 else "train" for n in rows[:, 0]]
    return names, pts, w, splits, yaw


def fit_set(model, points, weights, contour: str, batch: int, opt_kw: dict, label_model=None):
    """Fit every face; returns a dict of arrays (parameters, landmarks3d, rmse, ...).

    ``model`` is fitted (its landmark definition meets the annotations); ``landmarks3d`` are the
    landmark vertices of ``label_model`` (default ``model``: the same mesh, maybe another
    definition) projected with the fitted parameters.
    """
    label_model = model if label_model is None else label_model
    out = {k: [] for k in ("shape", "expr", "rotvec", "scale", "translation", "landmarks3d", "rmse", "valid", "converged")}
    for i in range(0, len(points), batch):
        y = torch.as_tensor(points[i:i + batch], dtype=torch.float32)
        w = torch.as_tensor(weights[i:i + batch], dtype=torch.float32)
        res = fit_landmarks(model, y, w, options=FitOptions(contour=contour, **opt_kw))
        p = res.params
        lm3d = project(label_model.landmark_points(p.shape, p.expr), p.rotation, p.scale, p.translation)
        for k, v in (("shape", p.shape), ("expr", p.expr), ("rotvec", p.rotvec), ("scale", p.scale),
                     ("translation", p.translation), ("landmarks3d", lm3d), ("rmse", res.rmse),
                     ("valid", res.valid), ("converged", res.converged)):
            out[k].append(v.numpy())
        print(f"  {min(i + batch, len(points))}/{len(points)} faces", flush=True)
    return {k: np.concatenate(v) for k, v in out.items()}


def fit_chin_weighted(model, points, weights, factor: float, batch: int, opt_kw: dict, label_model=None):
    """:func:`fit_set` with the 2D-contour definition and the annotated chin (point 8) weighted by
    ``factor``: the chin is the one jaw point whose vertex does not slide, and with the Huber loss of
    the fit the sliding jaw beside it outvotes it. At weight 1 the stored 3D-style chin of the 300-W
    training faces sits 3.5 % of face size below the annotated chin (near-frontal faces), while
    aflw21's, fitted without a sliding jaw, sits on it (0.25 %); weight 10 brings it to 0.4 %.
    Faces whose fitted |yaw| exceeds :data:`CHIN_SILHOUETTE_YAW` are refitted with weight 1, since
    there the annotated chin is on the silhouette rather than at the 3D chin vertex."""
    if factor == 1.0:
        return fit_set(model, points, weights, "2d", batch, opt_kw, label_model)
    w = np.array(weights, dtype=np.float64, copy=True)
    w[:, 8] *= factor
    r = fit_set(model, points, w, "2d", batch, opt_kw, label_model)
    side = np.flatnonzero(np.abs(label_yaw(r)) > CHIN_SILHOUETTE_YAW)
    if side.size:
        again = fit_set(model, points[side], weights[side], "2d", batch, opt_kw, label_model)
        for k in r:
            r[k][side] = again[k]
    return r


#: iBUG-68 points that AFLW's 21 points annotate (the others are placed by the fit's prior)
AFLW21_ANNOTATED = tuple(sorted(i for i, _ in AFLW21_TO_68.values()))


def aflw21_weights(w68: np.ndarray) -> np.ndarray:
    """(N, 68) weights of the AFLW-like subset of full 68-point annotations ``w68`` (N, 68)."""
    w21 = np.zeros_like(w68)
    for i, wt in AFLW21_TO_68.values():
        w21[:, i] = wt * (w68[:, i] > 0)
    return w21


def model_keypoints(label_model, fits: dict) -> np.ndarray:
    """(N, 68, 3) model-frame keypoints (mm) of ``label_model`` at the fitted coefficients."""
    X = label_model.landmark_points(torch.as_tensor(fits["shape"]), torch.as_tensor(fits["expr"]))
    return X.double().numpy()


def learn_aflw21_correction(model, label_model, shared: Path, batch: int, kw: dict, kw21: dict, lam: float,
                            limit: int = 0, chin_weight: float = 1.0) -> LabelCorrection:
    """:class:`~regressors.label_correction.LabelCorrection` learned on the 300-W *training* faces:
    each fitted to all 68 annotations (2D contour, ``kw``, chin weight ``chin_weight``: as the 300-W
    labels) and to the AFLW-like subset only (3D contour, ``kw21``: as the aflw21 labels)."""
    names, pts, w, splits, _ = read_300w(shared)
    tr = np.flatnonzero(np.array(splits) == "train")
    if limit:
        tr = tr[:limit]
    print(f"aflw21 correction: fitting {len(tr)} 300-W training faces to all 68 and to the AFLW-21 points", flush=True)
    full = fit_chin_weighted(model, pts[tr], w[tr], chin_weight, batch, kw, label_model)
    sub = fit_set(model, pts[tr], aflw21_weights(w[tr]), "3d", batch, kw21, label_model)
    ok = full["valid"] & sub["valid"]
    return LabelCorrection.learn(model_keypoints(label_model, sub)[ok], model_keypoints(label_model, full)[ok], lam)


def correct_fits(label_model, fits: dict, corr: LabelCorrection, batch: int, kw21: dict,
                 chin_weight=None) -> dict:
    """The aflw21 fits with their unannotated 3D-style points moved by ``corr`` and the face refitted
    to all 68 moved points (3D contour, ``kw21``), so the stored labels stay a face of the model.

    ``chin_weight``: optional (N,) weight of the chin (point 8) in that refit, the others 1. The moved
    jaw beside an annotated chin otherwise lifts it off the first fit's chin (by 0.8 % of face size
    with the correction learned from chin-weighted 300-W fits)."""
    X = corr.apply(model_keypoints(label_model, fits), AFLW21_ANNOTATED)
    R = rotvec_to_rotmat(torch.as_tensor(fits["rotvec"], dtype=torch.float64))
    moved = project(torch.as_tensor(X), R, torch.as_tensor(fits["scale"], dtype=torch.float64),
                    torch.as_tensor(fits["translation"], dtype=torch.float64)).numpy()
    moved[~fits["valid"]] = np.nan  # invalid first fits stay invalid
    ones = np.isfinite(moved).all(-1).astype(np.float64)
    if chin_weight is not None:
        ones[:, 8] *= np.asarray(chin_weight, dtype=np.float64)
    return fit_set(label_model, np.nan_to_num(moved), ones, "3d", batch, kw21, label_model)


def with_points_from(model, other, points):
    """``model`` whose landmark vertices ``points`` (iBUG indices) are ``other``'s: e.g. the fitted
    chin taken from the 3D-style definition, so that the stored 3D-style chin lands on the
    annotated chin as AFLW2000-3D's does (its ground truth fits the Basel keypoints themselves to
    the annotations). The definition is named ``"<model's>+<other's>[points]"``."""
    if not points:
        return model
    ids = model.landmarks.cpu().numpy().copy()
    ids[list(points)] = other.landmarks.cpu().numpy()[list(points)]
    name = f"{model.info.landmark_definition}+{other.info.landmark_definition}{list(points)}"
    return model.with_landmarks(ids, definition=name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m regressors.pseudolabels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output .npz")
    ap.add_argument("--shared", default=str(_default_shared()), help="the shared/ folder (default: next to the checkout)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--shape-prior", type=float, default=1.0)
    ap.add_argument("--expr-prior", type=float, default=1.0)
    ap.add_argument("--max-nme", type=float, default=6.0, help="ok if RMSE < this percent of face size")
    ap.add_argument("--limit", type=int, default=0, help="only the first N faces of each set (smoke runs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sets", default="ytf68,300w,aflw21", help="comma-separated: ytf68, 300w, aflw21")
    ap.add_argument("--region", default="face", help="ICT-FaceKit region of the fitted model")
    ap.add_argument("--fit-landmarks", default="refined", help="landmark definition fitted to the annotations")
    ap.add_argument("--label-landmarks", default="3d", help="landmark definition of the stored landmarks3d")
    ap.add_argument("--fit-from-label", default="8", metavar="POINTS",
                    help="comma-separated iBUG points (0-based) fitted with the --label-landmarks vertex instead "
                         "of the --fit-landmarks one (default 8: the chin; '' = none)")
    ap.add_argument("--chin-weight", type=float, default=1.0, metavar="F",
                    help="weight of the annotated chin (point 8) against the jaw beside it: in the 2D-contour fits "
                         f"(ytf68, 300-W) below {CHIN_SILHOUETTE_YAW:g} deg of fitted yaw (beyond it the chin is a "
                         "silhouette point and keeps 1), and in aflw21's corrected refit where the chin is annotated "
                         f"below {CHIN_SILHOUETTE_YAW:g} deg of annotated yaw")
    ap.add_argument("--unannotated-mouth-prior", type=float, default=20.0,
                    help="factor on the expression prior of the lip-opening blendshapes for aflw21 (lips not annotated)")
    ap.add_argument("--aflw21-correction", type=float, default=1e4, metavar="LAM",
                    help="move aflw21's unannotated 3D-style points by a ridge correction (this weight) learned on "
                         "300-W training faces fitted to all 68 vs the AFLW-21 points, then refit "
                         "(regressors.label_correction); 0 = off")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    shared = Path(a.shared)
    try:  # checked before any model is loaded
        swap = sorted({int(x) for x in a.fit_from_label.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--fit-from-label: expected comma-separated point numbers, got {a.fit_from_label!r}")
    model = load_model(region=a.region, landmarks=a.fit_landmarks)
    label_model = load_model(region=a.region, landmarks=a.label_landmarks)
    if any(not 0 <= i < model.n_landmarks for i in swap):
        ap.error(f"--fit-from-label: points must lie in 0..{model.n_landmarks - 1}, got {swap}")
    model = with_points_from(model, label_model, swap)
    opt_kw = dict(max_iterations=a.iterations, shape_prior=a.shape_prior, expr_prior=a.expr_prior, robust="huber")
    parts, corr_arrays = [], {}
    readers = {"ytf68": (read_ytf68, "2d"), "300w": (read_300w, "2d"), "aflw21": (read_aflw21, "3d")}
    sets = [x.strip() for x in a.sets.split(",") if x.strip()]
    unknown = set(sets) - set(readers)
    if unknown:
        ap.error(f"--sets: unknown {sorted(unknown)}; choose from {sorted(readers)}")
    for name in sets:
        reader, contour = readers[name]
        names, pts, w, splits, yaw = reader(shared)
        if a.limit:
            names, pts, w, splits, yaw = names[:a.limit], pts[:a.limit], w[:a.limit], splits[:a.limit], yaw[:a.limit]
        t0 = time.perf_counter()
        print(f"{name}: fitting {len(names)} faces ({contour} contour)", flush=True)
        kw = dict(opt_kw)
        if name == "aflw21" and model.info.expr_kind == "blendshape":
            kw["expr_prior"] = mouth_opening_prior(model.info.expression_names, a.expr_prior, a.unannotated_mouth_prior)
        if contour == "2d":
            r = fit_chin_weighted(model, pts, w, a.chin_weight, a.batch, kw, label_model)
        else:
            r = fit_set(model, pts, w, contour, a.batch, kw, label_model)
        if name == "aflw21" and a.aflw21_correction > 0:
            corr = learn_aflw21_correction(model, label_model, shared, a.batch, opt_kw, kw, a.aflw21_correction, a.limit,
                                          a.chin_weight)
            first = r
            # the annotated chin holds in the refit as in the first fit (not where it is a silhouette point)
            held = np.where((w[:, 8] > 0) & (np.abs(yaw) <= CHIN_SILHOUETTE_YAW), a.chin_weight, 1.0)
            r = correct_fits(label_model, first, corr, a.batch, kw, held)
            r["valid"] &= first["valid"]
            r["rmse"] = first["rmse"]  # the fit to the annotations, for the ok flag
            corr_arrays = corr.to_arrays()
        dt = time.perf_counter() - t0
        vis = w > 0
        lo = np.where(vis[..., None], pts, np.inf).min(1)
        hi = np.where(vis[..., None], pts, -np.inf).max(1)
        ext = hi - lo
        size = np.maximum(np.sqrt(ext[:, 0] * ext[:, 1]), 0.5 * ext.max(1))
        rel = r["rmse"] / size * 100
        r["ok"] = r["valid"] & np.isfinite(rel) & (rel < a.max_nme)
        r.update(name=np.array(names), set=np.array([name] * len(names)), split=np.array(splits),
                 target=pts, visible=w, annotated_yaw=yaw, rmse_percent=rel,
                 contour=np.array([contour] * len(names)))  # "2d": a silhouette jaw (regressors.data)
        print(f"{name}: {dt:.1f} s ({len(names) / dt:.0f} fits/s), ok {r['ok'].mean() * 100:.1f} %, "
              f"median RMSE {np.nanmedian(r['rmse']):.2f} px = {np.nanmedian(rel):.2f} % of face size", flush=True)
        parts.append(r)
    keys = parts[0].keys()
    merged = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    merged["model"] = np.array(model.name)
    merged["landmark_ids"] = label_model.landmarks.cpu().numpy().astype(np.int64)  # the definition landmarks3d use
    merged["landmark_definition"] = np.array(label_model.info.landmark_definition)
    merged["fit_landmark_ids"] = model.landmarks.cpu().numpy().astype(np.int64)  # the definition fitted
    merged["frame_rotation"] = np.asarray(model.info.frame_rotation, dtype=np.float64)  # the frame rotvec is in
    merged["chin_weight"] = np.float64(a.chin_weight)  # the annotated chin's weight (--chin-weight)
    merged.update(corr_arrays)  # the aflw21 correction, when one was applied
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **merged)
    print(f"wrote {out}: {len(merged['name'])} faces, ok {merged['ok'].sum()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
