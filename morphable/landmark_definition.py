"""Which mesh vertices are the 68 iBUG landmarks? Re-selecting them from annotated photos.

A model's 68 landmark vertices are a *definition*: ICT-FaceKit ships one
(``vertex_indices.json``), but its points do not sit where 300-W annotators (and the 3D-style
AFLW2000-3D ground truth) put them. On 2,737 near-frontal ytf68 training frames fitted by the
pseudo-labeller, the upstream jaw points 5-7 / 9-11 lie ~4.5 % of the face size too far out and
the inner brow ends 21/22 ~4.5 % too far in, systematically (``python -m morphable.landmark_definition
--report``).

:func:`select_landmark_vertices` re-selects each point as the vertex, within ``radius_mm`` of the
current one on the mean face, whose projection is closest on average to the annotations of
fitted faces (near-frontal faces only, where the 300-W jaw is also the 3D jaw); mirror pairs of
points are chosen together as mirror pairs of vertices, so the definition stays left-right
symmetric. The result for the default model ships as ``morphable/data/ict_landmarks_68.json``
and is what :func:`morphable.formats.ict.load_ict` uses unless asked for ``landmarks="upstream"``.

    python -m morphable.landmark_definition --labels labels.npz --out morphable/data/ict_landmarks_68.json
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .geometry import project

__all__ = ["IBUG68_MIRROR", "LandmarkSelection", "select_landmark_vertices", "mirror_vertices",
           "REFINED_ICT_LANDMARKS", "ICT_LANDMARKS_3D", "BFM_ICT_LANDMARKS", "ICT_DEFINITIONS", "read_landmark_file"]


def _mirror68() -> np.ndarray:
    p = np.arange(68)
    pairs = [(i, 16 - i) for i in range(8)]  # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nose base
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips
    for a, b in pairs:
        p[a], p[b] = b, a
    return p


#: iBUG-68 mirror permutation: point j of a mirrored face is the mirror of point ``IBUG68_MIRROR[j]``.
IBUG68_MIRROR = _mirror68()

#: The re-selected landmark vertex ids of the default ICT-FaceKit model (file shipped in the package).
REFINED_ICT_LANDMARKS = Path(__file__).resolve().parent / "data" / "ict_landmarks_68.json"
#: All 68 keypoints of the Basel mean face (3DDFA's, which define AFLW2000-3D's and 300W-LP's
#: landmarks) registered onto the ``face`` region (:mod:`morphable.registration`): vertex ids.
BFM_ICT_LANDMARKS = Path(__file__).resolve().parent / "data" / "ict_landmarks_68_bfm.json"
#: The 3D-style definition, the default: the registered BFM jaw (0-16, fixed vertices on the 3D
#: jawline, outside the ``narrow`` region) and the refined interior points (17-67). The interior
#: points mean the same in both styles, and on the 541 hand-annotated 300-W validation faces the
#: refined ones sit closer to the annotations than the registered BFM ones (``docs/conventions.md``).
ICT_LANDMARKS_3D = Path(__file__).resolve().parent / "data" / "ict_landmarks_68_3d.json"
#: The named ICT-FaceKit landmark definitions shipped with the package (besides ``"upstream"``,
#: the model file's own): name -> definition file. ``"refined"`` is the fixed-point part of the
#: 2D-contour definition (its jaw slides on the outline: ``FitOptions(contour="2d")``).
ICT_DEFINITIONS = {"3d": ICT_LANDMARKS_3D, "refined": REFINED_ICT_LANDMARKS, "bfm": BFM_ICT_LANDMARKS}


@dataclass
class LandmarkSelection:
    """Result of :func:`select_landmark_vertices`.

    Attributes:
        ids: (68,) int64 new landmark vertex ids.
        previous: (68,) int64 the ids it started from.
        cost_before, cost_after: (68,) mean squared distance, in (percent of face size)^2, between
            projected vertex and annotation over the faces that see the point.
        moved_mm: (68,) distance between old and new vertex on the mean face, mm.
        n_faces: faces used.
    """

    ids: np.ndarray
    previous: np.ndarray
    cost_before: np.ndarray
    cost_after: np.ndarray
    moved_mm: np.ndarray
    n_faces: int

    def to_dict(self) -> dict:
        return {"ids": self.ids.tolist(), "previous": self.previous.tolist(), "n_faces": self.n_faces,
                "rms_before_pct": np.sqrt(self.cost_before).round(3).tolist(),
                "rms_after_pct": np.sqrt(self.cost_after).round(3).tolist(),
                "moved_mm": self.moved_mm.round(2).tolist()}


def mirror_vertices(mean: torch.Tensor) -> torch.Tensor:
    """(N,) for each vertex of the mean face (N, 3) mm, the vertex nearest to its mirror image (x -> -x)."""
    from scipy.spatial import cKDTree

    v = mean.detach().cpu().double().numpy()
    _, idx = cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]))
    return torch.as_tensor(np.asarray(idx, dtype=np.int64))


def select_landmark_vertices(model, shape: torch.Tensor, expr: torch.Tensor, rotation: torch.Tensor,
                             scale: torch.Tensor, translation: torch.Tensor, targets: torch.Tensor,
                             weights: Optional[torch.Tensor] = None, radius_mm: float = 20.0,
                             symmetric: bool = True, chunk: int = 256) -> LandmarkSelection:
    """Re-select the 68 landmark vertices of ``model`` from fitted, annotated faces.

    Args:
        model: the :class:`~morphable.model.MorphableModel` (its current ``landmarks`` are the start).
        shape, expr: (B, Ks), (B, Ke) fitted coefficients.
        rotation: (B, 3, 3); scale (B,); translation (B, 2): the fitted weak-perspective pose
            (the frame of ``targets``: image or crop pixels).
        targets: (B, 68, 2) annotated points in the same pixels.
        weights: (B, 68) visibility / weights (default 1).
        radius_mm: candidates lie within this distance of the current vertex on the mean face.
        symmetric: choose mirror pairs of points as mirror pairs of vertices (and the points on
            the symmetry line among vertices that are their own mirror, within 1 vertex).
    """
    dt = torch.float64
    B = targets.shape[0]
    if B == 0:
        raise ValueError("select_landmark_vertices: no faces")
    targets = torch.as_tensor(targets, dtype=dt)
    w = torch.ones(B, 68, dtype=dt) if weights is None else torch.as_tensor(weights, dtype=dt)
    ext = targets.amax(1) - targets.amin(1)
    size = torch.sqrt(ext[:, 0] * ext[:, 1]).clamp_min(1e-6)
    mean = model.mean.to(dt)
    old = model.landmarks.cpu().long()
    cand = [torch.where((mean - mean[old[i]]).norm(dim=-1) < radius_mm)[0] for i in range(68)]
    allc = torch.unique(torch.cat(cand + ([] if not symmetric else [])))
    mir = mirror_vertices(mean) if symmetric else None
    if symmetric:
        allc = torch.unique(torch.cat([allc, mir[allc]]))
    pos = {int(v): k for k, v in enumerate(allc.tolist())}
    # cost[i, k]: sum over faces of w * |proj(vertex allc[k]) - target_i|^2 / size^2 (percent^2)
    num = torch.zeros(68, len(allc), dtype=dt)
    for s in range(0, B, chunk):
        sl = slice(s, s + chunk)
        X = model.select(allc, torch.as_tensor(shape[sl]).to(model.mean.dtype),
                         torch.as_tensor(expr[sl]).to(model.mean.dtype)).to(dt)
        x = project(X, torch.as_tensor(rotation[sl], dtype=dt), torch.as_tensor(scale[sl], dtype=dt),
                    torch.as_tensor(translation[sl], dtype=dt))  # (b, C, 2)
        d2 = ((x[:, None, :, :] - targets[sl, :, None, :]) ** 2).sum(-1) / (size[sl, None, None] / 100.0) ** 2
        num += (w[sl, :, None] * d2).sum(0)
    cost = num / w.sum(0).clamp_min(1e-12)[:, None]
    col = lambda i, v: cost[i, pos[int(v)]]  # noqa: E731
    new = old.clone()
    done = set()
    for i in range(68):
        if i in done:
            continue
        j = int(IBUG68_MIRROR[i])
        ci = cand[i]
        if not symmetric:
            new[i] = ci[torch.stack([col(i, v) for v in ci]).argmin()]
        elif j == i:  # on the symmetry line: vertices that are (nearly) their own mirror
            on = ci[(mean[ci, 0].abs() < 1.0) | (mir[ci] == ci)]
            on = on if len(on) else ci
            new[i] = on[torch.stack([col(i, v) for v in on]).argmin()]
        else:
            tot = torch.stack([col(i, v) + col(j, mir[v]) for v in ci])
            v = ci[tot.argmin()]
            new[i], new[j] = v, mir[v]
            done.add(j)
        done.add(i)
    before = torch.stack([col(i, old[i]) if int(old[i]) in pos else torch.tensor(float("nan"), dtype=dt) for i in range(68)])
    after = torch.stack([col(i, new[i]) for i in range(68)])
    return LandmarkSelection(new.numpy(), old.numpy(), before.numpy(), after.numpy(),
                             (mean[new] - mean[old]).norm(dim=-1).numpy(), B)


def read_landmark_file(path: Path | str, n_vertices: int) -> np.ndarray:
    """The ``ids`` (68,) of a landmark definition JSON written by this module, checked against the model size."""
    from .errors import ModelFormatError

    try:
        ids = np.asarray(json.loads(Path(path).read_text())["ids"], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelFormatError(f"{path}: not a landmark definition file ({e}); reinstall morphable") from None
    if ids.shape != (68,) or ids.min() < 0 or ids.max() >= n_vertices:
        raise ModelFormatError(f"{path}: expected 68 vertex ids below {n_vertices}, got shape {ids.shape}")
    return ids


def main(argv: Optional[Sequence[str]] = None) -> int:
    from morphable.geometry import rotmat_to_angles, rotvec_to_rotmat
    from morphable.registry import load_model

    p = argparse.ArgumentParser(prog="python -m morphable.landmark_definition", description=__doc__.split("\n")[0])
    p.add_argument("--labels", required=True, help="pseudo-label npz (regressors.pseudolabels)")
    p.add_argument("--set", default="ytf68", help="annotated set to use (68-point annotations)")
    p.add_argument("--max-yaw", type=float, default=15.0, help="use faces with |fitted yaw| below this (degrees)")
    p.add_argument("--limit", type=int, default=1500, help="at most this many faces")
    p.add_argument("--radius", type=float, default=20.0, help="candidate radius around the current vertex, mm")
    p.add_argument("--out", default=None, help="write the definition JSON here")
    args = p.parse_args(argv)
    model = load_model(landmarks="upstream")
    d = np.load(args.labels, allow_pickle=False)
    R = rotvec_to_rotmat(torch.as_tensor(d["rotvec"], dtype=torch.float64))
    yaw = np.degrees(rotmat_to_angles(R).numpy()[:, 1])
    sel = np.where((d["set"] == args.set) & (d["split"] == "train") & d["ok"] & (np.abs(yaw) < args.max_yaw))[0][: args.limit]
    if not len(sel):
        raise SystemExit(f"error: no '{args.set}' train faces with |yaw| < {args.max_yaw} in {args.labels}")
    res = select_landmark_vertices(model, torch.as_tensor(d["shape"][sel]), torch.as_tensor(d["expr"][sel]), R[sel],
                                   torch.as_tensor(d["scale"][sel]), torch.as_tensor(d["translation"][sel]),
                                   torch.as_tensor(d["target"][sel]), torch.as_tensor(d["visible"][sel]),
                                   radius_mm=args.radius)
    rb, ra = np.sqrt(np.nanmean(res.cost_before)), np.sqrt(res.cost_after.mean())
    print(f"{res.n_faces} {args.set} train faces, |yaw| < {args.max_yaw}: RMS landmark error {rb:.2f} % -> {ra:.2f} % "
          f"of face size; {int((res.ids != res.previous).sum())} of 68 points moved (median {np.median(res.moved_mm):.1f} mm, "
          f"max {res.moved_mm.max():.1f} mm)")
    if args.out:
        out = {"model": model.name, "description": "iBUG-68 landmark vertex ids re-selected by morphable.landmark_definition "
               f"on {res.n_faces} near-frontal (|yaw| < {args.max_yaw} deg) {args.set} training faces (300-W annotations), "
               "symmetric, within {:.0f} mm of the upstream ids".format(args.radius), **res.to_dict()}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
