r"""Presenting AFLW2000-3D results: Markdown tables beside the published anchors, a CED plot and a
picture of the worst cases.

The anchors are copied from ``../shared/NOTES.md`` §3 (published, full 2000 images / 1969 for
pose, trained on 300W-LP) and §8 (3DDFA_V2 x0.5 measured on our 300-image dev set on a 2-core
CPU). Only rows on the same images are directly comparable; the table says which is which.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from morphable.crop import CropBox, crop_image, to_crop

from . import protocol as P

__all__ = ["Anchor", "NME_ANCHORS", "POSE_ANCHORS", "markdown", "region_lines", "save_plots", "plot_ced", "plot_worst"]


@dataclass(frozen=True)
class Anchor:
    """One reference row. ``values`` are the table's numeric columns, as published (None = not
    reported)."""

    method: str
    images: str
    values: tuple[str | None, ...]
    source: str


_SYN = "SynergyNet `demo/alignment.png`"
_SYN_POSE = "SynergyNet `demo/orientation.png`"
_PEER = "measured here, NOTES §8"

#: 68-point 2D NME (%): [0,30], (30,60], >60, balanced mean.
NME_ANCHORS: tuple[Anchor, ...] = (
    Anchor("3DDFA (CVPR16)", "2000", ("3.43", "4.24", "7.17", "4.94"), _SYN),
    Anchor("3DDFA (TPAMI)", "2000", ("2.84", "3.57", "4.96", "3.79"), _SYN),
    Anchor("3DDFA pytorch `phase1_wpdc_vdc`", "2000", (None, None, None, "4.252 ± 0.976"), "3DDFA `readme.md`"),
    Anchor("PRNet", "2000", ("2.75", "3.51", "4.61", "3.62"), _SYN),
    Anchor("2DASL", "2000", ("2.75", "3.46", "4.45", "3.55"), _SYN),
    Anchor("3DDFA_V2 (MR)", "2000", ("2.75", "3.49", "4.53", "3.59"), _SYN),
    Anchor("3DDFA_V2 (MRS)", "2000", ("2.63", "3.42", "4.48", "3.51"), _SYN),
    Anchor("SynergyNet", "2000", ("2.65", "3.30", "4.27", "3.41"), _SYN),
    Anchor("3DDFA_V2 x0.5, as shipped (0-based output)", "dev 300", ("3.15", "3.54", "4.66", "3.78"), _PEER),
    Anchor("3DDFA_V2 x0.5, +1 px (same frame as ours)", "dev 300", ("2.96", "3.37", "4.65", "3.66"), _PEER),
    Anchor("3DDFA_V2 x0.5, 3DDFA script (clipped box)", "dev 300", ("3.11", "3.53", "4.93", "3.86"), _PEER),
)

#: Pose MAE (degrees): yaw, pitch, roll, mean, geodesic median.
POSE_ANCHORS: tuple[Anchor, ...] = (
    Anchor("HopeNet (a=2)", "1969", ("6.47", "6.56", "5.44", "6.16", None), "6DRepNet `README.MD`; " + _SYN_POSE),
    Anchor("FSA-Net", "1969", ("4.50", "6.08", "4.64", "5.07", None), "6DRepNet `README.MD`; " + _SYN_POSE),
    Anchor("3DDFA (TPAMI)", "1969", ("4.33", "5.98", "4.30", "4.87", None), _SYN_POSE),
    Anchor("2DASL", "1969", ("3.85", "5.06", "3.50", "4.13", None), _SYN_POSE),
    Anchor("3DDFA_V2", "1969", ("4.06", "5.26", "3.48", "4.27", None), _SYN_POSE),
    Anchor("img2pose", "1969", ("3.426", "5.034", "3.278", "3.913", None), "img2pose `aflw_2000_3d_evaluation.ipynb`"),
    Anchor("6DRepNet", "1969", ("3.63", "4.91", "3.37", "3.97", None), "6DRepNet `README.MD`"),
    Anchor("SynergyNet", "1969", ("3.42", "4.09", "2.55", "3.35", None), _SYN_POSE),
    Anchor("3DDFA_V2 x0.5", "dev 297", ("3.08", "5.26", "3.43", "3.92", "4.8"), _PEER),
)


def _f(v: float | None, nd: int = 2) -> str:
    """Format with ``nd`` decimals (the table's), or every decimal an anchor was published with."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}"


def _fa(v: str | None) -> str:
    """A published anchor, verbatim."""
    return "–" if v is None else v


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _fs(v: float | None, nd: int = 2) -> str:
    """A signed value with its sign always shown, or "–"."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:+.{nd}f}"


#: How many points :func:`region_lines` lists by the size of their balanced signed error.
N_BIASED_POINTS = 8


def region_lines(regions: dict, points: dict | None = None) -> list[str]:
    """Markdown lines of the per-region diagnostics table: NME (%) by |yaw| bin, balanced and over all
    images, beside the balanced signed x / y error (predicted - GT, % of face size, y down), then one
    line naming the :data:`N_BIASED_POINTS` points with the largest balanced signed error.

    Args:
        regions: ``result["region_errors_2d"]``: region -> :meth:`protocol.RegionErrors.to_json`.
        points: ``result["point_errors_2d"]`` (:meth:`protocol.PointErrors.to_json`) or None.
    """
    lines = ["", "### Where the 2D error is: NME and signed error (%) by face region (diagnostic)", "",
             "Same normaliser as the NME (sqrt(w*h) of the GT landmark box). Signed = predicted − GT, image frame "
             "(x right, y down: signed y > 0 = prediction below GT), averaged per |yaw| bin and balanced over "
             "the 3 bins like the NME; opposite offsets inside a region cancel in its signed mean.", "",
             _row(["region", "points", "NME [0,30]", "NME (30,60]", "NME >60", "NME mean (balanced)", "NME all images",
                   "signed x (balanced)", "signed y (balanced)"]),
             _row(["---"] * 9)]
    for k, v in regions.items():
        n = v["nme"]
        lines.append(_row([k.replace("_", " "), v["points"], *(_f(n[b]) for b in P.YAW_BINS), _f(n["mean"]),
                           _f(n["all"]), _fs(v["signed_x"]["mean"]), _fs(v["signed_y"]["mean"])]))
    if points:
        sx, sy = points["signed_x"]["mean"], points["signed_y"]["mean"]
        ok = [i for i in range(len(sx)) if sx[i] is not None and sy[i] is not None]
        top = sorted(ok, key=lambda i: -math.hypot(sx[i], sy[i]))[:N_BIASED_POINTS]
        if top:
            lines += ["", "Largest balanced signed errors per point (0-based iBUG id: x, y; all 68 in the JSON "
                          "`point_errors_2d`): " + "; ".join(f"{i}: {_fs(sx[i])}, {_fs(sy[i])}" for i in top)]
    return lines


def markdown(result: dict) -> str:
    """Render a result dict (as written by ``--out``) as Markdown: protocol line, NME table with
    anchors, per-region NME and signed-error table (:func:`region_lines`), pose table with anchors,
    per-face timings."""
    n = result["n_images"]
    me = f"**{result['method']}**"
    nm = result["nme_2d"]
    c = nm["counts"]
    lines = [
        f"## AFLW2000-3D: {result['method']} on {n} images of `{Path(result.get('data', '')).name}`",
        "",
        f"Protocol: {result['protocol']}",
        "",
        f"### 68-point NME (%) by |yaw| bin (ours: {c['0-30']} / {c['30-60']} / {c['60-90']} images)",
        "",
        _row(["method", "images", "[0,30]", "(30,60]", ">60", "mean (balanced)", "all images", "source"]),
        _row(["---"] * 8),
    ]
    for a in NME_ANCHORS:
        lines.append(_row([a.method, a.images, *(_fa(v) for v in a.values), "–", a.source]))
    lines.append(_row([me + ", 2D", n, *(_f(nm[k]) for k in P.YAW_BINS), _f(nm["mean"]), _f(nm["all"]), "this run"]))
    n3 = result.get("nme_3d")
    if n3 is not None:
        lines.append(_row([me + ", 3D (z offset removed)", n, *(_f(n3[k]) for k in P.YAW_BINS), _f(n3["mean"]),
                           _f(n3["all"]), "this run"]))
    reg = result.get("nme_2d_by_region") or {}
    if result.get("region_errors_2d"):
        lines += region_lines(result["region_errors_2d"], result.get("point_errors_2d"))
    elif reg:  # a result file written before the signed-error diagnostics
        lines += ["", "### Where the 2D error is: NME (%) by face region (same normalisation; diagnostic)", "",
                  _row(["region", "points", "[0,30]", "(30,60]", ">60", "mean (balanced)", "all images"]),
                  _row(["---"] * 7)]
        lines += [_row([k, f"{P.REGIONS[k][0]}-{P.REGIONS[k][-1]}", *(_f(v[b]) for b in P.YAW_BINS), _f(v["mean"]),
                        _f(v["all"])]) for k, v in reg.items() if k in P.REGIONS]
    lines += [
        "",
        "### Head pose MAE (degrees; images with all |angles| <= 99)",
        "",
        _row(["method", "images", "yaw", "pitch", "roll", "mean", "geodesic median", "source"]),
        _row(["---"] * 8),
    ]
    for a in POSE_ANCHORS:
        lines.append(_row([a.method, a.images, *(_fa(v) for v in a.values), a.source]))
    pm = result.get("pose_mae")
    if pm is not None:
        lines.append(_row([me, pm["n"], *(_f(pm[k]) for k in ("yaw", "pitch", "roll", "mean", "geodesic_median")),
                           "this run"]))
    else:
        lines.append(_row([me, "–", "–", "–", "–", "–", "–", "no rotations given"]))
    t = result.get("time_per_face_ms") or {}
    if t:
        lines += ["", "### Time per face (ms, batch totals / faces)", "", _row(["stage", "ms/face"]), _row(["---", "---"])]
        lines += [_row([k, _f(v)]) for k, v in t.items()]
        env = result.get("environment") or {}
        if env:
            lines.append(f"\ntorch {env.get('torch')}, {env.get('torch_threads')} threads, {env.get('machine')}")
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        from morphable.errors import MorphableError

        raise MorphableError("--plots needs matplotlib: pip install -e '.[dev]' (or pip install matplotlib)") from e
    return plt


def plot_ced(scores: P.Scores, path: Path | str, title: str = "", xmax: float | None = None) -> Path:
    """Cumulative error distribution of the 2D NME: fraction of images with NME <= x, one curve per
    yaw bin and one for all images. Writes a PNG and returns its path."""
    plt = _pyplot()
    e = np.asarray(scores.nme_2d)
    if xmax is None:
        xmax = max(10.0, float(np.ceil(np.percentile(e, 98)))) if e.size else 10.0
    x = np.linspace(0.0, xmax, 400)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    labels = ("[0,30]", "(30,60]", ">60")
    groups = [(f"{labels[i]} ({int((scores.bins == i).sum())})", e[scores.bins == i]) for i in range(len(P.YAW_BINS))]
    groups.append((f"all ({e.size})", e))
    for label, v in groups:
        if v.size:
            ax.plot(x, (v[None, :] <= x[:, None]).mean(1), label=label, lw=2 if label.startswith("all") else 1.3)
    ax.set_xlabel("68-point 2D NME (%)")
    ax.set_ylabel("fraction of images")
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(title="|yaw| bin, degrees (images)", loc="lower right")
    ax.set_title(f"AFLW2000-3D CED {title}".strip())
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_worst(dataset: P.Dataset, landmarks: np.ndarray, scores: P.Scores, path: Path | str, k: int = 12,
               title: str = "", size: int = 240) -> Path:
    """A 3x4 grid of the ``k`` images with the largest 2D NME, each cut to its (unclipped, zero-padded)
    crop box, GT landmarks in green and predictions in red. Writes a PNG and returns its path."""
    import torch

    plt = _pyplot()
    order = np.argsort(-np.asarray(scores.nme_2d))[:k]
    cols = 4
    rows = max(1, math.ceil(len(order) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3, rows * 3.5), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), order):
        box = CropBox(*(int(v) for v in dataset.boxes[i]))
        img = crop_image(P.load_image(dataset.image_path(i)), box, size)
        pts = np.stack([dataset.landmarks[i, :, :2], np.asarray(landmarks[i])[:, :2]])
        pc = to_crop(torch.as_tensor(pts), [[box.x0, box.y0, box.side]] * 2, size).numpy()
        ax.imshow(img)
        ax.scatter(pc[0, :, 0], pc[0, :, 1], s=5, c="lime", label="GT")
        ax.scatter(pc[1, :, 0], pc[1, :, 1], s=5, c="red", label="prediction")
        ax.set_title(f"{dataset.names[i]}\nNME {scores.nme_2d[i]:.2f}, yaw {scores.yaw_deg[i]:.0f}°", fontsize=8)
    fig.suptitle(f"worst {len(order)} by 2D NME {title} (green GT, red prediction)".strip(), fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def save_plots(dataset: P.Dataset, landmarks: np.ndarray, scores: P.Scores, folder: Path | str,
               title: str = "") -> list[Path]:
    """Write ``ced.png`` and ``worst.png`` into ``folder`` (created) and return their paths."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    return [plot_ced(scores, d / "ced.png", title), plot_worst(dataset, landmarks, scores, d / "worst.png", title=title)]
