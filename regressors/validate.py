"""Score weight files on the validation split of a label file, balanced by |yaw| like the benchmark.

    python -m regressors.validate --labels LABELS.npz WEIGHTS [WEIGHTS ...] [--json OUT]

Checkpoints, data mixes and recipes are chosen here, never on the AFLW2000-3D dev set. The
validation rows (``split == "val"``, ``ok``) of the label file: ytf68's test frames, 300-W's common
subset and a 5 % hash slice of aflw21. Per face, the NME (% of sqrt(w*h) of the label landmarks'
box) of the parameter path and of the landmark head against the labels' ``landmarks3d`` (the
3D-style points of the fitted face), binned by the label's |yaw| into [0,30], (30,60], >60 degrees;
``balanced`` is the mean of the three bin means, the benchmark's rule. Mostly near-frontal rows:
the >60 bin is small (its count is printed), so its mean is the noisiest.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

#: |yaw| bin edges (degrees) of the benchmark: [0,30], (30,60], >60
YAW_EDGES = (30.0, 60.0)


def yaw_bins(yaw_deg: np.ndarray) -> np.ndarray:
    """(N,) int bin of each |yaw| (degrees): 0 = [0,30], 1 = (30,60], 2 = >60."""
    a = np.abs(np.asarray(yaw_deg, np.float64))
    return (a > YAW_EDGES[0]).astype(int) + (a > YAW_EDGES[1]).astype(int)


def balanced(values: np.ndarray, bins: np.ndarray) -> tuple[float, list[float], list[int]]:
    """(mean of the non-empty bin means, the 3 bin means (NaN if empty), the 3 counts)."""
    means = [float(values[bins == b].mean()) if (bins == b).any() else float("nan") for b in range(3)]
    counts = [int((bins == b).sum()) for b in range(3)]
    return float(np.nanmean(means)), means, counts


@torch.no_grad()
def score_weights(weights: str, labels: dict, model, data_root=None, batch: int = 128) -> dict:
    """Validation scores of one weight file: ``{"param": {...}, "head": {...}, "yaw_err": ...}``,
    each with ``balanced``, ``bins`` (3 means) and ``counts``; NME in percent, yaw error in degrees."""
    from torch.utils.data import DataLoader

    from morphable.geometry import rotvec_to_rotmat, rotmat_to_angles

    from .data import FaceLabelDataset
    from .losses import batch_metrics
    from .weights import load_regressor

    reg = load_regressor(weights, model=model)
    reg.eval()
    return score_predictor(reg, labels, model, data_root, batch)


@torch.no_grad()
def score_predictor(predict, labels: dict, model, data_root=None, batch: int = 128) -> dict:
    """:func:`score_weights` for any ``predict(x) -> RegressorOutput`` on (B, 3, S, S) normalised
    crops (a torch regressor, or ``OnnxRegressor.forward_normalized`` for an ONNX/int8 file)."""
    from torch.utils.data import DataLoader

    from morphable.geometry import rotvec_to_rotmat, rotmat_to_angles

    from .data import FaceLabelDataset
    from .losses import batch_metrics

    ds = FaceLabelDataset(labels, data_root=data_root, augment=False, expression_names=model.info.expression_names)
    acc: dict = {}
    for b in DataLoader(ds, batch_size=batch, shuffle=False):
        m = batch_metrics(model, predict(b["image"]), b)
        for k, v in m.items():
            acc.setdefault(k, []).append(v.detach().cpu().numpy())
    cat = {k: np.concatenate(v) for k, v in acc.items()}
    R = rotvec_to_rotmat(torch.as_tensor(labels["rotvec"], dtype=torch.float64))
    bins = yaw_bins(np.degrees(rotmat_to_angles(R)[:, 1].numpy()))
    out = {}
    for k, name in (("nme_param", "param"), ("nme_head", "head"), ("yaw_err", "yaw_err")):
        bal, means, counts = balanced(cat[k], bins)
        out[name] = {"balanced": bal, "bins": means, "counts": counts}
    return out


def score_pipeline(labels: dict, model, config=None, data_root=None, batch: int = 64) -> dict:
    """The whole pipeline (regressor, LM; ``fitting.pipeline.FitConfig``) on the validation rows,
    each face cropped with the standard box from its label landmarks (the benchmark's GT-box
    protocol): NME of the output landmarks vs the labels' ``landmarks3d``, yaw-balanced like
    :func:`score_weights` (key ``"fit"``), the pose MAE against the labels (``"pose_mae"``: degrees,
    over the rows whose label angles all lie within +-POSE_LIMIT_DEG like the benchmark's, ``n`` of
    them; plus the mean and median geodesic error over all rows) and,
    when the labels name their sets, per set (``"sets"``, :func:`per_set_scores`: the annotated
    points alone, and the signed pitch of near-frontal faces). For choosing weights and pipeline
    settings (LM priors, iterations, test-time mirroring) without the dev set."""
    from fitting.pipeline import Fitter
    from morphable.crop import box_from_landmarks
    from morphable.geometry import POSE_LIMIT_DEG, rotation_angle, rotmat_to_angles, rotvec_to_rotmat

    from .data import _read_rgb, default_data_root
    from .losses import nme

    root = Path(data_root) if data_root is not None else default_data_root()
    fitter = Fitter(config)
    gt = np.asarray(labels["landmarks3d"], np.float64)
    boxes = np.array([[b.x0, b.y0, b.side] for b in (box_from_landmarks(g) for g in gt)])
    pred, rots = [], []
    for i in range(0, len(gt), batch):
        imgs = [_read_rgb(root / str(n)) for n in labels["name"][i:i + batch]]
        out = fitter.fit_crops(imgs, boxes[i:i + batch])
        pred.append(out.landmarks.detach().cpu().double().numpy())
        rots.append(out.rotation.detach().cpu().double())
    pred = np.concatenate(pred)
    e = nme(torch.as_tensor(pred), torch.as_tensor(gt)).numpy()
    R = rotvec_to_rotmat(torch.as_tensor(labels["rotvec"], dtype=torch.float64))
    ang = np.degrees(rotmat_to_angles(R).numpy())  # (N, 3) [pitch, yaw, roll]
    bins = yaw_bins(ang[:, 1])
    bal, means, counts = balanced(e, bins)
    Rp = torch.cat(rots)
    signed = np.degrees(rotmat_to_angles(Rp).numpy()) - ang
    # the benchmark's pose protocol: only rows whose label angles all lie within +-POSE_LIMIT_DEG
    # (beyond it the Euler read-out wraps: +179 read as -179 counts 358 degrees)
    keep = (np.abs(ang) <= POSE_LIMIT_DEG).all(1)
    mae = {k: float(np.abs(signed[keep, j]).mean()) for j, k in enumerate(("pitch", "yaw", "roll"))}
    geo = np.degrees(rotation_angle(R, Rp).numpy())
    out = {"fit": {"balanced": bal, "bins": means, "counts": counts},
           "pose_mae": {**mae, "mean": float(np.mean(list(mae.values()))), "n": int(keep.sum()),
                        "geodesic_mean": float(geo.mean()), "geodesic_median": float(np.median(geo))}}
    if "set" in labels:
        out["sets"] = per_set_scores(labels, pred, e, signed[:, 0], bins)
    return out


def annotated_nme(pred: np.ndarray, target: np.ndarray, visible: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N,) NME (%) of ``pred`` against the annotation ``target`` over each row's annotated points
    (finite, ``visible`` > 0), normalised like the benchmark by sqrt(w*h) of the box of the label
    landmarks ``gt`` (not :func:`regressors.losses.nme`, whose box is that of the weighted points
    themselves: AFLW's 21 points span less than the face); NaN for a row without annotated points.
    pred, target, gt: (N, 68, 2) image px; visible: (N, 68) weights."""
    on = np.isfinite(target).all(-1) & (np.asarray(visible) > 0)
    d = np.linalg.norm(np.where(on[..., None], pred - target, 0.0), axis=-1)
    wh = gt.max(1) - gt.min(1)
    n = on.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, 100.0 * d.sum(1) / np.maximum(n, 1) / np.sqrt(wh[:, 0] * wh[:, 1]), np.nan)


