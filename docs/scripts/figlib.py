"""Shared helpers of the documentation figure scripts (not part of the package).

Every figure of the docs is drawn from the library itself: the default model
(:func:`morphable.registry.load_model`), projected with :func:`morphable.geometry.project` and
shaded with :func:`morphable.render.render_shaded`. PNGs are written small (palette-quantised when
large) because they are committed: each must stay under :data:`MAX_PNG_BYTES`.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parent.parent
REPO = DOCS.parent
IMG = DOCS / "img"
#: Budget of one committed PNG (bytes).
MAX_PNG_BYTES = 300_000


def quiet_threads() -> None:
    """One thread everywhere: the docs scripts share the machine with training jobs."""
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(k, "1")
    import torch

    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 10, "figure.dpi": 100, "savefig.dpi": 100})
    return plt


def save_png(fig_or_array, path: Path, max_bytes: int = MAX_PNG_BYTES) -> Path:
    """Write a matplotlib figure or an (H, W, 3) uint8 array as an optimised PNG.

    Writes a full-colour PNG; if it is over 90 % of ``max_bytes`` it is palette-quantised (256
    colours, the renders' smooth shading survives this). Raises if it is still over budget.
    """
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(fig_or_array, np.ndarray):
        im = Image.fromarray(fig_or_array)
    else:
        buf = io.BytesIO()
        fig_or_array.savefig(buf, format="png")
        import matplotlib.pyplot as plt

        plt.close(fig_or_array)
        buf.seek(0)
        im = Image.open(buf).convert("RGB")
    out = io.BytesIO()
    im.save(out, format="PNG", optimize=True)
    if out.tell() > 0.9 * max_bytes:
        out = io.BytesIO()
        im.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
            out, format="PNG", optimize=True)
    data = out.getvalue()
    if len(data) > max_bytes:
        raise RuntimeError(f"{path}: {len(data)} bytes, over the {max_bytes}-byte budget of a docs image")
    path.write_bytes(data)
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} ({len(data) // 1024} KB)")
    return path


@dataclass
class Render:
    """A model instance drawn into an image.

    Attributes:
        rgb: (H, W, 3) uint8, white background.
        mask: (H, W) bool, pixels covered by the mesh.
        vertices_img: (N, 3) x, y px (y down), depth px (larger = nearer).
        landmarks: (68, 3) the model's 68 landmark vertices, same frame.
        rotation: (3, 3) model -> camera rotation.
        scale: px per mm.
        translation: (2,) px, image position of the model origin.
    """

    rgb: np.ndarray
    mask: np.ndarray
    vertices_img: np.ndarray
    landmarks: np.ndarray
    rotation: np.ndarray
    scale: float
    translation: np.ndarray


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """(3, 3) rotation from AFLW2000-3D angles in degrees (via :func:`morphable.geometry.angles_to_rotmat`)."""
    import torch

    from morphable.geometry import angles_to_rotmat

    a = torch.tensor([[pitch, yaw, roll]], dtype=torch.float64) * math.pi / 180.0
    return angles_to_rotmat(a)[0].numpy()


def render(model, size=(400, 400), yaw=0.0, pitch=0.0, roll=0.0, scale=None, center=True, shape=None, expr=None,
           color=(200, 200, 205), translation=None) -> Render:
    """Project ``model`` (mean face unless ``shape``/``expr`` (Ks,)/(Ke,) are given) with the
    weak-perspective camera of :mod:`morphable.geometry` and shade it.

    ``scale`` (px/mm) defaults to 70 % of the image height for the face's height. With
    ``center=True`` the translation puts the projected face's bounding-box centre in the image
    centre; otherwise ``translation`` (2,) px is used as is.
    """
    import torch

    from morphable.geometry import depth, project
    from morphable.render import render_shaded

    W, H = size
    sh = torch.zeros(1, model.n_shape, dtype=torch.float64) if shape is None else torch.as_tensor(shape, dtype=torch.float64)[None]
    ex = torch.zeros(1, model.n_expr, dtype=torch.float64) if expr is None else torch.as_tensor(expr, dtype=torch.float64)[None]
    V = model.vertices(sh, ex)
    L = model.landmark_points(sh, ex)
    R = torch.as_tensor(rotation(yaw, pitch, roll))[None]
    if scale is None:
        ext = float(V[0, :, 1].max() - V[0, :, 1].min())
        scale = 0.7 * H / ext
    s = torch.tensor([float(scale)], dtype=torch.float64)
    t = torch.zeros(1, 2, dtype=torch.float64)
    if center:
        xy = project(V, R, s, t)[0]
        lo, hi = xy.min(0).values, xy.max(0).values
        t = (torch.tensor([(W - 1) / 2, (H - 1) / 2], dtype=torch.float64) - (lo + hi) / 2)[None]
    elif translation is not None:
        t = torch.as_tensor(translation, dtype=torch.float64).reshape(1, 2)
    vi = torch.cat([project(V, R, s, t), depth(V, R, s)[..., None]], -1)[0].numpy()
    li = torch.cat([project(L, R, s, t), depth(L, R, s)[..., None]], -1)[0].numpy()
    rgb, mask = render_shaded(vi, model.triangles.numpy(), H, W, color=color)
    rgb[~mask] = 255
    return Render(rgb, mask, vi, li, R[0].numpy(), float(s[0]), t[0].numpy())


def landmark_visibility(r: Render, model, tol_px: float = 3.0) -> np.ndarray:
    """(68,) bool: which landmark vertices the camera sees (z-buffer test of :mod:`morphable.render`)."""
    from morphable.render import vertex_visibility

    H, W = r.mask.shape
    vis = vertex_visibility(r.vertices_img, model.triangles.numpy(), H, W)
    return vis[model.landmarks.numpy()]
