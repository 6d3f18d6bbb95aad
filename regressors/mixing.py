r"""Training on real + profiled faces: label files joined, a mixing ratio and yaw-balanced sampling.

Options (added to ``python -m regressors.train`` by :func:`add_mixing_arguments`):

* ``--extra-labels FILE`` a second label file (e.g. ``regressors.profile``'s ``labels.npz``) whose
  ``ok`` rows of split ``train`` join the training set; ``--extra-root DIR`` the folder its names are
  relative to (default: the file's folder). Its names become absolute paths, so one
  :class:`regressors.data.FaceLabelDataset` reads both sets (``root / absolute`` is the absolute path).
* ``--mix 0.5`` the share of each epoch's samples drawn from the extra rows. An epoch still shows
  every real row once: it has ``n_real / (1 - mix)`` samples (``mix = 1``: the extra rows only).
* ``--balance-yaw`` draw the rows of each set with replacement, weighted so that every 15-degree bin
  of |yaw| (from the label's rotation, 0-90, larger yaws in the last bin) is drawn about equally
  often, except that no row is drawn more than 10x as often as under uniform sampling (so a handful
  of rows in a nearly empty bin is not repeated all epoch). Works with or without ``--extra-labels``.

Batches are a function of (seed, epoch), like :class:`regressors.train.EpochBatches`, so ``--resume``
sees the same data order. :func:`regressors.train.train` calls :func:`plan_mixing` on its training
rows and samples with :meth:`MixPlan.sampler` when the plan is active (else ``EpochBatches`` as before).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from morphable.geometry import rotmat_to_angles, rotvec_to_rotmat

from .data import LABEL_KEYS, load_labels, select_labels, to_frame

__all__ = ["add_mixing_arguments", "concat_labels", "label_angles", "label_yaw", "yaw_balance_weights",
           "MixedEpochBatches", "MixPlan", "plan_mixing"]


def add_mixing_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = p.add_argument_group("extra (e.g. profiled) training data")
    g.add_argument("--extra-labels", default=None, help="a second label file joined to the training rows")
    g.add_argument("--extra-root", default=None, help="folder its names are relative to (default: its folder)")
    g.add_argument("--mix", type=float, default=0.5, help="share of each epoch drawn from the extra rows")
    g.add_argument("--balance-yaw", action="store_true", help="sample rows so that |yaw| bins are equally frequent")
    return p


def concat_labels(parts: Sequence[tuple]) -> dict:
    """Join label dicts: ``parts`` is a sequence of ``(labels, root)``; a part with a ``root`` has its
    names made absolute (``root / name``). Keeps the keys of the label-file contract
    (:data:`regressors.data.LABEL_KEYS`), the per-row ``contour`` when any part has it (``"3d"`` for
    the rows of parts without it, what the data loader assumes for them), and the first part's
    ``model`` and ``frame_rotation`` (bring the parts to one frame first: :func:`regressors.data.to_frame`)."""
    if not parts:
        raise ValueError("nothing to join")
    Ks = {p[0]["shape"].shape[1] for p in parts}
    Ke = {p[0]["expr"].shape[1] for p in parts}
    if len(Ks) != 1 or len(Ke) != 1:
        raise ValueError(f"label files of different models cannot be joined (Ks {sorted(Ks)}, Ke {sorted(Ke)})")
    cols = {}
    for k, (_, kind) in LABEL_KEYS.items():
        arrs = []
        for lab, root in parts:
            a = np.asarray(lab[k])
            if k == "name" and root is not None:
                base = Path(root).resolve()
                a = np.array([str(base / n) for n in a.astype(str)])
            arrs.append(a.astype(str) if kind == "U" else a)
        cols[k] = np.concatenate(arrs)
    if any("contour" in lab for lab, _ in parts):
        cols["contour"] = np.concatenate([np.asarray(lab["contour"]).astype(str) if "contour" in lab
                                          else np.full(len(lab["name"]), "3d") for lab, _ in parts])
    cols["model"] = parts[0][0].get("model", "")
    frames = {tuple(map(tuple, np.round(np.asarray(p[0].get("frame_rotation", np.eye(3)), dtype=np.float64), 9))) for p in parts}
    if len(frames) != 1:
        raise ValueError("label files in different model frames cannot be joined; convert them with regressors.data.to_frame")
    cols["frame_rotation"] = parts[0][0].get("frame_rotation", tuple(map(tuple, np.eye(3))))
    return cols


def label_angles(labels: dict) -> np.ndarray:
    """[pitch, yaw, roll] (N, 3) in degrees of each row's rotation (AFLW2000-3D convention)."""
    R = rotvec_to_rotmat(torch.as_tensor(np.asarray(labels["rotvec"]), dtype=torch.float64))
    return np.degrees(rotmat_to_angles(R).numpy())


def label_yaw(labels: dict) -> np.ndarray:
    """Yaw (N,) in degrees of each row's rotation."""
    return label_angles(labels)[:, 1]


