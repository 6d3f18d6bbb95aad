r"""AFLW2000-3D benchmark runner: ``python -m benchmarks.aflw2000_3d [options]``.

Scores either a built-in method (run here, in batches, on the standard unclipped crop boxes) or
saved predictions (``--predictions FILE.npy``) with the protocol of :mod:`benchmarks.protocol`,
prints Markdown tables beside the published anchors (:mod:`benchmarks.report`) and optionally
writes a JSON result and plots.

Examples::

    python -m benchmarks.aflw2000_3d                                  # regressor+lm on the dev set
    python -m benchmarks.aflw2000_3d --method regressor --limit 64
    python -m benchmarks.aflw2000_3d --predictions pred.npy --rotations rot.npy --out r.json --plots plots/

Methods
-------
A method is a callable ``(images, boxes) -> MethodOutput`` where ``images`` is a list of B
(H, W, 3) uint8 RGB arrays and ``boxes`` a (B, 3) int64 array of crop boxes ``[x0, y0, side]``
(image pixels, :func:`morphable.crop.box_from_landmarks` of the GT, unclipped). The registry
:data:`METHODS` maps a name to a zero-argument factory that returns the callable; factories run
before any image is read so a missing dependency fails at once. The built-ins ``regressor`` and
``regressor+lm`` wrap ``fitting.pipeline.fit_crops`` (imported lazily).
"""
from __future__ import annotations

import argparse
import os
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from morphable.errors import InputError, MorphableError

from . import protocol as P

__all__ = ["MethodOutput", "Method", "METHODS", "register_method", "Predictions", "run_method",
           "load_predictions", "evaluate", "main", "DEFAULT_DATA"]

#: The dev set beside the checkout: ``<checkout>/../shared/data/aflw2000-3d-dev``.
DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "aflw2000-3d-dev"
#: Faces per method call.
BATCH_SIZE = 64


@dataclass
class MethodOutput:
    """What a method returns for one batch of B faces.

    Attributes:
        landmarks: (B, 68, 2) or (B, 68, 3) image pixels, 0-based; a third column is depth
            (pixels, larger = nearer, any origin) and enables the 3D NME.
        rotation: (B, 3, 3) rotation matrices (library convention) or None (no pose metrics).
        timings: stage name -> seconds spent on the whole batch.
    """

    landmarks: np.ndarray
    rotation: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


Method = Callable[[list, np.ndarray], MethodOutput]

#: name -> zero-argument factory returning a :data:`Method`.
METHODS: dict[str, Callable[[], Method]] = {}


def register_method(name: str, factory: Callable[[], Method]) -> None:
    """Register (or replace) the method ``name``; ``factory()`` returns the callable."""
    METHODS[name] = factory


def _to_numpy(x) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _pipeline_options() -> dict:
    """FitConfig fields the command line set for the built-in methods (``--preset``, ``--shifted-crops``)."""
    kw: dict = {}
    if os.environ.get("MORPHABLE_PRESET"):
        kw["preset"] = os.environ["MORPHABLE_PRESET"]
    if os.environ.get("MORPHABLE_SHIFTED_CROPS"):
        kw["shifted_crops"] = int(os.environ["MORPHABLE_SHIFTED_CROPS"])
    return kw


def _fit_crops_method(refine: bool) -> Callable[[], Method]:
    """Factory of a method around ``fitting.pipeline.fit_crops(images, boxes, refine=refine)``."""

    def factory() -> Method:
        try:
            from fitting.pipeline import fit_crops
        except ImportError as e:
            raise MorphableError(
                f"method needs fitting.pipeline.fit_crops(images, boxes, refine), which cannot be imported "
                f"({type(e).__name__}: {e}); score saved predictions with --predictions FILE.npy instead"
            ) from e

        def run(images: list, boxes: np.ndarray) -> MethodOutput:
            out = fit_crops(images, boxes, refine=refine, **_pipeline_options())
            lm2 = _to_numpy(out.landmarks)
            lm3 = _to_numpy(getattr(out, "landmarks3d", None))
            if lm3 is not None and lm2 is not None and lm3.shape[:2] == lm2.shape[:2] and lm3.shape[-1] == 3:
                # 2D NME from .landmarks, depth from .landmarks3d
                lm = np.concatenate([lm2[..., :2], lm3[..., 2:3]], -1)
            else:
                lm = lm2
            timings = {str(k): float(v) for k, v in dict(getattr(out, "timings", {}) or {}).items()}
            return MethodOutput(landmarks=lm, rotation=_to_numpy(getattr(out, "rotation", None)), timings=timings)

        return run

    return factory


