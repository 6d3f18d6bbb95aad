"""Unbiased 3D-style points for faces annotated with only AFLW's 21 points.

AFLW's 21 points annotate 16 of the 68 iBUG points. A fit to them places the other 52 (jaw,
eyelids, lips, nose bridge) by the model's prior alone, and that prior is biased: on the 2,007
hand-annotated 300-W training faces, fitted once to all 68 annotations (2D contour, as their labels)
and once to the AFLW-like 16-point subset only (as aflw21's labels), the 16-point fit's 3D-style
jaw comes out wider and further forward and its lips apart. A face's unannotated points are
therefore moved by a correction *learned on those 300-W pairs*: a ridge regression from the
16-point fit's 68 model-frame keypoints (centred) to the model-frame difference of the two fits'
keypoints (mm). The moved points are then refitted with the model (all 68 3D-style points, the
annotated ones kept where the first fit put them), so the labels stay a face of the model.

    corr = LabelCorrection.learn(X_sub, X_full, lam=1e4)   # (N, 68, 3) mm each, model frame
    X_fixed = corr.apply(X_sub_other, annotated)           # (M, 68, 3): unannotated points moved

Nothing here touches AFLW2000-3D: the correction is learned from 300-W's hand labels only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LabelCorrection"]


@dataclass(frozen=True)
class LabelCorrection:
    """A linear map from a sparse fit's 68 keypoints to the offset of a full fit's keypoints.

    Attributes:
        weight: (204, 204) ridge weights, centred keypoints (flattened x, y, z per point) -> offset.
        feature_mean: (204,) mean of the centred keypoints it was learned on, mm.
        offset_mean: (68, 3) mean offset (full fit minus sparse fit), mm, model frame.
        lam: the ridge weight used.
    """

    weight: np.ndarray
    feature_mean: np.ndarray
    offset_mean: np.ndarray
    lam: float

    @staticmethod
    def _features(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, np.float64)
        if X.ndim != 3 or X.shape[2] != 3 or X.shape[0] == 0:
            raise ValueError(f"keypoints must be (N, L, 3) model-frame mm with N > 0, got {X.shape}")
        return (X - X.mean(1, keepdims=True)).reshape(len(X), -1)

    @classmethod
    def learn(cls, sparse: np.ndarray, full: np.ndarray, lam: float = 1e4) -> "LabelCorrection":
        """Learn from pairs of fits of the same faces: ``sparse`` (N, L, 3) and ``full`` (N, L, 3),
        the model-frame keypoints (mm) of the sparse-annotation fit and of the full fit."""
        F = cls._features(sparse)
        full = np.asarray(full, np.float64)
        if full.shape != np.shape(sparse):
            raise ValueError(f"sparse and full keypoints differ in shape: {np.shape(sparse)} vs {full.shape}")
        Y = (full - np.asarray(sparse, np.float64)).reshape(len(F), -1)
        fm, ym = F.mean(0), Y.mean(0)
        Fc = F - fm
        W = np.linalg.solve(Fc.T @ Fc + lam * np.eye(F.shape[1]), Fc.T @ (Y - ym))
        return cls(weight=W, feature_mean=fm, offset_mean=ym.reshape(full.shape[1:]), lam=float(lam))

    def offsets(self, sparse: np.ndarray) -> np.ndarray:
        """(N, L, 3) predicted offsets, mm, for sparse-fit keypoints (N, L, 3)."""
        F = self._features(sparse)
        return ((F - self.feature_mean) @ self.weight).reshape(np.shape(sparse)) + self.offset_mean

    def apply(self, sparse: np.ndarray, annotated) -> np.ndarray:
        """``sparse`` (N, L, 3) with the offsets added to every point not in ``annotated`` (indices)."""
        X = np.asarray(sparse, np.float64)
        mask = np.ones((X.shape[1], 1))
        mask[list(annotated)] = 0.0
        return X + self.offsets(X) * mask

    def to_arrays(self, prefix: str = "correction_") -> dict:
        """The correction as arrays for an ``.npz`` (round trip: :meth:`from_arrays`)."""
        return {f"{prefix}weight": self.weight, f"{prefix}feature_mean": self.feature_mean,
                f"{prefix}offset_mean": self.offset_mean, f"{prefix}lam": np.float64(self.lam)}

    @classmethod
    def from_arrays(cls, d, prefix: str = "correction_") -> "LabelCorrection":
        try:
            return cls(weight=np.asarray(d[f"{prefix}weight"]), feature_mean=np.asarray(d[f"{prefix}feature_mean"]),
                       offset_mean=np.asarray(d[f"{prefix}offset_mean"]), lam=float(d[f"{prefix}lam"]))
        except KeyError as e:
            raise KeyError(f"no label correction in these arrays (missing {e}); write one with to_arrays()") from None
