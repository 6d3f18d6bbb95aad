r"""Networks that regress 3DMM parameters, a weak-perspective camera and 68 landmarks from a face crop.

Two backbones, one head layout:

* ``mobilenet`` (default, for CPU): MobileNetV2 (inverted residuals, linear bottlenecks, width
  multiplier); about 2.6 M parameters at width 1.0 with the ICT-FaceKit heads.
* ``resnet``: ResNet with BasicBlocks (18-layer layout by default, width option) and CBAM channel +
  spatial attention on the last stage.

Input: (B, 3, S, S) float crops normalised by :func:`normalize_crops` (S = ``CROP_SIZE`` = 120).
Output (:class:`RegressorOutput`) is in physical units, de-normalised inside the module with
mean/std buffers computed from the training labels (:func:`label_stats`):

* shape (B, Ks) model coefficients; expr (B, Ke) inside [expr_lower, expr_upper] where finite;
* rotation: the net outputs the continuous 6D representation (Zhou et al., CVPR 2019: the first
  two columns of R, Gram-Schmidt-orthonormalised). Rotation vectors and Euler angles are
  discontinuous somewhere in SO(3) and a net regressing them must learn a jump; 6D has none, gives
  a proper rotation matrix by construction, and the pose loss can compare matrices directly.
  ``rotmat`` (B, 3, 3) and ``rotvec`` (B, 3, radians) are both returned;
* scale (B,) crop px per mm and translation (B, 2) crop px: ``x = s * P @ R @ X + t`` in the crop
  frame (:mod:`morphable.geometry`);
* landmarks (B, 68, 2) crop px from a separate head (3D-style iBUG-68).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Optional

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from morphable.crop import CROP_SIZE
from morphable.geometry import as_rotation_matrix, frame_change, project, rotmat_to_rotvec

__all__ = [
    "RegressorConfig",
    "RegressorOutput",
    "Regressor",
    "MobileNetV2",
    "ResNetCBAM",
    "ARCHS",
    "normalize_crops",
    "label_stats",
    "sixd_to_rotmat",
    "rotmat_to_sixd",
]

ARCHS = ("mobilenet", "resnet")
N_LANDMARKS = 68
#: Input normalisation: (pixel - 127.5) / 128, RGB order.
PIXEL_MEAN, PIXEL_SCALE = 127.5, 128.0


def normalize_crops(crops) -> torch.Tensor:
    """uint8 RGB crops (B, S, S, 3) (numpy or tensor) -> network input (B, 3, S, S) float32."""
    x = torch.as_tensor(np.ascontiguousarray(crops) if isinstance(crops, np.ndarray) else crops)
    if x.ndim == 3:
        x = x[None]
    return (x.permute(0, 3, 1, 2).float() - PIXEL_MEAN) / PIXEL_SCALE


# ---------------------------------------------------------------------------------- rotations
def sixd_to_rotmat(d6: torch.Tensor) -> torch.Tensor:
    """6D rotation representation (..., 6) = two 3-vectors (columns 0 and 1) -> R (..., 3, 3).

    Gram-Schmidt: b1 = a1/|a1|, b2 = normalised a2 minus its b1 component, b3 = b1 x b2, and
    R = [b1 b2 b3] column-wise (so ``rotmat_to_sixd(R) = [R[:, 0], R[:, 1]]``).
    """
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    a2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = a2 / a2.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], -1)


def rotmat_to_sixd(R: torch.Tensor) -> torch.Tensor:
    """R (..., 3, 3) -> 6D representation (..., 6): columns 0 and 1 concatenated."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], -1)


# -------------------------------------------------------------------------------- containers
@dataclass
class RegressorConfig:
    """Everything needed to rebuild a :class:`Regressor` (saved with the weights, JSON-ready)."""

    arch: str = "mobilenet"
    width: float = 1.0
    crop_size: int = CROP_SIZE
    n_shape: int = 100
    n_expr: int = 53
    model_name: str = ""
    depth: int = 18  # resnet only: 10, 18 or 34
    dropout: float = 0.1
    #: working resolution of the backbone, px: crops of ``crop_size`` are resized to it inside the
    #: network (bilinear) so that both networks share one crop pipeline; 0 = ``crop_size``
    input_size: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RegressorConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class RegressorOutput:
    """Physical outputs of a regressor for B crops (torch tensors or numpy arrays).

    Attributes:
        shape: (B, Ks) shape coefficients.
        expr: (B, Ke) expression coefficients (inside the model's range where finite).
        rotvec: (B, 3) rotation vector, radians (``R = exp([rotvec]_x)``).
        scale: (B,) crop pixels per millimetre.
        translation: (B, 2) crop pixels, crop position of the model origin.
        landmarks: (B, 68, 2) landmark-head points, crop pixels (0-based pixel centres).
        rotmat: (B, 3, 3) the same rotation as a matrix.
    """

    shape: torch.Tensor
    expr: torch.Tensor
    rotvec: torch.Tensor
    scale: torch.Tensor
    translation: torch.Tensor
    landmarks: torch.Tensor
    rotmat: Optional[torch.Tensor] = None

    def numpy(self) -> "RegressorOutput":
        """The same output with every field as a numpy array."""
        cv = lambda v: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v  # noqa: E731
        return RegressorOutput(**{f.name: cv(getattr(self, f.name)) for f in fields(self)})

    def param_landmarks(self, model) -> torch.Tensor:
        """Model landmarks (B, 68, 2), crop px, of the regressed parameters projected with the regressed camera."""
        t = lambda v: torch.as_tensor(v, dtype=model.mean.dtype)  # noqa: E731
        R = t(self.rotmat) if self.rotmat is not None else None
        if R is None:
            from morphable.geometry import rotvec_to_rotmat

            R = rotvec_to_rotmat(t(self.rotvec))
        X = model.landmark_points(t(self.shape), t(self.expr))
        return project(X, R, t(self.scale), t(self.translation))


