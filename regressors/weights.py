r"""Loading, saving and exporting regressor weights.

A weight file is a ``torch.save`` of a plain dict (no pickled classes)::

    {"format": "morphable-regressor", "version": 1,
     "config": RegressorConfig.to_dict(),   # arch, width, crop size, Ks, Ke, model name, ...
     "state_dict": {...},                   # backbone, heads and de-normalisation buffers
     "metrics": {...}}                      # optional (validation numbers)

Training checkpoints (``last.pt``) are the same dict plus optimiser/epoch/RNG entries, so both load
here. Files are always read with ``torch.load(..., weights_only=True)``: a file that needs
arbitrary unpickling is refused.
"""
from __future__ import annotations

import math
import os
import pickle
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from morphable.errors import InputError, WeightsError
from morphable.geometry import as_rotation_matrix

from .networks import ARCHS, PIXEL_MEAN, PIXEL_SCALE, Regressor, RegressorConfig, RegressorOutput, _ExportWrapper

__all__ = ["DEFAULT_WEIGHTS", "FAST_WEIGHTS", "FORMAT", "load_regressor", "save_regressor", "read_weight_file", "export_onnx",
           "OnnxRegressor", "quantize_onnx", "onnx_runtime_for"]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "default.pt"
FAST_WEIGHTS = Path(__file__).resolve().parent / "weights" / "fast.pt"
FORMAT = "morphable-regressor"
TRAIN_HELP = "train one with `python -m regressors.train --labels LABELS.npz --out runs/NAME` and copy runs/NAME/best.pt there"


def save_regressor(reg: Regressor, path, metrics: Optional[dict] = None, half: bool = False, **extra) -> None:
    """Write ``reg`` as a weight file (see the module docstring); ``extra`` adds plain entries.
    ``half``: the learned weights (parameters) in float16, half the file (the shipped files; they are
    read back into float32); buffers (normalisation statistics, BatchNorm statistics) stay float32."""
    params = {k for k, _ in reg.named_parameters()}
    sd = {k: (v.detach().cpu().half() if half and k in params and v.is_floating_point() else v.detach().cpu())
          for k, v in reg.state_dict().items()}
    d = {"format": FORMAT, "version": 1, "config": reg.cfg.to_dict(),
         "state_dict": sd, "metrics": dict(metrics or {}),
         "frame_rotation": torch.as_tensor(np.asarray(reg.raw_frame, dtype=np.float64)).reshape(3, 3)}
    d.update(extra)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(d, tmp)
    os.replace(tmp, path)  # never leave a half-written file under the real name


