r"""Train a regressor on a pseudo-label file.

    python -m regressors.train --labels LABELS.npz --out runs/NAME [--arch mobilenet|resnet]
        [--epochs N] [--batch 64] [--lr 2e-3] [--resume] [--seed 0] [--threads 2] [--val-every STEPS]
        [--max-steps N] [--limit N] [--time-limit MIN]
        [--extra-labels PROFILED.npz [--extra-root DIR] [--mix 0.5]] [--balance-yaw]

Writes to ``--out``: ``last.pt`` (checkpoint after every epoch and at the end: weights, optimiser,
epoch, step, RNG), ``best.pt`` (weights of the best validation ``--select`` score, by default
``nme_param``; loadable by
:func:`regressors.weights.load_regressor`), ``log.jsonl`` (one JSON object per validation and per
epoch) and ``args.json``.

Optimiser AdamW (no decay on norms and biases); learning rate: linear warm-up then cosine decay to
1% over all steps, or held constant with ``--schedule constant`` (a pure function of the step, so
``--resume`` continues it exactly). ``--snapshots`` keeps the weights of every validation as
``snap_STEP.pt``, for averaging (:mod:`regressors.average`). The data
order and augmentation depend only on (seed, epoch, index), so a resumed run sees the same
batches as an uninterrupted one. ``--extra-labels`` / ``--mix`` / ``--balance-yaw`` (e.g. the
profiled faces of :mod:`regressors.profile`): see :mod:`regressors.mixing`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .data import (FaceLabelDataset, crop_labels, load_labels, model_for_labels, parse_drop_labels, parse_drop_targets,
                   select_labels, to_frame)
from .mixing import add_mixing_arguments, plan_mixing
from .losses import HEAD_LOSSES, LossWeights, RegressorLoss, batch_metrics
from .networks import ARCHS, Regressor, RegressorConfig, label_stats
from .weights import FORMAT, read_weight_file, save_regressor

__all__ = ["build_parser", "main", "train"]


class EpochBatches(Sampler):
    """Shuffled batches of one epoch, a function of (seed, epoch); starts at batch ``start``."""

    def __init__(self, n: int, batch: int, seed: int, epoch: int, start: int = 0, shuffle: bool = True, drop_last: bool = True):
        self.n, self.batch, self.seed, self.epoch, self.start = n, batch, seed, epoch, start
        self.shuffle, self.drop_last = shuffle, drop_last

    def batches(self) -> list:
        order = np.random.default_rng([self.seed, 7919, self.epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        if self.drop_last and self.n >= self.batch:
            k = self.n // self.batch
        else:
            k = math.ceil(self.n / self.batch)
        return [order[i * self.batch:(i + 1) * self.batch].tolist() for i in range(k)]

    def __iter__(self):
        return iter(self.batches()[self.start:])

    def __len__(self) -> int:
        return max(len(self.batches()) - self.start, 0)


#: validation scores ``--select`` can pick ``best.pt`` by (:func:`selection_score`)
SELECT_SCORES = ("nme_param", "nme_head", "mean")


def selection_score(metrics: dict, select: str) -> float:
    """The number ``best.pt`` minimises: ``metrics[select]``, or the mean of ``nme_param`` and
    ``nme_head`` for ``"mean"`` (both % of face size, :func:`regressors.losses.batch_metrics`)."""
    if select == "mean":
        return 0.5 * (float(metrics["nme_param"]) + float(metrics["nme_head"]))
    if select not in SELECT_SCORES:
        raise ValueError(f"select must be one of {SELECT_SCORES}, got {select!r}")
    return float(metrics[select])


def lr_at(step: int, total: int, base: float, warmup: int, schedule: str = "cosine") -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``base`` to ``base / 100``
    (``schedule="cosine"``) or ``base`` held (``"constant"``, for weight averaging: see
    :mod:`regressors.average`)."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    p = min((step - warmup) / max(total - warmup, 1), 1.0)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * p)))


def build_parser(p: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="python -m regressors.train", description=__doc__.split("\n")[0])
    p.add_argument("--labels", required=True, help="pseudo-label npz (regressors.data.save_labels)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, log.jsonl)")
    p.add_argument("--arch", choices=ARCHS, default="mobilenet", help="network (with --init: the weights' own)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (with --init: the weights' own)")
    p.add_argument("--depth", type=int, default=18, help="resnet depth (10, 18, 34; with --init: the weights' own)")
    p.add_argument("--model", default=None, help="morphable model name or path (default: ICT-FaceKit)")
    p.add_argument("--data-root", default=None, help="folder the label names are relative to (default ../shared/data)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=300, help="warm-up steps")
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="learning rate after the warm-up: cosine decay to 1 %%, or constant (for weight averaging)")
    p.add_argument("--snapshots", action="store_true",
                   help="also keep the weights of every validation as OUT/snap_STEP.pt (for python -m regressors.average)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2,
                   help="torch intra-op threads; use 1 when anything else runs on the 2 cores (2 threads are then up to 10x slower)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (0 or 1 on 2 cores)")
    p.add_argument("--val-every", type=int, default=0, help="also validate every N steps (0: only after each epoch)")
    p.add_argument("--val-batch", type=int, default=128)
    p.add_argument("--max-steps", type=int, default=0, help="stop after N optimiser steps in total (0: no limit)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N train and N val rows (smoke runs)")
    p.add_argument("--val-limit", type=int, default=0, help="use only N val rows, evenly spread (faster validation)")
    p.add_argument("--time-limit", type=float, default=0.0, help="stop (and checkpoint) after this many minutes")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="train for about this many minutes: the number of steps (and the cosine schedule) is fitted to the "
                        "measured speed, re-estimated every 50 steps; --epochs is then ignored")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt; when there is none (a new machine), start as --init says, "
                        "or from the shipped weights (regressors/weights/default.pt) without --init")
    p.add_argument("--init", default=None, metavar="WEIGHTS",
                   help="start from these weights (network, config and label statistics; "
                        "fresh optimiser and schedule), e.g. regressors/weights/default.pt")
    p.add_argument("--input-size", type=int, default=0,
                   help="the network's working resolution (crops are resized to it inside the network; 0 = the crop size)")
    p.add_argument("--teacher", default=None, metavar="WEIGHTS",
                   help="distil from this regressor (e.g. regressors/weights/default.pt): its outputs on the same "
                        "augmented crops become extra targets (loss term 'distill', weight --w-distill)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--n-vertices", type=int, default=500, help="random vertices of the VDC term")
    for k, v in LossWeights().to_dict().items():
        p.add_argument(f"--w-{k.replace('_', '-')}", type=float, default=v, help=f"loss weight of '{k}'")
    p.add_argument("--select", choices=SELECT_SCORES, default="nme_param",
                   help="validation score that picks best.pt: the parameter path's NME, the landmark head's, or their mean")
    p.add_argument("--head-loss", choices=HEAD_LOSSES, default="sl1",
                   help="loss of the landmark head terms: smooth L1 (beta 1 px) or Wing (regressors.losses.wing)")
    p.add_argument("--wing-width", type=float, default=10.0, help="Wing loss: width w, px of the crop (--head-loss wing)")
    p.add_argument("--wing-eps", type=float, default=2.0, help="Wing loss: curvature epsilon, px (--head-loss wing)")
    p.add_argument("--drop-target", action="append", default=[], metavar="SEL:POINTS",
                   help="also give these annotated points no weight in the annotation terms (head_target, lm); "
                        "SEL a set name (ytf68, aflw21, 300w) or contour=2d, POINTS 'all' or iBUG ids like 8 or "
                        "31,35 or 0-16; repeatable; the silhouette jaw of contour=2d rows is always dropped")
    p.add_argument("--drop-label", action="append", default=[], metavar="SEL:POINTS",
                   help="give these label points no weight in the landmark head's label term (head); SEL as "
                        "--drop-target, POINTS as there or 'unannotated' (the row's points without an annotation, "
                        "whose label comes only from the fit's priors); repeatable")
    p.add_argument("--drop-label-below-yaw", type=float, default=None, metavar="DEG",
                   help="--drop-label applies only to rows whose label |yaw| is below DEG degrees")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    add_mixing_arguments(p)
    return p


def _log(path: Path, rec: dict):
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


@torch.no_grad()
def validate(reg: Regressor, model, loader) -> dict:
    """Mean validation metrics over a loader (and per data set)."""
    reg.eval()
    acc: dict = {}
    sets = []
    for batch in loader:
        out = reg(batch["image"])
        m = batch_metrics(model, out, batch)
        for k, v in m.items():
            acc.setdefault(k, []).append(v)
        sets.append(batch["set_id"])
    reg.train()
    if not acc:
        return {}
    cat = {k: torch.cat(v) for k, v in acc.items()}
    sid = torch.cat(sets)
    res = {k: float(torch.nanmean(v)) for k, v in cat.items()}
    for i, name in enumerate(FaceLabelDataset.SETS):
        on = sid == i
        if on.any():
            res[f"nme_param_{name}"] = float(cat["nme_param"][on].mean())
            res[f"yaw_err_{name}"] = float(cat["yaw_err"][on].mean())
    res["n"] = int(len(sid))
    return res


def _param_groups(reg: Regressor, wd: float):
    decay, no = [], []
    for n, p in reg.named_parameters():
        (no if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no, "weight_decay": 0.0}]


def _shipped_for(arch: str, width: float) -> Optional[str]:
    """The shipped weight file of this network (the default or the fast one), or None."""
    from .weights import DEFAULT_WEIGHTS, FAST_WEIGHTS

    for path in (DEFAULT_WEIGHTS, FAST_WEIGHTS):
        if Path(path).is_file():
            c = dict(read_weight_file(Path(path))["config"])
            if c.get("arch") == arch and float(c.get("width", 1.0)) == float(width):
                return str(path)
    return None


def train(args, model=None) -> dict:
    """Run training as configured by the parsed ``args``; returns the final validation metrics.

    ``model`` (a :class:`morphable.model.MorphableModel`) overrides ``args.model``.
    """
    import cv2

    torch.set_num_threads(max(int(args.threads), 1))
    cv2.setNumThreads(1)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "log.jsonl"
    labels = load_labels(args.labels)
    model = model if model is not None else model_for_labels(args.model, labels)
    labels = to_frame(labels, model.info.frame_rotation)  # rotations in the frame the model is loaded in
    lm_ids = model.landmarks.detach().cpu().long()  # the landmark definition the weights are trained with
    Ks, Ke = labels["shape"].shape[1], labels["expr"].shape[1]
    if (Ks, Ke) != (model.n_shape, model.n_expr):
        raise SystemExit(f"{args.labels}: labels have Ks={Ks}, Ke={Ke} but the model {model.name} has "
                         f"Ks={model.n_shape}, Ke={model.n_expr}")
    ok = labels["ok"].astype(bool) & np.isfinite(labels["shape"]).all(1) & np.isfinite(labels["landmarks3d"]).all((1, 2))
    tr_idx = np.flatnonzero(ok & (labels["split"] == "train"))
    va_idx = np.flatnonzero(ok & (labels["split"] == "val"))
    if args.limit:
        tr_idx, va_idx = tr_idx[:args.limit], va_idx[:args.limit]
    if args.val_limit and len(va_idx) > args.val_limit:
        va_idx = va_idx[np.linspace(0, len(va_idx) - 1, args.val_limit).round().astype(int)]
    if len(tr_idx) < 2:
        raise SystemExit(f"{args.labels}: fewer than 2 usable training rows (ok & split=='train')")
    tr, va = select_labels(labels, tr_idx), select_labels(labels, va_idx)
    plan = plan_mixing(tr, args)  # --extra-labels rows appended, --mix / --balance-yaw sampling
    tr = plan.labels

    def make_sampler(epoch: int, start: int = 0):
        if plan.active:
            return plan.sampler(args.batch, args.seed, epoch, start)
        return EpochBatches(len(tr_idx), args.batch, args.seed, epoch, start=start)

    names = model.info.expression_names
    sets = np.unique(np.asarray(tr["set"]).astype(str))
    try:
        drop = parse_drop_targets(args.drop_target, sets=sets)
    except ValueError as e:
        raise SystemExit(f"--drop-target: {e}") from None
    try:
        drop_labels = parse_drop_labels(args.drop_label, args.drop_label_below_yaw, sets=sets)
    except ValueError as e:
        raise SystemExit(f"--drop-label: {e}") from None
    kw = dict(data_root=args.data_root, expression_names=names, drop_targets=drop)
    ds_tr = FaceLabelDataset(tr, augment=not args.no_augment, seed=args.seed, drop_labels=drop_labels, **kw)
    ds_va = FaceLabelDataset(va, augment=False, **kw)

    cfg = RegressorConfig(arch=args.arch, width=args.width, n_shape=Ks, n_expr=Ke, model_name=model.name, depth=args.depth,
                          input_size=args.input_size)
    ckpt_path = out_dir / "last.pt"
    ck = None
    if args.resume and not ckpt_path.is_file():
        args.init = args.init or _shipped_for(args.arch, args.width)
        print(f"--resume: no {ckpt_path}; starting from {args.init or 'scratch (no shipped weights of this network)'}",
              file=sys.stderr)
    elif args.resume:
        ck = read_weight_file(ckpt_path)
        if "optimizer" not in ck:
            raise SystemExit(f"{ckpt_path}: not a training checkpoint (no optimiser state)")
        cfg = RegressorConfig.from_dict(dict(ck["config"]))
    init = None
    if args.init and ck is None:
        init = read_weight_file(Path(args.init))
        cfg = RegressorConfig.from_dict({**dict(init["config"]), "model_name": model.name,  # the model trained for now
                                         **({"input_size": args.input_size} if args.input_size else {})})
        if (cfg.n_shape, cfg.n_expr) != (Ks, Ke):
            raise SystemExit(f"--init {args.init}: weights are for {cfg.n_shape} shape / {cfg.n_expr} expression "
                             f"coefficients, the model has {Ks} / {Ke}")
    reg = Regressor(cfg, model.expr_lower, model.expr_upper)
    reg.set_frame(model.info.frame_rotation)  # a new network learns the labels' (= the model's) frame
    if init is not None:
        reg.load_state_dict(init["state_dict"])
        reg.set_frame(np.asarray(init.get("frame_rotation", torch.eye(3, dtype=torch.float64))), model.info.frame_rotation)
    elif ck is None:
        _, s_c, t_c, lm_c = crop_labels(tr)
        from morphable.geometry import rotvec_to_rotmat

        R = rotvec_to_rotmat(torch.as_tensor(tr["rotvec"], dtype=torch.float64))
        reg.set_stats(label_stats(tr["shape"], tr["expr"], R, s_c, t_c, lm_c, model.expr_lower, model.expr_upper))
    else:
        reg.load_state_dict(ck["state_dict"])
        reg.set_frame(np.asarray(ck.get("frame_rotation", torch.eye(3, dtype=torch.float64))), model.info.frame_rotation)
    teacher = None
    if args.teacher:
        from .weights import load_regressor

        teacher = load_regressor(args.teacher, model=model).eval()
        for q in teacher.parameters():
            q.requires_grad_(False)
        if teacher.cfg.crop_size != cfg.crop_size:
            raise SystemExit(f"--teacher {args.teacher}: crops of {teacher.cfg.crop_size} px, the student's are {cfg.crop_size}")
    opt = torch.optim.AdamW(_param_groups(reg, args.weight_decay), lr=args.lr)
    crit = RegressorLoss(model, args.n_vertices, LossWeights(**{k: getattr(args, f"w_{k}") for k in LossWeights().to_dict()}),
                         head_loss=args.head_loss, wing_width=args.wing_width, wing_eps=args.wing_eps)

    steps_per_epoch = len(make_sampler(0))
    total = args.epochs * steps_per_epoch
    if args.max_steps:
        total = min(total, args.max_steps)
    budget = 60.0 * args.time_budget
    budget_run = bool(budget)  # epochs unbounded; stays true when a resumed run drops its budget below
    if budget:
        total = 10 ** 9 if not args.max_steps else args.max_steps  # sized after the first steps
        warmup = max(args.warmup, 1)
    else:
        warmup = min(args.warmup, max(total // 10, 1))
    epoch, epoch_step, step, best = 0, 0, 0, math.inf
    if ck is not None:
        opt.load_state_dict(ck["optimizer"])
        epoch, epoch_step, step = int(ck["epoch"]), int(ck["epoch_step"]), int(ck["step"])
        # a checkpoint's best is a score of its own --select (older files: nme_param); another score starts afresh
        best = float(ck.get("best", math.inf)) if ck.get("select", "nme_param") == args.select else math.inf
        torch.set_rng_state(ck["rng_torch"])
        if budget:  # a resumed budget run continues the schedule it sized
            total, budget = int(ck["total_steps"]), 0.0
        _log(log, {"type": "resume", "epoch": epoch, "epoch_step": epoch_step, "step": step})
    else:
        # "network": the config actually built (with --init, the weights' own, not --arch/--width/--depth)
        (out_dir / "args.json").write_text(json.dumps({**vars(args), "network": cfg.to_dict()}, indent=1))
        _log(log, {"type": "start", "n_train": len(tr_idx), "n_extra": plan.n_extra, "n_val": len(va_idx),
                   "steps_per_epoch": steps_per_epoch, "total_steps": total, "params": reg.n_params, "config": cfg.to_dict()})

    va_loader = DataLoader(ds_va, batch_size=args.val_batch, shuffle=False, num_workers=args.workers)
    t_start = time.time()
    step0 = step
    last_metrics: dict = {}
    val_time = [0.0, 0]  # seconds spent validating, validations

    def checkpoint():
        save_regressor(reg, ckpt_path, last_metrics, landmark_ids=lm_ids, optimizer=opt.state_dict(), epoch=epoch, epoch_step=epoch_step,
                       step=step, best=best, select=args.select, rng_torch=torch.get_rng_state(), total_steps=total)

    last_val_step = -1

    def run_val():
        nonlocal best, last_metrics, last_val_step
        if len(va_idx) == 0 or last_val_step == step:
            return
        last_val_step = step
        tv = time.time()
        m = validate(reg, model, va_loader)
        val_time[0] += time.time() - tv
        val_time[1] += 1
        last_metrics = m
        rec = {"type": "val", "epoch": epoch, "step": step, "time_s": round(time.time() - t_start, 1), **m}
        _log(log, rec)
        if args.snapshots:
            save_regressor(reg, out_dir / f"snap_{step:07d}.pt", {**m, "epoch": epoch, "step": step}, landmark_ids=lm_ids)
        score = selection_score(m, args.select)
        if score < best:
            best = score
            save_regressor(reg, out_dir / "best.pt", {**m, "epoch": epoch, "step": step}, landmark_ids=lm_ids)
        print(f"[val] epoch {epoch} step {step}: nme_param {m['nme_param']:.3f} nme_head {m['nme_head']:.3f} "
              f"yaw_err {m['yaw_err']:.2f} deg (best {best:.3f})", file=sys.stderr)

    def fit_budget() -> int:
        # steps that fit in the budget at the speed so far; one validation per epoch and a final one are reserved
        el = time.time() - t_start
        per_step = (el - val_time[0]) / max(step - step0, 1)
        per_val = val_time[0] / val_time[1] if val_time[1] else 0.02 * len(va_idx)
        left = budget - el - per_val
        n = left / (per_step + per_val / steps_per_epoch)
        est = step + max(int(n), 1)
        return min(est, args.max_steps) if args.max_steps else est

    stop = step >= total
    reg.train()
    n_epochs = 10 ** 9 if budget_run else args.epochs
    while not stop and epoch < n_epochs:
        ds_tr.set_epoch(epoch)
        sampler = make_sampler(epoch, epoch_step)
        loader = DataLoader(ds_tr, batch_sampler=sampler, num_workers=args.workers)
        bar = None
        if not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(total=steps_per_epoch, initial=epoch_step, desc=f"epoch {epoch + 1}/{'?' if budget_run else args.epochs}", file=sys.stderr,
                       dynamic_ncols=True, mininterval=2.0)
        sums: dict = {}
        n_img, n_steps, t0, v0 = 0, 0, time.time(), val_time[0]
        for batch in loader:
            lr = lr_at(step, total, args.lr, warmup, args.schedule)
            for g in opt.param_groups:
                g["lr"] = lr
            if teacher is not None:
                with torch.no_grad():
                    batch["teacher"] = teacher(batch["image"])
            loss, terms = crit(reg, batch["image"], batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(reg.parameters(), 10.0)
            opt.step()
            step += 1
            epoch_step += 1
            n_img += len(batch["image"])
            n_steps += 1
            for k, v in {"loss": float(loss.detach()), **terms}.items():
                sums[k] = sums.get(k, 0.0) + v
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lm=f"{terms['lm']:.2f}", lr=f"{lr:.1e}", refresh=False)
            if args.val_every and step % args.val_every == 0 and epoch_step < steps_per_epoch:
                run_val()
                checkpoint()
            if budget and (step - step0 == 20 or (step - step0) % 50 == 0):
                total = fit_budget()
            el = time.time() - t_start
            timeout = (args.time_limit and el > 60 * args.time_limit) or (budget and el > budget)
            if step >= total or timeout:
                stop = True
                break
        if bar is not None:
            bar.close()
        dt = time.time() - t0 - (val_time[0] - v0)
        nb = max(n_steps, 1)
        _log(log, {"type": "train", "epoch": epoch, "step": step, "total_steps": total, "img_per_s": round(n_img / max(dt, 1e-9), 1),
                   **{k: v / nb for k, v in sums.items()}})
        if epoch_step >= steps_per_epoch:
            epoch, epoch_step = epoch + 1, 0
        run_val()
        checkpoint()
    if not last_metrics and len(va_idx):
        run_val()
    if len(va_idx) == 0:  # nothing to select on: the last weights are the best we know
        save_regressor(reg, out_dir / "best.pt", {"epoch": epoch, "step": step}, landmark_ids=lm_ids)
    checkpoint()
    return last_metrics


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
