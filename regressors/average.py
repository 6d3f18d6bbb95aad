r"""Average the weights of several checkpoints of one training run (stochastic weight averaging).

    python -m regressors.average SNAP.pt [SNAP.pt ...] --out AVG.pt [--labels LABELS.npz]
    python -m regressors.average --run runs/NAME --from-step N --out AVG.pt --labels LABELS.npz

Snapshots taken along one run (``python -m regressors.train --schedule constant --snapshots``) lie
in one basin; their uniform average is usually a flatter, better point than any of them (Izmailov
et al. 2018, "Averaging weights leads to wider optima and better generalization"), at no cost when
the network runs. Every floating-point parameter and buffer is averaged (in float64); integer
buffers are taken from the first file.

The BatchNorm statistics of an average are not the average of the statistics: with ``--labels``,
they are recomputed by running augmented training crops of that label file through the averaged
network (``torch.optim.swa_utils.update_bn``, a cumulative mean over ``--bn-batches`` batches).
Without ``--labels`` they stay averaged; say so when reporting.

The files must hold the same network: config, frame and landmark definition; anything else is one
:class:`~regressors.weights.WeightsError` naming the file and the difference.
"""
from __future__ import annotations

import argparse
import itertools
import re
import sys
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from .weights import WeightsError, read_weight_file

__all__ = ["average_state_dicts", "average_weight_files", "recompute_batchnorm", "snapshots_of_run", "main"]