def per_set_scores(labels: dict, pred: np.ndarray, fit_nme: np.ndarray, pitch_err: np.ndarray,
                   bins: np.ndarray) -> dict:
    """Per training set (``labels["set"]``): ``n``, ``nme`` (mean over rows of ``fit_nme``, all 68
    label points), ``annotated`` (mean of :func:`annotated_nme` over rows that have annotated points)
    and ``pitch_bias_frontal`` (mean signed pitch error, degrees, pipeline - label, over rows in the
    [0,30] |yaw| bin; positive = the pipeline raises the face more than the label)."""
    sets = np.asarray(labels["set"]).astype(str)
    ann = None
    if "target" in labels and "visible" in labels:
        ann = annotated_nme(pred, np.asarray(labels["target"], np.float64), np.asarray(labels["visible"], np.float64),
                            np.asarray(labels["landmarks3d"], np.float64))
    res = {}
    for s in dict.fromkeys(sets.tolist()):
        m = sets == s
        f = m & (bins == 0)
        r = {"n": int(m.sum()), "nme": float(fit_nme[m].mean()),
             "pitch_bias_frontal": float(pitch_err[f].mean()) if f.any() else float("nan")}
        if ann is not None:
            a = ann[m]
            r["annotated"] = float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")
        res[s] = r
    return res


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m regressors.validate", description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", nargs="+", help="weight files (regressors.weights format)")
    ap.add_argument("--labels", required=True, help="pseudo-label npz (its val split is scored)")
    ap.add_argument("--data-root", default=None, help="folder the label names are relative to (default ../shared/data)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the scores here")
    ap.add_argument("--pipeline", default=None, metavar="JSON",
                    help='also score the whole pipeline (regressor + LM) with these FitConfig fields, e.g. '
                         '\'{"iterations": 10, "expr_prior": 2.0}\' ("{}" = the defaults; weights: the first WEIGHTS)')
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from .data import load_labels, model_for_labels, select_labels, to_frame

    labels = load_labels(a.labels)
    model = model_for_labels(None, labels)
    labels = to_frame(labels, model.info.frame_rotation)
    va = select_labels(labels, np.flatnonzero(labels["ok"].astype(bool) & (labels["split"] == "val")))
    res = {}
    print(f"validation split of {a.labels}: {len(va['name'])} faces; NME % (param path / landmark head vs labels), "
          "by label |yaw| [0,30] / (30,60] / >60, balanced")
    for w in a.weights:
        r = res[w] = score_weights(w, va, model, a.data_root)
        p, h, y = r["param"], r["head"], r["yaw_err"]
        print(f"{w}: param {p['balanced']:.3f} ({' / '.join(f'{v:.2f}' for v in p['bins'])}), "
              f"head {h['balanced']:.3f} ({' / '.join(f'{v:.2f}' for v in h['bins'])}), "
              f"yaw err {y['balanced']:.2f} deg; faces per bin {p['counts']}")
    if a.pipeline is not None:
        from fitting.pipeline import FitConfig
        from morphable.geometry import POSE_LIMIT_DEG

        cfg = FitConfig(**{"weights": a.weights[0], "threads": a.threads, **json.loads(a.pipeline)})
        r = res["pipeline"] = {"config": json.loads(a.pipeline), **score_pipeline(va, model, cfg, a.data_root)}
        f = r["fit"]
        pm = r["pose_mae"]
        print(f"pipeline {a.pipeline} with {a.weights[0]}: fit {f['balanced']:.3f} ({' / '.join(f'{v:.2f}' for v in f['bins'])}), "
              f"pose MAE pitch / yaw / roll / mean {pm['pitch']:.2f} / {pm['yaw']:.2f} / {pm['roll']:.2f} / {pm['mean']:.3f} deg "
              f"({pm['n']} faces within +-{POSE_LIMIT_DEG:g} deg), geodesic mean / median {pm['geodesic_mean']:.3f} / {pm['geodesic_median']:.3f} deg")
        for s, v in r.get("sets", {}).items():
            print(f"  {s:8s} {v['n']:5d} faces: fit NME {v['nme']:.3f} (all label points), annotated points "
                  f"{v.get('annotated', float('nan')):.3f}, pitch bias [0,30] {v['pitch_bias_frontal']:+.2f} deg")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
