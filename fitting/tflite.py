"""A float TFLite model (``.tflite``) read without TensorFlow and run with ``torch``.

:func:`read_tflite` parses the FlatBuffers file with the TFLite schema's field numbers (only the
tables a small convolutional network needs: model, operator codes, subgraph, tensors, operators,
buffers and the options of the operators below) and :class:`TFLiteNet` runs its graph as
``torch.nn.functional`` calls. Constant tensors are read once (float16 weights, as MediaPipe ships
them, are widened to float32, which is what TFLite's ``DEQUANTIZE`` does at run time); 4-D
activations are kept NCHW inside and converted back to TFLite's NHWC where a reshape or an output
needs it.

Supported operators: ``CONV_2D``, ``DEPTHWISE_CONV_2D``, ``MAX_POOL_2D``, ``ADD``, ``RELU``,
``PAD`` (constant zeros), ``RESHAPE``, ``RESIZE_BILINEAR``, ``CONCATENATION`` and ``DEQUANTIZE``
of constants; fused activations NONE/RELU/RELU6. Any other operator, quantised int8 weights or a
file that is not a TFLite model is refused with a :class:`~morphable.errors.WeightsError` naming
the file. TFLite's ``SAME`` padding (extra row/column at the bottom/right when the total is odd)
and its legacy bilinear resize (``align_corners`` and ``half_pixel_centers`` both false: source
pixel = destination pixel x in/out) are reproduced exactly.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from morphable.errors import WeightsError

__all__ = ["TFLiteTensor", "TFLiteOp", "TFLiteGraph", "read_tflite", "TFLiteNet"]

# BuiltinOperator codes (tensorflow/lite/schema/schema.fbs)
_OPS = {0: "ADD", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE", 17: "MAX_POOL_2D",
        19: "RELU", 22: "RESHAPE", 23: "RESIZE_BILINEAR", 34: "PAD"}
# TensorType -> numpy dtype
_DTYPES = {0: "<f4", 1: "<f2", 2: "<i4", 4: "<i8"}
# option tables: field name -> (slot, struct format, default)
_OPTIONS = {
    "CONV_2D": {"padding": (0, "b", 0), "stride_w": (1, "i", 0), "stride_h": (2, "i", 0), "activation": (3, "b", 0),
                "dilation_w": (4, "i", 1), "dilation_h": (5, "i", 1)},
    "DEPTHWISE_CONV_2D": {"padding": (0, "b", 0), "stride_w": (1, "i", 0), "stride_h": (2, "i", 0),
                          "depth_multiplier": (3, "i", 0), "activation": (4, "b", 0), "dilation_w": (5, "i", 1),
                          "dilation_h": (6, "i", 1)},
    "MAX_POOL_2D": {"padding": (0, "b", 0), "stride_w": (1, "i", 0), "stride_h": (2, "i", 0),
                    "filter_w": (3, "i", 0), "filter_h": (4, "i", 0), "activation": (5, "b", 0)},
    "ADD": {"activation": (0, "b", 0)},
    "CONCATENATION": {"axis": (0, "i", 0), "activation": (1, "b", 0)},
    "RESIZE_BILINEAR": {"align_corners": (2, "?", False), "half_pixel_centers": (3, "?", False)},
}
_SAME, _VALID = 0, 1


class _Table:
    """One FlatBuffers table: ``pos`` of its start in ``buf``; fields by slot number."""

    __slots__ = ("buf", "pos", "vt", "vt_len")

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        self.vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vt_len = struct.unpack_from("<H", buf, self.vt)[0]

    def _field(self, slot: int) -> int:
        o = 4 + 2 * slot
        if o >= self.vt_len:
            return 0
        off = struct.unpack_from("<H", self.buf, self.vt + o)[0]
        return self.pos + off if off else 0

    def scalar(self, slot: int, fmt: str, default=0):
        p = self._field(slot)
        return struct.unpack_from("<" + fmt, self.buf, p)[0] if p else default

    def _target(self, slot: int) -> int:
        p = self._field(slot)
        return p + struct.unpack_from("<I", self.buf, p)[0] if p else 0

    def table(self, slot: int) -> Optional["_Table"]:
        p = self._target(slot)
        return _Table(self.buf, p) if p else None

    def vector(self, slot: int) -> tuple[int, int]:
        """(start of the elements, length) of a vector field; (0, 0) if absent."""
        p = self._target(slot)
        return (p + 4, struct.unpack_from("<I", self.buf, p)[0]) if p else (0, 0)

    def tables(self, slot: int) -> list["_Table"]:
        start, n = self.vector(slot)
        return [_Table(self.buf, start + 4 * i + struct.unpack_from("<I", self.buf, start + 4 * i)[0]) for i in range(n)]

    def ints(self, slot: int) -> list[int]:
        start, n = self.vector(slot)
        return list(struct.unpack_from(f"<{n}i", self.buf, start)) if n else []

    def bytes(self, slot: int) -> bytes:
        start, n = self.vector(slot)
        return self.buf[start:start + n]

    def string(self, slot: int) -> str:
        return self.bytes(slot).decode("utf-8", "replace")


@dataclass
class TFLiteTensor:
    """One tensor of the graph.

    Attributes:
        name: the converter's name (e.g. ``"conv2d/Kernel"``).
        shape: TFLite shape (NHWC for images; OHWI for convolution kernels).
        dtype: numpy dtype string (``"<f4"``, ``"<f2"``, ``"<i4"``, ``"<i8"``).
        data: the constant's values (``shape``-shaped), None for an activation.
    """

    name: str
    shape: tuple
    dtype: str
    data: Optional[np.ndarray] = None


@dataclass
class TFLiteOp:
    """One operator: ``kind`` (e.g. ``"CONV_2D"``), input/output tensor indices (-1 = absent) and
    its options (see ``_OPTIONS``)."""

    kind: str
    inputs: list
    outputs: list
    options: dict = field(default_factory=dict)


@dataclass
class TFLiteGraph:
    """The first subgraph of a TFLite file: tensors, operators in execution order, the graph's
    input and output tensor indices, and the file it came from."""

    tensors: list
    ops: list
    inputs: list
    outputs: list
    path: str = ""


def read_tflite(path: Union[str, Path]) -> TFLiteGraph:
    """Parse a float TFLite model file.

    Raises:
        WeightsError: missing file, not a TFLite FlatBuffer, or operators/types this reader does not know.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"TFLite model {path} not found; reinstall morphable")
    buf = path.read_bytes()
    if len(buf) < 16 or buf[4:8] != b"TFL3":
        raise WeightsError(f"{path}: not a TFLite model (no 'TFL3' FlatBuffers identifier)")
    try:
        return _parse(buf, path)
    except (struct.error, IndexError, ValueError) as e:
        raise WeightsError(f"{path}: truncated or damaged TFLite model ({e})") from None


