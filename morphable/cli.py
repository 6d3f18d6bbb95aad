"""The ``morphable`` command line.

Built-in subcommands: ``info`` (describe a model), ``convert`` (any supported model file -> the
native .h5) and ``sample`` (write a random plausible face). Other packages add theirs: after the
built-ins, ``fitting.cli`` and ``regressors.cli`` are imported if present and their
``register(subparsers)`` is called; each parser they add must set ``func`` (``args -> int | None``)
with ``set_defaults(func=...)``.

Every failure the user can fix (missing or broken file, bad option) ends with exit status 1 (2 for
a bad command line) and one line ``morphable: error: <what is wrong and what to do>`` on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import InputError, MorphableError

__all__ = ["main", "build_parser", "PLUGINS"]

#: Modules whose ``register(subparsers)`` adds subcommands, tried in this order.
PLUGINS = ("fitting.cli", "regressors.cli")

_DESCRIPTION = """\
3D morphable face models: inspect, convert and sample them (and, with the fitting package, fit
them to photos).

The default model is ICT-FaceKit (MIT), face region, 3D-style landmarks: its face and narrow regions
ship inside the package; the head and full regions are read from $MORPHABLE_ICT_DIR or
../shared/models/ict-facekit.
Other models: a BFM 2009 .mat, a BFM 2017/2019 .h5, a Surrey Face Model .bin, or a native .h5
written by `morphable convert`.
"""

_EPILOG = """\
examples:
  morphable info                                   # the default model
  morphable sample --seed 0 --out face.obj         # a random face, mm, +y up, face along +z
  morphable convert sfm_shape_3448.bin --out sfm.h5
  morphable convert 01_MorphableModel.mat --exp-pca Exp_Pca.bin --trim-index BFM_exp_idx.mat \\
      --landmarks bfm_ibug68.txt --out bfm2009.h5
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump); subparsers inherit it."""

    def error(self, message: str):  # type: ignore[override]
        _fail(f"{message} (see `{self.prog} --help`)", 2)


class _Exit(Exception):
    def __init__(self, code: int):
        self.code = code


def _fail(message: str, code: int = 1):
    one_line = " ".join(str(message).split())
    print(f"morphable: error: {one_line}", file=sys.stderr)
    raise _Exit(code)


# --------------------------------------------------------------------------- commands
def _load(model: Optional[str], region: str):
    from .registry import load_model

    return load_model(model, region=region)


def cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps(_load(args.model, args.region).summary(), indent=2))
    return 0


def _only(args: argparse.Namespace, kind: str, allowed: set[str]) -> None:
    """Refuse options that the source's loader does not take."""
    given = {"exp_pca": "--exp-pca", "std_exp": "--std-exp", "trim_index": "--trim-index", "landmarks": "--landmarks",
             "contours": "--contours", "n_expr": "--n-expr", "blendshapes": "--blendshapes", "mapping": "--mapping"}
    bad = [flag for k, flag in given.items() if getattr(args, k) is not None and k not in allowed]
    if args.region != "face" and "region" not in allowed:
        bad.append("--region")
    if bad:
        verb = "does" if len(bad) == 1 else "do"
        raise InputError(f"{' '.join(bad)} {verb} not apply to a {kind} source; see `morphable convert --help`")