# --------------------------------------------------------------------------------- backbones
def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class _ConvBNAct(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class _InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers.append(_ConvBNAct(cin, hidden, 1))
        layers += [_ConvBNAct(hidden, hidden, 3, stride, groups=hidden), _ConvBNAct(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 feature extractor (Sandler et al. 2018): (B, 3, S, S) -> (B, C) pooled features.

    Args:
        width: channel multiplier (1.0 -> 2.2 M backbone parameters, 0.5 -> 0.7 M).
    """

    #: (expansion t, channels c, repeats n, first stride s) as in the paper's Table 2.
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, width: float = 1.0):
        super().__init__()
        cin = _make_divisible(32 * width)
        self.out_channels = _make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [_ConvBNAct(3, cin, 3, 2)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width)
            for i in range(n):
                layers.append(_InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_ConvBNAct(cin, self.out_channels, 1))
        self.features = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.features(x).mean((2, 3))


class _CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel then spatial attention."""

    def __init__(self, channels: int, reduction: int = 16, kernel: int = 7):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x):
        ca = torch.sigmoid(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))
        x = x * ca
        sa = torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))
        return x * sa


class _BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, cbam=False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.cbam = _CBAM(cout) if cbam else None

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.cbam is not None:
            y = self.cbam(y)
        return self.relu(y + (x if self.down is None else self.down(x)))


