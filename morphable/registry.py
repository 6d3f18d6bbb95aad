"""Finding and loading models by name or path, with a converted-once cache.

``load_model(None)`` / ``load_model("ict-facekit")`` gives the default model, ICT-FaceKit's
narrow face region (6,706 vertices, ~15 cm wide, 100 identity + 53 expression components). Its
folder is looked up, in order, in:

1. ``$MORPHABLE_ICT_DIR`` (a ``FaceXModel`` folder or its parent);
2. ``../shared/models/ict-facekit`` next to the checkout (``<repo>/../shared``);
3. ``./shared/models/ict-facekit`` and ``../shared/models/ict-facekit`` from the working directory.

The converted model is cached as a native ``.h5`` in ``$MORPHABLE_CACHE`` (default
``~/.cache/morphable``), keyed by the source folder and its files' sizes and times.
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
    "ICT-FaceKit (MIT) was not found. Download FaceXModel/ from github.com/ICT-VGL/ICT-FaceKit and set "
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


def load_model(name_or_path: Optional[str | os.PathLike] = None, *, region: str = "narrow",
               cache: bool = True, landmarks: str = "refined") -> MorphableModel:
    """Load a morphable model.

    Args:
        name_or_path: ``None`` or ``"ict-facekit"`` for the default model; a path to an ICT-FaceKit
            folder, a native/BFM 2017-2019 ``.h5``, a BFM 2009 ``.mat`` or a Surrey ``.bin``.
        region: ICT-FaceKit region (``narrow``, ``face``, ``head``, ``full``).
        cache: convert ICT folders once and keep the result in :func:`cache_dir`.
        landmarks: for ICT-FaceKit, ``"refined"`` (default) = the 68 landmark vertices re-selected
            on annotated photos (:mod:`morphable.landmark_definition`, the shipped
            ``morphable/data/ict_landmarks_68.json``), ``"upstream"`` = ICT-FaceKit's own
            ``vertex_indices.json`` ids. Other formats keep their file's landmarks.

    Raises:
        ModelNotFoundError: the model is nowhere to be found (the message says where to get it).
        ModelFormatError: the file exists but is not a model of a supported layout.
    """
    from .formats.ict import load_ict
    from .formats.native import load_native, save_native

    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        folder = find_ict()
    else:
        p = Path(name_or_path)
        if not p.exists():
            raise ModelNotFoundError(f"{p}: no such model file or folder. {ICT_HELP}")
        if p.is_dir():
            folder = p
        else:
            return load_model_file(p)
    if landmarks not in ("refined", "upstream"):
        raise ModelFormatError(f"landmarks must be 'refined' or 'upstream', got {landmarks!r}")
    key = (str(folder.resolve()), region, landmarks)
    if key in _MEMO:
        return _MEMO[key]
    base = (str(folder.resolve()), region, "upstream")
    if landmarks == "refined" and base in _MEMO:  # the same tensors, another landmark definition
        _MEMO[key] = _refined(_MEMO[base])
        return _MEMO[key]
    model = None
    if cache:
        from .formats.ict import FRAME_PITCH_DEG

        cp = cache_dir() / f"ict-{region}-{_fingerprint(folder, f'{region}:pitch{FRAME_PITCH_DEG}')}.h5"
        if cp.is_file():
            try:
                model = load_native(cp)
            except ModelFormatError:
                model = None
    if model is None:
        model = load_ict(folder, region=region)
        if cache:
            try:
                save_native(model, cp)
            except OSError:
                pass  # a read-only cache is not an error
    _MEMO[base] = model
    if landmarks == "refined":
        model = _MEMO[key] = _refined(model)
    return model


def _refined(model: MorphableModel) -> MorphableModel:
    from .landmark_definition import REFINED_ICT_LANDMARKS, read_landmark_file

    return model.with_landmarks(read_landmark_file(REFINED_ICT_LANDMARKS, model.n_vertices), definition="refined")


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