def yaw_balance_weights(yaw_deg, bin_width: float = 15.0, max_yaw: float = 90.0, max_ratio: float = 10.0) -> np.ndarray:
    """Sampling weights (N,), summing to 1, that make every |yaw| bin equally likely (bins of
    ``bin_width`` up to ``max_yaw``; larger |yaw| count in the last bin), except that no row is drawn
    more than ``max_ratio`` times as often as under uniform sampling (a nearly empty bin gets less)."""
    y = np.minimum(np.abs(np.asarray(yaw_deg, dtype=np.float64)), max_yaw - 1e-9)
    N = len(y)
    if N == 0:
        return np.zeros(0)
    nb = int(math.ceil(max_yaw / bin_width))
    b = np.clip((y // bin_width).astype(np.int64), 0, nb - 1)
    count = np.bincount(b, minlength=nb).astype(np.float64)
    w = 1.0 / count[b]
    w /= w.sum()
    cap = max_ratio / N
    for _ in range(20):  # water-filling: clip at the cap, hand the excess to the rows below it
        over = w > cap
        if not over.any():
            break
        excess = (w[over] - cap).sum()
        w[over] = cap
        free = ~over & (w < cap)
        if not free.any():
            break
        w[free] += excess * w[free] / w[free].sum()
    return w / w.sum()


class MixedEpochBatches(Sampler):
    """Shuffled batches of one epoch over real rows ``[0, n_real)`` and extra rows
    ``[n_real, n_real + n_extra)``, a function of (seed, epoch); starts at batch ``start``.

    The epoch has ``n_real / (1 - mix)`` samples (``n_extra`` if ``mix`` = 1), ``mix`` of them extra
    rows. Inside each set rows are drawn without replacement (a new permutation per epoch, repeated
    when the set is smaller than its share) or, given ``weights`` of that set, with replacement in
    proportion to them.
    """

    def __init__(self, n_real: int, n_extra: int, batch: int, seed: int, epoch: int, start: int = 0, mix: float = 0.5,
                 weights_real: Optional[np.ndarray] = None, weights_extra: Optional[np.ndarray] = None,
                 drop_last: bool = True):
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {mix}")
        mix = mix if n_extra else 0.0
        if mix >= 1.0:
            n_x, n_r = n_extra, 0
        else:
            n_r = n_real
            n_x = int(round(n_real * mix / (1.0 - mix)))
        self.n_real, self.n_extra, self.n_r, self.n_x = n_real, n_extra, n_r, n_x
        self.batch, self.seed, self.epoch, self.start, self.drop_last = batch, seed, epoch, start, drop_last
        self.w_real, self.w_extra = weights_real, weights_extra

    @staticmethod
    def _draw(rng, n_pool: int, k: int, w) -> np.ndarray:
        if k <= 0 or n_pool <= 0:
            return np.zeros(0, np.int64)
        if w is not None:
            return rng.choice(n_pool, size=k, replace=True, p=w)
        reps = -(-k // n_pool)
        return np.concatenate([rng.permutation(n_pool) for _ in range(reps)])[:k]

    def batches(self) -> list:
        rng = np.random.default_rng([self.seed, 7927, self.epoch])
        idx = np.concatenate([self._draw(rng, self.n_real, self.n_r, self.w_real),
                              self.n_real + self._draw(rng, self.n_extra, self.n_x, self.w_extra)])
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        k = n // self.batch if (self.drop_last and n >= self.batch) else math.ceil(n / self.batch)
        return [idx[i * self.batch:(i + 1) * self.batch].tolist() for i in range(k)]

    def __iter__(self):
        return iter(self.batches()[self.start:])

    def __len__(self) -> int:
        n = self.n_r + self.n_x
        k = n // self.batch if (self.drop_last and n >= self.batch) else math.ceil(n / self.batch)
        return max(k - self.start, 0)


@dataclass
class MixPlan:
    """The training rows (real first, then extra) and how to sample them."""

    labels: dict
    n_real: int
    n_extra: int
    mix: float
    weights_real: Optional[np.ndarray] = None
    weights_extra: Optional[np.ndarray] = None

    @property
    def active(self) -> bool:
        return self.n_extra > 0 or self.weights_real is not None

    def sampler(self, batch: int, seed: int, epoch: int, start: int = 0) -> MixedEpochBatches:
        return MixedEpochBatches(self.n_real, self.n_extra, batch, seed, epoch, start, self.mix,
                                 self.weights_real, self.weights_extra)


def plan_mixing(train_labels: dict, args) -> MixPlan:
    """The :class:`MixPlan` of the parsed options (``extra_labels``, ``extra_root``, ``mix``,
    ``balance_yaw``; absent attributes mean off) for the real training rows ``train_labels``."""
    extra = getattr(args, "extra_labels", None)
    balance = bool(getattr(args, "balance_yaw", False))
    mix = float(getattr(args, "mix", 0.5))
    n_real = len(train_labels["name"])
    if not extra:
        w = yaw_balance_weights(label_yaw(train_labels)) if balance else None
        return MixPlan(train_labels, n_real, 0, 0.0, w)
    ex = to_frame(load_labels(extra), train_labels.get("frame_rotation", np.eye(3)))  # the real rows' model frame
    keep = ex["ok"].astype(bool) & (ex["split"] == "train") & np.isfinite(ex["shape"]).all(1)
    keep &= np.isfinite(ex["landmarks3d"]).all((1, 2))
    ex = select_labels(ex, keep)
    if not len(ex["name"]):
        raise SystemExit(f"{extra}: no usable training rows (ok & split=='train')")
    root = getattr(args, "extra_root", None) or str(Path(extra).resolve().parent)
    joined = concat_labels([(train_labels, None), (ex, root)])
    wr = yaw_balance_weights(label_yaw(train_labels)) if balance else None
    wx = yaw_balance_weights(label_yaw(ex)) if balance else None
    return MixPlan(joined, n_real, len(ex["name"]), mix, wr, wx)
