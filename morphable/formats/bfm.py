"""Basel Face Model loaders: BFM 2009 (``.mat`` + Guo et al.'s expression basis) and BFM 2017/2019
(Statismo ``.h5``) -> :class:`MorphableModel`.

The BFM files are not redistributable; users download them from the University of Basel (and
``Exp_Pca.bin``/``std_exp.txt`` from github.com/Juyong/3DFace). Neither ships the 68 iBUG landmark
vertex ids: pass ``landmarks=`` (see :func:`resolve_landmarks`).

BFM 2009, ``01_MorphableModel.mat`` (read with ``scipy.io.loadmat``):

* ``shapeMU`` (3N, 1) float32 mean, xyz interleaved per vertex, micrometres;
* ``shapePC`` (3N, 199) float32 orthonormal basis; ``shapeEV`` (199, 1) standard deviations (um);
* ``tl`` (T, 3) triangles, **1-based**, wound clockwise seen from outside.

The loader converts um -> mm (/1000), makes ``tl`` 0-based and swaps its 2nd and 3rd column so
triangles are counter-clockwise seen from outside, and scales the basis by ``shapeEV`` so shape
coefficients are ~N(0, 1) (``shape_std = shapeEV / 1000``, mm).

Guo et al. expression basis (``Exp_Pca.bin``, native little-endian): ``int32 exp_dim``, ``float32
expMU[3M]``, ``float32 expPC[exp_dim * 3M]`` component-major (row k = component k), M = 53,215 in
the released file; ``std_exp.txt`` holds ``exp_dim`` standard deviations. The basis used is
``expPC * std_exp`` in BFM units (um), converted to mm; ``expMU`` is ignored by default, as in
Deep3DFaceRecon (``exp_mean=True`` adds it to the mean). The M vertices are a subset of BFM 2009's
N = 53,490 (3DDFA's trimming): ``trim_index`` (1-based into N, from 3DDFA's ``BFM_exp_idx.mat``
``trimIndex``) says which; the model is then restricted to those M vertices (triangles with a
removed vertex are dropped, landmark and contour ids renumbered).

BFM 2017/2019 (Statismo/scalismo-faces HDF5): ``shape/model/{mean (3N,), pcaBasis (3N, k)
orthonormal, pcaVariance (k,) variances}``, ``shape/representer/{points (3, N), cells (3, T)
0-based}`` and the same ``expression/model/*`` group. ``V = mean_shape + mean_expr +
pcaBasis (a * sqrt(pcaVariance)) + ...``. Units are checked from the mean face's width (about 150
units = mm; um, cm and m are converted). Statismo does not state a winding; triangles are
oriented so the surface normals point outward (positive signed volume about the centroid).

Frame: BFM is y up with the face looking along +z, which is the model frame as is.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import InputError, ModelFormatError, ModelNotFoundError
from ..model import ModelInfo, MorphableModel
from .sfm import ibug68_from_mapping, read_contours, read_ibug_mapping

__all__ = ["load_bfm2009", "load_bfm2017", "read_exp_pca", "read_trim_index", "resolve_landmarks",
           "BFM_LICENCE"]

PathLike = Union[str, os.PathLike]
LandmarksArg = Union[PathLike, Sequence[int], np.ndarray, None]

BFM_LICENCE = ("Basel Face Model: University of Basel licence, non-commercial research use, not "
               "redistributable (faces.dmi.unibas.ch/bfm)")
UM_PER_MM = 1000.0

LANDMARK_HELP = (
    "BFM files do not include the 68 iBUG landmark vertices. Pass landmarks= (CLI: --landmarks) either a "
    "text file of 68 whitespace-separated 0-based vertex ids of this model (for 3DDFA's keypoints, which are "
    "1-based into the 53,215 trimmed vertices, use trimIndex[kpt - 1] - 1), or an eos mapping such as "
    "ibug_to_bfm2009.txt, which must define every point that cannot be derived from the contour file. Convert "
    "the model once: morphable convert MODEL --landmarks FILE --out model.h5")


# --------------------------------------------------------------------------- helpers
def _need_file(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ModelNotFoundError(f"{p}: no such {what} file" + (" (it is a folder)" if p.is_dir() else ""))
    return p


def _n_components(n: Optional[int], k: int, what: str) -> int:
    """``min(n, k)`` (``None`` = all): like slicing, asking for more keeps all ``k``."""
    if n is None:
        return k
    if int(n) < 0:
        raise InputError(f"{what}={n}: must be >= 0")
    return min(int(n), k)


def _unit_scale(mean: np.ndarray, source: str) -> tuple[float, str]:
    """Factor that converts ``mean`` (N, 3) to mm, from the face's width (x extent ~80-400 mm)."""
    width = float(mean[:, 0].max() - mean[:, 0].min()) if len(mean) else 0.0
    for factor, unit in ((1.0, "mm"), (1e-3, "um"), (10.0, "cm"), (1000.0, "m")):
        if 80.0 <= width * factor <= 400.0:
            return factor, unit
    raise ModelFormatError(f"{source}: the mean face is {width:g} units wide, which is no plausible face width in "
                           "mm, um, cm or m (about 150 mm expected): wrong file or unknown units")