def read_weight_file(path) -> dict:
    """``torch.load(path, weights_only=True)`` with every failure turned into one WeightsError."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: regressor weight file not found; {TRAIN_HELP}")
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol warns before it is refused
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            d = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"{path}: refused to load: the file needs unsafe unpickling (weights_only=True: {msg[:200]}); "
                           "only plain tensor/dict weight files are accepted") from None
    except Exception as e:  # noqa: BLE001 - a corrupt pickle stream makes torch.load raise anything (TypeError...)
        raise WeightsError(f"{path}: not a readable weight file (truncated or corrupt: {type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT or "config" not in d or "state_dict" not in d:
        raise WeightsError(f"{path}: not a morphable regressor weight file (no '{FORMAT}' format tag with config and state_dict)")
    return d


def load_regressor(path=None, model=None, device="cpu", arch: Optional[str] = None) -> Regressor:
    """Load a regressor (eval mode) from a weight file.

    Args:
        path: weight file (default ``$MORPHABLE_WEIGHTS``, else ``regressors/weights/default.pt``).
        model: optional :class:`morphable.model.MorphableModel`; its Ks/Ke must match the weights'.
        device: torch device.
        arch: optional expected architecture (``mobilenet``/``resnet``); another one is an error.

    Raises:
        WeightsError: missing, truncated or unsafe file, another architecture, or Ks/Ke that do
            not match ``model`` (one message naming the problem).
    """
    path = Path(path) if path is not None else Path(os.environ.get("MORPHABLE_WEIGHTS") or DEFAULT_WEIGHTS)
    d = read_weight_file(path)
    try:
        cfg = RegressorConfig.from_dict(dict(d["config"]))
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{path}: malformed regressor config ({e})") from None
    if cfg.arch not in ARCHS:
        raise WeightsError(f"{path}: architecture {cfg.arch!r} is not one of {ARCHS}")
    _check_config(cfg, path)
    if arch is not None and arch != cfg.arch:
        raise WeightsError(f"{path}: holds a {cfg.arch!r} regressor, but {arch!r} was asked for")
    if model is not None and (model.n_shape, model.n_expr) != (cfg.n_shape, cfg.n_expr):
        raise WeightsError(
            f"{path}: trained for Ks={cfg.n_shape}, Ke={cfg.n_expr} ({cfg.model_name or 'unknown model'}), but the model "
            f"{model.name} has Ks={model.n_shape}, Ke={model.n_expr}; use weights trained for this model")
    try:
        reg = Regressor(cfg)
    except (ValueError, TypeError, RuntimeError) as e:
        raise WeightsError(f"{path}: cannot build the network of its config ({str(e).splitlines()[0][:200] if str(e) else e!r})") from None
    sd = d["state_dict"]
    try:
        reg.load_state_dict(sd, strict=True)
    except (RuntimeError, TypeError, KeyError, AttributeError) as e:
        first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise WeightsError(f"{path}: weights do not fit the {cfg.arch!r} network of its config (other architecture "
                           f"or width?): {first}") from None
    reg.source_path = path.resolve()  # the weight file (onnx_runtime_for looks for its int8 twin beside it)
    reg.landmark_ids = None  # the landmark definition the head was trained with (None: the model file's own)
    if d.get("landmark_ids") is not None:
        ids = torch.as_tensor(d["landmark_ids"]).reshape(-1)
        if ids.numel() != 68 or ids.is_floating_point() or int(ids.min()) < 0:
            raise WeightsError(f"{path}: landmark_ids must be 68 non-negative vertex ids, got {tuple(ids.shape)}")
        if model is not None and int(ids.max()) >= model.n_vertices:
            raise WeightsError(f"{path}: landmark_ids reach vertex {int(ids.max())} but the model {model.name} has "
                               f"{model.n_vertices} vertices; use weights trained for this model")
        reg.landmark_ids = ids.long()
    try:  # files without it were trained in the model file's own frame (identity)
        raw = as_rotation_matrix(d.get("frame_rotation", torch.eye(3, dtype=torch.float64)))
    except ValueError as e:
        raise WeightsError(f"{path}: frame_rotation is {e}; re-save the weights with regressors.weights.save_regressor") from None
    reg.set_frame(raw, getattr(getattr(model, "info", None), "frame_rotation", None))
    for k, v in reg.state_dict().items():  # the zip format has no checksum: a flipped bit can make NaN/inf
        if v.is_floating_point() and bool(torch.isnan(v).any() if k in ("expr_lower", "expr_upper") else ~torch.isfinite(v).all()):
            raise WeightsError(f"{path}: {k} holds NaN or inf values: the file is corrupt; download or copy it again")
    return reg.to(device).eval()


def _check_config(cfg: RegressorConfig, path) -> None:
    """Refuse configs no real network has before building one (a huge width or size from a corrupt
    or hostile file would allocate without bound)."""
    def num(v, lo, hi, integer=False):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
        return ok and (not integer or float(v) == int(v))

    bad = []
    if not num(cfg.width, 0.05, 4.0):
        bad.append(f"width={cfg.width!r} (0.05..4)")
    if not num(cfg.crop_size, 32, 1024, True):
        bad.append(f"crop_size={cfg.crop_size!r} (32..1024)")
    for k in ("n_shape", "n_expr"):
        if not num(getattr(cfg, k), 0, 100_000, True):
            bad.append(f"{k}={getattr(cfg, k)!r} (0..100000)")
    if not (cfg.input_size == 0 or num(cfg.input_size, 32, 1024, True)):
        bad.append(f"input_size={cfg.input_size!r} (0 or 32..1024)")
    if not num(cfg.dropout, 0.0, 1.0):
        bad.append(f"dropout={cfg.dropout!r} (0..1)")
    if bad:
        raise WeightsError(f"{path}: implausible regressor config {', '.join(bad)}: the file is corrupt or not ours")


# --------------------------------------------------------------------------------------- ONNX
def export_onnx(regressor: Regressor, path, opset: int = 17) -> Path:
    """Export ``regressor`` (eval mode, dynamic batch) to ONNX. Input ``crops`` (B, 3, S, S)
    normalised float32, S = the network's working resolution (``cfg.input_size``, else its crop
    size; :class:`OnnxRegressor` resizes larger crops to it); outputs shape, expr, rotvec, scale,
    translation, landmarks, rotmat, in the crop frame of ``cfg.crop_size``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    S = regressor.cfg.input_size or regressor.cfg.crop_size  # a network with a working resolution takes it directly
    wrapper = _ExportWrapper(regressor).eval()
    was = regressor.training
    regressor.eval()
    names = list(_ExportWrapper.NAMES)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (torch.zeros(1, 3, S, S),), str(path), dynamo=False, opset_version=opset,
                              input_names=["crops"], output_names=names,
                              dynamic_axes={"crops": {0: "batch"}, **{n: {0: "batch"} for n in names}})
    finally:
        regressor.train(was)
    return path


