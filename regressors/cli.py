"""``train`` subcommand for the project CLI: ``morphable train --labels FILE.npz --out runs/NAME ...``.

The main CLI calls :func:`register` with its ``add_subparsers()`` object.
"""
from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand (same options as ``python -m regressors.train``)."""
    from .train import build_parser

    p = subparsers.add_parser("train", help="train a CNN regressor on a pseudo-label file",
                              description="Train a CNN regressor (crop -> 3DMM parameters, pose, 68 landmarks).")
    build_parser(p)
    p.set_defaults(func=_run)
    return p


def _run(args) -> int:
    from .train import train

    train(args)
    return 0