class ResNetCBAM(nn.Module):
    """ResNet with BasicBlocks and CBAM on every block of the last stage: (B, 3, S, S) -> (B, C).

    Args:
        depth: 10, 18 (default) or 34 (blocks per stage (1,1,1,1), (2,2,2,2), (3,4,6,3)).
        width: channel multiplier on (64, 128, 256, 512).
        attention: CBAM on the last stage (False: the plain ResNet of the same size, the baseline
            that ``python -m regressors.bench`` times beside it).
    """

    LAYOUTS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

    def __init__(self, depth: int = 18, width: float = 1.0, attention: bool = True):
        super().__init__()
        if depth not in self.LAYOUTS:
            raise ValueError(f"resnet depth must be one of {sorted(self.LAYOUTS)}, got {depth}")
        chans = [_make_divisible(c * width) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(nn.Conv2d(3, chans[0], 7, 2, 3, bias=False), nn.BatchNorm2d(chans[0]),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks: list[nn.Module] = []
        cin = chans[0]
        for si, (c, n) in enumerate(zip(chans, self.LAYOUTS[depth])):
            for i in range(n):
                blocks.append(_BasicBlock(cin, c, 2 if (i == 0 and si > 0) else 1, cbam=attention and si == 3))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for b in blocks:  # zero-init the last BN of each residual branch: blocks start as identity
            nn.init.zeros_(b.bn2.weight)

    def forward(self, x):
        return self.blocks(self.stem(x)).mean((2, 3))


def build_backbone(cfg: RegressorConfig) -> nn.Module:
    if cfg.arch == "mobilenet":
        return MobileNetV2(cfg.width)
    if cfg.arch == "resnet":
        return ResNetCBAM(cfg.depth, cfg.width)
    raise ValueError(f"unknown regressor architecture {cfg.arch!r}; choose one of {ARCHS}")


# ------------------------------------------------------------------------------------ stats
def label_stats(shape, expr, rotmat, scale, translation, landmarks, expr_lower=None, expr_upper=None) -> dict:
    """Mean/std de-normalisation buffers from training labels, all in the CROP frame.

    Args:
        shape: (N, Ks); expr: (N, Ke); rotmat: (N, 3, 3); scale: (N,) crop px/mm;
        translation: (N, 2) crop px; landmarks: (N, 68, 2) crop px (label 3D-style landmarks).
        expr_lower, expr_upper: (Ke,) model range; where both are finite the expression statistics
            are of ``logit((e - lo) / (hi - lo))`` (the head passes through a sigmoid).

    Returns:
        dict of float32 tensors ``{name}_mean``/``{name}_std`` for shape, expr, rot6d, scale,
        translation, landmarks (landmarks flattened to 136).
    """
    f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    shape, expr, rotmat = f(shape), f(expr), f(rotmat)
    scale, translation, landmarks = f(scale).reshape(-1, 1), f(translation), f(landmarks).reshape(len(shape), -1)
    Ke = expr.shape[1]
    lo = f(expr_lower) if expr_lower is not None else torch.full((Ke,), -math.inf, dtype=torch.float64)
    hi = f(expr_upper) if expr_upper is not None else torch.full((Ke,), math.inf, dtype=torch.float64)
    bounded = torch.isfinite(lo) & torch.isfinite(hi)
    span = torch.where(bounded, hi - lo, torch.ones_like(hi))
    u = ((expr - torch.where(bounded, lo, torch.zeros_like(lo))) / span).clamp(0.01, 0.99)
    expr_n = torch.where(bounded, torch.log(u / (1 - u)), expr)
    out = {}
    for name, a, floor in (("shape", shape, 1e-3), ("expr", expr_n, 1e-3), ("rot6d", rotmat_to_sixd(rotmat), 1e-2),
                           ("scale", scale, 1e-4), ("translation", translation, 1e-2), ("landmarks", landmarks, 1e-2)):
        m = a.mean(0)
        s = a.std(0, unbiased=False).clamp_min(floor) if len(a) > 1 else torch.ones_like(m)
        out[f"{name}_mean"], out[f"{name}_std"] = m.float(), s.float()
    return out


# ------------------------------------------------------------------------------------ model
class Regressor(nn.Module):
    """Backbone + linear heads + de-normalisation buffers; ``forward(x)`` gives physical values.

    Args:
        cfg: architecture and output sizes (Ks = ``cfg.n_shape``, Ke = ``cfg.n_expr``).
        expr_lower, expr_upper: (Ke,) valid expression range (defaults: unbounded).
        stats: buffers from :func:`label_stats` (defaults: mean 0 / std 1, a centred camera).
    """

    def __init__(self, cfg: RegressorConfig, expr_lower=None, expr_upper=None, stats: Optional[dict] = None):
        super().__init__()
        if cfg.arch not in ARCHS:
            raise ValueError(f"unknown regressor architecture {cfg.arch!r}; choose one of {ARCHS}")
        self.cfg = cfg
        Ks, Ke, S = cfg.n_shape, cfg.n_expr, cfg.crop_size
        # channels_last: oneDNN's fast path on CPU (about 10x faster training than NCHW here)
        self.backbone = build_backbone(cfg).to(memory_format=torch.channels_last)
        C = self.backbone.out_channels
        self.dropout = nn.Dropout(cfg.dropout)
        self.sizes = {"shape": Ks, "expr": Ke, "rot6d": 6, "scale": 1, "translation": 2, "landmarks": 2 * N_LANDMARKS}
        self.heads = nn.ModuleDict({k: nn.Linear(C, n) for k, n in self.sizes.items()})
        for h in self.heads.values():  # start at the label mean
            nn.init.normal_(h.weight, std=1e-3)
            nn.init.zeros_(h.bias)
        inf = torch.full((Ke,), math.inf)
        lo = torch.as_tensor(expr_lower, dtype=torch.float32) if expr_lower is not None else -inf
        hi = torch.as_tensor(expr_upper, dtype=torch.float32) if expr_upper is not None else inf.clone()
        if lo.shape != (Ke,) or hi.shape != (Ke,):
            raise ValueError(f"expr_lower/expr_upper must be ({Ke},)")
        self.register_buffer("expr_lower", lo.clone())
        self.register_buffer("expr_upper", hi.clone())
        default = {
            "shape": (torch.zeros(Ks), torch.ones(Ks)),
            "expr": (torch.zeros(Ke), torch.ones(Ke)),
            "rot6d": (torch.tensor([1.0, 0, 0, 0, 1, 0]), torch.full((6,), 0.2)),
            "scale": (torch.tensor([S / 200.0]), torch.tensor([S / 2000.0])),
            "translation": (torch.full((2,), (S - 1) / 2.0), torch.full((2,), S / 20.0)),
            "landmarks": (torch.full((2 * N_LANDMARKS,), (S - 1) / 2.0), torch.full((2 * N_LANDMARKS,), S / 5.0)),
        }
        for k, (m, s) in default.items():
            self.register_buffer(f"{k}_mean", m.float())
            self.register_buffer(f"{k}_std", s.float())
        #: (3, 3) model frame (``ModelInfo.frame_rotation``) of the rotation head's raw output: the
        #: frame of the labels it was trained on (saved in weight files as ``frame_rotation``)
        self.raw_frame = np.eye(3)
        # R_out = R_raw @ frame_correction (morphable.geometry.frame_change) re-expresses the head's
        # rotation in the frame of the model the weights were loaded for (not in state_dict: set by
        # set_frame / load_regressor)
        self.register_buffer("frame_correction", torch.eye(3), persistent=False)
        if stats is not None:
            self.set_stats(stats)

    def set_frame(self, raw_frame, model_frame=None) -> None:
        """Declare the frame of the raw rotation output and, optionally, the model frame to output in
        (both (3, 3) rotations, ``ModelInfo.frame_rotation``; ``None``: the raw frame)."""
        Fr = as_rotation_matrix(raw_frame)
        Fm = Fr if model_frame is None else as_rotation_matrix(model_frame)
        self.raw_frame = Fr
        C = torch.as_tensor(frame_change(Fr, Fm), dtype=self.frame_correction.dtype, device=self.frame_correction.device)
        self.frame_correction.copy_(C)

    def set_stats(self, stats: dict):
        """Copy de-normalisation buffers (from :func:`label_stats`) into the module."""
        for k in self.sizes:
            for suffix in ("mean", "std"):
                name = f"{k}_{suffix}"
                v = torch.as_tensor(stats[name], dtype=torch.float32).reshape(getattr(self, name).shape)
                getattr(self, name).copy_(v)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def raw(self, x: torch.Tensor) -> dict:
        """Normalised head outputs {name: (B, n)} (what the parameter losses compare)."""
        n = self.cfg.input_size
        if n and n != x.shape[-1]:
            x = F.interpolate(x, size=(n, n), mode="bilinear", align_corners=False)
        feat = self.dropout(self.backbone(x.contiguous(memory_format=torch.channels_last)))
        return {k: h(feat) for k, h in self.heads.items()}

    def decode(self, z: dict) -> RegressorOutput:
        """Normalised head outputs -> physical :class:`RegressorOutput`."""
        d = lambda k: getattr(self, f"{k}_mean") + getattr(self, f"{k}_std") * z[k]  # noqa: E731
        lo, hi = self.expr_lower, self.expr_upper
        bounded = torch.isfinite(lo) & torch.isfinite(hi)
        e = d("expr")
        lo0, span = torch.where(bounded, lo, torch.zeros_like(lo)), torch.where(bounded, hi - lo, torch.ones_like(hi))
        expr = torch.where(bounded, lo0 + span * torch.sigmoid(e), e)
        R = sixd_to_rotmat(d("rot6d")) @ self.frame_correction
        return RegressorOutput(
            shape=d("shape"),
            expr=expr,
            rotvec=rotmat_to_rotvec(R),
            scale=d("scale")[:, 0],
            translation=d("translation"),
            landmarks=d("landmarks").reshape(-1, N_LANDMARKS, 2),
            rotmat=R,
        )

    def forward(self, x: torch.Tensor) -> RegressorOutput:
        """(B, 3, S, S) normalised crops -> :class:`RegressorOutput` in physical units (crop frame)."""
        return self.decode(self.raw(x))

    @torch.no_grad()
    def predict(self, crops, batch_size: int = 256) -> RegressorOutput:
        """uint8 RGB crops (B, S, S, 3) -> :class:`RegressorOutput` of numpy arrays (eval mode, no grad)."""
        from morphable.errors import InputError

        a = np.asarray(crops)
        if a.ndim == 3:
            a = a[None]
        S = self.cfg.crop_size
        if a.ndim != 4 or a.shape[1:] != (S, S, 3):
            raise InputError(f"crops must be (B, {S}, {S}, 3) uint8 RGB, got {a.shape}")
        if len(a) == 0:
            raise InputError("empty batch of crops")
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        try:
            outs = [self(normalize_crops(a[i:i + batch_size]).to(dev)).numpy() for i in range(0, len(a), batch_size)]
        finally:
            self.train(was)
        return RegressorOutput(**{f.name: np.concatenate([getattr(o, f.name) for o in outs]) for f in fields(RegressorOutput)})


class _ExportWrapper(nn.Module):
    """Tuple-output view of a :class:`Regressor` for ONNX export."""

    NAMES = ("shape", "expr", "rotvec", "scale", "translation", "landmarks", "rotmat")

    def __init__(self, reg: Regressor):
        super().__init__()
        self.reg = reg

    def forward(self, x):
        o = self.reg(x)
        return tuple(getattr(o, n) for n in self.NAMES)