register_method("regressor", _fit_crops_method(refine=False))
register_method("regressor+lm", _fit_crops_method(refine=True))


def _onnx_method(refine: bool, quantize: bool, torch_only: bool = False) -> Callable[[], Method]:
    """The ``regressor``/``regressor+lm`` methods with the regressor run by onnxruntime (1 thread),
    exported from the same weights as a float model; ``quantize``: dynamic int8
    (:func:`regressors.weights.quantize_onnx`); ``torch_only``: by torch itself (the reference of
    both; the default methods run what ``fit`` runs: the shipped static-int8 file)."""

    def factory() -> Method:
        import tempfile

        try:
            from fitting.pipeline import FitConfig, Fitter
            from regressors.weights import OnnxRegressor, export_onnx
        except ImportError as e:
            raise MorphableError(f"ONNX methods need onnxruntime and onnx: pip install -e \".[onnx]\" ({e})") from e
        fitter = Fitter(FitConfig(weights=os.environ.get("MORPHABLE_WEIGHTS") or None, backend="torch",
                                  **_pipeline_options()))
        if not torch_only:
            tmp = Path(tempfile.mkdtemp(prefix="morphable-onnx-"))
            fitter.predictor = OnnxRegressor(export_onnx(fitter.regressor, tmp / "regressor.onnx"), threads=1,
                                             quantize=quantize, crop_size=fitter.crop_size)

        def run(images: list, boxes: np.ndarray) -> MethodOutput:
            out = fitter.fit_crops(list(images), boxes, refine=refine)
            lm = np.concatenate([_to_numpy(out.landmarks)[..., :2], _to_numpy(out.landmarks3d)[..., 2:3]], -1)
            return MethodOutput(landmarks=lm, rotation=_to_numpy(out.rotation), timings=dict(out.timings))

        return run

    return factory


for _refine, _name in ((False, "regressor"), (True, "regressor+lm")):
    register_method(f"{_name}:onnx", _onnx_method(_refine, quantize=False))
    register_method(f"{_name}:onnx-int8", _onnx_method(_refine, quantize=True))
    register_method(f"{_name}:torch", _onnx_method(_refine, quantize=False, torch_only=True))


def _dlib_lm_method() -> Method:
    """``regressor+dlib+lm``: LM against dlib's 68 points (2D sliding jaw), placed on the
    regressor's landmarks (``FitConfig(landmark_source="dlib")``; needs ``pip install -e ".[dlib]"``).
    LM options (:data:`DLIB_LM_OPTIONS`) were chosen on ytf68/test (770 frames, NME of the fitted 2D
    landmarks), never on this set."""
    try:
        from fitting.landmarks_dlib import DlibLandmarks
        from fitting.pipeline import fit_crops
    except ImportError as e:
        raise MorphableError(f"method regressor+dlib+lm cannot import fitting ({type(e).__name__}: {e})") from e
    DlibLandmarks().load()  # a missing extra fails before any image is read

    def run(images: list, boxes: np.ndarray) -> MethodOutput:
        out = fit_crops(images, boxes, refine=True, landmark_source="dlib", **DLIB_LM_OPTIONS)
        lm = np.concatenate([_to_numpy(out.landmarks)[..., :2], _to_numpy(out.landmarks3d)[..., 2:3]], -1)
        return MethodOutput(landmarks=lm, rotation=_to_numpy(out.rotation),
                            timings={str(k): float(v) for k, v in out.timings.items()})

    return run


#: LM options of ``regressor+dlib+lm`` (FitConfig fields). Chosen on ytf68/test with dlib targets and
#: the 2D jaw over iterations {5, 10, 20} x shape/expr prior {0.3, 1, 3}: expr prior 3 lowered the
#: fitted-landmark NME by 0.008 +- 0.001 (paired s.e.) against 1/1; more iterations or a weaker
#: shape prior changed it by < 0.003; so the cheapest near-best setting.
DLIB_LM_OPTIONS = {"iterations": 5, "shape_prior": 1.0, "expr_prior": 3.0}
register_method("regressor+dlib+lm", _dlib_lm_method)


