"""The corruption corpus of issue 8: bad (and tricky-but-good) inputs for every entry point.

``make_corpus(root, seed=0, scale=1.0)`` writes, into ``root``, files and folders of five kinds
and returns the list of :class:`Case` records (also saved as ``root/manifest.json``):

* **image**: truncated and bit-flipped JPEG/PNG (and a few GIF/BMP/TIFF/WebP), zero-byte files,
  text named ``.jpg``, a folder named ``.jpg``, 1x1 and 15x15 images, grey, palette, RGBA,
  16-bit, CMYK and EXIF-rotated images, a 30,000 x 30,000 PNG *header* (a few hundred bytes:
  the pixels are never allocated), noise and flat images (no face), and one photo tiled 30 times;
* **model**: BFM 2009 ``.mat`` with missing / misshaped / wrongly typed variables, v7.3 and
  truncated files; Statismo (BFM 2017) and native ``.h5`` with missing datasets, wrong shapes,
  string or group datasets, bad attributes and truncation; Surrey ``.bin`` truncated, with absurd
  counts, wrong versions and trailing bytes, with broken blendshape / mapping / contour files;
  ICT-FaceKit OBJ folders with a missing identity, expression or index file, an extra file,
  mismatched vertex counts, malformed lines and paths that lead outside the folder;
* **weights**: truncated and bit-flipped weight files, another architecture, other component
  counts, absurd configs, NaN weights, and pickles whose ``__reduce__`` would create a sentinel
  file if anything unpickled them unsafely (it must be refused and the sentinel must not exist);
* **landmarks**: ``fit_landmarks`` inputs with NaN, inf, all points equal, collinear points, zero
  or negative visibility, wrong shapes and dtypes, huge coordinates and float16.

Every random choice comes from ``numpy.random.default_rng(seed)``, so a seed gives the same
bytes. Truncation points and bit flips are sampled (``scale`` multiplies their number: ``scale=1``
gives well over 1,000 bad inputs, ``scale=0.1`` about 200 for the test suite).

:func:`run_case` feeds one case to its entry point and :func:`classify` judges the outcome; the
tests (``tests/test_hardening_*.py``) and the report (``python -m benchmarks.robustness``) share
both, so they agree on what every input means. Expectations:

* ``"error"``: must raise a :class:`morphable.errors.MorphableError` (``error`` names the
  subclass) with a non-empty one-line message;
* ``"ok"``: must load (a good but unusual input; losing it is a failure);
* ``"any"``: either, e.g. a bit flip inside JPEG entropy data decodes to a slightly wrong picture;
* ``"flagged"`` (landmarks): returns finite parameters, every face of the case marked invalid.

Anything else escaping (``IndexError``, ``struct.error``, ``TypeError``...) is a crash.
"""
from __future__ import annotations

import io
import json
import math
import os
import pickle
import shutil
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from morphable.formats.pts import read_pts

REPO = Path(__file__).resolve().parent.parent
FACES_DIR = REPO.parent / "shared" / "data" / "faces68"

#: Component counts of the default model (ICT-FaceKit narrow): the corpus' weight files match it.
DEFAULT_KS, DEFAULT_KE = 100, 53
#: Where the malicious pickles would write if they were ever unpickled (relative to the root).
SENTINEL_DIR = "sentinels"
LM_IDS = np.arange(68) + 70  # landmark vertices of the tiny icosphere models


@dataclass
class Case:
    """One corpus input.

    Attributes:
        id: unique, ``kind/cls/nnn``.
        kind: ``image`` | ``model`` | ``weights`` | ``landmarks``.
        cls: the class of corruption (a row of the report).
        path: file or folder, relative to the corpus root.
        loader: entry point (see :func:`run_case`).
        expect: ``error`` | ``ok`` | ``any`` | ``flagged``.
        error: the expected MorphableError subclass name (``expect == "error"``), or "".
        args: loader options; values ending in a path are relative to the root.
        sentinel: for malicious pickles, the file that unsafe loading would create.
        note: what was done to the file.
    """

    id: str
    kind: str
    cls: str
    path: str
    loader: str
    expect: str
    error: str = ""
    args: dict = field(default_factory=dict)
    sentinel: str = ""
    note: str = ""

    @property
    def bad(self) -> bool:
        """A bad input (must be refused or flagged), as opposed to a good-but-unusual one."""
        return self.expect in ("error", "any", "flagged")


# =========================================================================== mutations
def truncations(data: bytes, n: int, rng: np.random.Generator) -> list[int]:
    """``n`` distinct cut lengths in ``1 .. len(data) - 1``: a third in the first 1 KiB (headers),
    a sixth in the last 64 bytes (trailers), the rest uniform."""
    L = len(data)
    if L < 2 or n <= 0:
        return []
    cuts: set = set()
    tries = 0
    while len(cuts) < min(n, L - 1) and tries < 50 * n:
        tries += 1
        r = rng.random()
        if r < 1 / 3:
            c = int(rng.integers(1, min(1024, L - 1) + 1))
        elif r < 0.5:
            c = int(rng.integers(max(1, L - 64), L))
        else:
            c = int(rng.integers(1, L))
        cuts.add(c)
    return sorted(cuts)