def cmd_convert(args: argparse.Namespace) -> int:
    from .errors import ModelNotFoundError
    from .formats.native import load_native, save_native

    src, out = Path(args.src), Path(args.out)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise InputError(f"--out {out}: the native model file must end in .h5")
    if not src.exists():
        raise ModelNotFoundError(f"{src}: no such model file or folder")
    suffix = src.suffix.lower()
    if src.is_dir():
        from .formats.ict import load_ict

        _only(args, "ICT-FaceKit folder", {"region"})
        model = load_ict(src, region=args.region, n_shape=args.n_shape)
    elif suffix == ".mat":
        from .formats.bfm import load_bfm2009

        _only(args, "BFM 2009 .mat", {"exp_pca", "std_exp", "trim_index", "landmarks", "contours", "n_expr"})
        model = load_bfm2009(src, exp_pca=args.exp_pca, std_exp=args.std_exp,
                             n_shape=100 if args.n_shape is None else args.n_shape, n_expr=args.n_expr,
                             trim_index=args.trim_index, landmarks=args.landmarks, contours=args.contours)
    elif suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(src, "r") as f:
                native = f.attrs.get("format") is not None
        except OSError as e:
            raise InputError(f"{src}: not a readable HDF5 file ({e})") from None
        if native:
            _only(args, "native .h5", set())
            model = load_native(src)
        else:
            from .formats.bfm import load_bfm2017

            _only(args, "BFM 2017/2019 .h5", {"landmarks", "contours", "n_expr"})
            model = load_bfm2017(src, n_shape=args.n_shape, n_expr=args.n_expr, landmarks=args.landmarks,
                                 contours=args.contours)
    elif suffix == ".bin":
        from .formats.sfm import load_sfm

        _only(args, "Surrey/eos .bin", {"blendshapes", "mapping", "landmarks", "contours"})
        model = load_sfm(src, blendshapes=args.blendshapes, mapping=args.mapping or args.landmarks,
                         contours=args.contours)
    else:
        raise InputError(f"{src}: unknown model type {suffix!r}; give an ICT-FaceKit folder, a BFM .mat/.h5, "
                         "a Surrey .bin or a native .h5")
    if args.n_shape is not None and args.n_shape != model.n_shape:
        if not 0 <= args.n_shape <= model.n_shape:
            raise InputError(f"--n-shape {args.n_shape}: the model has {model.n_shape} shape components")
        model = _truncate(model, args.n_shape)
    save_native(model, out)
    s = model.summary()
    print(f"wrote {out}: {s['name']}, {s['vertices']} vertices, {s['shape_components']} shape + "
          f"{s['expression_components']} expression components, {s['landmarks']} landmarks")
    return 0


def _truncate(model, n_shape: int):
    """The same model keeping the first ``n_shape`` shape components."""
    from .model import MorphableModel

    m = model
    return MorphableModel(m.mean, m.shape_basis[..., :n_shape], m.expr_basis, m.triangles, m.landmarks, m.info,
                          shape_std=m.shape_std[:n_shape], expr_std=m.expr_std, expr_lower=m.expr_lower,
                          expr_upper=m.expr_upper, contour_right=m.contour_right, contour_left=m.contour_left,
                          uv=m.uv if m.uv.numel() else None)


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .export import MESH_SUFFIXES, write_mesh

    out = Path(args.out)
    if out.suffix.lower() not in MESH_SUFFIXES:
        raise InputError(f"--out {out}: write a .obj or .ply file")
    model = _load(args.model, args.region)
    g = torch.Generator().manual_seed(args.seed)
    shape, expr = model.sample(1, generator=g, expression=not args.no_expression)
    V = model.vertices(shape, expr)[0]
    write_mesh(out, V, model.triangles, uv=model.uv if model.uv.numel() else None)
    ext = (V.max(0).values - V.min(0).values).tolist()
    print(f"wrote {out}: {model.name}, seed {args.seed}, {V.shape[0]} vertices, {model.triangles.shape[0]} triangles, "
          f"{ext[0]:.1f} x {ext[1]:.1f} x {ext[2]:.1f} mm (width x height x depth)")
    return 0


# --------------------------------------------------------------------------- parser
def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="model file or ICT-FaceKit folder (default: the ICT-FaceKit model)")
    p.add_argument("--region", default="face", choices=["narrow", "face", "head", "full"],
                   help="ICT-FaceKit region (default: face, to the ears and under the chin; narrow: the ~15 cm wide face)")


def _plugin_present(name: str) -> bool:
    """Whether ``pkg.cli`` exists, found without importing ``pkg`` (keeps ``info`` fast)."""
    import importlib.util

    top, _, sub = name.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    locs = list(spec.submodule_search_locations or [])
    if not locs:  # a namespace or unusual loader: let the import decide
        return True
    return any((Path(loc) / f"{sub}.py").is_file() or (Path(loc) / sub / "__init__.py").is_file() for loc in locs)


