"""Torch networks run by onnxruntime: exported once, cached on disk, keyed by what they compute.

The regressor and the BlazeFace detector are torch modules; on a CPU onnxruntime runs the same
graphs two to three times faster at batch 1 (``python -m regressors.bench``,
``python -m benchmarks.speed``). :func:`cached_session` exports a module with
``torch.onnx.export`` the first time and keeps the file in ``$MORPHABLE_CACHE/onnx``
(:func:`morphable.registry.cache_dir`; a temporary folder when that is not writable). The file name
is a hash of the caller's key parts (e.g. the weights and the source of the network code) and of
the torch version, so a changed network never meets a stale export.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch

__all__ = ["cached_session", "state_hash"]


def state_hash(module: torch.nn.Module, *extra: Union[str, bytes]) -> str:
    """Hex digest of a module's parameters and buffers (names and bytes) and of ``extra`` strings."""
    h = hashlib.sha256(torch.__version__.encode())
    for e in extra:
        h.update(e if isinstance(e, bytes) else str(e).encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _folders() -> Iterable[Path]:
    from .registry import cache_dir

    yield cache_dir() / "onnx"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    yield Path(tempfile.gettempdir()) / f"morphable-onnx-{uid}"


def _export(module: torch.nn.Module, example: tuple, path: Path, input_names: Sequence[str],
            output_names: Sequence[str], dynamic_axes: Optional[dict]) -> None:
    was = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17, input_names=list(input_names),
                              output_names=list(output_names), dynamic_axes=dynamic_axes)
    finally:
        module.train(was)


def cached_session(module: torch.nn.Module, example: tuple, name: str, key: str, input_names: Sequence[str],
                   output_names: Sequence[str], dynamic_axes: Optional[dict] = None, threads: Optional[int] = None):
    """An ``onnxruntime.InferenceSession`` (CPU) of ``module``, exported once per ``key``.

    Args:
        module: the torch module (exported in eval mode, then restored).
        example: example inputs for the export trace.
        name: a readable file-name prefix, e.g. ``"regressor"``.
        key: what the export depends on (e.g. :func:`state_hash` of the module with the source of its
            code); the file is ``{name}-{key[:24]}.onnx``.
        input_names, output_names, dynamic_axes: as ``torch.onnx.export``.
        threads: intra-op threads (None: onnxruntime's default).

    Raises:
        ImportError: onnxruntime or the exporter's ``onnx`` package is missing.
        OSError: neither the cache nor the temporary folder is writable.
    """
    import onnx  # noqa: F401  (torch.onnx.export needs it: missing, callers fall back to torch)
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    fname = f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.onnx"
    for folder in _folders():
        path = folder / fname
        try:
            if not path.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f".{fname}.{os.getpid()}.tmp"
                _export(module, example, tmp, input_names, output_names, dynamic_axes)
                os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        except OSError:
            continue
        try:
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - a damaged cache file (onnxruntime raises its own types): export again
            _export(module, example, path, input_names, output_names, dynamic_axes)
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    raise OSError(f"cannot write an ONNX export to {' or '.join(str(f) for f in _folders())}")
