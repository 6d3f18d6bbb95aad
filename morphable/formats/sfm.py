"""eos / Surrey Face Model (SFM) loader: cereal binary ``.bin`` -> :class:`MorphableModel`.

Files (eos ``share/``): the model ``sfm_shape_3448.bin``, the expression blendshapes
``expression_blendshapes_3448.bin``, the landmark mapping ``ibug_to_sfm.txt`` and the jaw
contour candidates ``sfm_model_contours.json``. The blendshapes, mapping and contours are looked
up next to the model file unless given.

On-disk layout (cereal ``BinaryInputArchive``: little-endian, no padding; eos
``MorphableModel.hpp``/``PcaModel.hpp``/``Blendshape.hpp``/``io/eigen_cerealisation.hpp``):

* Eigen matrix: ``int32 rows, int32 cols``, then ``rows*cols`` float32 in column-major order.
* ``std::vector``/``std::string``/``std::unordered_map``: ``uint64`` length, then the items.
* ``MorphableModel``: ``uint32`` class version (1..4), then ``shape_model``, ``color_model``
  (``PcaModel``), [v>=2: ``optional<variant<PcaModel, vector<Blendshape>>> expression_model``
  = ``bool`` "is empty", ``int32`` variant index, value], [v>=3: ``optional<map<string, int32>>
  landmark_definitions`` = ``bool`` "is empty", ``uint64`` size, (string, int32) pairs],
  ``texture_coordinates`` (``uint64`` count, count x 2 float64), [v>=4:
  ``texture_triangle_indices`` (``uint64`` count, count x 3 int32)]. Versions 2-4 were checked
  on files written by eos-py 1.5.0's ``save_model`` (version 4).
* ``PcaModel``: ``mean`` (3N x 1), ``orthonormal_pca_basis`` (3N x k), ``eigenvalues`` (k x 1,
  variances, mm^2), ``triangle_list`` (``uint64`` T, T x 3 int32, 0-based).
* Blendshapes file: ``uint64`` count, then per blendshape a ``string`` name and an Eigen
  ``deformation`` (3N x 1).

Model formula (eos): ``V = mean + B_ortho (c * sqrt(eigenvalues)) + sum_k e_k blendshape_k``.
Here the basis is stored pre-scaled by ``sqrt(eigenvalues)`` so shape coefficients are ~N(0, 1)
and ``shape_std = sqrt(eigenvalues)`` (mm). Blendshape weights are in ``[0, inf)``. Units are
millimetres, +y up, the face looks along +z (model frame, :mod:`morphable.geometry`); the SFM's
triangles are counter-clockwise seen from outside. eos texture coordinates have their origin at the
image's top-left; the model's ``uv`` uses the OBJ convention (origin bottom-left), ``v = 1 - v_eos``.

Landmarks (:func:`ibug68_from_mapping`): the eos mapping gives iBUG points as vertex ids, except the
jaw (1..8, 10..17, 1-based) and the inner mouth corners (61, 65). The jaw points are filled with
fixed vertices from the contour candidates (3D-style landmarks); the inner mouth corners take the
outer corners' vertices.
"""
from __future__ import annotations

import json
import os
import struct
import tomllib
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import ModelFormatError, ModelNotFoundError
from ..model import ModelInfo, MorphableModel

__all__ = ["load_sfm", "read_eos_model", "read_blendshapes", "read_ibug_mapping", "read_contours",
           "ibug68_from_mapping", "EosModel", "EosPca"]

PathLike = Union[str, os.PathLike]

SFM_LICENCE = ("Surrey Face Model: free for non-commercial use only (commercial use: cvssp.org/facemodel); "
               "eos share/ files Apache-2.0")
_MAX_VERSION = 4


