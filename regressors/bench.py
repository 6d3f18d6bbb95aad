r"""Speed of the regressors on this machine (not a test): ``python -m regressors.bench [--labels FILE]``.

Prints the two shipped networks (main, fast preset) beside 3DDFA_V2's MobileNetV1 x0.5 at batch 1 on
one thread on onnxruntime (:func:`preset_latency`, a table), then JSON lines:

* forward latency per face (torch eager, eval, no grad) at batch 1 and 64, both networks, 1 and 2
  threads; onnxruntime (float and dynamic int8) for the MobileNet at batch 1;
* training-step throughput (images/s) of the MobileNet at batch 64 with 2 threads: the optimiser step
  alone on a fixed batch, and, with ``--labels``, end to end with the real data pipeline
  (DataLoader with 0 and 1 workers).

Each timing is the median and the minimum over repeats after warm-up, plus the process CPU time per
call (``cpu``). On a shared machine the minimum is the better wall-clock estimate, and at 1 thread
the CPU time is what an idle machine would take. The load average is printed with each line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .networks import Regressor, RegressorConfig


def _load() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def _time(fn, repeats: int, warmup: int = 2):
    """(median wall s, min wall s, mean process CPU s) per call."""
    for _ in range(warmup):
        fn()
    ts = []
    c0 = time.process_time()
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts), (time.process_time() - c0) / repeats


def _emit(rec: dict):
    rec["load1"] = _load()
    print(json.dumps(rec), flush=True)


def _fake_batch(B: int, Ks: int, Ke: int):
    return {"image": torch.randn(B, 3, 120, 120), "visible": torch.ones(B, 68), "target": torch.rand(B, 68, 2) * 120,
            "shape": torch.zeros(B, Ks), "expr": torch.zeros(B, Ke), "rotmat": torch.eye(3).expand(B, 3, 3).clone(),
            "scale": torch.full((B,), 0.6), "translation": torch.full((B, 2), 60.0),
            "landmarks3d": torch.rand(B, 68, 2) * 120, "shape_w": torch.ones(B), "expr_w": torch.ones(B)}


def _shipped_vs_baselines(model, repeats: int, onnx: bool) -> None:
    """Per-face latency of the shipped network beside same-size baselines, in one run, 1 thread:
    the same ResNet layout and width without CBAM (what the attention costs), and the MobileNetV2
    at width 0.5 (about the size of 3DDFA_V2's MobileNet x0.5 peer, 0.85 M parameters)."""
    from .networks import ResNetCBAM
    from .weights import load_regressor

    shipped = load_regressor(model=model)
    cfg = shipped.cfg
    plain = Regressor(cfg, model.expr_lower, model.expr_upper).eval()
    plain.backbone = ResNetCBAM(cfg.depth, cfg.width, attention=False).to(memory_format=torch.channels_last).eval()
    mb = Regressor(RegressorConfig(arch="mobilenet", width=0.5, n_shape=model.n_shape, n_expr=model.n_expr),
                   model.expr_lower, model.expr_upper).eval()
    torch.set_num_threads(1)
    rows = [("shipped " + f"{cfg.arch} w{cfg.width:g} + CBAM", shipped), (f"{cfg.arch} w{cfg.width:g}, no CBAM", plain),
            ("mobilenet w0.5", mb)]
    base = None
    for name, reg in rows:
        for B in (1, 64):
            x = torch.randn(B, 3, 120, 120)
            with torch.no_grad():
                med, mn, cpu = _time(lambda: reg(x), repeats if B == 1 else max(repeats // 4, 3))
            r = {"what": "shipped_vs_baseline_torch", "net": name, "params_M": round(reg.n_params / 1e6, 2), "threads": 1,
                 "batch": B, "ms_per_face_median": round(1e3 * med / B, 3), "ms_per_face_min": round(1e3 * mn / B, 3)}
            if B == 1:
                base = r["ms_per_face_min"] if base is None else base
                r["min_vs_shipped"] = round(r["ms_per_face_min"] / base, 3)
            _emit(r)
    if not onnx:
        return
    try:
        from .weights import OnnxRegressor, export_onnx
    except ImportError:
        return
    with tempfile.TemporaryDirectory() as d:
        for name, reg in rows:
            p = export_onnx(reg, Path(d) / "m.onnx")
            o = OnnxRegressor(p, threads=1)
            crops = np.zeros((1, 120, 120, 3), np.uint8)
            med, mn, cpu = _time(lambda: o.predict(crops), repeats)
            _emit({"what": "shipped_vs_baseline_onnx", "net": name, "threads": 1, "batch": 1,
                   "ms_per_face_median": round(1e3 * med, 3), "ms_per_face_min": round(1e3 * mn, 3)})


def preset_latency(repeats: int = 200, model=None) -> list[dict]:
    """Per-face latency at batch 1 on one thread of the two shipped networks (the main one and the
    fast preset's, each as ``fit`` runs it: the shipped int8 file when there is one, else the float
    export; a missing weight file is timed with random weights of its config, and says so) beside
    3DDFA_V2's MobileNetV1 x0.5 (:func:`regressors.peers.mobilenet_v1_3ddfa`, random weights, float),
    all on onnxruntime, network forward only (input at the network's working resolution), in blocks
    of 25 consecutive calls per network (as one network serves a run), the blocks interleaved with
    alternating order so all three see the same machine load. Rows: name, parameters, median and
    minimum ms, ratio of medians to the peer."""
    import onnxruntime as ort

    from morphable.registry import load_model

    from .peers import mobilenet_v1_3ddfa
    from .weights import DEFAULT_WEIGHTS, FAST_WEIGHTS, _ExportWrapper, _int8_for, load_regressor

    model = model or load_model()
    nets = []
    for name, path, cfg in (("main (default.pt)", DEFAULT_WEIGHTS, None),
                            ("fast preset (fast.pt)", FAST_WEIGHTS, RegressorConfig(arch="resnet", width=0.5, input_size=96))):
        if path.is_file():
            reg, note = load_regressor(path, model=model), ""
        else:
            reg, note = Regressor(RegressorConfig(**{**cfg.to_dict(), "n_shape": model.n_shape, "n_expr": model.n_expr})), " [random weights: file missing]"
        q = _int8_for(reg) if path.is_file() else None
        S = reg.cfg.input_size or reg.cfg.crop_size
        nets.append((name + note + (", int8" if q else ", float"), q or _ExportWrapper(reg.eval()), reg.n_params, S))
    peer = mobilenet_v1_3ddfa()
    nets.append(("3DDFA_V2 MobileNetV1 x0.5, 62 outputs (peer)", peer, sum(p.numel() for p in peer.parameters()), 120))
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    sessions = []
    with tempfile.TemporaryDirectory() as d:
        for i, (name, net, n, S) in enumerate(nets):
            p = str(net) if isinstance(net, Path) else str(Path(d) / f"n{i}.onnx")
            if not isinstance(net, Path):
                with torch.no_grad():
                    torch.onnx.export(net, (torch.zeros(1, 3, S, S),), p, dynamo=False, opset_version=17, input_names=["crops"])
            sessions.append(ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]))
    xs = [np.random.default_rng(0).standard_normal((1, 3, S, S)).astype(np.float32) for _, _, _, S in nets]
    times: list = [[] for _ in nets]
    block = 25  # calls in a row per network (warm caches, as one network serves a run), blocks interleaved
    order = list(range(len(nets)))
    for r in range(max(repeats // block, 1)):
        for k in (order if r % 2 == 0 else order[::-1]):
            s, x = sessions[k], xs[k]
            s.run(None, {"crops": x})  # first call of the block: not timed
            for _ in range(block):
                t = time.perf_counter()
                s.run(None, {"crops": x})
                times[k].append(time.perf_counter() - t)
    peer_med = statistics.median(times[-1])
    return [{"net": name, "params_M": round(n / 1e6, 2), "crop": S, "backend": "onnxruntime", "threads": 1, "batch": 1,
             "ms_median": round(1e3 * statistics.median(t), 3), "ms_min": round(1e3 * min(t), 3),
             "vs_peer": round(statistics.median(t) / peer_med, 2)}
            for (name, _, n, S), t in zip(nets, times)]


def format_preset_latency(rows: list[dict]) -> str:
    lines = ["| network | params (M) | ms / face, median | min | x peer |", "|---|---|---|---|---|"]
    lines += [f"| {r['net']} | {r['params_M']:.2f} | {r['ms_median']:.3f} | {r['ms_min']:.3f} | {r['vs_peer']:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m regressors.bench")
    ap.add_argument("--labels", default=None, help="pseudo-label file for the end-to-end training measurement")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-onnx", action="store_true")
    ap.add_argument("--skip-end-to-end", action="store_true")
    ap.add_argument("--skip-shipped", action="store_true", help="skip the shipped weights vs same-size baselines")
    args = ap.parse_args(argv)
    import cv2

    from morphable.registry import load_model

    cv2.setNumThreads(1)  # as in training

    model = load_model()
    Ks, Ke = model.n_shape, model.n_expr
    torch.set_num_threads(1)
    if not args.skip_onnx:
        rows = preset_latency(args.repeats * 10, model)
        print("# batch 1, 1 thread, onnxruntime, alternating rounds (what fit runs)\n" + format_preset_latency(rows), flush=True)
        for r in rows:
            _emit({"what": "presets_vs_peer", **r})
    if not args.skip_shipped:
        _shipped_vs_baselines(model, args.repeats, not args.skip_onnx)
    nets = {a: Regressor(RegressorConfig(arch=a, n_shape=Ks, n_expr=Ke), model.expr_lower, model.expr_upper).eval()
            for a in ("mobilenet", "resnet")}
    if not args.skip_forward:
        for arch, reg in nets.items():
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for B in (1, 64):
                    x = torch.randn(B, 3, 120, 120)
                    with torch.no_grad():
                        med, mn, cpu = _time(lambda: reg(x), args.repeats if B == 1 else max(args.repeats // 4, 3))
                    _emit({"what": "forward_torch", "arch": arch, "params_M": round(reg.n_params / 1e6, 2), "threads": threads,
                           "batch": B, "ms_per_face_median": round(1e3 * med / B, 3), "ms_per_face_min": round(1e3 * mn / B, 3),
                           "cpu_ms_per_face": round(1e3 * cpu / B, 3)})
        try:
            if args.skip_onnx:
                raise ImportError
            from .weights import OnnxRegressor, export_onnx

            with tempfile.TemporaryDirectory() as d:
                p = export_onnx(nets["mobilenet"], Path(d) / "m.onnx")
                for quant in (False, True):
                    for threads in (1, 2):
                        o = OnnxRegressor(p, threads=threads, quantize=quant)
                        for B in (1, 64):
                            crops = np.zeros((B, 120, 120, 3), np.uint8)
                            med, mn, cpu = _time(lambda: o.predict(crops), args.repeats if B == 1 else max(args.repeats // 4, 3))
                            _emit({"what": "forward_onnx" + ("_int8" if quant else ""), "arch": "mobilenet", "threads": threads,
                                   "batch": B, "ms_per_face_median": round(1e3 * med / B, 3),
                                   "ms_per_face_min": round(1e3 * mn / B, 3), "cpu_ms_per_face": round(1e3 * cpu / B, 3)})
        except ImportError:
            pass
    if args.skip_train:
        return 0
    from .losses import RegressorLoss

    reg = Regressor(RegressorConfig(n_shape=Ks, n_expr=Ke), model.expr_lower, model.expr_upper).train()
    crit = RegressorLoss(model)
    opt = torch.optim.AdamW(reg.parameters(), 1e-3)
    batch = _fake_batch(64, Ks, Ke)

    def step(b):
        loss, _ = crit(reg, b["image"], b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for threads in (1, 2):
        torch.set_num_threads(threads)
        med, mn, cpu = _time(lambda: step(batch), max(args.repeats // 4, 5))
        _emit({"what": "train_step_compute", "arch": "mobilenet", "threads": threads, "batch": 64,
               "img_per_s_median": round(64 / med, 1), "img_per_s_max": round(64 / mn, 1), "cpu_s_per_step": round(cpu, 3)})
    torch.set_num_threads(2)
    if args.labels:
        from torch.utils.data import DataLoader

        from .data import FaceLabelDataset, load_labels, select_labels
        from .train import EpochBatches

        lab = load_labels(args.labels)
        lab = select_labels(lab, np.flatnonzero(lab["ok"] & (lab["split"] == "train")))
        ds = FaceLabelDataset(lab, expression_names=model.info.expression_names, augment=True)
        t, c0 = time.perf_counter(), time.process_time()
        n = 256
        for i in range(n):
            ds[i]
        _emit({"what": "data_item", "ms_per_item": round(1e3 * (time.perf_counter() - t) / n, 3),
               "cpu_ms_per_item": round(1e3 * (time.process_time() - c0) / n, 3)})
        for threads, workers in (() if args.skip_end_to_end else ((1, 0), (1, 1), (2, 0), (2, 1))):
            torch.set_num_threads(threads)
            loader = DataLoader(ds, batch_sampler=EpochBatches(len(ds), 64, 0, 10 * threads + workers), num_workers=workers)
            it = iter(loader)
            step(next(it))
            k, t = 0, time.perf_counter()
            for b in it:
                step(b)
                k += 1
                if k == 10:
                    break
            dt = time.perf_counter() - t
            _emit({"what": "train_step_end_to_end", "arch": "mobilenet", "threads": threads, "batch": 64, "workers": workers,
                   "img_per_s": round(64 * k / dt, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
