"""The one morphable-model type every loader produces.

A model instance is ``V = mean + shape_basis @ alpha + expr_basis @ beta`` in the model frame
(millimetres, right-handed, +y up, face along +z; see :mod:`morphable.geometry`).

* PCA bases are stored **scaled by their standard deviations**, so PCA coefficients are
  ~N(0, 1); ``shape_std``/``expr_std`` keep the folded-in standard deviations (mm) for reference.
* Blendshape expression bases (``expr_kind == "blendshape"``) keep their native weights;
  ``expr_lower``/``expr_upper`` give the valid range (ICT-FaceKit: [0, 1]).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from .errors import InputError, ModelFormatError

__all__ = ["MorphableModel", "ModelInfo"]


@dataclass
class ModelInfo:
    """Descriptive metadata of a model (not tensors)."""

    name: str
    source: str = ""
    licence: str = ""
    units: str = "mm"
    shape_kind: str = "pca"
    expr_kind: str = "pca"
    expression_names: list[str] = field(default_factory=list)
    #: which vertices are the 68 landmarks: "upstream" (the model file's own) or the name of a
    #: re-selected definition (:mod:`morphable.landmark_definition`)
    landmark_definition: str = "upstream"
    #: (3, 3) rotation applied to the source file's coordinates at load, ``x_model = F @ x_file``,
    #: so that the model frame meets the library convention (identity: the file's own frame;
    #: ICT-FaceKit: :data:`morphable.formats.ict.FRAME_PITCH_DEG`). Regressor weights record the
    #: frame they were trained in and are corrected when it differs.
    frame_rotation: list = field(default_factory=lambda: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


class MorphableModel(nn.Module):
    """A linear 3D morphable model: buffers only, so ``.to(device, dtype)`` moves everything.

    Buffers (N vertices, Ks shape and Ke expression components, T triangles, L landmarks):
        mean: (N, 3) float, mm.
        shape_basis: (N, 3, Ks) float, mm per unit coefficient.
        expr_basis: (N, 3, Ke) float, mm per unit coefficient (or blendshape weight).
        shape_std, expr_std: (Ks,), (Ke,) float, standard deviations folded into the bases (mm
            scale of each component; 1 where the source gives none).
        expr_lower, expr_upper: (Ke,) float, valid coefficient range (+-inf for PCA).
        triangles: (T, 3) int64, 0-based, counter-clockwise seen from outside (front faces).
        landmarks: (68,) int64 vertex ids of the iBUG-68 points (3D-style, fixed vertices).
        contour_right, contour_left: (Cr,), (Cl,) int64 candidate vertices of the jaw outline for
            2D (silhouette) contour landmarks; may be empty.
        uv: (N, 2) float texture coordinates in [0, 1], or (0, 2) if the model has none.
    """

    def __init__(
        self,
        mean,
        shape_basis,
        expr_basis,
        triangles,
        landmarks,
        info: ModelInfo,
        shape_std=None,
        expr_std=None,
        expr_lower=None,
        expr_upper=None,
        contour_right=None,
        contour_left=None,
        uv=None,
    ):
        super().__init__()

        def arr(a, name):
            try:
                x = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a)
            except (TypeError, ValueError) as e:  # ragged lists
                raise ModelFormatError(f"model {name} is not an array ({str(e)[:120]}): the file is corrupt") from None
            if x.dtype.kind not in "fiub":  # strings, objects, compound records from a broken file
                raise ModelFormatError(f"model {name} holds {x.dtype} values, not numbers: the file is corrupt")
            return x

        def f(a, name):
            return torch.as_tensor(arr(a, name), dtype=torch.float32)

        def i(a, name):
            if a is None:
                return torch.zeros(0, dtype=torch.int64)
            x = arr(a, name).reshape(-1)
            if x.dtype.kind not in "iu" and (not np.isfinite(x).all() or not np.array_equal(x, np.round(x))):
                raise ModelFormatError(f"model {name} must be integer vertex ids: the file is corrupt")
            return torch.as_tensor(x.astype(np.int64))

        mean = f(mean, "mean")
        shape_basis, expr_basis = f(shape_basis, "shape_basis"), f(expr_basis, "expr_basis")
        if mean.ndim != 2 or mean.shape[1] != 3:
            raise ModelFormatError(f"model mean must be (N, 3), got {tuple(mean.shape)}")
        N = mean.shape[0]
        for nm, b in (("shape_basis", shape_basis), ("expr_basis", expr_basis)):
            if b.ndim != 3 or b.shape[:2] != (N, 3):
                raise ModelFormatError(f"model {nm} must be (N={N}, 3, K), got {tuple(b.shape)}")
        Ks, Ke = shape_basis.shape[2], expr_basis.shape[2]
        tri = i(triangles, "triangles")
        if tri.numel() % 3:
            raise ModelFormatError(f"model triangles must be (T, 3), got {tri.numel()} ids")
        tri = tri.reshape(-1, 3)
        lm = i(landmarks, "landmarks")
        cr, cl = i(contour_right, "contour_right"), i(contour_left, "contour_left")
        for nm, idx in (("triangles", tri), ("landmarks", lm), ("contour_right", cr), ("contour_left", cl)):
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= N):
                raise ModelFormatError(f"model {nm} index outside 0..{N - 1}: the file does not match the mesh")
        if not torch.isfinite(mean).all() or not torch.isfinite(shape_basis).all() or not torch.isfinite(expr_basis).all():
            raise ModelFormatError("model contains NaN or inf values: the file is corrupt")
        vecs = {}
        for nm, a, n in (("shape_std", shape_std, Ks), ("expr_std", expr_std, Ke), ("expr_lower", expr_lower, Ke),
                         ("expr_upper", expr_upper, Ke)):
            if a is not None:
                vecs[nm] = f(a, nm)
                if tuple(vecs[nm].shape) != (n,):
                    raise ModelFormatError(f"model {nm} must have {n} values, got shape {tuple(vecs[nm].shape)}")
        uv_t = f(uv, "uv") if uv is not None else torch.zeros(0, 2)
        if uv_t.numel() and tuple(uv_t.shape) != (N, 2):
            raise ModelFormatError(f"model uv must be (N={N}, 2), got {tuple(uv_t.shape)}")
        self.info = info
        self.register_buffer("mean", mean)
        self.register_buffer("shape_basis", shape_basis)
        self.register_buffer("expr_basis", expr_basis)
        self.register_buffer("shape_std", vecs.get("shape_std", torch.ones(Ks)))
        self.register_buffer("expr_std", vecs.get("expr_std", torch.ones(Ke)))
        inf = torch.full((Ke,), float("inf"))
        self.register_buffer("expr_lower", vecs.get("expr_lower", -inf))
        self.register_buffer("expr_upper", vecs.get("expr_upper", inf.clone()))
        self.register_buffer("triangles", tri)
        self.register_buffer("landmarks", lm)
        self.register_buffer("contour_right", cr)
        self.register_buffer("contour_left", cl)
        self.register_buffer("uv", uv_t.reshape(-1, 2))

    # ----------------------------------------------------------------- sizes
    @property
    def n_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def n_shape(self) -> int:
        return self.shape_basis.shape[2]

    @property
    def n_expr(self) -> int:
        return self.expr_basis.shape[2]

    @property
    def n_landmarks(self) -> int:
        return self.landmarks.shape[0]

    @property
    def name(self) -> str:
        return self.info.name

    # ------------------------------------------------------------- instances
    def _check(self, shape: Optional[torch.Tensor], expr: Optional[torch.Tensor]):
        if shape is None and expr is None:
            raise InputError("give shape (B, Ks) or expression (B, Ke) coefficients to size the batch")
        B = (shape if shape is not None else expr).shape[0]
        ref = shape if shape is not None else expr
        if shape is None:
            shape = ref.new_zeros(B, self.n_shape)
        if expr is None:
            expr = ref.new_zeros(B, self.n_expr)
        if shape.ndim != 2 or shape.shape[1] != self.n_shape:
            raise InputError(f"shape coefficients must be (B, {self.n_shape}), got {tuple(shape.shape)}")
        if expr.ndim != 2 or expr.shape[1] != self.n_expr:
            raise InputError(f"expression coefficients must be (B, {self.n_expr}), got {tuple(expr.shape)}")
        return shape, expr

    def vertices(self, shape: Optional[torch.Tensor] = None, expr: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mesh vertices (B, N, 3), mm, model frame, from shape (B, Ks) and expression (B, Ke)."""
        shape, expr = self._check(shape, expr)
        dt = shape.dtype
        N = self.mean.shape[0]
        # (B, K) @ (K, 3N): a GEMM on a transposed view of the basis (einsum copied the basis first)
        V = (shape @ self.shape_basis.to(dt).reshape(N * 3, -1).T + expr @ self.expr_basis.to(dt).reshape(N * 3, -1).T)
        return self.mean.to(dt) + V.view(-1, N, 3)

    def select(self, idx: torch.Tensor, shape: Optional[torch.Tensor] = None, expr: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Only the vertices ``idx`` ((L,) or (B, L) int64) of the instances: (B, L, 3), mm.

        Costs O(L K), never builds the full mesh.
        """
        shape, expr = self._check(shape, expr)
        dt = shape.dtype
        if idx.ndim == 1:
            m, bs, be = self.mean[idx].to(dt), self.shape_basis[idx].to(dt), self.expr_basis[idx].to(dt)
            return m + torch.einsum("lck,bk->blc", bs, shape) + torch.einsum("lck,bk->blc", be, expr)
        m, bs, be = self.mean[idx].to(dt), self.shape_basis[idx].to(dt), self.expr_basis[idx].to(dt)
        return m + torch.einsum("blck,bk->blc", bs, shape) + torch.einsum("blck,bk->blc", be, expr)

    def landmark_points(self, shape: Optional[torch.Tensor] = None, expr: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The 68 landmark vertices (B, 68, 3), mm, model frame (3D-style landmarks)."""
        return self.select(self.landmarks, shape, expr)

    def sample(self, n: int = 1, generator: Optional[torch.Generator] = None, expression: bool = True):
        """Random plausible coefficients: shape ~N(0, 1); expression ~N(0, 1) for PCA models or a
        sparse draw within [lower, upper] for blendshape models. Returns (shape (n, Ks), expr (n, Ke))."""
        shape = torch.randn(n, self.n_shape, generator=generator)
        if not expression:
            return shape, torch.zeros(n, self.n_expr)
        if self.info.expr_kind == "pca":
            expr = torch.randn(n, self.n_expr, generator=generator)
        else:
            lo = self.expr_lower.clamp_min(0.0)
            hi = self.expr_upper.clamp_max(1.0)
            u = torch.rand(n, self.n_expr, generator=generator) ** 3 * 0.5
            on = torch.rand(n, self.n_expr, generator=generator) < 0.15
            expr = torch.where(on, lo + u * (hi - lo), torch.zeros_like(u)).clamp(lo, hi)
        return shape, expr

    def with_landmarks(self, ids, definition: Optional[str] = None) -> "MorphableModel":
        """The same model (sharing every other buffer) with another landmark definition.

        Args:
            ids: (68,) vertex ids of the iBUG-68 points.
            definition: a short name of the definition (``info.landmark_definition``).
        """
        import copy

        from .errors import ModelFormatError

        lm = torch.as_tensor(np.asarray(ids), dtype=torch.long, device=self.landmarks.device).reshape(-1)
        if lm.shape != self.landmarks.shape:
            raise ModelFormatError(f"landmark ids must be ({self.n_landmarks},), got {tuple(lm.shape)}")
        if int(lm.min()) < 0 or int(lm.max()) >= self.n_vertices:
            raise ModelFormatError(f"landmark ids outside 0..{self.n_vertices - 1}")
        new = copy.copy(self)
        new._buffers = dict(self._buffers)
        new._buffers["landmarks"] = lm
        new.info = copy.copy(self.info)
        if definition is not None:
            new.info.landmark_definition = definition
        return new

    def summary(self) -> dict:
        """JSON-ready description (what ``morphable info`` prints)."""
        ext = (self.mean.max(0).values - self.mean.min(0).values).tolist()
        return {
            "name": self.info.name,
            "vertices": self.n_vertices,
            "triangles": int(self.triangles.shape[0]),
            "shape_components": self.n_shape,
            "shape_kind": self.info.shape_kind,
            "expression_components": self.n_expr,
            "expression_kind": self.info.expr_kind,
            "landmarks": self.n_landmarks,
            "landmark_definition": getattr(self.info, "landmark_definition", None),
            "frame_rotation": [[round(float(v), 6) for v in row] for row in self.info.frame_rotation],
            "contour_candidates": int(self.contour_right.numel() + self.contour_left.numel()),
            "has_uv": bool(self.uv.numel()),
            "units": self.info.units,
            "extent_mm": [round(e, 2) for e in ext],
            "source": self.info.source,
            "licence": self.info.licence,
        }

    def extra_repr(self) -> str:
        return f"{self.info.name}: N={self.n_vertices}, Ks={self.n_shape} ({self.info.shape_kind}), Ke={self.n_expr} ({self.info.expr_kind})"