@dataclass
class Predictions:
    """Predictions for a whole dataset, in its order.

    Attributes:
        method: display name.
        landmarks: (N, 68, 2|3) 0-based image pixels (z = depth, larger = nearer).
        rotation: (N, 3, 3) or None.
        time_per_face_ms: stage -> milliseconds per face (empty for saved predictions). ``decode``
            is image reading, ``method_wall`` the wall time of the method calls; other keys are the
            method's own stages.
    """

    method: str
    landmarks: np.ndarray
    rotation: np.ndarray | None = None
    time_per_face_ms: dict[str, float] = field(default_factory=dict)


def run_method(name: str, method: Method, dataset: P.Dataset, batch_size: int = BATCH_SIZE,
               progress: bool = True) -> Predictions:
    """Run ``method`` over ``dataset`` in batches of ``batch_size`` faces.

    Raises:
        InputError: the method returned landmarks or rotations of the wrong shape/count or NaN.
    """
    n = len(dataset)
    lms, rots = [], []
    totals: dict[str, float] = {"decode": 0.0, "method_wall": 0.0}
    for start in range(0, n, batch_size):
        idx = range(start, min(start + batch_size, n))
        t0 = time.perf_counter()
        images = [P.load_image(dataset.image_path(i)) for i in idx]
        t1 = time.perf_counter()
        out = method(images, dataset.boxes[start: start + len(idx)].copy())
        t2 = time.perf_counter()
        totals["decode"] += t1 - t0
        totals["method_wall"] += t2 - t1
        for k, v in out.timings.items():
            totals[k] = totals.get(k, 0.0) + float(v)
        what = f"method {name!r} output for images {start}..{start + len(idx) - 1}"
        lms.append(P.check_landmarks(_to_numpy(out.landmarks), len(idx), what=what + " (landmarks)"))
        rots.append(None if out.rotation is None else P.check_rotations(_to_numpy(out.rotation), len(idx), what=what + " (rotation)"))
        if progress:
            print(f"[{name}] {start + len(idx)}/{n} faces, {totals['method_wall']:.1f} s", file=sys.stderr)
    rot = None if any(r is None for r in rots) else np.concatenate(rots)
    return Predictions(method=name, landmarks=np.concatenate(lms), rotation=rot,
                       time_per_face_ms={k: v / n * 1000.0 for k, v in totals.items()})


