"""morphable's native model file: one HDF5 file (h5py), lossless, versioned.

Layout (format_version 1): root attributes ``format = "morphable-model"``, ``format_version``,
``name``, ``source``, ``licence``, ``units``, ``shape_kind``, ``expr_kind``,
``expression_names`` (JSON list); datasets named as the :class:`MorphableModel` buffers
(``mean``, ``shape_basis``, ``expr_basis``, ``shape_std``, ``expr_std``, ``expr_lower``,
``expr_upper``, ``triangles``, ``landmarks``, ``contour_right``, ``contour_left``, ``uv``).
Reading never evaluates anything from the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError, ModelNotFoundError
from ..model import ModelInfo, MorphableModel

FORMAT = "morphable-model"
FORMAT_VERSION = 1
#: decimals (mm) kept by the compact storage of the bases: 1e-4 mm = 0.1 um per entry at most
COMPACT_DECIMALS = 4
_BASES = ("shape_basis", "expr_basis")
_BUFFERS = ("mean", "shape_basis", "expr_basis", "shape_std", "expr_std", "expr_lower", "expr_upper",
            "triangles", "landmarks", "contour_right", "contour_left", "uv")


def save_native(model: MorphableModel, path: str | os.PathLike, *, compact: bool = False,
                extra_attrs: dict | None = None) -> Path:
    """Write ``model`` to ``path`` (.h5) atomically (temp file, then rename). Returns the path.

    Args:
        compact: store the bases with the scale-offset filter (:data:`COMPACT_DECIMALS` decimals of
            a mm) and gzip, every other buffer gzip-compressed and exact; ``False`` (default) writes
            everything uncompressed and exact (fastest to read: the load cache).
        extra_attrs: more string attributes for the file's root (e.g. a licence notice).
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            i = model.info
            for k in ("name", "source", "licence", "units", "shape_kind", "expr_kind"):
                f.attrs[k] = getattr(i, k)
            f.attrs["expression_names"] = json.dumps(list(i.expression_names))
            f.attrs["landmark_definition"] = str(getattr(i, "landmark_definition", "upstream"))
            f.attrs["frame_rotation"] = json.dumps(np.asarray(i.frame_rotation, dtype=np.float64).tolist())
            for k, v in (extra_attrs or {}).items():
                f.attrs[k] = str(v)
            for b in _BUFFERS:
                a = getattr(model, b).detach().cpu().numpy()
                if not compact or a.size == 0:
                    f.create_dataset(b, data=a)
                elif b in _BASES:
                    f.create_dataset(b, data=a.astype(np.float32), chunks=(min(1024, a.shape[0]),) + a.shape[1:],
                                     scaleoffset=COMPACT_DECIMALS, compression="gzip")
                else:
                    f.create_dataset(b, data=a, compression="gzip", shuffle=True)
        os.replace(tmp, path)
    finally:  # a failed write (disk full, interrupted) leaves no half file behind
        if tmp.exists():
            tmp.unlink()
    return path


def _frame(v, path) -> list:
    """A (3, 3) rotation from a JSON attribute, or ModelFormatError."""
    from ..geometry import as_rotation_matrix

    try:
        return as_rotation_matrix(v, tol=1e-6).tolist()
    except ValueError as e:
        raise ModelFormatError(f"{path}: frame_rotation is {e}; re-create it with `morphable convert`") from None


def load_native(path: str | os.PathLike) -> MorphableModel:
    """Read a file written by :func:`save_native`."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such model file")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise ModelFormatError(f"{path}: not a morphable model file (no format={FORMAT!r} attribute); "
                                       "convert your model with `morphable convert`")
            ver = int(f.attrs["format_version"])
            if ver > FORMAT_VERSION:
                raise ModelFormatError(f"{path}: format version {ver} is newer than this morphable ({FORMAT_VERSION}); upgrade morphable")
            d = {b: np.asarray(f[b]) for b in _BUFFERS}
            a = {k: str(f.attrs[k]) for k in ("name", "source", "licence", "units", "shape_kind", "expr_kind")}
            names = json.loads(str(f.attrs["expression_names"]))
            a["landmark_definition"] = str(f.attrs.get("landmark_definition", "upstream"))
            fr = f.attrs.get("frame_rotation")
            if fr is not None:
                a["frame_rotation"] = _frame(json.loads(str(fr)), path)
    except ModelFormatError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ModelFormatError(f"{path}: unreadable or incomplete morphable model file ({e}); re-create it with `morphable convert`") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ModelFormatError(f"{path}: expression_names is not a JSON list of names; re-create it with `morphable convert`")
    info = ModelInfo(expression_names=names, **a)
    try:
        model = MorphableModel(d["mean"], d["shape_basis"], d["expr_basis"], d["triangles"], d["landmarks"], info,
                               shape_std=d["shape_std"], expr_std=d["expr_std"], expr_lower=d["expr_lower"],
                               expr_upper=d["expr_upper"], contour_right=d["contour_right"],
                               contour_left=d["contour_left"], uv=d["uv"] if d["uv"].size else None)
    except ModelFormatError as e:  # name the file
        raise ModelFormatError(f"{path}: {e}") from None
    if names and len(names) != model.n_expr:
        raise ModelFormatError(f"{path}: {len(names)} expression names for {model.n_expr} expression components")
    return model