def average_state_dicts(dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict:
    """Uniform mean of state dicts with the same keys and shapes.

    Floating-point tensors are averaged in float64 and cast back to the first dict's dtype; other
    tensors (e.g. BatchNorm's ``num_batches_tracked``) are the first dict's.

    Raises:
        ValueError: no dicts, or keys / shapes that differ (naming the first difference).
    """
    if not dicts:
        raise ValueError("nothing to average: give at least one state dict")
    first = dicts[0]
    for i, d in enumerate(dicts[1:], 1):
        if set(d) != set(first):
            diff = sorted(set(d) ^ set(first))
            raise ValueError(f"state dict {i} has other entries than the first ({diff[:3]}...): not the same network")
        for k, v in first.items():
            if tuple(d[k].shape) != tuple(v.shape):
                raise ValueError(f"state dict {i}: {k} is {tuple(d[k].shape)}, the first's is {tuple(v.shape)}")
    out = {}
    for k, v in first.items():
        if v.is_floating_point():
            out[k] = (sum(d[k].double() for d in dicts) / len(dicts)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(np.asarray(torch.as_tensor(a)), np.asarray(torch.as_tensor(b))))


def average_weight_files(paths: Sequence) -> dict:
    """The weight-file dict (:mod:`regressors.weights` format) whose ``state_dict`` is the uniform
    mean of the files' (:func:`average_state_dicts`); the rest is the first file's, and
    ``metrics`` records ``averaged_from`` (the file names).

    Raises:
        WeightsError: no files, an unreadable file, or files of different networks (config, frame
            or landmark definition).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise WeightsError("nothing to average: give at least one weight file")
    files = [read_weight_file(p) for p in paths]
    ref = files[0]
    for p, d in zip(paths[1:], files[1:]):
        for key in ("config", "frame_rotation", "landmark_ids"):
            a, b = ref.get(key), d.get(key)
            same = a == b if key == "config" else _same(a, b)
            if not same:
                raise WeightsError(f"{p}: its {key} differs from {paths[0]}'s: only checkpoints of one network "
                                   "(one training run) can be averaged")
    try:
        sd = average_state_dicts([d["state_dict"] for d in files])
    except ValueError as e:
        raise WeightsError(f"{paths[0]} and the others: {e}") from None
    out = dict(ref)
    out["state_dict"] = sd
    out["metrics"] = {"averaged_from": [p.name for p in paths]}
    return out


def recompute_batchnorm(regressor: torch.nn.Module, images: Iterable[torch.Tensor]) -> int:
    """Reset the BatchNorm running statistics of ``regressor`` and recompute them as the cumulative
    mean over ``images`` ((B, 3, S, S) normalised crops, the network's input), in training mode
    (``torch.optim.swa_utils.update_bn``). Returns the number of batches seen; the module is left
    in the mode it was in."""
    from torch.optim.swa_utils import update_bn

    seen = [0]

    def counted():
        for x in images:
            seen[0] += 1
            yield x

    update_bn(counted(), regressor)
    return seen[0]


def snapshots_of_run(run, from_step: int = 0) -> list[Path]:
    """The ``snap_STEP.pt`` files of a run folder (``regressors.train --snapshots``) with
    STEP >= ``from_step``, in step order. Raises FileNotFoundError when there are none."""
    run = Path(run)
    snaps = sorted((int(m.group(1)), p) for p in run.glob("snap_*.pt") if (m := re.fullmatch(r"snap_(\d+)\.pt", p.name)))
    picked = [p for s, p in snaps if s >= from_step]
    if not picked:
        raise FileNotFoundError(f"{run}: no snap_STEP.pt with STEP >= {from_step} (train with --snapshots)")
    return picked


def _training_crops(labels_path, batches: int, batch: int, data_root=None, seed: int = 0):
    """Augmented training crops of a label file, as the network sees them in training."""
    from torch.utils.data import DataLoader

    from .data import FaceLabelDataset, load_labels, model_for_labels, select_labels

    labels = load_labels(labels_path)
    model = model_for_labels(None, labels)
    tr = np.where(np.asarray(labels["ok"], bool) & (np.asarray(labels["split"]) == "train"))[0]
    if not len(tr):
        raise ValueError(f"{labels_path}: no training rows (ok & split == 'train') to recompute BatchNorm statistics on")
    pick = np.random.default_rng(seed).permutation(tr)[: batches * batch]  # a random draw, in random order
    ds = FaceLabelDataset(select_labels(labels, pick), augment=True, seed=seed, data_root=data_root,
                          expression_names=model.info.expression_names)
    loader = DataLoader(ds, batch_size=batch, shuffle=False)
    return (b["image"] for b in itertools.islice(loader, batches))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m regressors.average", description=__doc__.split("\n\n")[1].strip())
    ap.add_argument("weights", nargs="*", help="weight files of one network")
    ap.add_argument("--run", default=None, help="a run folder: average its snap_STEP.pt files")
    ap.add_argument("--from-step", type=int, default=0, help="with --run: only snapshots at or after this step")
    ap.add_argument("--out", required=True, help="the averaged weight file")
    ap.add_argument("--labels", default=None, help="label file whose training rows recompute the BatchNorm statistics")
    ap.add_argument("--data-root", default=None, help="folder the label names are relative to (default ../shared/data)")
    ap.add_argument("--bn-batches", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    from .weights import load_regressor, save_regressor

    torch.set_num_threads(max(a.threads, 1))
    paths = [Path(w) for w in a.weights] + (snapshots_of_run(a.run, a.from_step) if a.run else [])
    if not paths:
        ap.error("give weight files or --run")
    avg = average_weight_files(paths)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(avg, tmp)
    n = 0
    if a.labels:
        reg = load_regressor(tmp)  # in its own raw frame: the file keeps the frame it was trained in
        n = recompute_batchnorm(reg, _training_crops(a.labels, a.bn_batches, a.batch, a.data_root))
        extra = {k: v for k, v in avg.items() if k not in ("format", "version", "config", "state_dict", "metrics", "frame_rotation")}
        save_regressor(reg, tmp, {**avg["metrics"], "batchnorm_batches": n}, **extra)
    tmp.replace(out)
    print(f"wrote {out}: mean of {len(paths)} files ({paths[0].name} ... {paths[-1].name}); BatchNorm statistics "
          + (f"recomputed on {n} batches of {a.batch} training crops" if n else "averaged (no --labels)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
