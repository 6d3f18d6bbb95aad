"""Static int8 (QDQ) quantisation of a regressor for onnxruntime, calibrated on training crops, with
its validation NME and latency beside the float model in the same run.

    python -m regressors.quantize --labels LABELS.npz --weights W.pt --out W.int8.onnx [--calib 256]

The convolutions are quantised (weights int8 per channel within +-64, i.e. 7 bits, activations
uint8, scales from ``--calib`` crops of the label file's *training* split, evenly spaced); the linear
heads and the decoding (de-normalisation, 6D rotation, sigmoid expression range) stay float, so the
outputs keep sub-pixel resolution. 7-bit weights because onnxruntime's U8S8 kernels can saturate on
x86 CPUs without VNNI: with full-range signed weights, the r22 twin that scored 3.328 % on the
validation pipeline on session 21's machine scored 3.439 % on an AVX2-only one (float 3.323 %).
Unsigned weights (U8U8) avoid it too, but the signed kernels are faster: on that machine the 7-bit
twin scores 3.332 % against U8U8's 3.330 % and takes 13.0-13.3 ms against 17.2-17.5 ms at batch 6
on one thread (``--recipe``, :data:`RECIPES`; model card, sessions 22 and 23). The file records the SHA-256
of the weight file it was made from and the model-frame correction baked into it:
:func:`regressors.weights.onnx_runtime_for` uses it only when both match the loaded regressor, else
it exports the float model as before. Whether int8
ships is decided on the printed numbers (validation split, never dev): it must be faster and keep
the validation NME.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["quantize_static_onnx", "file_sha256", "INT8_META"]

#: ONNX metadata keys of an int8 file: the source weights' SHA-256 and the frame correction (JSON)
INT8_META = ("morphable_source_sha256", "morphable_frame_correction")


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


#: int8 recipes: (weight type, reduce_range). onnxruntime's U8S8 kernels on x86 CPUs without VNNI
#: (AVX2 only) can saturate the 16-bit pair sums, which costs accuracy there; 7-bit weights
#: (``reduce_range``) or unsigned weights (U8U8) avoid it.
RECIPES = {"u8s8": ("QInt8", False), "u8s8-7bit": ("QInt8", True), "u8u8": ("QUInt8", False)}


def quantize_static_onnx(regressor, weights_path, calib: np.ndarray, out, recipe: str = "u8s8-7bit") -> Path:
    """Export ``regressor`` (float), quantise its convolutions statically on ``calib`` (N, 3, S, S)
    normalised float32 crops with ``recipe`` (:data:`RECIPES`) and write ``out`` with the provenance
    metadata (:data:`INT8_META`)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .weights import export_onnx

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"crops": c[None]} for c in calib])

        def get_next(self):
            return next(self.it, None)

    out = Path(out)
    with tempfile.TemporaryDirectory() as d:
        f32 = export_onnx(regressor, Path(d) / "f32.onnx")
        pre = Path(d) / "pre.onnx"
        quant_pre_process(str(f32), str(pre))
        wtype, reduce_range = RECIPES[recipe]
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=getattr(QuantType, wtype), per_channel=True, reduce_range=reduce_range,
                        op_types_to_quantize=["Conv"])
    m = onnx.load(str(out))
    meta = {INT8_META[0]: file_sha256(weights_path),
            INT8_META[1]: json.dumps(np.round(regressor.frame_correction.detach().cpu().double().numpy(), 9).tolist())}
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(m, str(out))
    return out


def _latency(predict, S: int, repeats: int = 200) -> float:
    crops = np.random.default_rng(0).integers(0, 256, (1, S, S, 3), dtype=np.uint8)
    for _ in range(10):
        predict(crops)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        predict(crops)
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m regressors.quantize", description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", required=True, help="pseudo-label npz: training split for calibration, val split to score")
    ap.add_argument("--weights", required=True, help="regressor weight file (.pt)")
    ap.add_argument("--out", required=True, help="int8 ONNX file to write")
    ap.add_argument("--calib", type=int, default=256, help="calibration crops (default 256)")
    ap.add_argument("--report", default=None, help="also write the printed numbers as JSON here")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="u8s8-7bit",
                    help="weight type and range (RECIPES): u8s8-7bit (the default: signed weights within "
                         "+-64, which do not saturate on x86 CPUs without VNNI), u8u8 (unsigned: as accurate, "
                         "slower), u8s8 (full-range signed weights: can saturate without VNNI)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from torch.utils.data import DataLoader

    from .data import FaceLabelDataset, load_labels, model_for_labels, select_labels, to_frame
    from .validate import score_predictor
    from .weights import OnnxRegressor, load_regressor

    labels = load_labels(a.labels)
    model = model_for_labels(None, labels)
    labels = to_frame(labels, model.info.frame_rotation)
    ok = labels["ok"].astype(bool)
    tr = np.flatnonzero(ok & (labels["split"] == "train"))
    tr = tr[np.linspace(0, len(tr) - 1, min(a.calib, len(tr))).round().astype(int)]
    ds = FaceLabelDataset(select_labels(labels, tr), augment=False, expression_names=model.info.expression_names)
    calib = np.concatenate([b["image"].numpy() for b in DataLoader(ds, batch_size=64)]).astype(np.float32)
    reg = load_regressor(a.weights, model=model)
    n = reg.cfg.input_size
    if n and n != calib.shape[-1]:  # the file's input is the working resolution (regressors.weights.export_onnx)
        calib = torch.nn.functional.interpolate(torch.from_numpy(calib), size=(n, n), mode="bilinear",
                                                align_corners=False).numpy()
    out = quantize_static_onnx(reg, a.weights, calib, a.out, recipe=a.recipe)
    q = OnnxRegressor(out, threads=1, crop_size=reg.cfg.crop_size)
    va = select_labels(labels, np.flatnonzero(ok & (labels["split"] == "val")))
    res = {"weights": a.weights, "int8": str(out), "recipe": a.recipe, "calibration_crops": len(calib)}
    def q_forward(x):  # the val crops are at the crop size: to the working resolution first, as Regressor.raw does
        if n and n != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(n, n), mode="bilinear", align_corners=False)
        return q.forward_normalized(x)

    for name, fn in (("float (torch)", lambda x: reg(x)), ("int8 (onnxruntime)", q_forward)):
        r = score_predictor(fn, va, model)
        res[name] = r
        print(f"{name}: val head NME {r['head']['balanced']:.3f} % (param {r['param']['balanced']:.3f}), "
              f"yaw err {r['yaw_err']['balanced']:.2f} deg")
    from .weights import onnx_runtime_for

    f32 = onnx_runtime_for(reg, threads=1, int8=False)
    S = reg.cfg.crop_size
    res["ms_batch1_1thread"] = {"float onnxruntime": _latency(f32.predict, S), "int8 onnxruntime": _latency(q.predict, S)}
    print(f"latency at batch 1, 1 thread: float {res['ms_batch1_1thread']['float onnxruntime']:.3f} ms, "
          f"int8 {res['ms_batch1_1thread']['int8 onnxruntime']:.3f} ms")
    if a.report:
        Path(a.report).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
