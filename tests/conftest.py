"""Shared test fixtures: the ../shared folder, the default model, tolerances.

Tests that read real files from ``../shared`` skip, saying why, when it is absent (a user's clone).
CI sets ``MORPHABLE_REQUIRE_SHARED=1``: there such a skip is a failure, so a data test can never
silently stop running.
"""
import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def shared_required() -> bool:
    """True where ``../shared`` must be present (CI): data skips become failures."""
    return os.environ.get("MORPHABLE_REQUIRE_SHARED", "") not in ("", "0")


def skip_without_shared(reason: str):
    """Skip for a missing piece of ``../shared`` (``reason`` names it), or fail where it is required."""
    if shared_required():
        pytest.fail(f"{reason}, but MORPHABLE_REQUIRE_SHARED is set (CI): ../shared must be complete")
    pytest.skip(reason)


def need_shared(sub: str = "") -> Path:
    p = SHARED / sub
    if not p.exists():
        skip_without_shared(f"{p} is absent: these tests read real files from ../shared next to the checkout")
    return p


@pytest.fixture(scope="session")
def shared() -> Path:
    return need_shared()


@pytest.fixture(scope="session")
def default_model():
    """The default model as users get it: the file shipped in the package (no ../shared needed),
    ``face`` region, 3D-style landmarks."""
    from morphable.registry import load_model

    return load_model()


@pytest.fixture(scope="session")
def ict_model():
    """ICT-FaceKit as the solver, hardening and profiling tests were calibrated on, from the file
    shipped in the package: the ``narrow`` region with the ``refined`` landmarks, the fixed points of
    the 2D-contour definition (what fitting 300-W-style annotations uses)."""
    from morphable.registry import load_model

    return load_model(region="narrow", landmarks="refined")


def assert_close(a, b, atol=1e-6, rtol=0.0, msg=""):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert a.shape == b.shape, f"{msg} shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    assert torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol), f"{msg} max abs err {err:g}"


def int8_conv_weights(path) -> list:
    """The stored convolution weight arrays (4-D initializers read by a DequantizeLinear node) of a
    QDQ int8 ONNX file, in their stored dtype."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in g.graph.initializer}
    return [inits[n.input[0]] for n in g.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4]