def _outward(tri: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Triangles (T, 3) wound so the signed volume about the centroid is positive (normals outward)."""
    if not len(tri):
        return tri
    P = V[tri] - V.mean(0)
    vol = np.einsum("ij,ij->i", P[:, 0], np.cross(P[:, 1], P[:, 2])).sum()
    return tri[:, [0, 2, 1]] if vol < 0 else tri


def read_trim_index(trim_index: Union[PathLike, Sequence[int], np.ndarray], n_full: int) -> np.ndarray:
    """3DDFA's trim index -> (M,) int64 **0-based** vertex ids into the ``n_full`` BFM vertices.

    Args:
        trim_index: 1-based ids (array), a ``.mat`` with ``trimIndex`` (3DDFA's ``BFM_exp_idx.mat``)
            or a text file of 1-based ids.
        n_full: vertex count of the shape model (53,490 for BFM 2009).
    """
    src = "trim_index"
    if isinstance(trim_index, (str, os.PathLike)):
        p = _need_file(trim_index, "trim index")
        src = str(p)
        if p.suffix.lower() == ".mat":
            import scipy.io as sio

            variables = _mat_variables(p)
            want = None
            if variables is not None:  # read only the variable needed, checked first
                want = ["trimIndex"] if "trimIndex" in variables else (list(variables) if len(variables) == 1 else None)
                if want is None:
                    raise ModelFormatError(f"{p}: no 'trimIndex' variable (has {list(variables)}); pass 3DDFA's BFM_exp_idx.mat")
                _check_mat_numeric(p, variables, want)
            try:
                d = sio.loadmat(p, variable_names=want)
            except Exception as e:  # scipy raises many types on a bad .mat
                raise ModelFormatError(f"{p}: not a readable MATLAB file ({e})") from None
            keys = [k for k in d if not k.startswith("__")]
            key = "trimIndex" if "trimIndex" in d else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise ModelFormatError(f"{p}: no 'trimIndex' variable (has {keys}); pass 3DDFA's BFM_exp_idx.mat")
            a = _numeric(d[key], key, p, "3DDFA's BFM_exp_idx.mat")
        else:
            try:
                a = np.loadtxt(p, dtype=np.float64, ndmin=1)
            except ValueError as e:
                raise ModelFormatError(f"{p}: not a text file of 1-based vertex ids ({e})") from None
    else:
        a = np.asarray(trim_index)
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if not len(a) or not np.all(a == np.round(a)) or a.min() < 1 or a.max() > n_full:
        raise ModelFormatError(f"{src}: trim indices must be 1-based integers in 1..{n_full} (the shape model's "
                               "vertices); is it the index of another model?")
    idx = a.astype(np.int64) - 1
    if len(np.unique(idx)) != len(idx):
        raise ModelFormatError(f"{src}: trim indices repeat vertices")
    return idx


def read_exp_pca(path: PathLike, std_path: Optional[PathLike] = None):
    """Read Guo et al.'s ``Exp_Pca.bin`` and ``std_exp.txt``.

    Returns:
        (mean (M, 3), basis (M, 3, K), std (K,)): float64, BFM units (um); ``basis`` is the raw
        ``expPC`` (not yet multiplied by ``std``).

    Raises:
        ModelNotFoundError: a file is missing (``std_exp.txt`` is looked up next to the .bin).
        ModelFormatError: the size does not fit the layout, or the std count differs.
    """
    p = _need_file(path, "Exp_Pca.bin")
    size = p.stat().st_size
    if size < 4:
        raise ModelFormatError(f"{p}: {size} bytes, too short for Exp_Pca.bin (int32 exp_dim first)")
    with open(p, "rb") as f:
        dim = int(np.frombuffer(f.read(4), dtype="<i4")[0])
        if not 1 <= dim <= 10000:
            raise ModelFormatError(f"{p}: exp_dim = {dim} is implausible: not an Exp_Pca.bin file")
        body = size - 4
        per_vertex = 4 * 3 * (1 + dim)  # mean + dim components, 3 float32 each
        if body % per_vertex or body == 0:
            raise ModelFormatError(
                f"{p}: {size} bytes does not fit the Exp_Pca.bin layout (4 + 12*M*(exp_dim+1) bytes with exp_dim={dim}; "
                f"51,086,404 for the released file): truncated or another file")
        M = body // per_vertex
        data = np.frombuffer(f.read(body), dtype="<f4")
    mean = data[:3 * M].astype(np.float64).reshape(M, 3)
    basis = data[3 * M:].astype(np.float64).reshape(dim, M, 3).transpose(1, 2, 0)
    sp = Path(std_path) if std_path is not None else p.parent / "std_exp.txt"
    if not sp.is_file():
        raise ModelNotFoundError(f"{sp}: std_exp.txt (the {dim} expression standard deviations, from "
                                 "github.com/Juyong/3DFace) is needed with Exp_Pca.bin; pass std_exp=")
    try:
        std = np.loadtxt(sp, dtype=np.float64, ndmin=1).reshape(-1)
    except ValueError as e:
        raise ModelFormatError(f"{sp}: not a text file of numbers ({e})") from None
    if std.shape != (dim,):
        raise ModelFormatError(f"{sp}: {std.size} standard deviations, Exp_Pca.bin has {dim} components")
    if not np.isfinite(std).all() or (std < 0).any():
        raise ModelFormatError(f"{sp}: standard deviations must be finite and >= 0")
    return mean, basis, std


def _contour_sibling(mapping_path: Path) -> Optional[Path]:
    """eos naming: ``ibug_to_<model>.txt`` -> ``<model>_model_contours.json`` in the same folder."""
    stem = mapping_path.stem
    if stem.startswith("ibug_to_"):
        c = mapping_path.parent / f"{stem[len('ibug_to_'):]}_model_contours.json"
        if c.is_file():
            return c
    return None


def resolve_landmarks(landmarks: LandmarksArg, mean: np.ndarray, contours: Optional[PathLike] = None,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 68 iBUG landmark vertex ids and contour candidates of a BFM model.

    Args:
        landmarks: (68,) 0-based vertex ids; or a text file of 68 whitespace-separated 0-based ids;
            or an eos TOML mapping (``[landmark_mappings]``, e.g. ``ibug_to_bfm2009.txt``), whose
            gaps are filled by :func:`morphable.formats.sfm.ibug68_from_mapping`. Ids refer to the
            file's own vertex numbering (before any trimming).
        mean: (N, 3) mean shape (mm) in the same numbering.
        contours: eos ``*_model_contours.json``; for a mapping file, ``<model>_model_contours.json``
            next to it is used by default.

    Returns:
        (landmarks (68,), contour_right (Cr,), contour_left (Cl,)) int64.
    """
    N = len(mean)
    cr = cl = np.zeros(0, np.int64)
    cpath = Path(contours) if contours is not None else None
    if landmarks is None:
        raise InputError(LANDMARK_HELP)
    if isinstance(landmarks, (str, os.PathLike)):
        p = _need_file(landmarks, "landmark")
        head = p.read_bytes()[:65536]
        if b"[landmark_mappings]" in head:
            cpath = cpath or _contour_sibling(p)
            if cpath is not None:
                cr, cl = read_contours(cpath)
                for c in (cr, cl):
                    if len(c) and (c.min() < 0 or c.max() >= N):
                        raise ModelFormatError(f"{cpath}: contour ids beyond the model's {N} vertices: contours of another model")
            lm = ibug68_from_mapping(read_ibug_mapping(p), mean, cr, cl, source=str(p))
            return lm, cr, cl
        try:
            a = np.loadtxt(p, dtype=np.float64, ndmin=1).reshape(-1)
        except ValueError as e:
            raise ModelFormatError(f"{p}: neither an eos [landmark_mappings] file nor a text file of 68 vertex ids ({e})") from None
        src = str(p)
    else:
        a = np.asarray(landmarks, dtype=np.float64).reshape(-1)
        src = "landmarks"
    if a.shape != (68,) or not np.all(a == np.round(a)):
        raise InputError(f"{src}: need 68 integer vertex ids (0-based), got {a.size} values. {LANDMARK_HELP}")
    lm = a.astype(np.int64)
    if lm.min() < 0 or lm.max() >= N:
        raise InputError(f"{src}: landmark ids must be 0-based in 0..{N - 1}; got {lm.min()}..{lm.max()} "
                         "(1-based ids? ids of another vertex subset?)")
    if cpath is not None:
        cr, cl = read_contours(cpath)
    return lm, cr, cl


def _restrict(keep: np.ndarray, N: int, tri: np.ndarray, lm: np.ndarray, cr: np.ndarray, cl: np.ndarray, what: str):
    """Renumber triangles/landmarks/contours to the vertex subset ``keep`` (0-based ids into N)."""
    new = np.full(N, -1, dtype=np.int64)
    new[keep] = np.arange(len(keep))
    t = new[tri]
    t = t[(t >= 0).all(1)]
    if (new[lm] < 0).any():
        lost = [int(i) + 1 for i in np.nonzero(new[lm] < 0)[0]]
        raise ModelFormatError(f"iBUG landmarks {lost} (1-based) lie on vertices that {what} removes; "
                               "give landmark ids inside the trimmed region")
    return t, new[lm], new[cr][new[cr] >= 0], new[cl][new[cl] >= 0]


# --------------------------------------------------------------------------- BFM 2009
#: MATLAB classes read as plain arrays (mxDOUBLE .. mxUINT64) and the data types they may hold
#: (miINT8 .. miUINT64; 8, 10 and 11 are reserved).
_MAT_NUMERIC_CLASSES = frozenset(range(6, 16))
_MAT_NUMERIC_TYPES = frozenset((1, 2, 3, 4, 5, 6, 7, 9, 12, 13))


def _mat_variables(path: Path) -> Optional[dict]:
    """Walk a MAT v5 file's top-level variables without scipy: ``{name: (class, complex, data type)}``.

    scipy's reader trusts these headers and can crash the process (not raise) on a damaged one,
    e.g. an invalid data type code, a "complex" flag without an imaginary part or a "sparse" class
    without sparse data, so they are checked here first. A cut anywhere (even inside a variable
    the loader does not read) or a malformed header is a :class:`ModelFormatError`. Returns None
    for files that are not MAT v5 (v4, v7.3/HDF5: left to scipy, which refuses them cleanly).
    """
    import struct
    import zlib

    size = path.stat().st_size
    out: dict = {}
    with open(path, "rb") as f:
        head = f.read(128)
        if len(head) < 128 or head[126:128] not in (b"IM", b"MI"):
            return None
        e = "<" if head[126:128] == b"IM" else ">"
        if struct.unpack(e + "H", head[124:126])[0] != 0x0100:  # 0x0200: v7.3 (HDF5)
            return None

        def bad(pos, what):
            return ModelFormatError(f"{path}: damaged MATLAB file: the variable at byte {pos} has {what}; "
                                    "download or export it again")

        def tag(body, off, pos):
            if off + 8 > len(body):
                raise bad(pos, "a cut header")
            t, n = struct.unpack_from(e + "II", body, off)
            if t >> 16:  # small data element: type and size in 4 bytes, data in the next 4
                t, n = t & 0xFFFF, t >> 16  # (both byte orders, as scipy reads them)
                if n > 4:
                    raise bad(pos, "a malformed small data element")
                return t, n, off + 4, off + 8
            return t, n, off + 8, off + 8 + n + (-n % 8)

        pos = 128
        while pos + 8 <= size:
            f.seek(pos)
            dtype, nbytes = struct.unpack(e + "II", f.read(8))
            end = pos + 8 + nbytes
            if pos + 8 + nbytes > size:
                raise ModelFormatError(f"{path}: truncated MATLAB file: a variable at byte {pos} needs {nbytes} bytes, "
                                       f"the file ends {size - pos - 8} bytes later; download it again")
            if dtype == 14:  # miMATRIX elements are padded to 8 bytes; miCOMPRESSED (15) are not
                end += -end % 8
                body, inner = f.read(min(nbytes, 4096)), nbytes
            elif dtype == 15:
                try:
                    raw = zlib.decompressobj().decompress(f.read(min(nbytes, 1 << 20)), 4096 + 8)
                except zlib.error:
                    raise bad(pos, "corrupt compressed data") from None
                if len(raw) < 8 or struct.unpack_from(e + "I", raw)[0] != 14:
                    raise bad(pos, "compressed data that is not a matrix")
                body, inner = raw[8:], struct.unpack_from(e + "I", raw, 4)[0]
            else:
                raise bad(pos, f"data element type {dtype} where a matrix belongs")
            pos = end
            if inner == 0:  # an empty matrix: no header
                continue
            t, n, d, off = tag(body, 0, pos)
            if t != 6 or n != 8 or d + 8 > len(body):
                raise bad(pos, "no array flags")
            flags = struct.unpack_from(e + "I", body, d)[0]
            mclass, cplx = flags & 0xFF, bool(flags >> 11 & 1)
            if mclass != 17:  # every class but mxOPAQUE has dimensions before the name
                t, n, d, off = tag(body, off, pos)
                if t not in (5, 6) or n % 4 or n < 8:
                    raise bad(pos, "malformed dimensions")
            t, n, d, off = tag(body, off, pos)
            if t not in (1, 16) or d + n > len(body):
                raise bad(pos, "a malformed name")
            name = bytes(body[d:d + n]).decode("latin1")
            data_type = None
            if mclass in _MAT_NUMERIC_CLASSES and off < len(body):
                data_type = tag(body, off, pos)[0]
            out[name] = (mclass, cplx, data_type)
        if pos < size:  # 1..7 bytes: the start of a variable header, cut
            raise ModelFormatError(f"{path}: truncated MATLAB file: it ends inside a variable header at byte {pos}; "
                                   "download it again")
    return out


def _check_mat_numeric(path: Path, variables: Optional[dict], names: Sequence[str]) -> None:
    """Refuse, before scipy reads them, variables among ``names`` that are not real numeric matrices."""
    for n in names:
        if variables is None or n not in variables:
            continue
        mclass, cplx, data_type = variables[n]
        if mclass not in _MAT_NUMERIC_CLASSES or cplx or data_type not in _MAT_NUMERIC_TYPES:
            what = "complex" if cplx and mclass in _MAT_NUMERIC_CLASSES else (
                f"of MATLAB class {mclass}" if mclass not in _MAT_NUMERIC_CLASSES else f"of data type {data_type}")
            raise ModelFormatError(f"{path}: {n} is not a real numeric matrix (it is {what}): a damaged file or "
                                   "another program's .mat")


def _numeric(a, name: str, path: Path, expected: str = "BFM 2009's 01_MorphableModel.mat") -> np.ndarray:
    """A MATLAB variable as a numeric array; a cell, struct, string or object is a ModelFormatError."""
    x = np.asarray(a)
    if x.dtype.kind not in "fiub":
        raise ModelFormatError(f"{path}: {name} is not a numeric matrix (it holds {x.dtype} values: a cell, struct "
                               f"or string?); expected {expected}")
    return x


def _loadmat(path: Path, names: Sequence[str]) -> dict:
    import scipy.io as sio

    _check_mat_numeric(path, _mat_variables(path), names)
    try:
        d = sio.loadmat(path, variable_names=list(names))
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files
        raise ModelFormatError(f"{path}: {e}; save it as a v7 .mat (MATLAB: save(..., '-v7'))") from None
    except Exception as e:  # truncated/corrupt files raise ValueError, TypeError, OSError, zlib errors ...
        raise ModelFormatError(f"{path}: not a readable MATLAB .mat file, or truncated ({type(e).__name__}: {e})") from None
    missing = [n for n in names if n not in d]
    if missing:
        raise ModelFormatError(f"{path}: no variable(s) {missing}; expected BFM 2009's 01_MorphableModel.mat "
                               "(shapeMU, shapePC, shapeEV, tl)")
    return d


def load_bfm2009(mat_path: PathLike, exp_pca: Optional[PathLike] = None, std_exp: Optional[PathLike] = None,
                 n_shape: Optional[int] = 100, n_expr: Optional[int] = None,
                 trim_index: Union[PathLike, Sequence[int], np.ndarray, None] = None,
                 landmarks: LandmarksArg = None, contours: Optional[PathLike] = None,
                 exp_mean: bool = False) -> MorphableModel:
    """Load BFM 2009 (``01_MorphableModel.mat``), optionally with Guo et al.'s expression basis.

    Args:
        mat_path: ``01_MorphableModel.mat``.
        exp_pca: ``Exp_Pca.bin``; ``None`` = a shape-only model (0 expression components).
        std_exp: ``std_exp.txt``; default: next to ``exp_pca``.
        n_shape: keep the first ``n_shape`` of the 199 shape components (at most; ``None`` = all).
        n_expr: keep the first ``n_expr`` expression components (at most; ``None`` = all 79).
        trim_index: needed when the expression basis has fewer vertices than the shape model
            (53,215 vs 53,490): 3DDFA's ``BFM_exp_idx.mat`` (``trimIndex``, 1-based), a text file
            or an array. The model is then restricted to those vertices.
        landmarks: 68 iBUG vertex ids in the .mat's numbering, see :func:`resolve_landmarks`.
        contours: eos contour JSON (jaw outline candidates), see :func:`resolve_landmarks`.
        exp_mean: add ``expMU`` to the mean (Deep3DFaceRecon does not).

    Returns:
        MorphableModel, mm, CCW triangles, PCA shape and PCA expression (coefficients ~N(0, 1)).

    Raises:
        ModelNotFoundError: a file is missing. InputError: no/invalid landmarks or component counts.
        ModelFormatError: a file is truncated or of another layout, or the vertex counts disagree.
    """
    path = _need_file(mat_path, "BFM 2009 .mat")
    d = _loadmat(path, ["shapeMU", "shapePC", "shapeEV", "tl"])
    mu, pc, ev, tl = (_numeric(d[k], k, path) for k in ("shapeMU", "shapePC", "shapeEV", "tl"))
    mu, ev = mu.astype(np.float64), ev.astype(np.float64).reshape(-1)
    if mu.ndim != 2 or mu.shape[1] != 1 or mu.shape[0] % 3 or mu.shape[0] == 0:
        raise ModelFormatError(f"{path}: shapeMU is {mu.shape}, expected (3N, 1)")
    N = mu.shape[0] // 3
    if pc.ndim != 2 or pc.shape[0] != 3 * N:
        raise ModelFormatError(f"{path}: shapePC is {pc.shape}, expected ({3 * N}, K)")
    K = pc.shape[1]
    if ev.shape != (K,):
        raise ModelFormatError(f"{path}: shapeEV has {ev.size} values, shapePC {K} columns")
    if tl.ndim != 2 or tl.shape[1] != 3 or not np.isfinite(tl).all() or not np.all(tl == np.round(tl)):
        raise ModelFormatError(f"{path}: tl is {tl.shape} {tl.dtype}, expected (T, 3) integer triangle ids")
    if len(tl) and (tl.min() < 1 or tl.max() > N):
        raise ModelFormatError(f"{path}: tl ids span {tl.min():g}..{tl.max():g}, expected 1-based ids in 1..{N}")
    tl = tl.astype(np.int64)
    ks = _n_components(n_shape, K, "n_shape")
    scale, _ = _unit_scale(mu.reshape(N, 3), str(path))
    mean = mu.reshape(N, 3) * scale
    std = ev[:ks] * scale
    S = (np.asarray(pc[:, :ks], dtype=np.float64) * std).reshape(N, 3, ks)
    tri = tl[:, [0, 2, 1]] - 1  # 1-based, clockwise -> 0-based, counter-clockwise

    lm, cr, cl = resolve_landmarks(landmarks, mean, contours)
    E = np.zeros((N, 3, 0))
    e_std = np.zeros(0)
    if exp_pca is not None:
        emu, epc, estd = read_exp_pca(exp_pca, std_exp)
        M = len(emu)
        ke = _n_components(n_expr, epc.shape[2], "n_expr")
        if trim_index is not None:
            keep = read_trim_index(trim_index, N)
            if len(keep) != M:
                raise ModelFormatError(f"trim index has {len(keep)} vertices, Exp_Pca.bin {M}: they do not belong together")
        elif M == N:
            keep = None
        else:
            raise ModelFormatError(
                f"{exp_pca}: the expression basis has {M} vertices, the shape model {N}. Pass trim_index= "
                f"(CLI: --trim-index) 3DDFA's BFM_exp_idx.mat, whose trimIndex (1-based) maps the {M} vertices to the {N}")
        e_std = estd[:ke] / UM_PER_MM
        E = epc[:, :, :ke] * estd[:ke] / UM_PER_MM
        if keep is not None:
            tri, lm, cr, cl = _restrict(keep, N, tri, lm, cr, cl, "the trim index")
            mean, S = mean[keep], S[keep]
        if exp_mean:
            mean = mean + emu / UM_PER_MM
    info = ModelInfo(name="bfm2009" + ("-exp" if exp_pca is not None else ""), source=str(path), licence=BFM_LICENCE,
                     units="mm", shape_kind="pca", expr_kind="pca",
                     expression_names=[f"exp{k:02d}" for k in range(E.shape[2])])
    return MorphableModel(mean, S, E, tri, lm, info, shape_std=std, expr_std=e_std,
                          contour_right=cr, contour_left=cl)


# --------------------------------------------------------------------------- BFM 2017/2019
def _h5_pca(f, group: str, path: Path):
    try:
        g = f[group]
        mean = np.asarray(g["model/mean"], dtype=np.float64).reshape(-1)
        basis = np.asarray(g["model/pcaBasis"], dtype=np.float64)
        var = np.asarray(g["model/pcaVariance"], dtype=np.float64).reshape(-1)
    except KeyError as e:
        raise ModelFormatError(f"{path}: no {group}/model/{{mean, pcaBasis, pcaVariance}} ({e}); expected a Statismo / "
                               "BFM 2017-2019 .h5") from None
    if mean.size % 3 or mean.size == 0 or basis.ndim != 2 or basis.shape[0] != mean.size or var.shape != (basis.shape[1],):
        raise ModelFormatError(f"{path}: {group} sizes disagree: mean {mean.shape}, pcaBasis {basis.shape}, "
                               f"pcaVariance {var.shape} (expected (3N,), (3N, k), (k,))")
    if (var < 0).any() or not np.isfinite(var).all():
        raise ModelFormatError(f"{path}: {group}/model/pcaVariance must be finite variances >= 0")
    norms = np.linalg.norm(basis, axis=0)
    if len(norms) and np.abs(norms - 1.0).max() > 1e-2:
        raise ModelFormatError(f"{path}: {group}/model/pcaBasis columns are not unit-norm (norms {norms.min():.3g}.."
                               f"{norms.max():.3g}); only orthonormal-basis Statismo files (version >= 0.9) are supported")
    return mean, basis, var


def load_bfm2017(h5_path: PathLike, n_shape: Optional[int] = None, n_expr: Optional[int] = None,
                 landmarks: LandmarksArg = None, contours: Optional[PathLike] = None) -> MorphableModel:
    """Load a BFM 2017/2019 (Statismo) ``.h5`` such as ``model2017-1_bfm_nomouth.h5``.

    Args:
        h5_path: the .h5 file.
        n_shape, n_expr: keep the first components (at most; ``None`` = all; 199 / 100 in BFM 2017).
        landmarks: 68 iBUG vertex ids, see :func:`resolve_landmarks` (eos ships
            ``ibug_to_bfm2017-1_bfm_nomouth.txt``).
        contours: eos contour JSON, see :func:`resolve_landmarks`.

    Returns:
        MorphableModel, mm, PCA shape/expression scaled by sqrt(variance) (coefficients ~N(0, 1));
        ``mean`` includes the expression model's mean. A file without an expression group gives 0
        expression components.
    """
    import h5py

    path = _need_file(h5_path, "BFM .h5")
    try:
        with h5py.File(path, "r") as f:
            mu, B, var = _h5_pca(f, "shape", path)
            try:
                pts = np.asarray(f["shape/representer/points"])
                cells = np.asarray(f["shape/representer/cells"])
            except KeyError as e:
                raise ModelFormatError(f"{path}: no shape/representer/points or cells ({e})") from None
            expr = _h5_pca(f, "expression", path) if "expression" in f else None
    except ModelFormatError:
        raise
    except (OSError, ValueError, TypeError) as e:
        raise ModelFormatError(f"{path}: not a readable HDF5 model file, or truncated ({e})") from None
    N = mu.size // 3
    if pts.ndim != 2 or pts.shape != (3, N):
        raise ModelFormatError(f"{path}: shape/representer/points is {pts.shape}, expected (3, {N})")
    if cells.ndim != 2 or cells.shape[0] != 3 or not np.all(cells == np.round(cells)):
        raise ModelFormatError(f"{path}: shape/representer/cells is {cells.shape}, expected (3, T) integer ids")
    tri = cells.T.astype(np.int64)
    if len(tri) and (tri.min() < 0 or tri.max() >= N):
        raise ModelFormatError(f"{path}: cells span {tri.min()}..{tri.max()}, expected 0-based ids in 0..{N - 1}")
    scale, _ = _unit_scale(mu.reshape(N, 3), str(path))
    ks = _n_components(n_shape, B.shape[1], "n_shape")
    std = np.sqrt(var[:ks]) * scale
    mean = mu.reshape(N, 3) * scale
    S = (B[:, :ks] * std).reshape(N, 3, ks)
    E, e_std = np.zeros((N, 3, 0)), np.zeros(0)
    if expr is not None:
        emu, EB, evar = expr
        if emu.size != mu.size:
            raise ModelFormatError(f"{path}: expression model has {emu.size // 3} vertices, the shape model {N}")
        ke = _n_components(n_expr, EB.shape[1], "n_expr")
        e_std = np.sqrt(evar[:ke]) * scale
        E = (EB[:, :ke] * e_std).reshape(N, 3, ke)
        mean = mean + emu.reshape(N, 3) * scale
    tri = _outward(tri, mean)
    lm, cr, cl = resolve_landmarks(landmarks, mean, contours)
    info = ModelInfo(name=path.stem, source=str(path), licence=BFM_LICENCE, units="mm", shape_kind="pca",
                     expr_kind="pca", expression_names=[f"exp{k:02d}" for k in range(E.shape[2])])
    return MorphableModel(mean, S, E, tri, lm, info, shape_std=std, expr_std=e_std,
                          contour_right=cr, contour_left=cl)