def quantize_onnx(src, dst) -> Path:
    """Dynamic int8 quantisation of an exported ONNX regressor (onnxruntime.quantization)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return Path(dst)


class OnnxRegressor:
    """onnxruntime counterpart of :meth:`Regressor.predict`.

    Args:
        path: ONNX file from :func:`export_onnx`.
        threads: intra-op threads (None = onnxruntime's default).
        quantize: quantise dynamically to int8 first (written beside ``path`` as ``*.int8.onnx``).
        session: an open ``onnxruntime.InferenceSession`` instead of ``path`` (:func:`onnx_runtime_for`).
        crop_size: the crops ``predict`` takes (the network's ``cfg.crop_size``), when the file's
            input is a smaller working resolution (``cfg.input_size``); default: the file's input size.
    """

    def __init__(self, path=None, threads: Optional[int] = None, quantize: bool = False, session=None,
                 crop_size: Optional[int] = None):
        import onnxruntime as ort

        self._crop = crop_size
        if session is not None:  # an open onnxruntime.InferenceSession (onnx_runtime_for)
            self._init_session(session)
            return
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"{path}: ONNX regressor not found; export one with regressors.weights.export_onnx")
        if quantize:
            q = path.with_suffix(".int8.onnx")
            quantize_onnx(path, q)
            path = q
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise WeightsError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
        self._init_session(self.session)

    def _init_session(self, session) -> None:
        self.session = session
        inp = self.session.get_inputs()[0]
        self.input_size = int(inp.shape[-1])
        self.crop_size = int(self._crop or self.input_size)  # crops of this size come in; resized to input_size
        self.names = [o.name for o in self.session.get_outputs()]

    def forward_normalized(self, x: torch.Tensor) -> RegressorOutput:
        """(B, 3, S, S) normalised crops (as :func:`regressors.networks.normalize_crops` makes them)
        -> :class:`RegressorOutput` of torch tensors, like ``Regressor.forward``."""
        out = self.session.run(None, {"crops": np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)})
        return RegressorOutput(**{n: torch.from_numpy(v) for n, v in zip(self.names, out)})

    def predict(self, crops, batch_size: int = 256) -> RegressorOutput:
        """uint8 RGB crops (B, S, S, 3) -> :class:`RegressorOutput` of numpy arrays."""
        a = np.asarray(crops)
        if a.ndim == 3:
            a = a[None]
        S = self.crop_size
        if a.ndim != 4 or a.shape[1:] != (S, S, 3):
            raise InputError(f"crops must be (B, {S}, {S}, 3) uint8 RGB, got {a.shape}")
        if len(a) == 0:
            raise InputError("empty batch of crops")
        if self.input_size != S:  # the network's working resolution (bilinear, as Regressor.raw resizes)
            import cv2

            n = self.input_size
            a = np.stack([cv2.resize(c, (n, n), interpolation=cv2.INTER_LINEAR) for c in a])
        outs = []
        for i in range(0, len(a), batch_size):  # numpy, same as normalize_crops: no torch thread pool here
            x = (a[i:i + batch_size].transpose(0, 3, 1, 2).astype(np.float32) - PIXEL_MEAN) / PIXEL_SCALE
            outs.append(dict(zip(self.names, self.session.run(None, {"crops": x}))))
        return RegressorOutput(**{n: np.concatenate([o[n] for o in outs]) for n in self.names})



def _int8_for(regressor: Regressor) -> Optional[Path]:
    """The shipped int8 file beside the regressor's weight file (``NAME.int8.onnx``), if it was made
    from exactly that file for the same model frame (:mod:`regressors.quantize`), else None."""
    import json

    src = getattr(regressor, "source_path", None)
    if src is None:
        return None
    q = Path(src).with_suffix(".int8.onnx")
    if not q.is_file():
        return None
    try:
        import onnx

        from .quantize import INT8_META, file_sha256

        meta = {p.key: p.value for p in onnx.load(str(q), load_external_data=False).metadata_props}
        fc = np.asarray(json.loads(meta[INT8_META[1]]))
        if meta[INT8_META[0]] != file_sha256(src) or not np.allclose(
                fc, regressor.frame_correction.detach().cpu().double().numpy(), atol=1e-6):
            return None
    except (ImportError, KeyError, ValueError, OSError):
        return None
    return q


def onnx_runtime_for(regressor: Regressor, threads: Optional[int] = None, int8: bool = True) -> "OnnxRegressor":
    """An onnxruntime twin of ``regressor``: with ``int8`` the shipped static-int8 file made from its
    weight file (``NAME.int8.onnx`` beside ``NAME.pt``, :mod:`regressors.quantize`) when there is one
    that matches; else the float model (same outputs to float rounding, about 2x faster on a CPU
    at batch 1 than torch: ``python -m regressors.bench``), exported once and cached by
    :func:`morphable.onnx_cache.cached_session` under a key made of the network's weights and buffers
    (including the model-frame correction), its config and the source of :mod:`regressors.networks`.

    Raises:
        ImportError: onnxruntime (or the ONNX exporter's ``onnx``) is not installed.
    """
    import inspect

    from morphable.onnx_cache import cached_session, state_hash
    from . import networks

    q = _int8_for(regressor) if int8 else None
    if q is not None:
        return OnnxRegressor(q, threads=threads, crop_size=regressor.cfg.crop_size)

    S = regressor.cfg.input_size or regressor.cfg.crop_size
    names = list(_ExportWrapper.NAMES)
    key = state_hash(regressor, repr(sorted(asdict(regressor.cfg).items())), inspect.getsource(networks),
                     regressor.frame_correction.detach().cpu().numpy().tobytes())  # not in the state_dict
    session = cached_session(_ExportWrapper(regressor), (torch.zeros(1, 3, S, S),), "regressor", key, ["crops"], names,
                             {"crops": {0: "batch"}, **{n: {0: "batch"} for n in names}}, threads)
    return OnnxRegressor(session=session, crop_size=regressor.cfg.crop_size)