# --------------------------------------------------------------------------- cereal reader
class _Archive:
    """Bounds-checked reader of a cereal binary archive held in memory.

    Every length read from the file is checked against the bytes that are left before anything
    is allocated, so a corrupt header count gives a :class:`ModelFormatError`, never a huge
    allocation.
    """

    def __init__(self, data: bytes, path: Path, kind: str):
        self.buf = data
        self.pos = 0
        self.path = path
        self.kind = kind

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def _fail(self, msg: str):
        raise ModelFormatError(f"{self.path}: {msg} (at byte {self.pos} of {len(self.buf)}): "
                               f"the file is truncated or is not {self.kind}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.left:
            self._fail(f"{what} needs {n} bytes, only {self.left} left")

    def scalar(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def count(self, item_bytes: int, what: str) -> int:
        """A ``uint64`` length prefix whose items (``item_bytes`` each, if fixed) must fit in the file."""
        n = self.scalar("<Q", f"{what} length")
        if item_bytes and n * item_bytes > self.left:
            self._fail(f"{what} claims {n} items ({n * item_bytes} bytes), only {self.left} bytes left")
        return n

    def matrix(self, what: str) -> np.ndarray:
        """An Eigen float32 matrix (rows, cols), column-major on disk."""
        rows = self.scalar("<i", f"{what} rows")
        cols = self.scalar("<i", f"{what} cols")
        if rows < 0 or cols < 0:
            self._fail(f"{what} has negative size {rows}x{cols}")
        n = rows * cols
        self.need(4 * n, f"{what} ({rows}x{cols} float32)")
        a = np.frombuffer(self.buf, dtype="<f4", count=n, offset=self.pos).reshape((rows, cols), order="F")
        self.pos += 4 * n
        return a.astype(np.float32)

    def int_triples(self, what: str) -> np.ndarray:
        n = self.count(12, what)
        a = np.frombuffer(self.buf, dtype="<i4", count=3 * n, offset=self.pos).reshape(n, 3)
        self.pos += 12 * n
        return a.astype(np.int64)

    def string(self, what: str) -> str:
        n = self.count(1, what)
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return s.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(f"{what} is not UTF-8 text")

    def boolean(self, what: str) -> bool:
        b = self.scalar("<B", what)
        if b > 1:
            self._fail(f"{what} is {b}, not a bool")
        return bool(b)

    def end(self) -> None:
        if self.left:
            self._fail(f"{self.left} bytes left over after the last field (wrong layout or class version)")


class EosPca:
    """A parsed eos ``PcaModel`` (file values, unscaled).

    Attributes:
        mean: (3N,) float32, xyz interleaved.
        basis: (3N, k) float32, orthonormal columns.
        eigenvalues: (k,) float32 variances.
        triangles: (T, 3) int64, 0-based.
    """

    def __init__(self, mean, basis, eigenvalues, triangles):
        self.mean, self.basis, self.eigenvalues, self.triangles = mean, basis, eigenvalues, triangles

    @property
    def empty(self) -> bool:
        return self.mean.size == 0


class EosModel:
    """A parsed eos ``MorphableModel`` file (any class version 1..4)."""

    def __init__(self, version: int, shape: EosPca, color: EosPca, expression, texcoords: np.ndarray,
                 landmark_definitions: Optional[dict], texture_triangles: Optional[np.ndarray]):
        self.version = version
        self.shape = shape
        self.color = color
        #: None, an :class:`EosPca`, or a list of (name, (3N,) deformation) blendshapes.
        self.expression = expression
        #: (N, 2) float64 eos texture coordinates (origin top-left), or (0, 2).
        self.texcoords = texcoords
        self.landmark_definitions = landmark_definitions
        self.texture_triangles = texture_triangles


def _read_pca(ar: _Archive, what: str) -> EosPca:
    mean = ar.matrix(f"{what} mean")
    basis = ar.matrix(f"{what} basis")
    ev = ar.matrix(f"{what} eigenvalues")
    tri = ar.int_triples(f"{what} triangle list")
    if mean.size == 0 and basis.size == 0 and ev.size == 0:
        return EosPca(mean.reshape(0), basis.reshape(0, 0), ev.reshape(0), tri)
    if mean.shape[1] != 1 or mean.shape[0] % 3:
        ar._fail(f"{what} mean is {mean.shape[0]}x{mean.shape[1]}, expected 3N x 1")
    if basis.shape[0] != mean.shape[0]:
        ar._fail(f"{what} basis has {basis.shape[0]} rows, the mean {mean.shape[0]}")
    if ev.shape != (basis.shape[1], 1):
        ar._fail(f"{what} eigenvalues are {ev.shape[0]}x{ev.shape[1]}, expected {basis.shape[1]}x1")
    return EosPca(mean[:, 0], basis, ev[:, 0], tri)


def _read_blendshape_list(ar: _Archive, what: str) -> list[tuple[str, np.ndarray]]:
    n = ar.count(8 + 8, what)  # each holds at least a string length and a matrix header
    out = []
    for k in range(n):
        name = ar.string(f"{what} {k} name")
        d = ar.matrix(f"{what} {k} ({name!r}) deformation")
        if d.ndim != 2 or (d.size and d.shape[1] != 1):
            ar._fail(f"{what} {name!r} deformation is {d.shape[0]}x{d.shape[1]}, expected 3N x 1")
        out.append((name, d.reshape(-1)))
    return out


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelNotFoundError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise ModelFormatError(f"{path}: is a folder, expected a {what} file") from None


def read_eos_model(path: PathLike) -> EosModel:
    """Parse an eos ``MorphableModel`` cereal binary (class versions 1-4) without eos.

    Raises:
        ModelNotFoundError: no such file.
        ModelFormatError: truncated file, unknown version, inconsistent sizes or trailing bytes.
    """
    path = Path(path)
    ar = _Archive(_read_bytes(path, "eos model"), path, "an eos MorphableModel cereal binary (.bin)")
    version = ar.scalar("<I", "class version")
    if not 1 <= version <= _MAX_VERSION:
        ar._fail(f"class version {version} is not one of eos MorphableModel's 1..{_MAX_VERSION}")
    shape = _read_pca(ar, "shape model")
    if shape.empty:
        ar._fail("the shape model is empty")
    color = _read_pca(ar, "colour model")
    expression = None
    if version >= 2:
        if not ar.boolean("expression model 'empty' flag"):
            idx = ar.scalar("<i", "expression model variant index")
            if idx == 0:
                expression = _read_pca(ar, "expression model")
            elif idx == 1:
                expression = _read_blendshape_list(ar, "expression blendshape")
            else:
                ar._fail(f"expression model variant index {idx} is neither 0 (PCA) nor 1 (blendshapes)")
    defs = None
    if version >= 3 and not ar.boolean("landmark definitions 'empty' flag"):
        n = ar.count(8 + 4, "landmark definitions")
        defs = {}
        for _ in range(n):
            key = ar.string("landmark definition name")
            defs[key] = ar.scalar("<i", f"landmark definition {key!r}")
    n_tc = ar.count(16, "texture coordinates")
    tc = np.frombuffer(ar.buf, dtype="<f8", count=2 * n_tc, offset=ar.pos).reshape(n_tc, 2).astype(np.float64)
    ar.pos += 16 * n_tc
    tti = ar.int_triples("texture triangle indices") if version >= 4 else None
    ar.end()
    return EosModel(version, shape, color, expression, tc, defs, tti)


def read_blendshapes(path: PathLike) -> list[tuple[str, np.ndarray]]:
    """Parse an eos blendshapes file: a list of (name, (3N,) float32 offset, mm)."""
    path = Path(path)
    ar = _Archive(_read_bytes(path, "eos blendshapes"), path, "an eos blendshapes cereal binary (.bin)")
    out = _read_blendshape_list(ar, "blendshape")
    ar.end()
    return out


# --------------------------------------------------------------------------- landmarks
def read_ibug_mapping(path: PathLike, definitions: Optional[Mapping[str, int]] = None) -> dict[int, int]:
    """Read an eos landmark mapping (TOML ``[landmark_mappings]``, ``"<iBUG 1-based>" = <vertex>``).

    Args:
        path: e.g. eos ``share/ibug_to_sfm.txt``.
        definitions: the model's named landmark definitions, to resolve string values.

    Returns:
        ``{iBUG id (0-based, 0..67): vertex id (0-based)}``.
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ModelNotFoundError(f"{path}: no such landmark mapping file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path}: not an eos landmark mapping (TOML) file ({e})") from None
    table = doc.get("landmark_mappings")
    if not isinstance(table, dict):
        raise ModelFormatError(f"{path}: no [landmark_mappings] table; expected an eos ibug_to_*.txt mapping")
    out = {}
    for k, v in table.items():
        try:
            ibug = int(k) - 1
        except ValueError:
            raise ModelFormatError(f"{path}: landmark key {k!r} is not an iBUG number 1..68") from None
        if isinstance(v, str):
            if not definitions or v not in definitions:
                raise ModelFormatError(f"{path}: iBUG {k} maps to the name {v!r}, which the model does not define")
            v = definitions[v]
        if not 0 <= ibug < 68 or not isinstance(v, int) or v < 0:
            raise ModelFormatError(f"{path}: bad entry {k} = {v!r}: need iBUG 1..68 = vertex id >= 0")
        out[ibug] = v
    return out


def read_contours(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read eos ``*_model_contours.json``: (right (Cr,), left (Cl,)) int64 0-based vertex ids.

    "right" is the subject's right (iBUG jaw points 1..8, image-left in a frontal view).
    """
    path = Path(path)
    try:
        c = json.loads(path.read_text())["model_contour"]
        return (np.asarray(c["right_contour"], dtype=np.int64).reshape(-1),
                np.asarray(c["left_contour"], dtype=np.int64).reshape(-1))
    except FileNotFoundError:
        raise ModelNotFoundError(f"{path}: no such contour file") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ModelFormatError(f"{path}: not an eos model-contour JSON ({{'model_contour': {{'right_contour': [...], "
                               f"'left_contour': [...]}}}}): {e}") from None


def _jaw_from_contour(mean: np.ndarray, cand: np.ndarray, eye_y: float, chin: np.ndarray) -> list[int]:
    """Eight fixed jaw vertices (top to chin) picked from an outline candidate list.

    The outline is ordered top to bottom, starts at the candidate nearest the outer-eye-corner
    height (where iBUG 1/17 sit) and ends at the chin landmark; jaw points k = 0..7 are the
    candidates nearest in arc length to k/8 of that path.
    """
    P = mean[cand]
    if P[0, 1] < P[-1, 1]:
        cand, P = cand[::-1], P[::-1]
    s = int(np.argmin(np.abs(P[:, 1] - eye_y)))
    path = np.vstack([P[s:], chin[None]])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    return [int(cand[s + int(np.argmin(np.abs(arc[:-1] - k * arc[-1] / 8.0)))]) for k in range(8)]


def ibug68_from_mapping(mapping: Mapping[int, int], mean: np.ndarray, contour_right: Sequence[int] = (),
                        contour_left: Sequence[int] = (), source: str = "the landmark mapping") -> np.ndarray:
    """Complete an eos-style iBUG mapping to 68 fixed vertex ids (3D-style landmarks).

    Rules for points the mapping leaves out (iBUG ids 0-based here):

    * jaw 0..7 (subject's right) and 9..16 (left): chosen from ``contour_right``/``contour_left``
      by :func:`_jaw_from_contour` (needs the chin 8 and outer eye corners 36, 45 mapped);
    * inner mouth corners 60 and 64: the vertex of the outer corner 48 resp. 54, the nearest
      mapped mouth point (3.3 mm away on ICT-FaceKit's complete 68-point mean face).

    Args:
        mapping: ``{iBUG id 0..67: vertex id}`` (from :func:`read_ibug_mapping`).
        mean: (N, 3) mean shape, mm, to place the jaw points.
        contour_right, contour_left: outline candidate vertex ids.
        source: named in error messages.

    Returns:
        (68,) int64 vertex ids.

    Raises:
        ModelFormatError: points remain undefined (the message lists them, 1-based).
    """
    lm = np.full(68, -1, dtype=np.int64)
    for k, v in mapping.items():
        lm[k] = v
    N = mean.shape[0]
    if (lm >= N).any():
        bad = [int(i) + 1 for i in np.nonzero(lm >= N)[0]]
        raise ModelFormatError(f"{source}: iBUG points {bad} map to vertices beyond the model's {N}: wrong mapping for this model")
    have = lambda *ids: all(lm[i] >= 0 for i in ids)  # noqa: E731
    for side, jaw, cand, eye in (("right", range(0, 8), contour_right, 36), ("left", range(16, 8, -1), contour_left, 45)):
        missing = [j for j in jaw if lm[j] < 0]
        cand = np.asarray(cand, dtype=np.int64).reshape(-1)
        if missing and len(cand) and have(8, eye) and (cand < N).all():
            picks = _jaw_from_contour(mean, cand, float(mean[lm[eye], 1]), mean[lm[8]])
            for j, v in zip(jaw, picks):
                if lm[j] < 0:
                    lm[j] = v
    for inner, outer in ((60, 48), (64, 54)):
        if lm[inner] < 0 and lm[outer] >= 0:
            lm[inner] = lm[outer]
    if (lm < 0).any():
        miss = [int(i) + 1 for i in np.nonzero(lm < 0)[0]]
        raise ModelFormatError(
            f"{source} leaves iBUG points {miss} (1-based) undefined and they cannot be filled "
            "(the jaw needs contour candidates plus the chin and outer eye corners). Pass landmarks= "
            "(CLI: --landmarks) a text file of 68 0-based vertex ids for this model instead")
    return lm


# --------------------------------------------------------------------------- model
def _sibling(path: Path, names: Sequence[str]) -> Optional[Path]:
    for n in names:
        p = path.parent / n
        if p.is_file():
            return p
    return None


def load_sfm(path_bin: PathLike, blendshapes: Union[PathLike, None, bool] = None,
             mapping: Optional[PathLike] = None, contours: Optional[PathLike] = None) -> MorphableModel:
    """Load an eos / Surrey Face Model ``.bin`` (e.g. ``sfm_shape_3448.bin``).

    Args:
        path_bin: the eos MorphableModel cereal binary (class version 1..4).
        blendshapes: an eos blendshapes file; ``None`` = ``expression_blendshapes_<N>.bin`` next to
            the model if present (and the model has no expression model of its own); ``False`` =
            none (a shape-only model with 0 expression components).
        mapping: eos iBUG mapping (TOML), or a text file of 68 0-based vertex ids; ``None`` =
            ``ibug_to_sfm.txt`` next to the model.
        contours: eos contour candidates JSON; ``None`` = ``sfm_model_contours.json`` next to
            the mapping or the model.

    Returns:
        MorphableModel in mm: shape basis (N, 3, k) scaled by sqrt(eigenvalues) (coefficients
        ~N(0, 1)), ``shape_std = sqrt(eigenvalues)``; expressions as blendshapes (weights
        ``[0, inf)``) or, for an eos PCA expression model, scaled PCA with its mean added to
        ``mean``; 68 landmark vertex ids; jaw contour candidates; per-vertex UVs.

    Raises:
        ModelNotFoundError: the model or the mapping file is missing.
        ModelFormatError: a file is truncated or of another layout, or sizes disagree.
    """
    path = Path(path_bin)
    em = read_eos_model(path)
    sh = em.shape
    N = sh.mean.size // 3
    mean = sh.mean.reshape(N, 3).astype(np.float64)
    if (sh.eigenvalues < 0).any():
        raise ModelFormatError(f"{path}: negative shape eigenvalues; the file is corrupt")
    if len(sh.triangles) and (sh.triangles.min() < 0 or sh.triangles.max() >= N):
        raise ModelFormatError(f"{path}: triangle list indexes beyond the {N} vertices")
    std = np.sqrt(sh.eigenvalues.astype(np.float64))
    S = (sh.basis.astype(np.float64) * std).reshape(N, 3, -1)

    names: list[str] = []
    kind = "blendshape"
    E = np.zeros((N, 3, 0))
    e_std = e_lo = e_hi = None
    expr = em.expression
    if blendshapes is not None and blendshapes is not False:
        expr = read_blendshapes(blendshapes)
    elif blendshapes is None and expr is None:
        bs_path = _sibling(path, [f"expression_blendshapes_{N}.bin"])
        if bs_path is not None:
            expr = read_blendshapes(bs_path)
    elif blendshapes is False:
        expr = None
    if isinstance(expr, EosPca):
        if expr.mean.size != 3 * N:
            raise ModelFormatError(f"{path}: expression model has {expr.mean.size // 3} vertices, the shape model {N}")
        kind = "pca"
        mean = mean + expr.mean.reshape(N, 3)
        e_std = np.sqrt(np.clip(expr.eigenvalues.astype(np.float64), 0, None))
        E = (expr.basis.astype(np.float64) * e_std).reshape(N, 3, -1)
        names = [f"expr{k:02d}" for k in range(E.shape[2])]
    elif expr:
        for nm, d in expr:
            if d.size != 3 * N:
                raise ModelFormatError(f"blendshape {nm!r} has {d.size // 3} vertices, the model {path.name} has {N}: "
                                       "blendshapes of another model resolution")
        names = [nm for nm, _ in expr]
        E = np.stack([d.reshape(N, 3) for _, d in expr], -1).astype(np.float64)
        e_std = np.ones(len(names))
        e_lo, e_hi = np.zeros(len(names)), np.full(len(names), np.inf)

    map_path = Path(mapping) if mapping is not None else _sibling(path, ["ibug_to_sfm.txt"])
    if map_path is None:
        raise ModelNotFoundError(
            f"{path.parent / 'ibug_to_sfm.txt'}: landmark mapping not found next to the model. Copy eos's "
            "share/ibug_to_sfm.txt (and sfm_model_contours.json) beside it or pass mapping=")
    cpath = Path(contours) if contours is not None else (
        _sibling(map_path, ["sfm_model_contours.json"]) or _sibling(path, ["sfm_model_contours.json"]))
    cr, cl = read_contours(cpath) if cpath is not None else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    for nm, c in (("right", cr), ("left", cl)):
        if len(c) and (c.min() < 0 or c.max() >= N):
            raise ModelFormatError(f"{cpath}: {nm} contour indexes beyond the model's {N} vertices: wrong contour file")
    if b"[landmark_mappings]" in _read_bytes(map_path, "landmark mapping")[:65536]:
        lm = ibug68_from_mapping(read_ibug_mapping(map_path, em.landmark_definitions), mean, cr, cl, source=str(map_path))
    else:  # a plain list of 68 0-based vertex ids
        from .bfm import resolve_landmarks

        lm = resolve_landmarks(map_path, mean)[0]

    uv = None
    if len(em.texcoords):
        if len(em.texcoords) != N:
            raise ModelFormatError(f"{path}: {len(em.texcoords)} texture coordinates for {N} vertices")
        uv = np.stack([em.texcoords[:, 0], 1.0 - em.texcoords[:, 1]], 1)
    info = ModelInfo(name=path.stem, source=str(path), licence=SFM_LICENCE, units="mm", shape_kind="pca",
                     expr_kind=kind, expression_names=names)
    return MorphableModel(mean, S, E, sh.triangles, lm, info, shape_std=std, expr_std=e_std,
                          expr_lower=e_lo, expr_upper=e_hi, contour_right=cr, contour_left=cl, uv=uv)
