"""Finding and loading models by name or path, with a converted-once cache.

``load_model(None)`` / ``load_model("ict-facekit")`` gives the default model, ICT-FaceKit's
face region (9,409 vertices: the face to the ears and under the chin, 100 identity + 53 expression
components) with the 3D-style landmark definition of AFLW2000-3D (its jaw points sit back on the
cheeks, outside the 6,706-vertex ``narrow`` region).

The ``narrow`` and ``face`` regions come from the file shipped inside the package
(:data:`morphable.default_model.PACKAGED_MODEL`): no download, no ``../shared``. The larger regions
(``head``, ``full``) need the upstream ``FaceXModel`` folder, looked up, in order, in:

1. ``$MORPHABLE_ICT_DIR`` (a ``FaceXModel`` folder or its parent);
2. ``../shared/models/ict-facekit`` next to the checkout (``<repo>/../shared``);
3. ``./shared/models/ict-facekit`` and ``../shared/models/ict-facekit`` from the working directory.

``load_model(..., packaged=False)`` skips the shipped file and converts the folder (how the
shipped file is checked against its source). Converted or decompressed models are cached as
uncompressed native ``.h5`` files in ``$MORPHABLE_CACHE`` (default ``~/.cache/morphable``), keyed by
the source's files' sizes and times, so the second load of a session reads one flat file.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

from .errors import ModelFormatError, ModelNotFoundError
from .model import MorphableModel

DEFAULT_MODEL = "ict-facekit"
_REPO = Path(__file__).resolve().parent.parent
_MEMO: dict = {}

ICT_HELP = (
    "ICT-FaceKit (MIT) was not found (the package ships only its 'narrow' and 'face' regions). Download FaceXModel/ from github.com/ICT-VGL/ICT-FaceKit and set "
    "MORPHABLE_ICT_DIR=/path/to/FaceXModel, or pass your own model file (BFM 2009 .mat, BFM 2017/2019 .h5, "
    "Surrey .bin, or a native .h5 from `morphable convert`)."
)


def find_ict() -> Path:
    """The ICT-FaceKit folder by the documented lookup, or ModelNotFoundError with what to do."""
    cands = []
    env = os.environ.get("MORPHABLE_ICT_DIR")
    if env:
        cands.append(Path(env))
    cands += [_REPO.parent / "shared/models/ict-facekit", Path.cwd() / "shared/models/ict-facekit",
              Path.cwd().parent / "shared/models/ict-facekit"]
    for c in cands:
        if (c / "FaceXModel" / "generic_neutral_mesh.obj").is_file() or (c / "generic_neutral_mesh.obj").is_file():
            return c
    raise ModelNotFoundError(ICT_HELP)


def cache_dir() -> Path:
    return Path(os.environ.get("MORPHABLE_CACHE", Path.home() / ".cache" / "morphable"))


def _fingerprint(folder: Path, extra: str) -> str:
    h = hashlib.sha1(extra.encode())
    base = folder / "FaceXModel" if (folder / "FaceXModel").is_dir() else folder
    for p in sorted(base.glob("*")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def load_model(name_or_path: Optional[str | os.PathLike] = None, *, region: str = "face",
               cache: bool = True, landmarks: Optional[str] = None, packaged: bool = True) -> MorphableModel:
    """Load a morphable model.

    Args:
        name_or_path: ``None`` or ``"ict-facekit"`` for the default model; a path to an ICT-FaceKit
            folder, a native/BFM 2017-2019 ``.h5``, a BFM 2009 ``.mat`` or a Surrey ``.bin``.
        region: ICT-FaceKit region (``face`` (default), ``narrow``, ``head``, ``full``).
        cache: convert ICT folders (or decompress the shipped file) once and keep the result in
            :func:`cache_dir`.
        landmarks: for ICT-FaceKit, which 68 vertices are the iBUG landmarks
            (:data:`morphable.landmark_definition.ICT_DEFINITIONS`); default ``"3d"``, or
            ``"refined"`` for the ``narrow`` region, which does not hold the 3D-style jaw. ``"3d"`` = the 3D-style
            definition of AFLW2000-3D and 300W-LP, registered from the Basel mean face
            (``morphable/data/ict_landmarks_68_3d.json``; needs the ``face`` region or larger);
            ``"refined"`` = the points re-selected on 300-W-style annotated photos (the fixed
            points of the 2D-contour definition, ``morphable/data/ict_landmarks_68.json``);
            ``"upstream"`` = ICT-FaceKit's own ``vertex_indices.json`` ids. Other formats keep
            their file's landmarks.
        packaged: serve the default model's ``narrow``/``face`` regions from the file shipped in
            the package (default); ``False`` converts the upstream folder instead.

    Raises:
        ModelNotFoundError: the model is nowhere to be found (the message says where to get it).
        ModelFormatError: the file exists but is not a model of a supported layout.
    """
    from .default_model import PACKAGED_MODEL
    from .formats.ict import REGIONS, load_ict

    from .landmark_definition import ICT_DEFINITIONS

    if landmarks is None:
        landmarks = "refined" if region == "narrow" else "3d"
    if landmarks not in ICT_DEFINITIONS and landmarks != "upstream":
        raise ModelFormatError(f"landmarks must be one of {sorted(ICT_DEFINITIONS) + ['upstream']}, got {landmarks!r}")
    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        if region not in REGIONS:
            raise ModelFormatError(f"unknown ICT region {region!r}; choose one of {sorted(REGIONS)}")
        if packaged and region in ("narrow", "face") and PACKAGED_MODEL.is_file():
            return _packaged(region, landmarks, cache)
        folder = find_ict()
    else:
        p = Path(name_or_path)
        if not p.exists():
            raise ModelNotFoundError(f"{p}: no such model file or folder. {ICT_HELP}")
        if p.is_dir():
            folder = p
        else:
            return load_model_file(p)
    key = (str(folder.resolve()), region, landmarks)
    if key in _MEMO:
        return _MEMO[key]
    base = (str(folder.resolve()), region, "upstream")
    if landmarks != "upstream" and base in _MEMO:  # the same tensors, another landmark definition
        _MEMO[key] = _defined(_MEMO[base], landmarks)
        return _MEMO[key]
    from .formats.ict import FRAME_PITCH_DEG

    cp = cache_dir() / f"ict-{region}-{_fingerprint(folder, f'{region}:pitch{FRAME_PITCH_DEG}')}.h5"
    model = _through_cache(cp if cache else None, lambda: load_ict(folder, region=region))
    _MEMO[base] = model
    if landmarks != "upstream":
        model = _MEMO[key] = _defined(model, landmarks)
    return model


def _through_cache(path: Optional[Path], build) -> MorphableModel:
    """The model cached at ``path`` (an uncompressed native file), else ``build()``, then cached there.

    ``path=None`` bypasses the cache. An unreadable cache file is rebuilt; a read-only cache is not
    an error.
    """
    from .formats.native import load_native, save_native

    if path is not None and path.is_file():
        try:
            return load_native(path)
        except ModelFormatError:
            pass
    model = build()
    if path is not None:
        try:
            save_native(model, path)
        except OSError:
            pass
    return model


def _packaged(region: str, landmarks: str, cache: bool) -> MorphableModel:
    """The default model's ``region`` from the shipped compact file (decompressed once into the cache)."""
    from .default_model import PACKAGED_MODEL, PACKAGED_REGION
    from .formats.ict import crop_region
    from .formats.native import load_native

    key = ("packaged", region, landmarks)
    if key in _MEMO:
        return _MEMO[key]
    base_key = ("packaged", PACKAGED_REGION, "upstream")
    full = _MEMO.get(base_key)
    if full is None:
        st = PACKAGED_MODEL.stat()
        cp = cache_dir() / f"packaged-{PACKAGED_MODEL.stem}-{st.st_size}-{int(st.st_mtime)}.h5"
        full = _MEMO[base_key] = _through_cache(cp if cache else None, lambda: load_native(PACKAGED_MODEL))
    model = crop_region(full, region)
    if landmarks != "upstream":
        model = _defined(model, landmarks)
    _MEMO[key] = model
    return model


