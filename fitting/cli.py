"""``morphable fit``: photos in, per-face mesh + pose JSON + overlay picture out.

Registered into the ``morphable`` command by :func:`register` (see :mod:`morphable.cli`).

Per image: load (:func:`fitting.images.load_image`) -> ``fitting.pipeline.fit_all(image,
options)`` -> for every face the three files of :mod:`fitting.outputs` -> one summary line.
A bad image (unreadable, not an image, too large, no face: an ``InputError``) is reported on its
own line and the run goes on; the exit status is 1 at the end if any image failed, 130 if
interrupted. A setup problem (missing weights or model) stops the run at once with one line.

Ctrl-C / SIGTERM: the first signal lets the current image finish (its files complete) and then
stops; a second one aborts at once and removes the files of the unfinished image. Every file is
written atomically, so no half-written file is ever left behind.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import signal
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

from morphable.errors import InputError, MorphableError, MorphableWarning

# numpy, PIL, OpenCV and the output writers are imported inside the functions: `register` runs
# for every `morphable` command (e.g. `morphable info`) and must stay cheap.

__all__ = ["register", "cmd_fit", "build_options", "example_inputs"]


_DESCRIPTION = """\
Fit the morphable model to every face in the given photos: detect faces, regress the model
parameters and 68 landmarks with the CNN, refine by Levenberg-Marquardt, and write per face
  <stem>[_k].obj           mesh, image-aligned px (x right, y up = H-1-row, z toward the camera),
                           vertex colours from the photo
  <stem>[_k].json          yaw/pitch/roll (degrees), rotation, scale, translation, 68 landmarks, rmse
  <stem>[_k]_overlay.png   the mesh, landmarks and pose axes over the photo
and, on request (--texture, --save depth,normals):
  <stem>[_k]_textured.obj  the mesh with UVs + .mtl + _textured.png, the UV texture sampled from
                           the photo (hidden side filled from the mirror side); opens in Blender/MeshLab
  <stem>[_k].glb           the same textured mesh as one binary glTF file (browser viewers)
  <stem>[_k]_depth.png     depth map at the photo's size, 16-bit, brighter = nearer (scale in the JSON)
  <stem>[_k]_normals.png   normal map at the photo's size, rgb = (n + 1) / 2 * 255 (x right, y up, z to camera)
(face 0 has no _k suffix). Folders are expanded to their image files, sorted by name.
"""

_EPILOG = """\
examples:
  morphable fit --example --out out/                 # a bundled example photo
  morphable fit photos/ --out out/ --resume          # a folder; skip images already done
  morphable fit a.jpg b.png --out out/ --json > results.json
  morphable fit --example --texture --save depth,normals --out out/   # textured mesh + depth/normal maps

exit status: 0 all images fitted, 1 some image failed (each is reported), 2 bad command line,
130 interrupted.
"""


def register(subparsers) -> None:
    """Add the ``fit`` subcommand to ``morphable``'s subparsers."""
    p = subparsers.add_parser("fit", help="fit the model to photos: mesh + head pose per face",
                              description=_DESCRIPTION, epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--example", action="store_true",
                   help="also fit the example photo shipped with morphable (NASA's public-domain astronaut "
                        "portrait, fitting/examples/astronaut.jpg)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout (progress goes to stderr)")
    p.add_argument("--no-lm", action="store_true", help="skip the Levenberg-Marquardt refinement (CNN output only)")
    p.add_argument("--iterations", type=_nonneg_int, default=None, metavar="N", help="LM iterations (default: the pipeline's)")
    p.add_argument("--model", default=None, metavar="M", help="morphable model name or file (default: ICT-FaceKit)")
    p.add_argument("--weights", default=None, metavar="W", help="regressor weights file (default: the bundled ones)")
    p.add_argument("--fast", action="store_true",
                   help="the light regressor (FitConfig(preset='fast'), regressors/weights/fast.pt): about 1 ms per face "
                        "instead of 4, slightly less accurate (see its model card)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="torch device (default: cpu)")
    p.add_argument("--detector", default=None, choices=("auto", "blazeface", "mmod", "mmod-dlib", "haar", "mediapipe"),
                   help="face detector (default auto: MediaPipe's BlazeFace, a few ms per photo; dlib's MMOD CNN "
                        "plus Haar only where BlazeFace finds nothing)")
    p.add_argument("--min-face", type=_fraction, default=None, metavar="F",
                   help="smallest face to detect, fraction of the shorter image side; smaller faces are dropped "
                        "(default: what one BlazeFace pass sees, faces of about 20%% of the longer side and up; "
                        "below ~15%% BlazeFace also runs on tiles, slower; MMOD's default is 0.25)")
    p.add_argument("--texture", action="store_true",
                   help="also write the textured mesh: <stem>_textured.obj/.mtl/.png and <stem>.glb "
                        "(= --save texture)")
    p.add_argument("--save", type=_save_list, default=(), metavar="LIST",
                   help="extra outputs, comma-separated: texture, depth, normals (mesh, json and overlay are always "
                        "written)")
    p.add_argument("--texture-size", type=_pos_int, default=1024, metavar="S",
                   help="texture side in texels (default 1024)")
    p.add_argument("--resume", action="store_true",
                   help="skip images whose output files all exist; a video continues after its last finished frame")
    p.add_argument("--smooth", type=_nonneg_float, default=1.0, metavar="S",
                   help="videos: One-Euro smoothing strength of pose, landmarks and expressions (default 1; 0 = off)")
    p.add_argument("--no-smooth", action="store_true", help="videos: no temporal smoothing (same as --smooth 0)")
    p.add_argument("--meshes", action="store_true", help="videos: also write an OBJ per face and frame")
    p.add_argument("--max-pixels", type=_pos_int, default=None, metavar="N",
                   help="refuse images with more pixels than N (default 100000000 or $MORPHABLE_MAX_PIXELS)")
    p.set_defaults(func=cmd_fit)


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _nonneg_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s!r}") from None
    if not (v >= 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {s!r}")
    return v


def _fraction(s: str) -> float:
    v = float(s)
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s}")
    return v