def bitflip(data: bytes, rng: np.random.Generator, head: int = 512) -> tuple[bytes, list[int]]:
    """``data`` with 1, 2, 4 or 8 random bits flipped (half the time all in the first ``head``
    bytes, where the headers are); returns the bytes and the flipped bit positions."""
    b = bytearray(data)
    k = int(rng.choice([1, 2, 4, 8]))
    span = min(head, len(b)) if rng.random() < 0.5 else len(b)
    bits = sorted(int(p) for p in rng.integers(0, 8 * span, size=k))
    for p in bits:
        b[p // 8] ^= 1 << (p % 8)
    return bytes(b), bits


def _count(base: int, scale: float) -> int:
    return max(1, int(round(base * scale)))


# =========================================================================== pictures
def face_photos(faces_dir: Optional[Path] = None) -> list[Path]:
    """The faces68 photos (``.jpg`` with a ``.pts``) beside the checkout, sorted; [] if absent."""
    d = Path(faces_dir) if faces_dir is not None else FACES_DIR
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.jpg") if p.with_suffix(".pts").is_file())


def _synthetic_photo(h=240, w=200, seed=0) -> np.ndarray:
    """A smooth picture with structure (used when ../shared is absent)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([128 + 100 * np.sin(x / 17.0 + seed), 128 + 100 * np.cos(y / 23.0), (x + y) % 256], -1)
    a += rng.normal(0, 8, a.shape)
    return np.clip(a, 0, 255).astype(np.uint8)


def _base_photo(faces_dir: Optional[Path], k: int = 0) -> np.ndarray:
    from PIL import Image, ImageOps

    photos = face_photos(faces_dir)
    if photos:
        with Image.open(photos[k % len(photos)]) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    return _synthetic_photo(seed=k)


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    im = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def png_bomb_header(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG signature + IHDR declaring ``width x height`` RGB pixels, a tiny IDAT and IEND:
    a few dozen bytes that would decode to width*height*3 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def tiled_faces(faces_dir: Optional[Path] = None, n: int = 30, cols: int = 6, tile: int = 128) -> np.ndarray:
    """One face photo cut around its landmarks and tiled ``n`` times (``cols`` per row)."""
    import cv2

    photos = face_photos(faces_dir)
    if photos:
        img = _base_photo(faces_dir, 0)
        pts = read_pts(photos[0].with_suffix(".pts"))
        lo, hi = pts.min(0), pts.max(0)
        c, side = (lo + hi) / 2, 1.6 * float((hi - lo).max())
        x0, y0 = int(max(c[0] - side / 2, 0)), int(max(c[1] - side / 2, 0))
        crop = img[y0:y0 + int(side), x0:x0 + int(side)]
    else:
        crop = _synthetic_photo(tile, tile)
    t = cv2.resize(np.ascontiguousarray(crop), (tile, tile), interpolation=cv2.INTER_AREA)
    rows = math.ceil(n / cols)
    out = np.full((rows * tile, cols * tile, 3), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        out[r * tile:(r + 1) * tile, q * tile:(q + 1) * tile] = t
    return out


# =========================================================================== tiny models
def _icosphere():
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=2, radius=75.0)  # 162 vertices, mm, CCW outward
    return np.asarray(m.vertices, dtype=np.float64), np.asarray(m.faces, dtype=np.int64)


def tiny_model(n_shape: int = 3, n_expr: int = 2, blendshapes: bool = True):
    """A 162-vertex :class:`MorphableModel` (icosphere, 68 landmarks on vertices 70..137)."""
    from morphable.model import ModelInfo, MorphableModel

    V, F = _icosphere()
    N = len(V)
    S = np.zeros((N, 3, n_shape))
    for k in range(n_shape):
        S[10 * k + 5, k % 3, k] = 2.0
    E = np.zeros((N, 3, n_expr))
    for k in range(n_expr):
        E[10 * k + 7, (k + 1) % 3, k] = 5.0
    kind = "blendshape" if blendshapes else "pca"
    info = ModelInfo(name="tiny-sphere", source="tests/corruption.py", licence="test data", units="mm",
                     shape_kind="pca", expr_kind=kind, expression_names=[f"e{k}" for k in range(n_expr)])
    lo = np.zeros(n_expr) if blendshapes else None
    hi = np.ones(n_expr) if blendshapes else None
    return MorphableModel(V, S, E, F, LM_IDS, info, expr_lower=lo, expr_upper=hi)


def _write_statismo(path: Path, drop=(), replace: Optional[dict] = None, expression: bool = True) -> None:
    """A BFM 2017/2019 Statismo .h5 of the icosphere (mm); ``drop`` dataset paths, ``replace``
    {dataset path: array or callable(h5 file, path)}."""
    import h5py

    V, F = _icosphere()
    N = len(V)
    rng = np.random.default_rng(7)
    Q, _ = np.linalg.qr(rng.normal(size=(3 * N, 3)))
    Qe, _ = np.linalg.qr(rng.normal(size=(3 * N, 2)))
    data = {
        "shape/model/mean": V.reshape(-1).astype(np.float32),
        "shape/model/pcaBasis": Q.astype(np.float32),
        "shape/model/pcaVariance": np.array([16.0, 4.0, 1.0], np.float32),
        "shape/representer/points": V.T.astype(np.float32),
        "shape/representer/cells": F.T.astype(np.int32),
    }
    if expression:
        data.update({"expression/model/mean": np.zeros(3 * N, np.float32),
                     "expression/model/pcaBasis": Qe.astype(np.float32),
                     "expression/model/pcaVariance": np.array([9.0, 1.0], np.float32)})
    replace = replace or {}
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if k in drop:
                continue
            if k in replace:
                r = replace[k]
                if callable(r):
                    r(f, k)
                else:
                    f.create_dataset(k, data=r)
            else:
                f.create_dataset(k, data=v)
        for k, r in replace.items():  # extra entries
            if k not in data:
                r(f, k) if callable(r) else f.create_dataset(k, data=r)


def _write_native(path: Path, model=None, edit: Optional[Callable] = None) -> None:
    """save_native of the tiny model, then ``edit(h5py.File)`` in place."""
    import h5py

    from morphable.formats.native import save_native

    save_native(model if model is not None else tiny_model(), path)
    if edit is not None:
        with h5py.File(path, "r+") as f:
            edit(f)


# ----------------------------------------------------------------------------- eos cereal
def _mat32(a) -> bytes:
    a = np.asarray(a, dtype=np.float32)
    a = a.reshape(-1, 1) if a.ndim == 1 else a
    return struct.pack("<ii", *a.shape) + a.tobytes(order="F")


def _pca32(mean, basis, ev, tri) -> bytes:
    tri = np.asarray(tri, dtype=np.int32).reshape(-1, 3)
    return _mat32(mean) + _mat32(basis) + _mat32(ev) + struct.pack("<Q", len(tri)) + tri.tobytes()


_EMPTY_PCA = struct.pack("<ii", 0, 1) + struct.pack("<ii", 0, 0) + struct.pack("<ii", 0, 1) + struct.pack("<Q", 0)


def _cstring(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def sfm_bytes() -> tuple[bytes, bytes]:
    """(model .bin, blendshapes .bin) of a version-1 eos model on the icosphere."""
    V, F = _icosphere()
    N = len(V)
    B = np.zeros((3 * N, 3))
    B[3 * 5 + 1, 0] = B[3 * 7 + 0, 1] = B[3 * 9 + 2, 2] = 1.0
    ev = np.array([16.0, 4.0, 1.0])
    tc = np.stack([np.linspace(0, 1, N), np.linspace(1, 0, N) ** 2], 1)
    model = (struct.pack("<I", 1) + _pca32(V.reshape(-1), B, ev, F) + _EMPTY_PCA
             + struct.pack("<Q", N) + tc.astype("<f8").tobytes())
    d0 = np.zeros(3 * N)
    d0[3 * 5 + 2] = 10.0
    d1 = np.zeros(3 * N)
    d1[3 * 9 + 0] = -3.0
    bs = struct.pack("<Q", 2) + _cstring("smile") + _mat32(d0) + _cstring("frown") + _mat32(d1)
    return model, bs


def _sfm_mapping() -> str:
    return "[landmark_mappings]\n" + "".join(f'"{i + 1}" = {i + 20}\n' for i in range(68))


# ----------------------------------------------------------------------------- ICT folder
def _obj_v(V: np.ndarray) -> str:
    return "".join(f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in V)


def write_ict_folder(folder: Path, n_id: int = 3, expressions=("jawOpen", "browDown_L")) -> None:
    """An ICT-FaceKit-layout folder (cm, OBJ morph targets) on the icosphere; load with region="full"."""
    V, F = _icosphere()
    V = V / 10.0  # cm
    folder.mkdir(parents=True, exist_ok=True)
    vt = np.c_[(V[:, 0] - V[:, 0].min()) / np.ptp(V[:, 0]), (V[:, 1] - V[:, 1].min()) / np.ptp(V[:, 1])]
    text = _obj_v(V) + "".join(f"vt {u:.6f} {v:.6f}\n" for u, v in vt)
    text += "".join(f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}\n" for a, b, c in F)
    (folder / "generic_neutral_mesh.obj").write_text(text)
    for k in range(n_id):
        W = V.copy()
        W[10 * k + 3, k % 3] += 0.2
        (folder / f"identity{k:03d}.obj").write_text(_obj_v(W))
    for k, name in enumerate(expressions):
        W = V.copy()
        W[10 * k + 4, 1] -= 0.3
        (folder / f"{name}.obj").write_text(_obj_v(W))
    (folder / "vertex_indices.json").write_text(json.dumps(
        {"expressions": list(expressions), "idx_to_landmark_verts": [int(i) for i in LM_IDS]}))


# ----------------------------------------------------------------------------- weights
class _Pwn:
    """Unpickling this object calls ``open(sentinel, "w")``: proof that code ran."""

    def __init__(self, sentinel: str):
        self.sentinel = sentinel

    def __reduce__(self):
        import builtins

        return (builtins.open, (self.sentinel, "w"))


def malicious_pickle(path: Path, sentinel: Path, how: str = "pickle") -> None:
    """Write a file that creates ``sentinel`` when unpickled without ``weights_only``.

    ``how``: ``pickle`` (a plain pickle of a weight-like dict), ``torch`` (``torch.save``'s zip
    format), ``torch-legacy`` (the pre-1.6 non-zip torch format).
    """
    payload = {"format": "morphable-regressor", "version": 1, "config": {"arch": "mobilenet"},
               "state_dict": {"x": _Pwn(str(sentinel))}}
    if how == "pickle":
        Path(path).write_bytes(pickle.dumps(payload, protocol=2))
        return
    import torch

    torch.save(payload, path, _use_new_zipfile_serialization=(how == "torch"))


def tiny_regressor(n_shape: int = DEFAULT_KS, n_expr: int = DEFAULT_KE, arch: str = "mobilenet",
                   width: float = 0.25, seed: int = 0, expr_lower=None, expr_upper=None, model_name: str = ""):
    """A randomly initialised regressor (stand-in for the weights being trained)."""
    import torch

    from regressors.networks import Regressor, RegressorConfig

    torch.manual_seed(seed)
    cfg = RegressorConfig(arch=arch, width=width, n_shape=n_shape, n_expr=n_expr, model_name=model_name,
                          depth=10 if arch == "resnet" else 18)
    return Regressor(cfg, expr_lower=expr_lower, expr_upper=expr_upper)


def save_tiny_regressor(path: Path, model=None, seed: int = 0, **kw) -> Path:
    """Save :func:`tiny_regressor` (with ``model``'s Ks/Ke and bounds if given) to ``path``."""
    from regressors.weights import save_regressor

    if model is not None:
        kw.setdefault("n_shape", model.n_shape)
        kw.setdefault("n_expr", model.n_expr)
        kw.setdefault("expr_lower", model.expr_lower)
        kw.setdefault("expr_upper", model.expr_upper)
        kw.setdefault("model_name", model.name)
    save_regressor(tiny_regressor(seed=seed, **kw), path)
    return Path(path)


# =========================================================================== the corpus
class _Builder:
    def __init__(self, root: Path, seed: int, scale: float):
        self.root = Path(root)
        self.rng = np.random.default_rng(seed)
        self.scale = scale
        self.cases: list[Case] = []
        self.counts: dict = {}

    def add(self, kind, cls, rel, loader, expect, error="", args=None, sentinel="", note="") -> Case:
        n = self.counts.get((kind, cls), 0)
        self.counts[(kind, cls)] = n + 1
        c = Case(f"{kind}/{cls}/{n:03d}", kind, cls, str(rel), loader, expect, error, dict(args or {}), sentinel, note)
        self.cases.append(c)
        return c

    def file(self, sub: str, name: str, data: bytes) -> str:
        p = self.root / sub / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return str(p.relative_to(self.root))

    def mutants(self, kind, cls_prefix, sub, stem, suffix, data, loader, n_trunc, n_flip, trunc_expect="error",
                error="", args=None, flip_expect="any", tail_ok=0, base: Optional[str] = None):
        """Sampled truncations (``<prefix>-truncated``) and bit flips (``<prefix>-bitflip``) of ``data``;
        cutting only the last ``tail_ok`` bytes (a trailer no decoder needs) may load.

        ``base``: ``data``'s own file in the corpus; the mutants are then not written but derived
        from it when run (``args["derive"]``, see :func:`materialize`): megabyte weight files."""
        same = None
        if tail_ok:  # what a tail-cut file must decode to if it loads at all
            same = self.file(sub, f"{stem}.orig{suffix}", data)

        def out(name, b, recipe):
            if base is None:
                return self.file(sub, name, b), {}
            return f"scratch/{sub}/{name}", {"derive": dict(base=base, **recipe)}

        for cut in truncations(data, _count(n_trunc, self.scale), self.rng):
            rel, extra = out(f"{stem}.cut{cut}{suffix}", data[:cut], {"cut": cut})
            exp = "any" if cut >= len(data) - tail_ok else trunc_expect
            a = dict(args or {}, **extra, **({"same_as": same} if exp == "any" and same else {}))
            self.add(kind, f"{cls_prefix}-truncated", rel, loader, exp, error if exp == "error" else "", a,
                     note=f"first {cut} of {len(data)} bytes")
        for i in range(_count(n_flip, self.scale)):
            b, bits = bitflip(data, self.rng)
            rel, extra = out(f"{stem}.flip{i:03d}{suffix}", b, {"bits": bits})
            self.add(kind, f"{cls_prefix}-bitflip", rel, loader, flip_expect, error if flip_expect == "error" else "",
                     dict(args or {}, **extra), note=f"bits {bits[:8]} flipped")


def make_corpus(root, seed: int = 0, scale: float = 1.0, faces_dir: Optional[Path] = None,
                kinds=("image", "model", "weights", "landmarks")) -> list[Case]:
    """Write the corpus into ``root`` (created) and return its cases (also ``root/manifest.json``).

    Args:
        root: output folder.
        seed: every sampled truncation and bit flip derives from it.
        scale: multiplies the number of sampled truncations/flips (1.0: >= 1,000 bad inputs).
        faces_dir: face photos with ``.pts`` (default ``../shared/data/faces68``; synthetic
            pictures without it).
        kinds: which parts to write.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / SENTINEL_DIR).mkdir(exist_ok=True)
    b = _Builder(root, seed, scale)
    if "image" in kinds:
        _images(b, faces_dir)
    if "model" in kinds:
        _models(b)
    if "weights" in kinds:
        _weights(b)
    if "landmarks" in kinds:
        _landmarks(b, faces_dir)
    (root / "manifest.json").write_text(json.dumps([asdict(c) for c in b.cases], indent=0))
    return b.cases


def load_manifest(root) -> list[Case]:
    return [Case(**d) for d in json.loads((Path(root) / "manifest.json").read_text())]


# ----------------------------------------------------------------------------- images
def _images(b: _Builder, faces_dir) -> None:
    from PIL import Image

    E = "InputError"
    photo = _base_photo(faces_dir, 0)
    photo2 = _base_photo(faces_dir, 3)
    jpg = _encode(photo, "JPEG", quality=90)
    jpg2 = _encode(photo2, "JPEG", quality=75, progressive=True)
    small = np.ascontiguousarray(photo[::4, ::4])
    png = _encode(small, "PNG")
    # the last 2 bytes of a JPEG (EOI marker) and 32 of a PNG (end of the last deflate block, zlib
    # adler32, IDAT CRC, IEND) may be lost without losing a pixel: such cuts may load, as the same picture
    b.mutants("image", "jpeg", "img/jpeg", "face", ".jpg", jpg, "image", 80, 80, error=E, tail_ok=2)
    b.mutants("image", "jpeg-progressive", "img/jpeg", "prog", ".jpg", jpg2, "image", 40, 40, error=E, tail_ok=2)
    b.mutants("image", "png", "img/png", "face", ".png", png, "image", 100, 100, error=E, tail_ok=32)
    others = [("gif", ".gif", _encode(small, "GIF")), ("bmp", ".bmp", _encode(small, "BMP")),
              ("tiff", ".tiff", _encode(small, "TIFF")), ("webp", ".webp", _encode(small, "WEBP"))]
    for name, suf, data in others:
        # GIF/BMP/TIFF decoders may fill a cut tail: a truncation is "any" there; never a crash
        b.mutants("image", name, f"img/{name}", "face", suf, data, "image", 15, 15, trunc_expect="any")

    def one(cls, name, data, expect, error="", note="", **args):
        rel = b.file("img/special", name, data)
        b.add("image", cls, rel, "image", expect, error, args, note=note)

    one("empty", "empty.jpg", b"", "error", E, "0 bytes")
    one("empty", "empty.png", b"", "error", E, "0 bytes")
    one("not-an-image", "notes.jpg", b"This is a text file, not a JPEG.\n" * 3, "error", E, "text named .jpg")
    one("not-an-image", "page.png", b"<!DOCTYPE html><html><body>404</body></html>\n", "error", E, "HTML named .png")
    one("not-an-image", "elf.jpg", b"\x7fELF\x02\x01\x01" + bytes(200), "error", E, "binary named .jpg")
    one("not-an-image", "header-only.jpg", b"\xff\xd8\xff\xe0", "error", E, "JPEG SOI + APP0 marker only")
    one("not-an-image", "signature-only.png", b"\x89PNG\r\n\x1a\n", "error", E, "PNG signature only")
    (b.root / "img/special/folder.jpg").mkdir(parents=True, exist_ok=True)
    b.add("image", "not-an-image", "img/special/folder.jpg", "image", "error", E, note="a folder named .jpg")
    one("too-small", "1x1.png", _encode(np.zeros((1, 1, 3), np.uint8), "PNG"), "error", E, "1x1 pixels")
    one("too-small", "15x15.jpg", _encode(small[:15, :15], "JPEG"), "error", E, "15x15 pixels")
    one("too-small", "1x4000.png", _encode(np.zeros((1, 4000, 3), np.uint8), "PNG"), "error", E, "1 row")
    one("bomb", "bomb30k.png", png_bomb_header(30000, 30000), "error", E, "30000x30000 header, 0.9 Gpx")
    one("bomb", "bomb-wide.png", png_bomb_header(2**31 - 1, 1), "error", E, "2^31-1 x 1 header")
    one("bomb", "bomb-small-limit.png", png, "error", E, "a real image over max_pixels=1000", max_pixels=1000)
    # good but unusual: must load, as (H, W, 3) uint8
    h, w = small.shape[:2]
    grey = np.asarray(Image.fromarray(small).convert("L"))
    one("unusual-ok", "grey.png", _encode(grey, "PNG"), "ok", note="8-bit grey", shape=[h, w])
    one("unusual-ok", "grey.jpg", _encode(grey, "JPEG"), "ok", note="grey JPEG", shape=[h, w])
    g16 = (grey.astype(np.uint16) * 257)
    one("unusual-ok", "grey16.png", _encode(Image.fromarray(g16), "PNG"), "ok", note="16-bit grey PNG",
        shape=[h, w])
    try:  # 16-bit RGB PNG via OpenCV (Pillow cannot write it)
        import cv2

        ok, buf = cv2.imencode(".png", (small[:, :, ::-1].astype(np.uint16) * 257))
        if ok:
            one("unusual-ok", "rgb16.png", buf.tobytes(), "ok", note="16-bit RGB PNG", shape=[h, w])
    except ImportError:  # pragma: no cover
        pass
    one("unusual-ok", "cmyk.jpg", _encode(Image.fromarray(small).convert("CMYK"), "JPEG"), "ok", note="CMYK JPEG",
        shape=[h, w])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    one("unusual-ok", "exif-rot6.jpg", _encode(small, "JPEG", exif=exif.tobytes()), "ok",
        note="EXIF orientation 6: loads as W x H", shape=[w, h])
    exif[0x0112] = 3
    one("unusual-ok", "exif-rot3.jpg", _encode(small, "JPEG", exif=exif.tobytes()), "ok", note="EXIF orientation 3",
        shape=[h, w])
    pal = Image.fromarray(small).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    one("unusual-ok", "palette-transparent.png", _encode(pal, "PNG", transparency=0), "ok", note="palette + tRNS",
        shape=[h, w])
    rgba = np.dstack([small, np.full((h, w), 128, np.uint8)])
    one("unusual-ok", "rgba.png", _encode(rgba, "PNG"), "ok", note="RGBA", shape=[h, w])
    one("unusual-ok", "wrong-extension.png", jpg, "ok", note="a JPEG named .png", shape=list(photo.shape[:2]))
    one("unusual-ok", "16x16.png", _encode(small[:16, :16], "PNG"), "ok", note="the smallest accepted", shape=[16, 16])
    rng = np.random.default_rng(b.rng.integers(2**31))
    one("no-face", "noise.png", _encode(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), "PNG"), "ok",
        note="uniform noise: loads, no face", shape=[240, 320], face=False)
    one("no-face", "flat.png", _encode(np.full((240, 320, 3), 127, np.uint8), "PNG"), "ok",
        note="flat grey: loads, no face", shape=[240, 320], face=False)
    tiles = tiled_faces(faces_dir)
    one("many-faces", "faces30.jpg", _encode(tiles, "JPEG", quality=92), "ok", note="one face tiled 30 times",
        shape=list(tiles.shape[:2]), face=True, faces=30)


# ----------------------------------------------------------------------------- models
def _models(b: _Builder) -> None:
    import h5py

    F_ = "ModelFormatError"
    root = b.root
    (root / "model").mkdir(exist_ok=True)
    lm_rel = b.file("model", "lm68.txt", ("\n".join(str(int(i)) for i in LM_IDS) + "\n").encode())
    V, F = _icosphere()
    N = len(V)

    # ---------------------------------------------------------------- BFM 2009 .mat
    def mat(name, expect="error", error=F_, note="", **override):
        p = root / "model/bfm2009" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        compress = override.pop("__compress__", False)
        import scipy.io as sio

        base = {"shapeMU": (V * 1000.0).reshape(-1, 1).astype(np.float32)}
        pc = np.zeros((3 * N, 4), np.float32)
        for k in range(4):
            pc[3 * (10 * k + 10) + k % 3, k] = 1.0
        base.update({"shapePC": pc, "shapeEV": np.array([[2000.0], [1000.0], [500.0], [250.0]], np.float32),
                     "tl": (F[:, [0, 2, 1]] + 1).astype(np.float64), "texMU": np.full((3 * N, 1), 128, np.float32)})
        for k, v in override.items():
            if v is None:
                base.pop(k, None)
            else:
                base[k] = v
        sio.savemat(p, base, do_compression=compress)
        rel = str(p.relative_to(root))
        b.add("model", "bfm2009-layout" if expect == "error" else "bfm2009-ok", rel, "bfm2009", expect,
              error if expect == "error" else "", {"landmarks": lm_rel}, note=note)
        return p

    good = mat("good.mat", expect="ok", note="valid 162-vertex BFM 2009 layout")
    mat("good-compressed.mat", expect="ok", note="valid, zlib-compressed", __compress__=True)
    for var in ("shapeMU", "shapePC", "shapeEV", "tl"):
        mat(f"no-{var}.mat", note=f"{var} missing", **{var: None})
    mat("mu-3n+1.mat", note="shapeMU (3N+1, 1)", shapeMU=np.zeros((3 * N + 1, 1), np.float32))
    mat("mu-n-by-3.mat", note="shapeMU (N, 3)", shapeMU=(V * 1000).astype(np.float32))
    mat("mu-empty.mat", note="shapeMU empty", shapeMU=np.zeros((0, 1), np.float32))
    mat("mu-nan.mat", note="NaN in shapeMU", shapeMU=np.full((3 * N, 1), np.nan, np.float32))
    mat("mu-string.mat", note="shapeMU is a string", shapeMU="not numbers")
    mat("mu-cell.mat", note="shapeMU is a cell array", shapeMU=np.array([np.zeros(3), np.ones(5)], dtype=object))
    mat("mu-struct.mat", note="shapeMU is a struct", shapeMU={"a": np.zeros(3), "b": "x"})
    mat("mu-units.mat", note="a 1-unit-wide face: no plausible units", shapeMU=(V / 150.0).reshape(-1, 1).astype(np.float32))
    mat("pc-rows.mat", note="shapePC has 3N-3 rows", shapePC=np.zeros((3 * N - 3, 4), np.float32))
    mat("pc-1d.mat", note="shapePC 1-D", shapePC=np.zeros(3 * N, np.float32).reshape(1, -1))
    mat("ev-count.mat", note="shapeEV 3 values for 4 components", shapeEV=np.ones((3, 1), np.float32))
    mat("tl-zero-based.mat", note="tl 0-based", tl=F.astype(np.float64))
    mat("tl-range.mat", note="tl id beyond N", tl=np.r_[F + 1, [[1, 2, N + 5]]].astype(np.float64))
    mat("tl-fraction.mat", note="tl not integer", tl=(F + 1.5).astype(np.float64))
    mat("tl-quads.mat", note="tl (T, 4)", tl=np.c_[F + 1, F[:, :1] + 1].astype(np.float64))
    mat("tl-string.mat", note="tl is a string", tl="1 2 3")
    data = good.read_bytes()
    b.mutants("model", "bfm2009-mat", "model/bfm2009", "good", ".mat", data, "bfm2009", 40, 40, error=F_,
              args={"landmarks": lm_rel})
    cdata = (root / "model/bfm2009/good-compressed.mat").read_bytes()
    b.mutants("model", "bfm2009-mat-compressed", "model/bfm2009", "goodz", ".mat", cdata, "bfm2009", 20, 20, error=F_,
              args={"landmarks": lm_rel})
    p73 = root / "model/bfm2009/v73.mat"
    with h5py.File(p73, "w", userblock_size=512) as f:
        f.create_dataset("shapeMU", data=np.zeros((1, 3 * N), np.float32))
    with open(p73, "r+b") as fh:  # MATLAB 7.3 header in the user block
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .".ljust(116)
                 + bytes(8) + b"\x00\x02IM")
    b.add("model", "bfm2009-layout", str(p73.relative_to(root)), "bfm2009", "error", F_, {"landmarks": lm_rel},
          note="MATLAB v7.3 (HDF5) .mat")
    for name, d in (("empty.mat", b""), ("text.mat", b"MATLAB is not here\n" * 4)):
        rel = b.file("model/bfm2009", name, d)
        b.add("model", "bfm2009-layout", rel, "bfm2009", "error", F_, {"landmarks": lm_rel}, note=name)

    # ---------------------------------------------------------------- Exp_Pca.bin
    def exp(name, data, expect="error", note=""):
        rel = b.file("model/exppca", name, data)
        (root / "model/exppca/std_exp.txt").write_text("3000\n1500\n")
        b.add("model", "exp-pca", rel, "exp_pca", expect, F_ if expect == "error" else "", note=note)

    mu = np.zeros(3 * 10, np.float32)
    pcs = np.zeros((2, 3 * 10), np.float32)
    exp_good = np.array([2], "<i4").tobytes() + mu.tobytes() + pcs.tobytes()
    exp("good.bin", exp_good, "ok", "2 components, 10 vertices")
    exp("dim-huge.bin", np.array([2**30], "<i4").tobytes() + exp_good[4:], note="exp_dim 2^30")
    exp("dim-negative.bin", np.array([-5], "<i4").tobytes() + exp_good[4:], note="exp_dim -5")
    exp("short.bin", exp_good[:3], note="3 bytes")
    exp("odd-size.bin", exp_good[:-2], note="2 bytes short")
    for cut in truncations(exp_good, _count(10, b.scale), b.rng):
        whole = (cut - 4) % (12 * 3) == 0 and cut > 4  # a whole number of vertices: a valid, smaller file
        exp(f"cut{cut}.bin", exp_good[:cut], "any" if whole else "error", note=f"first {cut} bytes")

    # ---------------------------------------------------------------- Statismo .h5
    def st(name, expect="error", note="", **kw):
        p = root / "model/bfm2017" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        _write_statismo(p, **kw)
        b.add("model", "statismo-layout" if expect == "error" else "statismo-ok", str(p.relative_to(root)), "bfm2017",
              expect, F_ if expect == "error" else "", {"landmarks": lm_rel}, note=note)
        return p

    sgood = st("good.h5", "ok", "valid Statismo layout")
    st("no-expression.h5", "ok", "no expression group: shape-only", expression=False)
    for ds in ("shape/model/mean", "shape/model/pcaBasis", "shape/model/pcaVariance", "shape/representer/points",
               "shape/representer/cells", "expression/model/pcaBasis"):
        st(f"no-{ds.replace('/', '-')}.h5", note=f"{ds} missing", drop=(ds,))
    st("points-transposed.h5", note="points (N, 3)", replace={"shape/representer/points": V.astype(np.float32)})
    st("cells-range.h5", note="cell id N", replace={"shape/representer/cells": np.c_[F.T, [[0], [1], [N]]].astype(np.int32)})
    st("cells-float.h5", note="cells 0.5", replace={"shape/representer/cells": (F.T + 0.5).astype(np.float32)})
    st("variance-negative.h5", note="negative variance", replace={"shape/model/pcaVariance": np.array([16, -4, 1], np.float32)})
    st("variance-count.h5", note="2 variances, 3 components", replace={"shape/model/pcaVariance": np.array([16, 4], np.float32)})
    st("basis-not-unit.h5", note="pcaBasis columns of norm 5", replace={"shape/model/pcaBasis": np.full((3 * N, 3), 5 / np.sqrt(3 * N), np.float32)})
    st("mean-string.h5", note="mean is a string dataset",
       replace={"shape/model/mean": lambda f, k: f.create_dataset(k, data=np.array([b"a", b"b", b"c"]))})
    st("mean-vlen.h5", note="mean is variable-length strings",
       replace={"shape/model/mean": lambda f, k: f.create_dataset(k, data=["x" * 3] * 6, dtype=h5py.string_dtype())})
    st("mean-group.h5", note="mean is a group", replace={"shape/model/mean": lambda f, k: f.create_group(k)})
    st("mean-compound.h5", note="mean is a compound dataset",
       replace={"shape/model/mean": lambda f, k: f.create_dataset(k, data=np.zeros(3 * N, dtype=[("a", "<f4"), ("b", "<i4")]))})
    st("shape-is-dataset.h5", note="'shape' is a dataset", drop=tuple(k for k in (
        "shape/model/mean", "shape/model/pcaBasis", "shape/model/pcaVariance", "shape/representer/points",
        "shape/representer/cells")), replace={"shape": np.zeros(3)})
    st("expr-size.h5", note="expression model of another resolution",
       replace={"expression/model/mean": np.zeros(3 * (N - 1), np.float32),
                "expression/model/pcaBasis": np.zeros((3 * (N - 1), 2), np.float32)})
    st("mean-nan.h5", note="NaN mean", replace={"shape/model/mean": np.full(3 * N, np.nan, np.float32)})
    b.mutants("model", "statismo-h5", "model/bfm2017", "good", ".h5", sgood.read_bytes(), "bfm2017", 30, 30, error=F_,
              args={"landmarks": lm_rel})
    for name, d in (("empty.h5", b""), ("text.h5", b"not HDF5\n" * 10)):
        rel = b.file("model/bfm2017", name, d)
        b.add("model", "statismo-layout", rel, "bfm2017", "error", F_, {"landmarks": lm_rel}, note=name)

    # ---------------------------------------------------------------- native .h5
    def nat(name, edit=None, expect="error", note="", model=None):
        p = root / "model/native" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        _write_native(p, model=model, edit=edit)
        b.add("model", "native-ok" if expect == "ok" else "native-layout", str(p.relative_to(root)), "native", expect,
              F_ if expect == "error" else "", note=note)
        return p

    def rep(key, data=None, fn=None):
        def edit(f):
            del f[key]
            if fn is not None:
                fn(f, key)
            elif data is not None:
                f.create_dataset(key, data=data)
        return edit

    def attr(key, value):
        def edit(f):
            if value is None:
                del f.attrs[key]
            else:
                f.attrs[key] = value
        return edit

    ngood = nat("good.h5", expect="ok", note="save_native of the tiny model")
    nat("pca.h5", expect="ok", note="PCA expressions (+-inf bounds)", model=tiny_model(blendshapes=False))
    for buf in ("mean", "shape_basis", "expr_basis", "shape_std", "expr_std", "expr_lower", "expr_upper", "triangles",
                "landmarks", "contour_right", "contour_left", "uv"):
        nat(f"no-{buf}.h5", rep(buf), note=f"dataset {buf} missing")
    for a in ("format", "format_version", "expression_names", "name"):
        nat(f"no-attr-{a}.h5", attr(a, None), note=f"attribute {a} missing")
    nat("version-99.h5", attr("format_version", 99), note="format_version 99")
    nat("version-text.h5", attr("format_version", "one"), note="format_version 'one'")
    nat("version-array.h5", attr("format_version", np.array([1, 2])), note="format_version [1, 2]")
    nat("names-json.h5", attr("expression_names", "[not json"), note="expression_names not JSON")
    nat("names-not-list.h5", attr("expression_names", '{"a": 1}'), note="expression_names a JSON object")
    nat("names-count.h5", attr("expression_names", '["only one"]'), note="1 name for 2 expressions")
    nat("format-other.h5", attr("format", "something-else"), note="format attribute of another program")
    nat("mean-2cols.h5", rep("mean", np.zeros((162, 2), np.float32)), note="mean (N, 2)")
    nat("mean-nan.h5", rep("mean", np.full((162, 3), np.nan, np.float32)), note="NaN mean")
    nat("mean-vlen.h5", rep("mean", fn=lambda f, k: f.create_dataset(k, data=["1.0"] * 6, dtype=h5py.string_dtype())),
        note="mean is variable-length strings")
    nat("mean-bytes.h5", rep("mean", np.array([b"abc"] * 4)), note="mean is fixed-length bytes")
    nat("mean-group.h5", rep("mean", fn=lambda f, k: f.create_group(k)), note="mean is a group")
    nat("mean-compound.h5", rep("mean", np.zeros(5, dtype=[("a", "<f4"), ("b", "<i4")])), note="mean compound")
    nat("mean-scalar.h5", rep("mean", np.float32(1.0)), note="mean is a scalar")
    nat("basis-shape.h5", rep("shape_basis", np.zeros((162, 3), np.float32)), note="shape_basis 2-D")
    nat("landmarks-range.h5", rep("landmarks", np.arange(68) + 1000), note="landmark ids beyond N")
    nat("landmarks-count.h5", rep("landmarks", np.arange(5)), expect="any",
        note="5 landmarks: a consistent model, refused later by the 68-point fitting")
    nat("triangles-range.h5", rep("triangles", np.array([[0, 1, 9999]])), note="triangle id beyond N")
    nat("triangles-float.h5", rep("triangles", np.array([[0.5, 1.2, 2.7]])), note="fractional triangle ids")
    nat("triangles-ragged.h5", rep("triangles", np.arange(10)), note="10 triangle ids (not T x 3)")
    nat("std-count.h5", rep("shape_std", np.ones(7, np.float32)), note="7 shape std for 3 components")
    nat("bounds-count.h5", rep("expr_lower", np.zeros(9, np.float32)), note="9 lower bounds for 2 expressions")
    nat("uv-count.h5", rep("uv", np.zeros((5, 2), np.float32)), note="5 uv for 162 vertices")
    b.mutants("model", "native-h5", "model/native", "good", ".h5", ngood.read_bytes(), "native", 30, 30, error=F_)
    for name, d in (("empty.h5", b""), ("text.h5", b"not HDF5\n" * 10)):
        rel = b.file("model/native", name, d)
        b.add("model", "native-layout", rel, "native", "error", F_, note=name)

    # ---------------------------------------------------------------- Surrey .bin
    model_b, bs_b = sfm_bytes()

    def sfm_dir(name, model=model_b, bs=bs_b, mapping=_sfm_mapping(), contours=None, expect="error", error=F_, note="",
                cls="sfm-layout"):
        d = root / "model/sfm" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.bin").write_bytes(model)
        if bs is not None:
            (d / f"expression_blendshapes_{N}.bin").write_bytes(bs)
        if mapping is not None:
            (d / "ibug_to_sfm.txt").write_text(mapping) if isinstance(mapping, str) else (d / "ibug_to_sfm.txt").write_bytes(mapping)
        if contours is not None:
            (d / "sfm_model_contours.json").write_text(contours)
        b.add("model", cls if expect == "error" else "sfm-ok", str((d / "model.bin").relative_to(root)), "sfm", expect,
              error if expect == "error" else "", note=note)
        return d

    sfm_dir("good", expect="ok", note="valid v1 eos model + blendshapes + mapping")
    big = struct.pack("<I", 1) + struct.pack("<ii", 2**31 - 1, 2**31 - 1) + model_b[12:]
    sfm_dir("rows-huge", model=big, note="mean claims (2^31-1)^2 floats")
    sfm_dir("rows-negative", model=model_b[:4] + struct.pack("<ii", -3, 1) + model_b[12:], note="mean rows -3")
    off_tri = 4 + 8 + 4 * 3 * N + 8 + 4 * 3 * N * 3 + 8 + 4 * 3  # after mean, basis, eigenvalues
    tri_huge = model_b[:off_tri] + struct.pack("<Q", 2**62) + model_b[off_tri + 8:]
    sfm_dir("triangles-huge", model=tri_huge, note="triangle count 2^62")
    tri_neg = bytearray(model_b)
    struct.pack_into("<i", tri_neg, off_tri + 8, -7)
    sfm_dir("triangle-negative", model=bytes(tri_neg), note="triangle id -7")
    struct.pack_into("<i", tri_neg, off_tri + 8, N + 100)
    sfm_dir("triangle-range", model=bytes(tri_neg), note="triangle id N+100")
    sfm_dir("version-0", model=struct.pack("<I", 0) + model_b[4:], note="class version 0")
    sfm_dir("version-99", model=struct.pack("<I", 99) + model_b[4:], note="class version 99")
    sfm_dir("trailing", model=model_b + b"\0" * 5, note="5 trailing bytes")
    sfm_dir("texcoords-huge", model=model_b[:-(16 * N + 8)] + struct.pack("<Q", 2**60) + model_b[-16 * N:],
            note="texture coordinate count 2^60")
    ev_neg = bytearray(model_b)
    struct.pack_into("<f", ev_neg, 4 + 8 + 4 * 3 * N + 8 + 4 * 3 * N * 3 + 8, -16.0)
    sfm_dir("eigenvalue-negative", model=bytes(ev_neg), note="eigenvalue -16")
    nan_mean = bytearray(model_b)
    struct.pack_into("<f", nan_mean, 12, float("nan"))
    sfm_dir("mean-nan", model=bytes(nan_mean), note="NaN in the mean")
    sfm_dir("bs-count-huge", bs=struct.pack("<Q", 2**40) + bs_b[8:], note="blendshape count 2^40")
    sfm_dir("bs-name-huge", bs=bs_b[:8] + struct.pack("<Q", 2**63) + bs_b[16:], note="blendshape name length 2^63")
    sfm_dir("bs-name-utf8", bs=bs_b[:16] + b"\xff\xfe\xfd\xfc\xfb" + bs_b[21:], note="blendshape name not UTF-8")
    sfm_dir("bs-truncated", bs=bs_b[: len(bs_b) // 2], note="blendshapes cut in half")
    bs_other = struct.pack("<Q", 1) + _cstring("x") + _mat32(np.zeros(3 * 100))
    sfm_dir("bs-other-model", bs=bs_other, note="blendshape of 100 vertices")
    sfm_dir("mapping-missing", mapping=None, error="ModelNotFoundError", note="no ibug_to_sfm.txt")
    sfm_dir("mapping-not-toml", mapping="[landmark_mappings\n1 = = 2\n", note="broken TOML")
    sfm_dir("mapping-binary", mapping=b"[landmark_mappings]\n\xff\xfe\x00\x01", note="binary mapping")
    sfm_dir("mapping-key", mapping='[landmark_mappings]\n"999" = 1\n', note="iBUG 999")
    sfm_dir("mapping-key-text", mapping='[landmark_mappings]\n"nose" = 1\n', note="iBUG 'nose'")
    sfm_dir("mapping-beyond", mapping="[landmark_mappings]\n" + "".join(f'"{i + 1}" = {i + 10000}\n' for i in range(68)),
            note="vertex ids beyond N")
    sfm_dir("mapping-gaps", mapping='[landmark_mappings]\n"31" = 5\n', note="67 points undefined")
    sfm_dir("mapping-float", mapping='[landmark_mappings]\n"1" = 1.5\n', note="vertex 1.5")
    sfm_dir("contours-broken", contours="{not json", note="contour JSON broken")
    sfm_dir("contours-layout", contours='{"model_contour": {"right_contour": "abc"}}', note="contour JSON wrong layout")
    sfm_dir("contours-range", contours='{"model_contour": {"right_contour": [1, 99999], "left_contour": [2]}}',
            note="contour ids beyond N")
    b.mutants("model", "sfm-bin", "model/sfm/mut", "model", ".bin", model_b, "sfm", 40, 40, error=F_,
              args={"mapping": str(Path("model/sfm/good/ibug_to_sfm.txt")), "blendshapes": False})
    b.mutants("model", "sfm-blendshapes", "model/sfm/mutbs", "bs", ".bin", bs_b, "sfm_blendshapes", 15, 15, error=F_,
              args={"model": "model/sfm/good/model.bin", "mapping": "model/sfm/good/ibug_to_sfm.txt"})
    for name, d in (("empty.bin", b""), ("text.bin", b"not cereal\n" * 3)):
        rel = b.file("model/sfm/mut", name, d)
        b.add("model", "sfm-layout", rel, "sfm", "error", F_, {"mapping": "model/sfm/good/ibug_to_sfm.txt"}, note=name)

    # ---------------------------------------------------------------- ICT-FaceKit folders
    outside = root / "model/ict-outside"
    outside.mkdir(parents=True, exist_ok=True)
    Vc = V / 10.0
    (outside / "secret.obj").write_text(_obj_v(Vc))
    (outside / "evil.obj").write_text(_obj_v(Vc))

    def ict(name, change=None, expect="error", error=F_, note="", region="full"):
        d = root / "model/ict" / name
        if d.exists():
            shutil.rmtree(d)
        write_ict_folder(d)
        if change is not None:
            change(d)
        b.add("model", "ict-folder" if expect == "error" else "ict-ok", str(d.relative_to(root)), "ict", expect,
              error if expect == "error" else "", {"region": region}, note=note)

    def edit_json(**kw):
        def ch(d):
            j = json.loads((d / "vertex_indices.json").read_text())
            j.update(kw)
            (d / "vertex_indices.json").write_text(json.dumps(j))
        return ch

    def write(rel_name, text):
        def ch(d):
            (d / rel_name).write_text(text) if isinstance(text, str) else (d / rel_name).write_bytes(text)
        return ch

    def unlink(*names):
        def ch(d):
            for n in names:
                (d / n).unlink()
        return ch

    def symlink(name, target):
        def ch(d):
            (d / name).unlink(missing_ok=True)
            os.symlink(target, d / name)
        return ch

    ict("good", expect="ok", note="valid ICT layout (region full)")
    ict("extra-unrelated-file", write("README.txt", "notes\n"), expect="ok", note="an extra non-OBJ file: ignored")
    ict("inside-symlink", symlink("identity002.obj", "identity001.obj"), expect="ok",
        note="identity002.obj -> identity001.obj (inside the folder)")
    ict("no-identities", unlink("identity000.obj", "identity001.obj", "identity002.obj"), error="ModelNotFoundError",
        note="no identityNNN.obj")
    ict("missing-expression", unlink("jawOpen.obj"), error="ModelNotFoundError", note="listed expression OBJ missing")
    ict("missing-index", unlink("vertex_indices.json"), error="ModelNotFoundError", note="no vertex_indices.json")
    ict("missing-neutral", unlink("generic_neutral_mesh.obj"), error="ModelNotFoundError", note="no neutral mesh")
    ict("extra-identity-short", write("identity003.obj", _obj_v(Vc[:100])), note="extra identity003.obj with 100 vertices")
    ict("extra-identity-garbage", write("identity_backup.obj", "v 1 2\nv x y z\n"), note="extra identity*.obj, malformed")
    ict("identity-fewer", write("identity001.obj", _obj_v(Vc[:-1])), note="identity001 has N-1 vertices")
    ict("identity-more", write("identity001.obj", _obj_v(np.r_[Vc, Vc[:10]])), note="identity001 has N+10 vertices")
    ict("expression-more", write("jawOpen.obj", _obj_v(np.r_[Vc, Vc[:1]])), note="jawOpen has N+1 vertices")
    ict("identity-truncated", write("identity000.obj", _obj_v(Vc)[:1000]), note="identity000 cut mid-line")
    ict("identity-binary", write("identity000.obj", bytes(range(256)) * 4), note="identity000 binary junk")
    ict("identity-nan", write("identity000.obj", _obj_v(Vc).replace("v 0", "v nan", 1)), note="NaN vertex")
    ict("neutral-no-faces", lambda d: (d / "generic_neutral_mesh.obj").write_text(_obj_v(Vc)), note="neutral without f")
    ict("neutral-bad-face", lambda d: (d / "generic_neutral_mesh.obj").write_text(
        (d / "generic_neutral_mesh.obj").read_text() + "f 1/1 x/2 3/3\n"), note="face line with 'x'")
    ict("neutral-face-zero", lambda d: (d / "generic_neutral_mesh.obj").write_text(
        (d / "generic_neutral_mesh.obj").read_text() + "f 0 1 2\n"), note="face id 0 (OBJ is 1-based)")
    ict("neutral-face-huge", lambda d: (d / "generic_neutral_mesh.obj").write_text(
        (d / "generic_neutral_mesh.obj").read_text() + "f 1 2 99999999999999999999\n"), note="face id 1e20")
    ict("index-67", edit_json(idx_to_landmark_verts=[int(i) for i in LM_IDS[:67]]), note="67 landmark ids")
    ict("index-range", edit_json(idx_to_landmark_verts=[int(i) + 1000 for i in LM_IDS]), note="landmark ids beyond N")
    ict("index-negative", edit_json(idx_to_landmark_verts=[-1] * 68), note="landmark ids -1")
    ict("index-strings", edit_json(idx_to_landmark_verts=["a"] * 68), note="landmark ids are strings")
    ict("index-expressions-int", edit_json(expressions=5), note="expressions is a number")
    ict("index-expressions-nested", edit_json(expressions=[["jawOpen"]]), note="expressions nested lists")
    ict("index-list", write("vertex_indices.json", "[1, 2, 3]"), note="index file is a JSON list")
    ict("index-garbage", write("vertex_indices.json", "{\"expressions\": ["), note="index file truncated")
    ict("index-binary", write("vertex_indices.json", b"\xff\xfe\x00junk"), note="index file binary")
    ict("escape-dotdot", edit_json(expressions=["../../ict-outside/evil", "browDown_L"]),
        note="expression name '../../ict-outside/evil' leads outside the folder")
    ict("escape-absolute", edit_json(expressions=[str((outside / "evil").resolve()), "browDown_L"]),
        note="absolute expression path outside the folder")
    ict("escape-symlink", symlink("identity001.obj", str((outside / "secret.obj").resolve())),
        note="identity001.obj -> a file outside the folder")
    ict("escape-symlink-relative", symlink("jawOpen.obj", "../../ict-outside/secret.obj"),
        note="jawOpen.obj -> ../../ict-outside/secret.obj")
    ict("escape-symlink-neutral", symlink("generic_neutral_mesh.obj", str((outside / "secret.obj").resolve())),
        note="generic_neutral_mesh.obj -> outside")
    ict("region-narrow", expect="error", note="162 vertices for the 6,706-vertex narrow region", region="narrow")


# ----------------------------------------------------------------------------- weights
def _weights(b: _Builder) -> None:
    import torch

    W = "WeightsError"
    root = b.root
    d = root / "weights"
    d.mkdir(parents=True, exist_ok=True)
    good = save_tiny_regressor(d / "good.pt")
    data = good.read_bytes()

    def add(name, expect="error", note="", cls="weights-layout", **args):
        b.add("weights", cls if expect == "error" else "weights-ok", f"weights/{name}", "weights", expect,
              W if expect == "error" else "", args, note=note)

    add("good.pt", "ok", "tiny random mobilenet, Ks=100, Ke=53", n_shape=DEFAULT_KS, n_expr=DEFAULT_KE)
    b.mutants("weights", "weights", "weights/mut", "w", ".pt", data, "weights", 30, 30, error=W, base="weights/good.pt")
    for name, raw in (("empty.pt", b""), ("text.pt", b"these are not weights\n"), ("zip-only.pt", b"PK\x05\x06" + bytes(18))):
        (d / name).write_bytes(raw)
        add(name, note=name)
    save_tiny_regressor(d / "resnet.pt", arch="resnet", width=0.25)
    add("resnet.pt", "ok", "a valid resnet file", cls="weights-ok")
    add("resnet.pt", note="resnet weights where arch='mobilenet' is asked", cls="other-architecture", arch="mobilenet")
    add("good.pt", note="Ks/Ke 100/53 for a model with 3/2", cls="other-architecture", n_shape=3, n_expr=2)

    def rewrite(name, fn, note, cls="weights-layout"):
        dd = torch.load(good, weights_only=True)
        fn(dd)
        torch.save(dd, d / name)
        add(name, note=note, cls=cls)

    res = torch.load(d / "resnet.pt", weights_only=True)["state_dict"]
    rewrite("mobilenet-config-resnet-weights.pt", lambda dd: dd.update(state_dict=res),
            "config says mobilenet, weights are a resnet's", cls="other-architecture")
    rewrite("width-mismatch.pt", lambda dd: dd["config"].update(width=1.0), "config width 1.0, weights of 0.25",
            cls="other-architecture")
    rewrite("arch-unknown.pt", lambda dd: dd["config"].update(arch="vgg16"), "arch 'vgg16'")
    rewrite("width-huge.pt", lambda dd: dd["config"].update(width=1e6), "width 1e6 (would allocate terabytes)")
    rewrite("width-negative.pt", lambda dd: dd["config"].update(width=-1.0), "width -1")
    rewrite("width-text.pt", lambda dd: dd["config"].update(width="wide"), "width 'wide'")
    rewrite("crop-zero.pt", lambda dd: dd["config"].update(crop_size=0), "crop_size 0")
    rewrite("crop-huge.pt", lambda dd: dd["config"].update(crop_size=10**9), "crop_size 1e9")
    rewrite("ks-negative.pt", lambda dd: dd["config"].update(n_shape=-5), "n_shape -5")
    rewrite("ks-huge.pt", lambda dd: dd["config"].update(n_shape=10**12), "n_shape 1e12")
    rewrite("depth-7.pt", lambda dd: dd["config"].update(arch="resnet", depth=7), "resnet depth 7")
    rewrite("config-list.pt", lambda dd: dd.update(config=["abc"]), "config is a list")
    rewrite("config-int.pt", lambda dd: dd.update(config=3), "config is a number")
    rewrite("no-config.pt", lambda dd: dd.pop("config"), "no config")
    rewrite("no-format.pt", lambda dd: dd.pop("format"), "no format tag")
    rewrite("state-list.pt", lambda dd: dd.update(state_dict=[1, 2]), "state_dict is a list")
    rewrite("state-missing-key.pt", lambda dd: dd["state_dict"].pop(next(iter(dd["state_dict"]))), "a key missing")
    rewrite("state-extra-key.pt", lambda dd: dd["state_dict"].update(extra=torch.zeros(3)), "an extra key")
    rewrite("state-int-values.pt", lambda dd: dd.update(state_dict={k: 1 for k in dd["state_dict"]}), "values are ints")

    def reshape_first(dd):
        k = next(k for k, v in dd["state_dict"].items() if v.ndim >= 2)
        dd["state_dict"][k] = torch.zeros(3, 3)
    rewrite("state-shape.pt", reshape_first, "a tensor of the wrong shape")

    def nan_weight(dd):
        k = next(k for k, v in dd["state_dict"].items() if v.is_floating_point() and v.ndim >= 2)
        dd["state_dict"][k] = dd["state_dict"][k].contiguous().clone()
        dd["state_dict"][k].view(-1)[0] = float("nan")
    rewrite("state-nan.pt", nan_weight, "a NaN weight")

    def inf_weight(dd):
        k = next(k for k, v in dd["state_dict"].items() if k.startswith("heads") and k.endswith("weight"))
        dd["state_dict"][k] = dd["state_dict"][k].contiguous().clone()
        dd["state_dict"][k].view(-1)[0] = float("inf")
    rewrite("state-inf.pt", inf_weight, "an inf weight")
    # pickles that would run code: refused, and the sentinel must never appear
    for how in ("pickle", "torch", "torch-legacy"):
        sent = f"{SENTINEL_DIR}/pwned-{how}"
        malicious_pickle(d / f"evil-{how}.pt", root / sent, how)
        b.add("weights", "malicious-pickle", f"weights/evil-{how}.pt", "weights", "error", W, {}, sentinel=sent,
              note=f"{how}: __reduce__ -> open(sentinel, 'w')")
    # a plain (non-torch) pickle of a harmless dict: still not a torch file
    (d / "plain-pickle.pt").write_bytes(pickle.dumps({"format": "morphable-regressor"}))
    add("plain-pickle.pt", note="a plain pickle of a dict")


# ----------------------------------------------------------------------------- landmarks
def good_landmarks(faces_dir: Optional[Path] = None, k: int = 0) -> np.ndarray:
    """(68, 2) float64 hand-made landmarks of a faces68 photo; without ../shared, the default
    model's mean-face landmarks seen at yaw 10 k degrees (a face, so fits are well posed)."""
    photos = face_photos(faces_dir)
    if photos:
        return read_pts(photos[k % len(photos)].with_suffix(".pts"))
    import torch

    from morphable.geometry import angles_to_rotmat, project
    from morphable.registry import load_model

    m = load_model()  # shared (memoised): never convert it in place
    X = m.landmark_points(torch.zeros(1, m.n_shape)).double()
    R = angles_to_rotmat(torch.tensor([[0.05, np.radians(10.0 * k), -0.03]], dtype=torch.float64))
    return project(X, R, torch.tensor([1.6], dtype=torch.float64), torch.tensor([[200.0, 220.0]], dtype=torch.float64))[0].numpy()


def _landmarks(b: _Builder, faces_dir) -> None:
    E = "InputError"
    good = good_landmarks(faces_dir, 0)

    def case(cls, name, L, W=None, expect="error", note="", error=E):
        d = b.root / "landmarks"
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / f"{name}.npy", np.asarray(L), allow_pickle=False)
        args = {}
        if W is not None:
            np.save(d / f"{name}.w.npy", np.asarray(W), allow_pickle=False)
            args["weights"] = f"landmarks/{name}.w.npy"
        b.add("landmarks", cls, f"landmarks/{name}.npy", "fit_landmarks", expect, error if expect == "error" else "",
              args, note=note)

    case("ok", "good", good[None], expect="ok", note="a real face")
    case("ok", "good-float16", good[None].astype(np.float16), expect="ok", note="float16 input")
    case("ok", "good-int", np.round(good[None]).astype(np.int32), expect="ok", note="integer pixels")
    case("ok", "huge-offset", good[None] + 1e6, expect="ok", note="the face at x, y ~ 1e6 px")
    case("ok", "huge-scale", good[None] * 1e4, expect="ok", note="a face 1e6 px wide")
    case("ok", "some-nan", np.where(np.arange(68)[:, None] < 10, np.nan, good)[None], expect="ok",
         note="10 NaN points, 58 good")
    case("ok", "half-visible", good[None], np.r_[np.ones(34), np.zeros(34)][None], expect="ok", note="half weight 0")
    case("flagged", "all-nan", np.full((1, 68, 2), np.nan), expect="flagged", note="all NaN")
    case("flagged", "all-inf", np.full((1, 68, 2), np.inf), expect="flagged", note="all inf")
    case("flagged", "mixed-inf", np.where(np.arange(68)[:, None] < 65, np.inf, good)[None], expect="flagged",
         note="65 inf, 3 finite points")
    case("flagged", "all-equal", np.tile(good[:1], (68, 1))[None], expect="flagged", note="68 identical points")
    case("flagged", "zero-weights", good[None], np.zeros((1, 68)), expect="flagged", note="all visibility 0")
    case("flagged", "three-points", good[None], (np.arange(68) < 3).astype(float)[None], expect="flagged",
         note="3 visible points")
    t = np.linspace(0, 1, 68)
    case("flagged", "collinear", np.c_[100 + 200 * t, 50 + 120 * t][None], expect="flagged",
         note="68 points on a diagonal line")
    case("flagged", "collinear-horizontal", np.c_[100 + 200 * t, np.full(68, 80.0)][None], expect="flagged",
         note="68 points on a horizontal line")
    case("wrong-shape", "shape-68x2", good, note="(68, 2) without a batch axis")
    case("wrong-shape", "shape-67", good[None, :67], note="(1, 67, 2)")
    case("wrong-shape", "shape-3d", np.c_[good, np.zeros(68)][None], note="(1, 68, 3)")
    case("wrong-shape", "shape-flat", good.reshape(1, -1), note="(1, 136)")
    case("wrong-shape", "empty-batch", np.zeros((0, 68, 2)), note="(0, 68, 2)")
    case("wrong-shape", "scalar", np.float64(3.0), note="a scalar")
    case("wrong-dtype", "strings", np.full((1, 68, 2), "1.0"), note="an array of strings")
    case("wrong-dtype", "complex", good[None].astype(np.complex128), note="complex numbers")
    case("wrong-dtype", "bool", np.ones((1, 68, 2), bool), note="booleans", expect="any")
    case("visibility", "negative-visibility", good[None], -np.ones((1, 68)), note="visibility -1")
    case("visibility", "nan-visibility", good[None], np.full((1, 68), np.nan), note="visibility NaN")
    case("visibility", "inf-visibility", good[None], np.full((1, 68), np.inf), note="visibility inf")
    case("visibility", "visibility-shape", good[None], np.ones((1, 67)), note="67 weights")
    case("visibility", "visibility-strings", good[None], np.full((1, 68), "x"), note="weights are strings")


# =========================================================================== fuzz inputs
_MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff", ".gif": b"GIF89a", ".bmp": b"BM",
          ".tiff": b"II*\x00", ".webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ", ".h5": b"\x89HDF\r\n\x1a\n",
          ".pt": b"PK\x03\x04"}
