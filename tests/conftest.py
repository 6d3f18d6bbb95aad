"""Shared test fixtures: the ../shared folder, the default model, tolerances."""
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def need_shared(sub: str = "") -> Path:
    p = SHARED / sub
    if not p.exists():
        pytest.skip(f"{p} is absent: these tests read real files from ../shared next to the checkout")
    return p


@pytest.fixture(scope="session")
def shared() -> Path:
    return need_shared()


@pytest.fixture(scope="session")
def ict_model():
    need_shared("models/ict-facekit")
    from morphable.registry import load_model

    return load_model()


def assert_close(a, b, atol=1e-6, rtol=0.0, msg=""):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert a.shape == b.shape, f"{msg} shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    assert torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol), f"{msg} max abs err {err:g}"
