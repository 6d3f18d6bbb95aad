"""ICT-FaceKit (MIT) loader: a folder of OBJ morph targets -> :class:`MorphableModel`.

Layout (``FaceXModel/``): ``generic_neutral_mesh.obj`` (v, vt, f), ``identity000..099.obj`` and
one OBJ per expression (``v`` lines only in the trimmed copy, full meshes upstream), and
``vertex_indices.json`` (expression order, 68 landmark vertex ids). Coordinates are centimetres,
+y up, +z out of the face, +x subject's left; converted here to millimetres (x10) and turned
about x by :data:`FRAME_PITCH_DEG` (below) so that poses read as AFLW2000-3D's Basel-model poses do.

Identity targets are PCA modes already scaled to unit-variance weights (the upstream loader draws
identity weights from N(0, 1)), so the shape basis is ``identity_i - neutral`` with std 1.
Expressions are blendshapes with weights in [0, 1].

trimesh is not used for the OBJs: it re-indexes vertices at UV seams and loads ``v``-only files as
point clouds; only ``v``/``vt``/``f`` lines are read, keeping the upstream vertex order.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError, ModelNotFoundError
from ..model import ModelInfo, MorphableModel

#: Vertex-prefix regions of the upstream mesh (README of ICT-FaceKit): name -> vertex count.
REGIONS = {"narrow": 6706, "face": 9409, "head": 11248, "full": 26719}

#: Jaw outline candidates from the upstream README (subject's right = image-left side in a
#: frontal view, iBUG 0..7; subject's left, iBUG 9..16).
RIGHT_JAW_EXTENDED = [1280, 1278, 1275, 1272, 1248, 12, 820, 1834, 1902, 243, 844, 781, 1673, 2199, 801, 1447, 800]
LEFT_JAW_EXTENDED = [3041, 3661, 3042, 4390, 3880, 3022, 3085, 2484, 4102, 4036, 3061, 2253, 3466, 3490, 3493, 3496, 3498]

LICENCE = "MIT, Copyright (c) 2020 USC Institute for Creative Technologies (ICT-FaceKit)"
CM_TO_MM = 10.0

#: Pitch (degrees, library convention: positive turns the face up) applied to ICT-FaceKit's
#: coordinates at load, ``x_model = Rx(FRAME_PITCH_DEG) @ x_file`` (``ModelInfo.frame_rotation``),
#: so that fitted poses read as AFLW2000-3D's do. AFLW2000-3D's ``Pose_Para`` is the rotation of a
#: Basel face fitted to each photo's landmarks, and two models fitted to the same 68 points read
#: different rotations. :mod:`regressors.pose_frame` measured the difference on *training* faces
#: only (labels v5; 18,534 rows of 300-W, aflw21 and ytf68 with |yaw| < 45 degrees): the BFM
#: 68-keypoint model (3DDFA_V2's basis, in ``../shared``, never shipped) fitted to each label's
#: 3D-style landmarks reads the label's rotation turned by [pitch, yaw, roll] [-2.03, +0.25, +0.55]
#: degrees in the face's frame (pitch per set -1.71 / -2.23 / -2.16; -1.55 to -2.84 when the BFM
#: priors are scaled by 0.3 or 3). Applied to the previous frame (-4.95 degrees, the median pitch
#: of LM fits to near-frontal ytf68 faces) that is [-2.914, -0.278, -0.538]. Only the pitch is
#: kept: a model frame stays mirror-symmetric about x = 0 (mirror vertex maps, the training flip
#: ``R -> M R M``), which a turn about y or z would break.
FRAME_PITCH_DEG = -2.914


def _confined(folder: Path, name: str) -> Path:
    """``folder / name``, refusing names and symlinks that lead outside ``folder``: a model folder
    (maybe downloaded) must not make the loader read other files of the machine."""
    p = folder / name
    try:
        inside = p.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError, ValueError) as e:  # symlink loops, NUL bytes
        raise ModelFormatError(f"{p}: unusable path in the ICT-FaceKit folder ({e})") from None
    if not inside:
        raise ModelFormatError(f"{p}: leads outside the model folder {folder} (a '..' or absolute name, or a symlink); "
                               "refusing to follow it. Copy the real files into the folder (e.g. cp -rL)")
    return p


def _read_obj(path: Path, want_faces: bool = False):
    """Read ``v`` (and optionally ``vt``/``f``) lines of an OBJ. Returns (V (N,3), VT, faces)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelNotFoundError(f"{path}: missing ICT-FaceKit file; the folder must hold every OBJ of FaceXModel/") from None
    except OSError as e:  # a folder, no permission
        raise ModelFormatError(f"{path}: unreadable ICT-FaceKit file ({e.strerror or e})") from None
    v, vt, faces = [], [], []
    for line in data.splitlines():
        if line.startswith(b"v "):
            v.append(line[2:])
        elif want_faces and line.startswith(b"vt "):
            vt.append(line[3:])
        elif want_faces and line.startswith(b"f "):
            faces.append(line[2:].split())
    try:
        V = np.array(b" ".join(v).split(), dtype=np.float64).reshape(-1, 3)
        VT = np.array(b" ".join(vt).split(), dtype=np.float64).reshape(-1, 2) if vt else np.zeros((0, 2))
    except ValueError:
        raise ModelFormatError(f"{path}: malformed 'v'/'vt' lines (truncated or not an OBJ file)") from None
    return V, VT, faces


