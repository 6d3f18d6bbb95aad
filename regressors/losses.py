r"""The composite training loss of the regressors and the validation metrics.

All terms are in the crop frame (pixels) unless stated:

* ``lm``: 68 model landmarks of the predicted parameters, projected with the predicted camera
  (``model.landmark_points`` + :func:`morphable.geometry.project`), vs the annotated ``target``
  points, weighted by ``visible``; smooth L1 (beta 1 px).
* ``vdc``: vertex distance cost (3DDFA's VDC idea, the parameter loss weighted by its effect on
  the mesh): the 68 landmark vertices plus a fixed random subset of ``n_vertices`` vertices of the
  predicted and of the label parameters, both projected to the crop plane; smooth L1. For
  flipped samples (``shape_w = 0``) the label vertices use the predicted shape (detached), so
  only pose, camera and expression are supervised by it.
* ``pose``: squared Frobenius distance of the rotation matrices (= 4 (1 - cos angle)).
* ``head``: landmark head vs the label ``landmarks3d``, points weighted by ``label_w`` when the batch
  has it (smooth L1, or the Wing loss with
  ``head_loss="wing"``) plus ``head_target`` times the same vs visible ``target`` points.
* ``shape``/``expr``: direct parameter losses (MSE of normalised shape, masked by ``shape_w``;
  MSE of expression coefficients, masked by ``expr_w``).
* ``distill`` (only when the batch carries a ``teacher`` :class:`RegressorOutput`, the main network
  on the same crops): the student's landmark head vs the teacher's, plus the ``vdc`` vertices of the
  student's parameters vs the teacher's (both smooth L1, px), plus the rotation distance of ``pose``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from morphable.geometry import project, rotmat_to_angles

from .networks import Regressor, RegressorOutput

__all__ = ["HEAD_LOSSES", "LossWeights", "RegressorLoss", "wing", "nme", "batch_metrics"]

#: loss functions of the landmark head terms (:class:`RegressorLoss` ``head_loss``)
HEAD_LOSSES = ("sl1", "wing")


@dataclass
class LossWeights:
    lm: float = 1.0
    vdc: float = 1.0
    pose: float = 10.0
    head: float = 1.0
    head_target: float = 0.5
    shape: float = 0.1
    expr: float = 1.0
    distill: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def wing(x: torch.Tensor, width: float = 10.0, eps: float = 2.0) -> torch.Tensor:
    """The Wing loss of Feng et al. (CVPR 2018) of residuals ``x`` (any shape, px), elementwise.

    ``width * log(1 + |x| / eps)`` below ``|x| = width``, ``|x| - C`` above it, with
    ``C = width - width * log(1 + width / eps)`` so that the two pieces meet. Its slope is
    ``width / (eps + |x|)``: up to ``width / eps`` times that of L1 for small residuals, which
    weights the last pixel of a landmark more than smooth L1 does, and 1 (L1) beyond ``width``.
    """
    if not (width > 0 and eps > 0):
        raise ValueError(f"wing: width and eps must be positive, got {width} and {eps}")
    a = x.abs()
    C = width - width * math.log1p(width / eps)
    return torch.where(a < width, width * torch.log1p(a / eps), a - C)


def _weighted_points(e, w):
    """Elementwise point losses ``e`` (B, L, 2), summed over x and y, with per-point weights (B, L);
    mean per unit weight."""
    return (e.sum(-1) * w).sum() / w.sum().clamp_min(1.0)


def _weighted_sl1(pred, target, w, beta=1.0):
    """Smooth L1 over (B, L, 2) points with per-point weights (B, L); mean per unit weight."""
    return _weighted_points(F.smooth_l1_loss(pred, target, reduction="none", beta=beta), w)


class RegressorLoss(torch.nn.Module):
    """Composite loss; ``forward(reg, x, batch) -> (total, {term: value})``.

    Args:
        model: the :class:`morphable.model.MorphableModel` the parameters belong to.
        n_vertices: size of the fixed random vertex subset of the ``vdc`` term.
        weights: :class:`LossWeights`.
        seed: seed of the vertex subset.
        head_loss: ``"sl1"`` (smooth L1, beta 1 px) or ``"wing"`` (:func:`wing` with ``wing_width``
            and ``wing_eps``, px of the crop) for the landmark head terms ``head`` and ``head_target``.
    """

    def __init__(self, model, n_vertices: int = 500, weights: LossWeights | None = None, seed: int = 0,
                 head_loss: str = "sl1", wing_width: float = 10.0, wing_eps: float = 2.0):
        super().__init__()
        if head_loss not in HEAD_LOSSES:
            raise ValueError(f"head_loss must be one of {HEAD_LOSSES}, got {head_loss!r}")
        if head_loss == "wing":
            wing(torch.zeros(1), wing_width, wing_eps)  # checks the parameters now, not at the first batch
        self.model = model
        self.w = weights or LossWeights()
        self.head_loss, self.wing_width, self.wing_eps = head_loss, float(wing_width), float(wing_eps)
        g = torch.Generator().manual_seed(seed)
        n = min(n_vertices, model.n_vertices)
        sub = torch.randperm(model.n_vertices, generator=g)[:n]
        self.register_buffer("vidx", torch.cat([model.landmarks, sub]))

    def _head_elementwise(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, L, 2) elementwise loss of the landmark head terms (``head_loss``)."""
        if self.head_loss == "wing":
            return wing(pred - target, self.wing_width, self.wing_eps)
        return F.smooth_l1_loss(pred, target, reduction="none", beta=1.0)

    def forward(self, reg: Regressor, x: torch.Tensor, batch: dict):
        z = reg.raw(x)
        out = reg.decode(z)
        return self.terms(reg, z, out, batch)

    def terms(self, reg: Regressor, z: dict, out: RegressorOutput, batch: dict):
        m, w = self.model, self.w
        vis = batch["visible"]
        lm = project(m.landmark_points(out.shape, out.expr), out.rotmat, out.scale, out.translation)
        t = {"lm": _weighted_sl1(lm, batch["target"], vis)}
        shape_w = batch["shape_w"][:, None]
        shape_lab = shape_w * batch["shape"] + (1 - shape_w) * out.shape.detach()
        Vp = project(m.select(self.vidx, out.shape, out.expr), out.rotmat, out.scale, out.translation)
        with torch.no_grad():
            Vl = project(m.select(self.vidx, shape_lab, batch["expr"]), batch["rotmat"], batch["scale"], batch["translation"])
        t["vdc"] = F.smooth_l1_loss(Vp, Vl, reduction="none").sum(-1).mean()
        t["pose"] = ((out.rotmat - batch["rotmat"]) ** 2).sum((-1, -2)).mean()
        ones = torch.ones_like(vis)
        t["head"] = _weighted_points(self._head_elementwise(out.landmarks, batch["landmarks3d"]), batch.get("label_w", ones))
        t["head_target"] = _weighted_points(self._head_elementwise(out.landmarks, batch["target"]), vis)
        zs = (batch["shape"] - reg.shape_mean) / reg.shape_std
        t["shape"] = (((z["shape"] - zs) ** 2).mean(-1) * batch["shape_w"]).sum() / batch["shape_w"].sum().clamp_min(1.0)
        t["expr"] = (((out.expr - batch["expr"]) ** 2).mean(-1) * batch["expr_w"]).sum() / batch["expr_w"].sum().clamp_min(1.0)
        tea = batch.get("teacher")
        if tea is not None:
            with torch.no_grad():
                Vt = project(m.select(self.vidx, tea.shape, tea.expr), tea.rotmat, tea.scale, tea.translation)
            t["distill"] = (_weighted_sl1(out.landmarks, tea.landmarks, ones)
                            + F.smooth_l1_loss(Vp, Vt, reduction="none").sum(-1).mean()
                            + ((out.rotmat - tea.rotmat) ** 2).sum((-1, -2)).mean())
        total = sum(getattr(w, k) * v for k, v in t.items())
        return total, {k: float(v.detach()) for k, v in t.items()}