def _load_plugins(sub) -> None:
    for name in PLUGINS:
        if not _plugin_present(name):
            continue  # that package or its cli is not installed: nothing to add
        try:
            mod = importlib.import_module(name)
            register = getattr(mod, "register", None)
            if callable(register):
                register(sub)
        except Exception as e:  # a broken plugin must not take the built-in commands down
            print(f"morphable: warning: {name} not loaded ({type(e).__name__}: {e})", file=sys.stderr)


def build_parser(plugins: bool = True) -> argparse.ArgumentParser:
    """The ``morphable`` argument parser (with the plugin subcommands unless ``plugins=False``)."""
    from . import __version__

    parser = _Parser(prog="morphable", description=_DESCRIPTION, epilog=_EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"morphable {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    p = sub.add_parser("info", help="print a model's summary as JSON",
                       description="Print the JSON summary of a model: sizes, kinds, units, extent, licence.")
    _add_model_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert a model file to the native .h5",
                       description="Convert any supported model (ICT-FaceKit folder, BFM 2009 .mat, BFM 2017/2019 "
                       ".h5, Surrey/eos .bin) to morphable's native .h5, which loads fast and losslessly.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="BFM needs --landmarks: 68 0-based vertex ids (text) or an eos ibug_to_*.txt mapping "
                       "that defines every point.\nBFM 2009 with Exp_Pca.bin (53,215 vertices) needs --trim-index "
                       "(3DDFA's BFM_exp_idx.mat).")
    p.add_argument("src", metavar="SRC", help="the model file or folder to convert")
    p.add_argument("--out", required=True, metavar="MODEL.h5", help="native model file to write")
    p.add_argument("--exp-pca", metavar="F", help="BFM 2009: Guo et al.'s Exp_Pca.bin expression basis")
    p.add_argument("--std-exp", metavar="F", help="BFM 2009: std_exp.txt (default: next to --exp-pca)")
    p.add_argument("--trim-index", metavar="F", help="BFM 2009: 3DDFA's BFM_exp_idx.mat (or a text file of 1-based "
                   "ids) mapping the expression basis' vertices to the model's")
    p.add_argument("--landmarks", metavar="F", help="BFM: 68 0-based landmark vertex ids (text) or an eos "
                   "[landmark_mappings] file; Surrey: same as --mapping")
    p.add_argument("--contours", metavar="F", help="eos *_model_contours.json (jaw outline candidates)")
    p.add_argument("--mapping", metavar="F", help="Surrey: eos ibug_to_sfm.txt (default: next to SRC)")
    p.add_argument("--blendshapes", metavar="F", help="Surrey: expression blendshapes .bin (default: next to SRC)")
    p.add_argument("--n-shape", type=int, metavar="K", help="keep the first K shape components (BFM 2009 default 100)")
    p.add_argument("--n-expr", type=int, metavar="K", help="BFM: keep the first K expression components")
    p.add_argument("--region", default="face", choices=["narrow", "face", "head", "full"],
                   help="ICT-FaceKit region (default: face)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("sample", help="write a random plausible face mesh",
                       description="Draw random shape (and expression) coefficients and write the face as .obj/.ply "
                       "(mm, +y up, face along +z, vertex order of the model).")
    _add_model_args(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-expression", action="store_true", help="neutral expression (identity only)")
    p.add_argument("--out", required=True, metavar="FACE.obj|.ply", help="mesh file to write")
    p.set_defaults(func=cmd_sample)

    if plugins:
        _load_plugins(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 bad command line)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help()
            return 2
        rc = func(args)
        return int(rc or 0)
    except _Exit as e:
        return e.code
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BrokenPipeError:  # output piped into e.g. `head`: not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except MorphableError as e:
        try:
            _fail(str(e))
        except _Exit as x:
            return x.code
    except OSError as e:
        msg = f"{e.filename}: {e.strerror}" if getattr(e, "filename", None) and e.strerror else str(e)
        try:
            _fail(f"{msg}; check the path and permissions")
        except _Exit as x:
            return x.code
    except KeyboardInterrupt:
        print("morphable: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