def frame_rotation() -> np.ndarray:
    """(3, 3) float64: the rotation ICT-FaceKit's coordinates get at load (:data:`FRAME_PITCH_DEG`)."""
    import torch

    from ..geometry import angles_to_rotmat

    a = torch.tensor([np.radians(FRAME_PITCH_DEG), 0.0, 0.0], dtype=torch.float64)
    return angles_to_rotmat(a).numpy()


def load_ict(folder: str | os.PathLike, region: str = "face", n_shape: int | None = None,
             expressions: str = "listed") -> MorphableModel:
    """Load an ICT-FaceKit ``FaceXModel`` folder (trimmed 11,248-vertex copy or full release).

    Args:
        folder: the ``FaceXModel`` directory (or its parent).
        region: ``"narrow"`` (6,706 v), ``"face"`` (9,409 v, default), ``"head"`` (face + head and
            neck, 11,248 v) or ``"full"`` (all vertices present in the files).
        n_shape: keep the first ``n_shape`` identity modes (default all 100).
        expressions: ``"listed"`` = the 53 of ``vertex_indices.json`` (upstream order).

    Returns:
        MorphableModel in millimetres with PCA shape (std 1) and blendshape expressions in [0, 1].
    """
    folder = Path(folder)
    if (folder / "FaceXModel").is_dir():
        folder = folder / "FaceXModel"
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"{folder}: no ICT-FaceKit folder. Get FaceXModel/ from github.com/ICT-VGL/ICT-FaceKit (MIT) "
            "and pass its path, or set MORPHABLE_ICT_DIR")
    if region not in REGIONS:
        raise ModelFormatError(f"unknown ICT region {region!r}; choose one of {sorted(REGIONS)}")
    idx_file = _confined(folder, "vertex_indices.json")
    try:
        meta = json.loads(idx_file.read_text())
        names = list(meta["expressions"])
        lms = np.asarray(meta["idx_to_landmark_verts"], dtype=np.int64)
    except FileNotFoundError:
        raise ModelNotFoundError(f"{idx_file}: missing; copy vertex_indices.json from ICT-FaceKit FaceXModel/") from None
    except (ValueError, KeyError, TypeError, OverflowError, OSError) as e:
        raise ModelFormatError(f"{idx_file}: not ICT-FaceKit's vertex_indices.json ({e})") from None
    if not all(isinstance(n, str) and n and "\0" not in n for n in names):
        raise ModelFormatError(f"{idx_file}: 'expressions' must be a list of OBJ names (strings)")
    if lms.shape != (68,):
        raise ModelFormatError(f"{idx_file}: expected 68 landmark vertex ids, got {lms.shape}")

    neutral, vt, faces = _read_obj(_confined(folder, "generic_neutral_mesh.obj"), want_faces=True)
    n_avail = neutral.shape[0]
    N = n_avail if region == "full" else REGIONS[region]
    if n_avail < N:
        raise ModelFormatError(f"{folder}: neutral mesh has {n_avail} vertices, region {region!r} needs {N}")
    if not faces:
        raise ModelFormatError(f"{folder / 'generic_neutral_mesh.obj'}: no 'f' lines; the neutral mesh must carry the topology")

    # faces: quads/triangles "v/vt[/vn]" 1-based; fan-triangulate, keep those inside the region.
    corner_v, corner_vt, tris = [], [], []
    try:
        for f in faces:
            ids = [tok.split(b"/") for tok in f]
            vi = [int(t[0]) - 1 for t in ids]
            ti = [int(t[1]) - 1 if len(t) > 1 and t[1] else -1 for t in ids]
            corner_v.extend(vi)
            corner_vt.extend(ti)
            for k in range(1, len(vi) - 1):
                tris.append((vi[0], vi[k], vi[k + 1]))
        tris = np.asarray(tris, dtype=np.int64).reshape(-1, 3)
        cv, ct = np.asarray(corner_v, dtype=np.int64), np.asarray(corner_vt, dtype=np.int64)
    except (ValueError, OverflowError) as e:
        raise ModelFormatError(f"{folder / 'generic_neutral_mesh.obj'}: malformed 'f' line ({e})") from None
    tris = tris[(tris < N).all(1)]
    # one UV per vertex (first corner that names it; seams get one side)
    uv = np.zeros((N, 2))
    ok = (cv >= 0) & (cv < N) & (ct >= 0) & (ct < len(vt))
    if ok.any():
        uv[cv[ok][::-1], :] = vt[ct[ok][::-1]]

    def target(name: str) -> np.ndarray:
        V, _, _ = _read_obj(_confined(folder, f"{name}.obj"))
        if V.shape[0] != n_avail:
            raise ModelFormatError(f"{folder / (name + '.obj')}: has {V.shape[0]} vertices, the neutral mesh {n_avail}: "
                                   "truncated, or a file of another model release")
        return V[:N] - neutral[:N]

    ids = sorted(p.stem for p in folder.glob("identity*.obj"))
    if not ids:
        raise ModelNotFoundError(f"{folder}: no identityNNN.obj files; the ICT-FaceKit folder is incomplete")
    if n_shape is not None:
        ids = ids[:n_shape]
    F = frame_rotation()
    S = np.einsum("ij,njk->nik", F, np.stack([target(n) for n in ids], -1) * CM_TO_MM)
    E = np.einsum("ij,njk->nik", F, np.stack([target(n) for n in names], -1) * CM_TO_MM)
    lm_ok = lms < N
    if not lm_ok.all():
        raise ModelFormatError(f"region {region!r} does not contain all 68 landmark vertices")
    cr = [i for i in RIGHT_JAW_EXTENDED if i < N]
    cl = [i for i in LEFT_JAW_EXTENDED if i < N]
    info = ModelInfo(name=f"ict-facekit-{region}", source=str(folder), licence=LICENCE, units="mm",
                     shape_kind="pca", expr_kind="blendshape", expression_names=names, frame_rotation=F.tolist())
    Ke = E.shape[-1]
    return MorphableModel(neutral[:N] * CM_TO_MM @ F.T, S, E, tris, lms, info,
                          shape_std=np.ones(S.shape[-1]), expr_std=np.ones(Ke),
                          expr_lower=np.zeros(Ke), expr_upper=np.ones(Ke),
                          contour_right=cr, contour_left=cl, uv=uv)