def nme(pred: torch.Tensor, gt: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample NME (B,), %: mean point distance / sqrt(w * h) of the gt bounding box x 100.

    ``weights`` (B, L) restricts the mean (and the box) to weighted points.
    """
    d = (pred - gt).norm(dim=-1)
    if weights is None:
        weights = torch.ones_like(d)
    on = weights > 0
    big = torch.finfo(gt.dtype).max
    lo = torch.where(on[..., None], gt, torch.full_like(gt, big)).amin(1)
    hi = torch.where(on[..., None], gt, torch.full_like(gt, -big)).amax(1)
    wh = (hi - lo).clamp_min(1e-6)
    norm = (wh[:, 0] * wh[:, 1]).sqrt()
    return 100.0 * (d * weights).sum(1) / weights.sum(1).clamp_min(1e-9) / norm


@torch.no_grad()
def batch_metrics(model, out: RegressorOutput, batch: dict) -> dict:
    """Per-sample validation metrics (tensors (B,)): ``nme_param`` and ``nme_head`` vs the label
    ``landmarks3d``, ``nme_target`` (param path vs visible targets), ``yaw_err`` (degrees, |pred - label|)."""
    lm = project(model.landmark_points(out.shape, out.expr), out.rotmat, out.scale, out.translation)
    gt = batch["landmarks3d"]
    vis = (batch["visible"] > 0).float()
    has = vis.sum(1) >= 2
    yaw_p = rotmat_to_angles(out.rotmat.double())[:, 1]
    yaw_l = rotmat_to_angles(batch["rotmat"].double())[:, 1]
    nt = nme(lm, batch["target"], vis)
    return {
        "nme_param": nme(lm, gt),
        "nme_head": nme(out.landmarks, gt),
        "nme_target": torch.where(has, nt, torch.full_like(nt, float("nan"))),
        "yaw_err": torch.rad2deg((yaw_p - yaw_l).abs()).float(),
    }
