"""fitting.pipeline: test-time mirroring, landmark definitions, profile faces end to end (real files)."""
import numpy as np
import pytest
import torch

from morphable.landmark_definition import IBUG68_MIRROR


@pytest.fixture(scope="module")
def fitter(shared):
    from fitting.pipeline import FitConfig, Fitter

    return Fitter(FitConfig(threads=1))


def test_flip_test_head_is_mirror_symmetric(fitter, shared):
    """With test-time mirroring the head's landmarks of a mirrored photo are exactly the mirror image of
    those of the photo (the two passes swap roles)."""
    from benchmarks.protocol import load_dataset

    ds = load_dataset(shared / "data/aflw2000-3d-dev", limit=3)
    from benchmarks.protocol import load_image

    imgs = [load_image(ds.image_path(i)) for i in range(3)]
    W = imgs[0].shape[1]
    boxes = ds.boxes.copy()
    mboxes = boxes.copy()
    mboxes[:, 0] = W - boxes[:, 0] - boxes[:, 2]  # the mirrored square: x0' = W - x0 - side
    _, head = fitter._regress(imgs, boxes, flip=True)
    _, mhead = fitter._regress([np.ascontiguousarray(im[:, ::-1]) for im in imgs], mboxes, flip=True)
    back = mhead[:, IBUG68_MIRROR].clone()
    back[..., 0] = (W - 1) - back[..., 0]
    assert torch.allclose(back, head, atol=2e-3), (back - head).abs().max()


def test_lm_uses_the_heads_landmark_definition(fitter):
    from morphable.registry import load_model

    up = load_model(landmarks="upstream")
    ids = getattr(fitter.regressor, "landmark_ids", None)
    want = up.landmarks if ids is None else ids
    assert torch.equal(fitter.fit_model.landmarks.cpu(), torch.as_tensor(want).cpu())
    assert fitter.model.info.landmark_definition == "3d"  # outputs: the default, 3D-style
    assert fitter.fit_model.mean.data_ptr() == fitter.model.mean.data_ptr()  # same tensors