def _load_npy(path: Path | str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file {p} does not exist")
    try:
        return np.load(p, allow_pickle=False)
    except Exception as e:
        raise InputError(f"cannot read {what} file {p} as a .npy array: {e}") from e


def load_predictions(path: Path | str, n: int, n_full: int | None = None, one_based: bool = False,
                     rotations: Path | str | None = None, method: str | None = None) -> Predictions:
    """Read saved predictions for an evaluation list of ``n`` images.

    Args:
        path: ``.npy`` of (N, 68, 2) or (N, 68, 3) landmarks, 0-based image pixels (x, y; z = depth).
        n: number of images evaluated.
        n_full: length of the list before ``--limit``; an array of that length is cut to its first
            ``n`` rows.
        one_based: the file is in the dataset's MATLAB 1-based frame: subtract 1 from x and y.
        rotations: optional ``.npy`` of (N, 3, 3) rotation matrices.
        method: display name (default ``"file:<name>"``).

    Raises:
        InputError: missing/unreadable file, wrong shape or count, NaN/inf, non-rotations.
    """
    lm = _load_npy(path, "predictions")
    if lm.ndim >= 1 and n_full is not None and lm.shape[0] == n_full != n:
        lm = lm[:n]
    lm = P.check_landmarks(lm, n, what=f"predictions {Path(path).name}")
    if one_based:
        lm[..., :2] -= 1.0
    rot = None
    if rotations is not None:
        r = _load_npy(rotations, "rotations")
        if r.ndim >= 1 and n_full is not None and r.shape[0] == n_full != n:
            r = r[:n]
        rot = P.check_rotations(r, n, what=f"rotations {Path(rotations).name}")
    return Predictions(method=method or f"file:{Path(path).name}", landmarks=lm, rotation=rot)


def evaluate(dataset: P.Dataset, pred: Predictions) -> tuple[dict, P.Scores]:
    """Score ``pred`` on ``dataset`` -> (JSON-ready result dict, :class:`protocol.Scores`).

    Besides the published metrics the dict holds two diagnostics (percent of face size, see
    :data:`protocol.SIGNED_ERRORS_NOTE`): ``region_errors_2d`` (region of
    :data:`protocol.DIAGNOSTIC_REGIONS` -> NME and signed x / y error, predicted - GT, by yaw bin
    and balanced) and ``point_errors_2d`` (the same per point: lists of 68 values).
    """
    s = P.score(dataset, pred.landmarks, pred.rotation)
    result = {
        "method": pred.method,
        "preset": os.environ.get("MORPHABLE_PRESET") or None,
        "shifted_crops": _pipeline_options().get("shifted_crops"),  # None: the pipeline's default
        "n_images": len(dataset),
        "data": str(dataset.root),
        "nme_2d": s.summary_2d.to_json(),
        "nme_3d": s.summary_3d.to_json() if s.summary_3d is not None else None,
        "nme_2d_by_region": {k: v.to_json() for k, v in s.regions_2d.items()},
        # diagnostics (protocol.signed_errors): signed and unsigned errors per region and per point
        "region_errors_2d": {k: v.to_json() for k, v in s.points_2d.regions().items()},
        "point_errors_2d": s.points_2d.to_json(),
        "pose_mae": s.pose.to_json() if s.pose is not None else None,
        "protocol": P.PROTOCOL,
        "crop_box": "morphable.crop.box_from_landmarks(GT x,y), unclipped",
        "time_per_face_ms": dict(pred.time_per_face_ms),
        "environment": {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                        "python": platform.python_version(), "machine": platform.machine()},
        "per_image": s.per_image(),
    }
    return result, s


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.aflw2000_3d",
        description="AFLW2000-3D benchmark: 68-point 2D/3D NME by yaw bin and head-pose MAE. " + P.PROTOCOL,
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help=f"folder of imageXXXXX.jpg + .mat (default: {DEFAULT_DATA})")
    ap.add_argument("--list", type=Path, default=None, help="file of image stems in evaluation order (default: sorted .mat names)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    ap.add_argument("--plots", type=Path, default=None, help="write ced.png and worst.png into this folder")
    ap.add_argument("--method", default=None,
                    help=f"built-in method: {', '.join(sorted(METHODS))} (default regressor+lm); "
                         "with --predictions, only the display name")
    ap.add_argument("--predictions", type=Path, default=None,
                    help="score saved landmarks (N,68,2|3) .npy, 0-based image pixels, in evaluation order")
    ap.add_argument("--one-based", action="store_true", help="--predictions are in the dataset's MATLAB 1-based frame")
    ap.add_argument("--rotations", type=Path, default=None, help="(N,3,3) .npy of predicted rotations, for pose MAE")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of the list")
    ap.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"faces per method call (default {BATCH_SIZE})")
    ap.add_argument("--weights", default=None, help="regressor weight file for the built-in methods (default: the shipped weights)")
    ap.add_argument("--preset", default=None, choices=("fast",),
                    help="the pipeline preset of the built-in methods: 'fast' = the light regressor (FitConfig(preset='fast'))")
    ap.add_argument("--shifted-crops", type=int, default=None, choices=(0, 2, 4),
                    help="FitConfig.shifted_crops of the built-in methods (default: the pipeline's)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads before running a method (default: torch's own; NOTES §4)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input or missing method)."""
    args = _parser().parse_args(argv)
    try:
        return _main(args)
    except MorphableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from . import report

    if args.predictions is None and (args.one_based or args.rotations is not None):
        raise InputError("--one-based and --rotations only apply with --predictions FILE.npy")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.weights:
        os.environ["MORPHABLE_WEIGHTS"] = str(Path(args.weights).resolve())
    if args.preset:
        os.environ["MORPHABLE_PRESET"] = args.preset
    if args.shifted_crops is not None:
        os.environ["MORPHABLE_SHIFTED_CROPS"] = str(args.shifted_crops)
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    n_full = len(P.list_names(args.data, args.list))  # checks the folder and list first
    method_fn = None
    if args.predictions is None:
        name = args.method or "regressor+lm"
        if name not in METHODS:
            raise InputError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
        method_fn = METHODS[name]()  # fails before any image is read on a missing dependency
    dataset = P.load_dataset(args.data, args.list, args.limit)
    if method_fn is None:
        pred = load_predictions(args.predictions, len(dataset), n_full, args.one_based, args.rotations, args.method)
    else:
        pred = run_method(name, method_fn, dataset, args.batch_size, progress=not args.quiet)
    result, scores = evaluate(dataset, pred)
    print(report.markdown(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {args.out}")
    if args.plots is not None:
        paths = report.save_plots(dataset, pred.landmarks, scores, args.plots, title=pred.method)
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