_INTERESTING = (0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**16, 255, 68, 3 * 162)


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """1-4 random edits of ``data``: overwrite, insert, delete or duplicate a span, or write an
    "interesting" 32-bit integer (0, -1, 2^31...) at a random offset."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        L = len(b)
        op = int(rng.integers(5)) if L else 1
        i = int(rng.integers(0, max(L, 1)))
        n = int(rng.integers(1, 65))
        if op == 0:
            b[i:i + n] = rng.integers(0, 256, min(n, L - i), dtype=np.uint8).tobytes()
        elif op == 1:
            b[i:i] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        elif op == 2:
            del b[i:i + n]
        elif op == 3:
            b[i:i] = b[i:i + n]
        elif L >= 4:
            j = int(rng.integers(0, L - 3))
            v = int(rng.choice(_INTERESTING))
            b[j:j + 4] = struct.pack("<I" if rng.random() < 0.5 else ">I", v & 0xFFFFFFFF)
    return bytes(b)


def random_array(rng: np.random.Generator, like=(1, 68, 2)) -> np.ndarray:
    """A random array: often the expected shape, else a random one; random dtype and values
    (with NaN, inf, huge and negative numbers)."""
    r = rng.random()
    if r < 0.5:
        shape = tuple(like)
    elif r < 0.7:
        shape = tuple(int(v) for v in rng.integers(0, 5, size=int(rng.integers(0, 4))))
    else:
        shape = tuple(max(0, d + int(rng.integers(-2, 3))) for d in like)
    dtype = rng.choice(["float64", "float32", "float16", "int64", "int32", "uint8", "uint16", "bool", "complex64", "U3"])
    n = int(np.prod(shape)) if shape else 1
    scale = float(rng.choice([1.0, 300.0, 1e6, 1e30]))
    vals = rng.normal(0, scale, n)
    if rng.random() < 0.3:
        vals[rng.random(n) < 0.2] = rng.choice([np.nan, np.inf, -np.inf])
    if dtype == "U3":
        return np.asarray(vals.astype(str), dtype="U3").reshape(shape)
    with np.errstate(all="ignore"):
        return vals.astype(dtype).reshape(shape)


def make_fuzz(root, seed: int = 0, n: int = 100, sources: Optional[dict] = None) -> list[Case]:
    """Random inputs for every loader (``n`` per entry point) into ``root/fuzz``, as cases of kind
    ``fuzz`` expecting ``any`` (load or a clear error; never a crash or a hang).

    ``sources``: ``{loader: valid file}`` to mutate (default: the corpus' own good files under
    ``root``, written by :func:`make_corpus`)."""
    root = Path(root)
    rng = np.random.default_rng(seed + 10_000)
    b = _Builder(root, seed, 1.0)
    src = {"image": ["img/jpeg/face.orig.jpg", "img/png/face.orig.png", "img/special/cmyk.jpg", "img/special/grey16.png"],
           "native": ["model/native/good.h5"], "bfm2017": ["model/bfm2017/good.h5"],
           "bfm2009": ["model/bfm2009/good.mat", "model/bfm2009/good-compressed.mat"], "sfm": ["model/sfm/good/model.bin"],
           "weights": ["weights/good.pt"], "exp_pca": ["model/exppca/good.bin"]}
    if sources:
        src.update(sources)
    args = {"bfm2009": {"landmarks": "model/lm68.txt"}, "bfm2017": {"landmarks": "model/lm68.txt"},
            "sfm": {"mapping": "model/sfm/good/ibug_to_sfm.txt", "blendshapes": False}}
    suffix = {"image": None, "native": ".h5", "bfm2017": ".h5", "bfm2009": ".mat", "sfm": ".bin", "weights": ".pt",
              "exp_pca": ".bin"}
    for loader, files in src.items():
        datas = [(root / f).read_bytes() for f in files if (root / f).is_file()]
        for i in range(n):
            r = rng.random()
            derive = None
            if datas and r < 0.7:  # mutate a valid file
                k = int(rng.integers(len(datas)))
                suf = suffix[loader] or Path(files[k]).suffix
                if len(datas[k]) > (1 << 20):  # megabytes: derived when run, not stored
                    derive = {"base": files[k], "mutate": int(rng.integers(2**31))}
                    data = b""
                else:
                    data = mutate(datas[k], rng)
                how = "mutated " + files[k]
            else:  # random bytes, half with the format's magic number
                suf = suffix[loader] or str(rng.choice([".png", ".jpg", ".gif", ".bmp", ".tiff", ".webp"]))
                data = rng.integers(0, 256, int(rng.integers(0, 2048)), dtype=np.uint8).tobytes()
                if rng.random() < 0.5 and suf in _MAGIC:
                    data = _MAGIC[suf] + data
                elif rng.random() < 0.5 and loader == "bfm2009":
                    data = b"MATLAB 5.0 MAT-file".ljust(124) + b"\x00\x01IM" + data
                how = "random bytes"
            if derive is None:
                rel = b.file(f"fuzz/{loader}", f"{i:04d}{suf}", data)
            else:
                rel = f"scratch/fuzz/{loader}/{i:04d}{suf}"
            if loader == "exp_pca" and i == 0:
                (root / "fuzz/exp_pca/std_exp.txt").write_text("3000\n1500\n")
            b.add("fuzz", f"fuzz-{loader}", rel, loader, "any", args=dict(args.get(loader) or {},
                  **({"derive": derive} if derive else {})), note=how)
    for loader, like in (("image_array", (48, 64, 3)), ("fit_landmarks", (2, 68, 2))):
        for i in range(n):
            d = root / "fuzz" / loader
            d.mkdir(parents=True, exist_ok=True)
            a = random_array(rng, like)
            np.save(d / f"{i:04d}.npy", a, allow_pickle=False)
            cargs = {}
            if loader == "fit_landmarks" and rng.random() < 0.4:
                np.save(d / f"{i:04d}.w.npy", random_array(rng, (like[0], 68)), allow_pickle=False)
                cargs["weights"] = f"fuzz/{loader}/{i:04d}.w.npy"
            b.add("fuzz", f"fuzz-{loader}", f"fuzz/{loader}/{i:04d}.npy", loader, "any", args=cargs,
                  note=f"{a.dtype} {a.shape}")
    return b.cases


# =========================================================================== running a case
class Context:
    """What :func:`run_case` needs besides the corpus: the model for ``fit_landmarks`` (loaded
    on first use: the default model if available, else the tiny one)."""

    def __init__(self, root, model=None):
        self.root = Path(root)
        self._model = model

    @property
    def model(self):
        if self._model is None:
            try:
                from morphable.registry import load_model

                self._model = load_model()
            except Exception:  # no ../shared: the tiny model has 68 landmarks too
                self._model = tiny_model()
        return self._model


class WrongResult(AssertionError):
    """An entry point returned, but not what the input must give (an accepted bad input)."""


class _Stub:
    """Stands in for a model in ``load_regressor(model=...)``: only its sizes are read."""

    def __init__(self, n_shape, n_expr):
        self.n_shape, self.n_expr, self.name = n_shape, n_expr, f"stub({n_shape}, {n_expr})"


def materialize(case: Case, root) -> Path:
    """The case's file: for derived mutants (``args["derive"]``: a truncation ``cut``, bit flips
    ``bits`` or a ``mutate`` seed applied to a ``base`` corpus file) it is written now."""
    root = Path(root)
    p = root / case.path
    d = case.args.get("derive")
    if d is not None:
        data = (root / d["base"]).read_bytes()
        if "cut" in d:
            data = data[:d["cut"]]
        elif "bits" in d:
            b = bytearray(data)
            for bit in d["bits"]:
                b[bit // 8] ^= 1 << (bit % 8)
            data = bytes(b)
        else:
            data = mutate(data, np.random.default_rng(d["mutate"]))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return p


def run_case(case: Case, ctx: Context):
    """Feed ``case`` to its entry point; returns a short description of the success, or raises
    whatever the entry point raised."""
    p = materialize(case, ctx.root)
    try:
        return _run(case, ctx, p)
    finally:
        if "derive" in case.args:
            p.unlink(missing_ok=True)


def _run(case: Case, ctx: Context, p: Path):
    import torch

    root = ctx.root
    a = dict(case.args)
    if case.loader == "image_array":
        from fitting.images import load_image

        img = load_image(np.load(p, allow_pickle=False))
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise WrongResult(f"load_image returned {img.dtype} {img.shape}")
        return f"{img.shape[1]}x{img.shape[0]}"
    if case.loader == "image":
        from fitting.images import load_image

        img = load_image(p, max_pixels=a.get("max_pixels"))
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or not img.flags["C_CONTIGUOUS"]:
            raise AssertionError(f"load_image returned {img.dtype} {img.shape}")
        if "shape" in a and list(img.shape[:2]) != list(a["shape"]):
            raise WrongResult(f"expected {a['shape']}, got {img.shape[:2]}")
        if "same_as" in a and not np.array_equal(img, load_image(root / a["same_as"])):
            raise WrongResult("a cut file loaded as a different picture")
        return f"{img.shape[1]}x{img.shape[0]}"
    if case.loader == "bfm2009":
        from morphable.formats.bfm import load_bfm2009

        m = load_bfm2009(p, landmarks=root / a["landmarks"])
    elif case.loader == "bfm2017":
        from morphable.formats.bfm import load_bfm2017

        m = load_bfm2017(p, landmarks=root / a["landmarks"])
    elif case.loader == "exp_pca":
        from morphable.formats.bfm import read_exp_pca

        mean, basis, _ = read_exp_pca(p)
        return f"{len(mean)} vertices, {basis.shape[2]} components"
    elif case.loader == "native":
        from morphable.formats.native import load_native

        m = load_native(p)
    elif case.loader == "sfm":
        from morphable.formats.sfm import load_sfm

        kw = {}
        if "mapping" in a:
            kw["mapping"] = root / a["mapping"]
        if "blendshapes" in a:
            kw["blendshapes"] = a["blendshapes"]
        m = load_sfm(p, **kw)
    elif case.loader == "sfm_blendshapes":
        from morphable.formats.sfm import load_sfm

        m = load_sfm(root / a["model"], blendshapes=p, mapping=root / a["mapping"])
    elif case.loader == "ict":
        from morphable.formats.ict import load_ict

        m = load_ict(p, region=a.get("region", "full"))
    elif case.loader == "weights":
        from regressors.weights import load_regressor

        model = _Stub(a["n_shape"], a["n_expr"]) if "n_shape" in a else None
        reg = load_regressor(p, model=model, arch=a.get("arch"))
        return f"{reg.cfg.arch} width {reg.cfg.width}"
    elif case.loader == "fit_landmarks":
        from fitting.solver import FitOptions, fit_landmarks

        L = np.load(p, allow_pickle=False)
        W = np.load(root / a["weights"], allow_pickle=False) if "weights" in a else None
        res = fit_landmarks(ctx.model, L, W, options=FitOptions(max_iterations=5))
        finite = all(bool(torch.isfinite(getattr(res.params, f)).all()) for f in
                     ("shape", "expr", "rotvec", "scale", "translation")) and bool(torch.isfinite(res.landmarks).all())
        if not finite:
            raise WrongResult("fit_landmarks returned non-finite parameters or landmarks")
        valid = res.valid.tolist()
        return "flagged" if not any(valid) else ("valid" if all(valid) else f"valid {valid}")
    else:
        raise ValueError(f"unknown loader {case.loader!r}")
    return f"{m.n_vertices} vertices, {m.n_shape}+{m.n_expr} components"


def registry_load(case: Case, ctx: Context):
    """The same model input through ``morphable.registry.load_model`` (file dispatch / ICT folder,
    no cache); ``None`` for cases that are not a model file or folder."""
    if case.kind != "model" or case.loader in ("exp_pca", "sfm_blendshapes"):
        return None
    from morphable.registry import load_model

    m = load_model(ctx.root / case.path, region=case.args.get("region", "narrow"), cache=False)
    return f"{m.n_vertices} vertices"


def classify(case: Case, outcome: str, exc: Optional[BaseException], root=None) -> tuple[str, str]:
    """Judge one run: returns (verdict, detail). Verdicts:

    * ``ok``: loaded and that was allowed (expect ok/any; flagged cases flagged);
    * ``clear-error``: a MorphableError (of the expected subclass) with a one-line message;
    * ``crash``: anything else escaped, or an error without a clear one-line message;
    * ``accepted-bad``: an input that must be refused was loaded (or a flagged case came back valid);
    * ``lost-good``: a good input was refused;
    * ``wrong-error``: a MorphableError of another subclass than expected;
    * ``side-effect``: a malicious pickle's sentinel exists (checked when ``root`` is given).
    """
    from morphable import errors

    if case.sentinel and root is not None and (Path(root) / case.sentinel).exists():
        return "side-effect", f"{case.sentinel} was created: the file was unpickled unsafely"
    if exc is None:
        if case.expect == "error":
            return "accepted-bad", f"loaded: {outcome}"
        if case.expect == "flagged" and outcome != "flagged":
            return "accepted-bad", f"not flagged: {outcome}"
        if case.expect == "ok" and case.loader == "fit_landmarks" and outcome != "valid":
            return "lost-good", f"good landmarks flagged: {outcome}"
        return "ok", outcome
    if isinstance(exc, WrongResult):
        return "accepted-bad", str(exc)
    if isinstance(exc, errors.MorphableError):
        msg = str(exc)
        if not msg.strip() or "\n" in msg or "Traceback" in msg:
            return "crash", f"{type(exc).__name__} without a clear one-line message: {msg[:200]!r}"
        if case.expect == "ok":
            return "lost-good", f"{type(exc).__name__}: {msg[:200]}"
        if case.expect == "error" and case.error and not isinstance(exc, getattr(errors, case.error)):
            return "wrong-error", f"{type(exc).__name__} (expected {case.error}): {msg[:200]}"
        return "clear-error", f"{type(exc).__name__}: {msg[:200]}"
    return "crash", f"{type(exc).__name__}: {str(exc)[:300]}"