def crop_region(model: MorphableModel, region: str) -> MorphableModel:
    """The ``region`` of an ICT-FaceKit model that holds a larger region (regions are vertex prefixes).

    Keeps vertices ``0..REGIONS[region]-1``, the triangles whose three corners are among them, the
    contour candidates among them and their UVs; every value is copied unchanged.

    Args:
        model: an ICT-FaceKit model of ``REGIONS[region]`` or more vertices (e.g. the packaged ``face``).
        region: ``"narrow"``, ``"face"`` or ``"head"``.

    Raises:
        ModelFormatError: unknown region, a model smaller than the region, or landmarks outside it.
    """
    if region not in REGIONS or region == "full":
        raise ModelFormatError(f"unknown ICT region {region!r}; choose one of {sorted(k for k in REGIONS if k != 'full')}")
    N = REGIONS[region]
    if model.n_vertices < N:
        raise ModelFormatError(f"{model.name} has {model.n_vertices} vertices, region {region!r} needs {N}: "
                               "load the upstream ICT-FaceKit folder (MORPHABLE_ICT_DIR) for it")
    if model.n_vertices == N:
        return model
    if int(model.landmarks.max()) >= N:
        raise ModelFormatError(f"region {region!r} does not contain all 68 landmark vertices")
    tri = model.triangles[(model.triangles < N).all(1)]
    cr, cl = model.contour_right, model.contour_left
    info = dataclasses.replace(model.info, name=f"ict-facekit-{region}")
    return MorphableModel(model.mean[:N], model.shape_basis[:N], model.expr_basis[:N], tri, model.landmarks, info,
                          shape_std=model.shape_std, expr_std=model.expr_std, expr_lower=model.expr_lower,
                          expr_upper=model.expr_upper, contour_right=cr[cr < N], contour_left=cl[cl < N],
                          uv=model.uv[:N] if model.uv.numel() else None)
