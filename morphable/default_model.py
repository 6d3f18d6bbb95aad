"""The default model shipped inside the package: ICT-FaceKit's ``face`` region as one compact file.

``morphable/data/ict-facekit-face.h5`` is a native model file (:mod:`morphable.formats.native`)
written with ``compact=True``: the identity and expression bases keep 4 decimals of a millimetre
(HDF5 scale-offset filter + gzip, at most 0.1 um off per basis entry), everything else (mean, UVs,
triangles, landmark and contour ids, expression names, frame) is exact. It holds the 9,409-vertex
``face`` region, whose vertex prefix is also the default ``narrow`` region (6,706 vertices), so
:func:`morphable.registry.load_model` serves both from it without ``../shared`` or a download.
ICT-FaceKit's MIT notice ships beside it (``morphable/data/ICT-FaceKit-LICENSE.txt``) and inside it
(root attribute ``licence_text``).

Rebuild it from the upstream ``FaceXModel`` folder (the trimmed copy in ``../shared`` or the full
release) and print what the storage costs::

    python -m morphable.default_model --ict-dir ../shared/models/ict-facekit --out morphable/data/ict-facekit-face.h5
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .model import MorphableModel

__all__ = ["PACKAGED_MODEL", "PACKAGED_REGION", "PACKAGED_LICENCE", "build_packaged_model", "StorageError",
           "storage_error"]

_DATA = Path(__file__).resolve().parent / "data"
#: the region stored in the package (its prefix regions are served from it too)
PACKAGED_REGION = "face"
#: the shipped default model file
PACKAGED_MODEL = _DATA / f"ict-facekit-{PACKAGED_REGION}.h5"
#: ICT-FaceKit's MIT licence text, shipped beside the model
PACKAGED_LICENCE = _DATA / "ICT-FaceKit-LICENSE.txt"


def build_packaged_model(ict_dir: str | Path, out: str | Path = PACKAGED_MODEL) -> Path:
    """Convert the upstream ICT-FaceKit folder into the compact packaged file.

    Args:
        ict_dir: a ``FaceXModel`` folder or its parent (upstream release or the trimmed copy).
        out: where to write the ``.h5``.

    Returns:
        The path written. The landmarks stored are ICT-FaceKit's own ids (``upstream``); the
        library's definitions are applied at load (:func:`morphable.registry.load_model`).
    """
    from .formats.ict import load_ict
    from .formats.native import save_native

    model = load_ict(ict_dir, region=PACKAGED_REGION)
    notice = PACKAGED_LICENCE.read_text() if PACKAGED_LICENCE.is_file() else model.info.licence
    return save_native(model, out, compact=True, extra_attrs={"licence_text": notice})


@dataclass
class StorageError:
    """What the compact storage changes, measured against the exact model.

    Attributes:
        basis_max_um: largest absolute change of one basis entry, micrometres.
        vertex_max_um: largest vertex displacement over ``samples`` random faces, micrometres.
        vertex_mean_um: mean vertex displacement over those faces, micrometres.
        samples: number of random faces (shape ~N(0, 1), sparse blendshape weights in [0, 1]).
    """

    basis_max_um: float
    vertex_max_um: float
    vertex_mean_um: float
    samples: int


def storage_error(exact: MorphableModel, stored: MorphableModel, samples: int = 256, seed: int = 0) -> StorageError:
    """Compare a model with its stored copy: basis entries and vertices of random faces (float64)."""
    g = torch.Generator().manual_seed(seed)
    shape, expr = exact.sample(samples, generator=g)
    a = exact.to(torch.float64).vertices(shape.double(), expr.double())
    b = stored.to(torch.float64).vertices(shape.double(), expr.double())
    d = (a - b).norm(dim=-1)
    basis = max((exact.shape_basis - stored.shape_basis).abs().max().item(),
                (exact.expr_basis - stored.expr_basis).abs().max().item())
    return StorageError(basis_max_um=1e3 * basis, vertex_max_um=1e3 * d.max().item(),
                        vertex_mean_um=1e3 * d.mean().item(), samples=samples)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m morphable.default_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--ict-dir", required=True, help="ICT-FaceKit FaceXModel folder (or its parent)")
    p.add_argument("--out", default=str(PACKAGED_MODEL), help="output .h5 (default: the packaged file)")
    p.add_argument("--samples", type=int, default=256, help="random faces for the precision figures")
    a = p.parse_args(argv)
    from .formats.ict import load_ict
    from .formats.native import load_native

    out = build_packaged_model(a.ict_dir, a.out)
    exact = load_ict(a.ict_dir, region=PACKAGED_REGION)
    t = time.perf_counter()
    stored = load_native(out)
    dt = time.perf_counter() - t
    e = storage_error(exact, stored, a.samples)
    print(f"wrote {out}: {out.stat().st_size / 2**20:.2f} MiB, {stored.n_vertices} vertices, "
          f"{stored.n_shape} shape + {stored.n_expr} expression components; read in {dt * 1e3:.0f} ms")
    print(f"storage error: basis entries <= {e.basis_max_um:.3f} um; vertices of {e.samples} random faces "
          f"max {e.vertex_max_um:.3f} um, mean {e.vertex_mean_um:.3f} um")
    return 0


if __name__ == "__main__":
    sys.exit(main())
