"""dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``) run by torch.

The network (dlib's ``dnn_mmod_face_detection_ex``: three 5x5 stride-2 convolutions with batch
norm and ReLU, three 5x5 convolutions with 45 filters, one 9x9 output filter; an 80 x 80 px
detection window every 8 px) is read from dlib's own model file and run with ``torch.nn`` on an
image pyramid with steps of 5/6, like dlib's ``input_rgb_image_pyramid<pyramid_down<6>>``. The
batch-norm layers are folded into per-channel affine maps exactly as dlib does when it loads them
for inference (``gamma / sqrt(running_variance + eps)``).

The pyramid follows dlib's ``pyramid_down<6>``: each level is ``floor(5/6)`` of the previous one,
resampled bilinearly with the corners aligned (dlib's ``resize_image``), and a window centre maps
back with dlib's ``point_up`` (``p * 6/5 + 0.3`` per level). dlib tiles all levels into one image
with 10 px gaps; here each level runs alone with an 11 px black border, so windows near a level's
edge see black where dlib's see the neighbouring tile.

Why: the pip build of dlib has no BLAS, so one 320 x 320 image took about 0.7 s on one core of
the project's 2-core CPU; the same network in torch takes about 0.09 s (``python -m
benchmarks.detectors``). Scores are dlib's detection margins (on 59 dev photos: correlation 0.90,
mean absolute difference 0.01); boxes agree with dlib's up to a window step or a pyramid level
(median IoU 0.88 on those photos).

Only the layer types of this model are read (``loss_mmod_``, ``input_rgb_image_pyramid``,
``con_4``, ``bn_con2``, ``relu_``); anything else is refused with an error naming the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

from morphable.errors import MorphableError

__all__ = ["MMODNet", "load_mmod"]

_PYRAMID_N = 6  # dlib's pyramid_down<6>: each level is (N - 1) / N of the one before
_PAD = 11  # black border around each level (dlib's outer pyramid padding): windows may overhang the image


class _Reader:
    """dlib's serialisation: integers as a length byte (bit 7 = sign) and little-endian bytes,
    floats as (mantissa, exponent) integers, strings as length + bytes, tensors (version 2) as four
    dimensions + raw little-endian float32."""

    def __init__(self, data: bytes, path: Path):
        self.d, self.p, self.path = data, 0, path

    def _need(self, n: int) -> None:
        if self.p + n > len(self.d):
            raise MorphableError(f"{self.path}: truncated MMOD model file (needs {self.p + n} bytes, has "
                                 f"{len(self.d)}); reinstall morphable or pass a complete .dat file")

    def int(self) -> int:
        self._need(1)
        b = self.d[self.p]
        self.p += 1
        n = b & 0x0F
        if n > 8:
            raise MorphableError(f"{self.path}: not a dlib model file (bad integer at byte {self.p - 1})")
        self._need(n)
        v = int.from_bytes(self.d[self.p:self.p + n], "little")
        self.p += n
        return -v if b & 0x80 else v

    def float(self) -> float:
        m, e = self.int(), self.int()
        if abs(e) > 1100:
            raise MorphableError(f"{self.path}: not a dlib model file (float exponent {e})")
        return float(m) * 2.0 ** e

    def str(self, limit: int = 64) -> str:
        n = self.int()
        if not 0 <= n <= limit:
            raise MorphableError(f"{self.path}: not a dlib model file (string of {n} bytes at byte {self.p})")
        self._need(n)
        s = self.d[self.p:self.p + n].decode("latin1")
        self.p += n
        return s

    def tensor(self) -> np.ndarray:
        if self.int() != 2:
            raise MorphableError(f"{self.path}: unsupported dlib tensor version at byte {self.p}")
        dims = [self.int() for _ in range(4)]
        n = int(np.prod(dims))
        if min(dims) < 0 or n > 10_000_000:
            raise MorphableError(f"{self.path}: implausible tensor shape {dims}")
        self._need(4 * n)
        a = np.frombuffer(self.d, "<f4", count=n, offset=self.p).astype(np.float32)
        self.p += 4 * n
        return a

    def skip_to_next_layer(self) -> bool:
        """Past the rest of a layer record (its trainer state) to the next layer name, if any."""
        starts = [i for i in (self.d.find(s, self.p) for s in (b"\x01\x05con_4", b"\x01\x07bn_con2", b"\x01\x05relu_"))
                  if i >= 0]
        if not starts:
            return False
        self.p = min(starts)
        return True


@dataclass
class _Spec:
    window: tuple[int, int]
    nms_iou: float
    mean_rgb: tuple[float, float, float]
    layers: list


def _parse(path: Path) -> _Spec:
    r = _Reader(path.read_bytes(), path)
    if r.int() != 1 or r.str() != "loss_mmod_":
        raise MorphableError(f"{path}: not a dlib MMOD detector (expected a loss_mmod_ network)")
    windows = [(r.int(), r.int()) for _ in range(r.int())]
    if len(windows) != 1:
        raise MorphableError(f"{path}: {len(windows)} detector windows; only single-window MMOD models are supported")
    r.float(), r.float(), r.float()  # training losses and truth-match IoU
    nms_iou, _ = r.float(), r.float()
    r.float(), r.float()  # overlaps_ignore
    while r.int() != 3:  # the add_layer versions down to the input layer
        pass
    if r.str() != "input_rgb_image_pyramid":
        raise MorphableError(f"{path}: expected an input_rgb_image_pyramid input layer")
    mean_rgb = (r.float(), r.float(), r.float())
    layers = []
    while True:
        name = r.str()
        if name == "con_4":
            params = r.tensor()
            nf, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
            layers.append(("con", params, nf, nr, nc, sy, sx, py, px))
        elif name == "bn_con2":
            params = r.tensor()
            for _ in range(10):  # gamma and beta alias tensors
                r.int()
            r.tensor(), r.tensor()  # the last batch's means and inverse deviations
            means, variances = r.tensor(), r.tensor()
            r.int(), r.int()  # update counts
            for _ in range(4):
                r.float()  # learning-rate and weight-decay multipliers
            layers.append(("bn", params, means, variances, r.float()))
        elif name == "relu_":
            layers.append(("relu",))
        else:
            raise MorphableError(f"{path}: unsupported dlib layer {name!r}")
        if not r.skip_to_next_layer():
            break
    return _Spec(windows[0], nms_iou, mean_rgb, layers)


class MMODNet(torch.nn.Module):
    """The MMOD network and its pyramid/window decoding.

    Attributes:
        window: (width, height) of the detection window, px of a pyramid level (80 x 80).
        nms_iou: dlib's learned non-maximum-suppression IoU threshold (0.338 for the face model).
    """

    def __init__(self, spec: _Spec, path: Path):
        super().__init__()
        mods: list[torch.nn.Module] = []
        k, stride, offset = 3, 1, 0.0
        for layer in spec.layers:
            if layer[0] == "con":
                _, params, nf, nr, nc, sy, sx, py, px = layer
                n = nf * k * nr * nc
                if params.size != n + nf or sy != sx or py != px:
                    raise MorphableError(f"{path}: convolution {len(mods)} has an unexpected layout")
                conv = torch.nn.Conv2d(k, nf, (nr, nc), sy, py)
                conv.weight.data = torch.from_numpy(params[:n].reshape(nf, k, nr, nc).copy())
                conv.bias.data = torch.from_numpy(params[n:].copy())
                # dlib's map_output_to_input: p_in = p_out * stride - padding + size // 2
                offset += stride * (nc // 2 - px)
                stride *= sx
                mods.append(conv)
                k = nf
            elif layer[0] == "bn":
                _, params, means, variances, eps = layer
                if params.size != 2 * k or means.size != k or variances.size != k:
                    raise MorphableError(f"{path}: batch-norm layer {len(mods)} has an unexpected size")
                g = params[:k] / np.sqrt(variances + eps)
                aff = torch.nn.Conv2d(k, k, 1, groups=k)
                aff.weight.data = torch.from_numpy(g.astype(np.float32)).view(k, 1, 1, 1)
                aff.bias.data = torch.from_numpy((params[k:] - g * means).astype(np.float32))
                mods.append(aff)
            else:
                mods.append(torch.nn.ReLU())
        if k != 1:
            raise MorphableError(f"{path}: the network ends with {k} channels, not one score map")
        self.net = torch.nn.Sequential(*mods).eval()
        self.window = spec.window
        self.nms_iou = float(spec.nms_iou)
        self.stride, self.offset = stride, offset
        self.register_buffer("mean", torch.tensor(spec.mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))

    @torch.no_grad()
    def scores(self, level: torch.Tensor) -> torch.Tensor:
        """Score map (h, w) of one pyramid level: ``level`` (1, 3, H, W) float RGB 0..255, padded by
        ``_PAD`` black px (dlib's tiled pyramid leaves black margins around each level)."""
        x = (F.pad(level, (_PAD,) * 4) - self.mean) / 256.0
        return self.net(x)[0, 0]

    @torch.no_grad()
    def windows(self, rgb: np.ndarray, threshold: float = 0.0, min_side: int = 40) -> tuple[np.ndarray, np.ndarray]:
        """Every window scoring above ``threshold`` on every pyramid level, before suppression.

        Args:
            rgb: (H, W, 3) uint8 RGB image at the working size (faces of about 80 px and larger).
            threshold: dlib's detection margin (0 = its default cut).
            min_side: last pyramid level (px of its shorter side).

        Returns:
            boxes (N, 4) float [x0, y0, x1, y1] image px of ``rgb``, scores (N,).
        """
        W, H = self.window
        boxes, scores = [], []
        level = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
        k = 0
        while min(level.shape[-2:]) >= min_side:
            s = self.scores(level)
            ys, xs = torch.nonzero(s > threshold, as_tuple=True)
            if len(ys):
                cx = xs.double().numpy() * self.stride + self.offset - _PAD
                cy = ys.double().numpy() * self.stride + self.offset - _PAD
                for _ in range(k):  # dlib's pyramid_down<N>::point_up, once per level
                    cx, cy = cx * _PYRAMID_N / (_PYRAMID_N - 1) + 0.3, cy * _PYRAMID_N / (_PYRAMID_N - 1) + 0.3
                up = (_PYRAMID_N / (_PYRAMID_N - 1)) ** k  # the window's size at the image scale
                boxes.append(np.stack([cx - W * up / 2, cy - H * up / 2, cx + W * up / 2, cy + H * up / 2], 1))
                scores.append(s[ys, xs].double().numpy())
            # dlib's next level: floor((N - 1) / N of each side), bilinear with corners aligned, 8-bit pixels
            nh, nw = (int(n) * (_PYRAMID_N - 1) // _PYRAMID_N for n in level.shape[-2:])
            level = F.interpolate(level, size=(nh, nw), mode="bilinear", align_corners=True).round().clamp(0, 255)
            k += 1
        if not boxes:
            return np.zeros((0, 4)), np.zeros(0)
        return np.concatenate(boxes), np.concatenate(scores)


_CACHE: dict[str, MMODNet] = {}


def load_mmod(path: Union[str, Path]) -> MMODNet:
    """The MMOD network of a dlib ``.dat`` file (cached per path).

    Raises:
        MorphableError: missing, truncated or foreign file, or layers this reader does not know.
    """
    path = Path(path)
    key = str(path.resolve())
    if key not in _CACHE:
        if not path.is_file():
            raise MorphableError(f"MMOD model file {path} not found; reinstall morphable or pass model_path=")
        _CACHE[key] = MMODNet(_parse(path), path)
    return _CACHE[key]