def _save_list(s: str) -> tuple:
    from .outputs import EXTRAS

    names = [n.strip().lower() for n in s.split(",") if n.strip()]
    bad = [n for n in names if n not in EXTRAS and n not in ("mesh", "json", "overlay")]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown output {', '.join(bad)}; choose from {', '.join(EXTRAS)}")
    return tuple(n for n in names if n in EXTRAS)


def _extras(args) -> tuple:
    """The extra outputs asked for (``--save`` plus ``--texture``), in :data:`fitting.outputs.EXTRAS` order."""
    from .outputs import EXTRAS

    asked = set(getattr(args, "save", ()) or ()) | ({"texture"} if getattr(args, "texture", False) else set())
    return tuple(e for e in EXTRAS if e in asked)


def _pos_int(s: str) -> int:
    v = int(float(s))
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


# --------------------------------------------------------------------------- inputs
def example_inputs() -> list:
    """The ``--example`` work items: ``[(label, stem, source)]``: the photo shipped in the package."""
    from .images import EXAMPLE_PHOTO as photo

    if not photo.is_file():
        raise InputError(f"{photo}: the bundled example photo is missing; reinstall morphable "
                         "(the wheel's package data is incomplete)")
    return [("astronaut (NASA, public domain)", "astronaut", photo)]


def _work_items(args) -> list:
    from .images import IMAGE_EXTENSIONS, list_images

    items = []
    if args.example:
        items += example_inputs()
    paths = list_images(args.inputs)  # a missing path stays in: it is reported on its own line
    items += [(str(p), p.stem, p) for p in paths]
    if not items:
        raise InputError("no images given: pass image files or folders (extensions: "
                         f"{' '.join(IMAGE_EXTENSIONS)}), or --example")
    # unique stems: a second 'a' (a.png beside a.jpg, or the same name in another folder)
    # becomes 'a_png' / 'a_png_2'
    seen: set = set()
    out = []
    for label, stem, src in items:
        s = stem
        if s in seen and isinstance(src, Path):
            s = f"{stem}_{src.suffix.lstrip('.').lower() or 'img'}"
        base, k = s, 2
        while s in seen:
            s, k = f"{base}_{k}", k + 1
        seen.add(s)
        out.append((label, s, src))
    return out


# --------------------------------------------------------------------------- pipeline glue
def _pipeline():
    try:
        return importlib.import_module("fitting.pipeline")
    except ImportError as e:
        raise MorphableError(f"the fitting pipeline is not available ({e}); reinstall morphable") from None


def build_options(args, pipeline=None):
    """The ``options`` object passed to ``fit_all`` from the command-line arguments.

    Uses the pipeline's options dataclass (:class:`fitting.pipeline.FitConfig`; only the fields
    it defines are set, None values keep its defaults), else a namespace with
    ``lm, refine, iterations, model, weights, device``.
    """
    values = {"lm": not args.no_lm, "refine": not args.no_lm, "iterations": args.iterations,
              "max_iterations": args.iterations, "model": args.model, "weights": args.weights,
              "device": args.device, "detector": getattr(args, "detector", None),
              "min_face": getattr(args, "min_face", None), "preset": "fast" if getattr(args, "fast", False) else None}
    cls = None
    for name in ("FitConfig", "FitAllOptions", "PipelineOptions"):
        cls = getattr(pipeline, name, None) if pipeline is not None else None
        if cls is not None:
            break
    if cls is not None and dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})
    return SimpleNamespace(lm=values["lm"], refine=values["refine"], iterations=args.iterations,
                           model=args.model, weights=args.weights, device=args.device)