def _parse(buf: bytes, path: Path) -> TFLiteGraph:
    model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    codes = []
    for c in model.tables(1):
        code = max(c.scalar(0, "b", 0), c.scalar(3, "i", 0))  # deprecated_builtin_code, builtin_code
        if code not in _OPS:
            raise WeightsError(f"{path}: TFLite operator {code} is not supported by fitting.tflite "
                               f"(supported: {', '.join(sorted(_OPS.values()))})")
        codes.append(_OPS[code])
    buffers = model.tables(4)
    subgraphs = model.tables(2)
    if not subgraphs:
        raise WeightsError(f"{path}: TFLite model without a subgraph")
    g = subgraphs[0]
    tensors = []
    for t in g.tables(0):
        ttype = t.scalar(1, "b", 0)
        if ttype not in _DTYPES:
            raise WeightsError(f"{path}: tensor {t.string(3)!r} has TFLite type {ttype}; only float16/32 and "
                               "int32/64 tensors are supported (no quantised models)")
        shape = tuple(t.ints(0))
        data = None
        b = t.scalar(2, "I", 0)
        if 0 < b < len(buffers):
            raw = buffers[b].bytes(0)
            if not raw:  # large models keep the data outside the FlatBuffer: offset + size
                off, size = buffers[b].scalar(1, "Q", 0), buffers[b].scalar(2, "Q", 0)
                raw = buf[off:off + size] if off > 1 else b""
            if raw:
                data = np.frombuffer(raw, _DTYPES[ttype]).reshape(shape).copy()
        tensors.append(TFLiteTensor(t.string(3), shape, _DTYPES[ttype], data))
    ops = []
    for o in g.tables(3):
        kind = codes[o.scalar(0, "I", 0)]
        opts = {}
        spec = _OPTIONS.get(kind)
        tab = o.table(4)
        if spec:
            for name, (slot, fmt, default) in spec.items():
                opts[name] = tab.scalar(slot, fmt, default) if tab is not None else default
        ops.append(TFLiteOp(kind, o.ints(1), o.ints(2), opts))
    return TFLiteGraph(tensors, ops, g.ints(1), g.ints(2), str(path))