def _defined(model: MorphableModel, name: str) -> MorphableModel:
    """``model`` with the shipped ICT-FaceKit landmark definition ``name``."""
    from .landmark_definition import ICT_DEFINITIONS, read_landmark_file

    try:
        ids = read_landmark_file(ICT_DEFINITIONS[name], 10 ** 9)
    except ModelFormatError as e:
        raise ModelFormatError(f"landmarks={name!r}: {e}") from None
    if ids.max() >= model.n_vertices:
        raise ModelFormatError(f"landmarks={name!r} uses vertex {int(ids.max())}, outside the {model.n_vertices}-vertex "
                               f"{model.name}: its jaw lies back on the cheeks; use region='face' (the default) or larger")
    return model.with_landmarks(ids, definition=name)


def load_model_file(path: Path) -> MorphableModel:
    """Dispatch a model file on its content/extension to the right loader."""
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                native = f.attrs.get("format") is not None
        except OSError as e:
            raise ModelFormatError(f"{path}: not a readable HDF5 file ({e})") from None
        if native:
            from .formats.native import load_native

            return load_native(path)
        from .formats.bfm import load_bfm2017

        return load_bfm2017(path)
    if suffix == ".mat":
        from .formats.bfm import load_bfm2009

        return load_bfm2009(path)
    if suffix == ".bin":
        from .formats.sfm import load_sfm

        return load_sfm(path)
    raise ModelFormatError(f"{path}: unknown model file type {suffix!r}; supported: ICT-FaceKit folder, .h5, .mat, .bin")