def _np(a, dtype=float):
    import numpy as np

    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return None if a is None else np.asarray(a, dtype=dtype)


def _record(face, image, stem: str, k: int, model_name: str, label: str):
    import numpy as np

    from .outputs import FaceRecord

    return FaceRecord(
        image=image, stem=stem, index=k,
        vertices_img=_np(face.vertices_img), triangles=_np(face.triangles, np.int64),
        landmarks=_np(face.landmarks), rotation=_np(face.rotation), angles_deg=_np(face.angles_deg),
        scale=float(_np(face.scale)), translation=_np(face.translation),
        rmse=float(_np(face.rmse)) if getattr(face, "rmse", None) is not None else float("nan"),
        converged=bool(getattr(face, "converged", False)),
        box=_np(getattr(face, "box", None)), model_name=getattr(face, "model_name", None) or model_name,
        extra={"image": label}, uv=_np(getattr(face, "uv", None)),
        mirror=_np(getattr(face, "mirror", None), np.int64),
    )


# --------------------------------------------------------------------------- signals
class _Stop:
    """First SIGINT/SIGTERM: finish the current image, then stop. Second: abort now."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nmorphable fit: {signal.Signals(signum).name}: finishing the current image, then stopping "
              "(again to abort now)", file=sys.stderr, flush=True)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except (ValueError, OSError):  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)
        return False


def _remove(paths) -> None:
    for p in paths:
        try:
            Path(p).unlink()
        except FileNotFoundError:
            pass


def _stale_faces(out_dir: Path, stem: str, n: int) -> list:
    """Output files of faces >= n left by an earlier run of the same image (extras included)."""
    from .outputs import EXTRAS, output_paths

    stale, k = [], max(n, 1)
    while True:
        ps = [p for p in output_paths(out_dir, stem, k, tuple(EXTRAS)).values() if p.exists()]
        if not ps:
            return stale
        stale += ps
        k += 1


# --------------------------------------------------------------------------- the command
def write_face(rec, out_dir, **kw):
    """:func:`fitting.outputs.write_face` (a module-level name so tests can intercept it)."""
    from .outputs import write_face as _write

    return _write(rec, out_dir, **kw)


def cmd_fit(args) -> int:
    from .images import load_image
    from .outputs import output_paths, record_json

    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a folder; choose a folder path")
    from .video import VIDEO_SUFFIXES

    videos = [Path(a) for a in args.inputs if Path(a).suffix.lower() in VIDEO_SUFFIXES]
    if videos:
        args.inputs = [a for a in args.inputs if Path(a).suffix.lower() not in VIDEO_SUFFIXES]
        rc = _fit_videos(args, videos, out_dir)
        if not args.inputs and not args.example:
            return rc
        rc_img = cmd_fit(args)
        return max(rc, rc_img) if 130 not in (rc, rc_img) else 130
    items = _work_items(args)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline = _pipeline()
    fit_all = getattr(pipeline, "fit_all", None)
    if fit_all is None:
        raise MorphableError("fitting.pipeline has no fit_all(); reinstall morphable")
    options = build_options(args, pipeline)
    extras = _extras(args)
    model_name = args.model or "ict-facekit"
    human = sys.stderr if args.json else sys.stdout

    try:
        from tqdm import tqdm

        bar = tqdm(total=len(items), unit="img", file=sys.stderr, leave=False,
                   disable=len(items) < 2 or not sys.stderr.isatty())
        say = lambda msg, err=False: bar.write(msg, file=sys.stderr if err else human)  # noqa: E731
    except ImportError:  # pragma: no cover - tqdm is a dependency
        bar = None
        say = lambda msg, err=False: print(msg, file=sys.stderr if err else human)  # noqa: E731

    results, n_fail, n_faces, n_skip, interrupted = [], 0, 0, 0, False
    t_start = time.perf_counter()
    try:
        with _Stop() as stop:
            for label, stem, src in items:
                if stop.requested:
                    interrupted = True
                    break
                written_now: list = []
                try:
                    if args.resume and all(p.exists() for p in output_paths(out_dir, stem, 0, extras).values()):
                        n_skip += 1
                        say(f"{label}: skipped (outputs exist in {out_dir})")
                        results.append({"image": label, "status": "skipped"})
                        continue
                    t0 = time.perf_counter()
                    try:
                        image = load_image(src, max_pixels=args.max_pixels, name=label)
                        faces = list(fit_all(image, options) or [])
                        if not faces:
                            raise InputError(f"{label}: no face found; use a photo where the face is larger, "
                                             "upright and not heavily occluded")
                    except MorphableError as e:
                        if not isinstance(e, InputError):
                            raise  # missing weights/model, broken install: fatal, not about this image
                        n_fail += 1
                        msg = str(e) if label in str(e) else f"{label}: {e}"
                        say(f"morphable: error: {' '.join(msg.split())}", err=True)
                        results.append({"image": label, "status": "error", "error": " ".join(str(e).split())})
                        continue
                    except (MemoryError, RuntimeError, ValueError) as e:  # a pipeline failure on one image
                        n_fail += 1
                        say(f"morphable: error: {label}: fitting failed ({type(e).__name__}: {' '.join(str(e).split())})",
                            err=True)
                        results.append({"image": label, "status": "error", "error": f"{type(e).__name__}: {e}"})
                        continue
                    docs = []
                    for k, face in enumerate(faces):
                        rec = _record(face, image, stem, k, model_name, label)
                        files = output_paths(out_dir, stem, k, extras)
                        written_now += list(files.values())
                        with warnings.catch_warnings(record=True) as caught:
                            warnings.simplefilter("always", MorphableWarning)
                            write_face(rec, out_dir, extras=extras,
                                       texture_size=getattr(args, "texture_size", 1024))
                        for w in caught:
                            if issubclass(w.category, MorphableWarning):
                                say(f"morphable: warning: {label}: face {k}: {' '.join(str(w.message).split())}",
                                    err=True)
                            else:
                                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
                        docs.append(record_json(rec, files))
                    _remove(_stale_faces(out_dir, stem, len(faces)))
                    written_now = []
                    n_faces += len(faces)
                    dt = time.perf_counter() - t0
                    say(_summary(label, docs, out_dir, dt))
                    results.append({"image": label, "status": "ok", "faces": docs, "seconds": round(dt, 3)})
                except KeyboardInterrupt:
                    _remove(written_now)  # no half-finished image stays behind
                    interrupted = True
                    say(f"{label}: aborted, its files removed", err=True)
                    break
                finally:
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps({"out": str(out_dir), "images": results, "failed": n_fail, "interrupted": interrupted},
                         indent=1, allow_nan=False))
    done = sum(r["status"] == "ok" for r in results)
    print(f"morphable fit: {done} image(s) fitted, {n_faces} face(s) written to {out_dir}, {n_skip} skipped, "
          f"{n_fail} failed ({time.perf_counter() - t_start:.1f} s)" + (", interrupted" if interrupted else ""),
          file=sys.stderr)
    if interrupted:
        return 130
    return 1 if n_fail else 0


def _fit_videos(args, videos: list, out_dir: Path) -> int:
    """Track each video (:func:`fitting.video_outputs.fit_video`); one line per video, errors per
    video (the others go on); Ctrl-C keeps the finished frames (``--resume`` continues)."""
    from .pipeline import Fitter
    from .video_outputs import fit_video

    out_dir.mkdir(parents=True, exist_ok=True)
    fitter = Fitter(build_options(args, _pipeline()))
    smooth = 0.0 if args.no_smooth else args.smooth
    n_fail, results = 0, []
    for v in videos:
        try:
            r = fit_video(v, out_dir, fitter, smoothing=smooth, meshes=args.meshes, resume=args.resume,
                          progress=sys.stderr.isatty() and not args.json)
        except KeyboardInterrupt:
            print(f"{v}: interrupted; the finished frames are kept in {out_dir} (rerun with --resume to continue)",
                  file=sys.stderr)
            return 130
        except InputError as e:
            n_fail += 1
            print(f"morphable: error: {' '.join(str(e).split())}", file=sys.stderr)
            results.append({"video": str(v), "status": "error", "error": str(e)})
            continue
        results.append({"video": str(v), "status": "ok", **r})
        print(f"{v}: {r['frames']} frames ({r['frames_with_face']} with a face), tracks {r['tracks']}, "
              f"{r['fps']:.1f} frames/s -> {r['files']['jsonl']}, {r['files']['overlay']}",
              file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps({"out": str(out_dir), "videos": results}, indent=1, default=str))
    return 1 if n_fail else 0


def _summary(label: str, docs: list, out_dir: Path, dt: float) -> str:
    from .outputs import output_paths

    parts = []
    for d in docs:
        p = d["pose"]
        rm = d.get("rmse_px")
        parts.append(f"yaw {p['yaw']:+.1f} pitch {p['pitch']:+.1f} roll {p['roll']:+.1f} deg, "
                     f"rmse {'n/a' if rm is None else f'{rm:.2f} px'}{'' if d['converged'] else ' (LM at its iteration limit)'}")
    first = output_paths(out_dir, docs[0]["stem"], 0)["mesh"]
    return f"{label}: {len(docs)} face(s) [{'; '.join(parts)}] -> {first} ({dt:.2f} s)"