def _same_pad(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TFLite's SAME padding (before, after) of one axis: the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _resize_weights(n_in: int, n_out: int, align_corners: bool, half_pixel: bool):
    """Indices (lo, hi) and weight of hi for TFLite's bilinear resize of one axis."""
    if align_corners and n_out > 1:
        scale = (n_in - 1) / (n_out - 1)
    else:
        scale = n_in / n_out
    d = torch.arange(n_out, dtype=torch.float64)
    src = (d + 0.5) * scale - 0.5 if half_pixel else d * scale
    src = src.clamp(min=0.0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo, hi, (src - lo).float()


class TFLiteNet(torch.nn.Module):
    """The graph of a :class:`TFLiteGraph`, run by torch for one fixed input shape.

    ``forward(x)`` takes the input as TFLite does, (N, H, W, C) float32, and returns the graph's
    outputs in TFLite's layout (a list, in the file's output order). Constants are float32 torch
    buffers (kernels rearranged to OIHW), so ``.to(dtype)``/``.state_dict()`` behave as usual.
    """

    def __init__(self, graph: TFLiteGraph):
        super().__init__()
        self.path = graph.path
        T = graph.tensors
        const = {i: t.data for i, t in enumerate(T) if t.data is not None}
        produced = {o for op in graph.ops for o in op.outputs}
        # DEQUANTIZE of a constant is folded into the constant itself
        steps = []
        for op in graph.ops:
            if op.kind == "DEQUANTIZE":
                if op.inputs[0] not in const:
                    raise WeightsError(f"{self.path}: DEQUANTIZE of an activation is not supported")
                const[op.outputs[0]] = const[op.inputs[0]].astype(np.float32)
                continue
            steps.append(op)
        self._names: dict[int, str] = {}

        def param(i: int, layout: str = "") -> str:
            """Register constant tensor ``i`` as a float32 buffer (kernels to OIHW); its name."""
            if i not in const:
                raise WeightsError(f"{self.path}: operator weights {T[i].name!r} are not constant")
            key = f"t{i}{layout}"
            if key not in self._names.values():
                a = const[i].astype(np.float32)
                if layout == "io":  # O11I -> (I, O): a 1x1 kernel as a matrix
                    a = a.reshape(a.shape[0], -1).T
                elif layout == "oihw":  # OHWI -> OIHW
                    a = a.transpose(0, 3, 1, 2)
                elif layout == "dw":  # 1HW(C*m) -> (C*m)1HW
                    a = a.transpose(3, 0, 1, 2)
                self.register_buffer(key, torch.from_numpy(np.ascontiguousarray(a)))
                self._names[len(self._names)] = key
            return key

        self._plan = []
        for op in steps:
            kind, o = op.kind, op.options
            if o.get("activation", 0) not in (0, 1, 3):
                raise WeightsError(f"{self.path}: fused activation {o['activation']} of {kind} is not supported")
            if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                kshape = T[op.inputs[1]].shape
                pointwise = kind == "CONV_2D" and kshape[1:3] == (1, 1) and o["stride_w"] == o["stride_h"] == 1
                w = param(op.inputs[1], "io" if pointwise else "oihw" if kind == "CONV_2D" else "dw")
                b = param(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
                step = dict(o, w=w, b=b, k=tuple(kshape[1:3]), pointwise=pointwise,
                            groups=1 if kind == "CONV_2D" else T[op.inputs[0]].shape[3])
            elif kind in ("PAD", "RESHAPE"):
                step = dict(o)
                if kind == "PAD":
                    step["pads"] = const[op.inputs[1]].astype(int).tolist()
                else:
                    step["shape"] = list(T[op.outputs[0]].shape)
            elif kind == "RESIZE_BILINEAR":
                (_, hi, wi, _), (_, ho, wo, _) = T[op.inputs[0]].shape, T[op.outputs[0]].shape
                step = dict(o, y=_resize_weights(hi, ho, o["align_corners"], o["half_pixel_centers"]),
                            x=_resize_weights(wi, wo, o["align_corners"], o["half_pixel_centers"]))
            else:
                step = dict(o)
            ins = [i for i in op.inputs[:1 if kind in ("PAD", "RESHAPE", "RESIZE_BILINEAR") else None]
                   if i >= 0 and (i in produced or i in graph.inputs)]
            self._plan.append((kind, ins, op.outputs[0], step, [len(T[i].shape) for i in ins]))
        # an operator may overwrite an input that nothing reads after it (in-place ADD/RELU)
        last = {}
        for k, (_, ins, _, _, _) in enumerate(self._plan):
            for i in ins:
                last[i] = k
        keep = set(graph.inputs) | set(graph.outputs)
        self._plan = [(kind, ins, out, dict(s, free=[i for i in ins if last[i] == k and i not in keep]), r)
                      for k, (kind, ins, out, s, r) in enumerate(self._plan)]
        self.inputs, self.outputs = list(graph.inputs), list(graph.outputs)
        self.input_shape = tuple(T[graph.inputs[0]].shape)
        self.output_shapes = [tuple(T[i].shape) for i in graph.outputs]
        self.eval()

    @staticmethod
    def _act(x: torch.Tensor, a: int) -> torch.Tensor:
        """TFLite's fused activation, in place on a fresh result."""
        return x if a == 0 else (x.relu_() if a == 1 else x.clamp_(0.0, 6.0))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # values: 4-D tensors NCHW, the rest in TFLite's own layout
        vals = {self.inputs[0]: x.permute(0, 3, 1, 2)}
        for kind, ins, out, s, ranks in self._plan:
            a = vals[ins[0]]
            if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                kh, kw = s["k"]
                if s["padding"] == _SAME:
                    py = _same_pad(a.shape[2], kh, s["stride_h"], s["dilation_h"])
                    px = _same_pad(a.shape[3], kw, s["stride_w"], s["dilation_w"])
                    if py[0] == py[1] and px[0] == px[1]:
                        pad = (py[0], px[0])
                    else:
                        a, pad = F.pad(a, (px[0], px[1], py[0], py[1])), 0
                else:
                    pad = 0
                w, b = getattr(self, s["w"]), getattr(self, s["b"]) if s["b"] else None
                if s["pointwise"]:  # 1x1 stride 1: one matrix product on the channels-last pixels
                    n, c, h, wd = a.shape
                    rows = a.permute(0, 2, 3, 1).reshape(-1, c)
                    y = (torch.addmm(b, rows, w) if b is not None else rows @ w).view(n, h, wd, -1).permute(0, 3, 1, 2)
                else:
                    y = F.conv2d(a, w, b, (s["stride_h"], s["stride_w"]), pad, (s["dilation_h"], s["dilation_w"]),
                                 s["groups"])
                y = self._act(y, s["activation"])
            elif kind == "MAX_POOL_2D":
                if s["padding"] == _SAME:
                    py = _same_pad(a.shape[2], s["filter_h"], s["stride_h"])
                    px = _same_pad(a.shape[3], s["filter_w"], s["stride_w"])
                    if any(py + px):
                        a = F.pad(a, (px[0], px[1], py[0], py[1]), value=-float("inf"))
                y = self._act(F.max_pool2d(a, (s["filter_h"], s["filter_w"]), (s["stride_h"], s["stride_w"])),
                              s["activation"])
            elif kind == "ADD":
                b = vals[ins[1]]
                if ins[1] in s["free"] and b.shape == torch.broadcast_shapes(a.shape, b.shape):
                    y = self._act(b.add_(a), s["activation"])
                elif ins[0] in s["free"] and a.shape == torch.broadcast_shapes(a.shape, b.shape):
                    y = self._act(a.add_(b), s["activation"])
                else:
                    y = self._act(a + b, s["activation"])
            elif kind == "RELU":
                y = a.relu_() if ins[0] in s["free"] else F.relu(a)
            elif kind == "PAD":
                p = s["pads"]
                if a.dim() == 4:  # NHWC paddings -> NCHW, F.pad wants the last axis first
                    p = [p[0], p[3], p[1], p[2]]
                y = F.pad(a, [v for pair in reversed(p) for v in pair])
            elif kind == "RESHAPE":
                if a.dim() == 4:
                    a = a.permute(0, 2, 3, 1)
                y = a.reshape(s["shape"])
                if y.dim() == 4:
                    y = y.permute(0, 3, 1, 2)
            elif kind == "RESIZE_BILINEAR":
                (ylo, yhi, wy), (xlo, xhi, wx) = s["y"], s["x"]
                r = torch.lerp(a.index_select(2, ylo), a.index_select(2, yhi), wy[:, None])
                y = torch.lerp(r.index_select(3, xlo), r.index_select(3, xhi), wx)
            elif kind == "CONCATENATION":
                parts = [vals[i] for i in ins]
                axis = s["axis"] % ranks[0]
                if ranks[0] == 4:
                    axis = (0, 2, 3, 1)[axis]
                y = self._act(torch.cat(parts, axis), s["activation"])
            else:  # pragma: no cover - refused at load
                raise WeightsError(f"{self.path}: operator {kind} is not supported")
            vals[out] = y
        return [v.permute(0, 2, 3, 1) if v.dim() == 4 else v for v in (vals[i] for i in self.outputs)]
