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



def _dev_faces(shared, n=3):
    from benchmarks.protocol import load_dataset, load_image

    ds = load_dataset(shared / "data/aflw2000-3d-dev", limit=n)
    return [load_image(ds.image_path(i)) for i in range(n)], ds.boxes.copy()


def test_shifted_crops_average_the_heads_of_the_moved_boxes(fitter, shared):
    """FitConfig.shifted_crops: the head is the mean, in image pixels, of the heads of the direct box and
    of the boxes moved by +-CROP_SHIFT of their side along the diagonal; parameters are the direct box's."""
    from fitting.pipeline import CROP_SHIFT

    imgs, boxes = _dev_faces(shared)
    params, head = fitter._regress(imgs, boxes, flip=True, shifted=2)
    p0, h0 = fitter._regress(imgs, boxes, flip=True)
    d = np.rint(CROP_SHIFT * boxes[:, 2]).astype(np.int64)
    moved = [fitter._regress(imgs, boxes + np.stack([s * d, s * d, 0 * d], 1), flip=True)[1] for s in (1, -1)]
    want = (h0 + moved[0] + moved[1]) / 3
    assert torch.allclose(head, want, atol=2e-3), (head - want).abs().max()
    assert torch.allclose(params.rotvec, p0.rotvec, atol=1e-4) and torch.allclose(params.translation, p0.translation, atol=1e-3)
    assert (head - h0).norm(dim=-1).mean() > 0.05  # the moved crops do change the estimate


def test_four_shifted_crops_keep_the_head_mirror_equivariant(shared):
    """With all four diagonal shifts the set of crops is closed under mirroring, so a mirrored photo gives
    the mirrored landmarks (float network: OpenCV's area resampling can differ by one grey level between
    a crop and its mirror, which the static-int8 network can turn into a few tenths of a pixel)."""
    from fitting.pipeline import FitConfig, Fitter

    fitter = Fitter(FitConfig(threads=1, backend="torch"))
    imgs, boxes = _dev_faces(shared)
    W = imgs[0].shape[1]
    mboxes = boxes.copy()
    mboxes[:, 0] = W - boxes[:, 0] - boxes[:, 2]
    _, head = fitter._regress(imgs, boxes, flip=True, shifted=4)
    _, mhead = fitter._regress([np.ascontiguousarray(im[:, ::-1]) for im in imgs], mboxes, flip=True, shifted=4)
    back = mhead[:, IBUG68_MIRROR].clone()
    back[..., 0] = (W - 1) - back[..., 0]
    assert torch.allclose(back, head, atol=2e-3), (back - head).abs().max()


def test_shifted_crops_must_be_0_2_or_4(shared):
    from fitting.pipeline import FitConfig, Fitter
    from morphable.errors import InputError

    with pytest.raises(InputError, match="shifted_crops must be 0, 2 or 4"):
        Fitter(FitConfig(threads=1, shifted_crops=3))
    assert Fitter(FitConfig(threads=1, preset="fast")).shifted_crops == 0  # the fast preset stays one crop
    assert Fitter(FitConfig(threads=1)).shifted_crops == 4  # the main pipeline: all four corners (session 23)


def test_lm_uses_the_heads_landmark_definition(fitter):
    from morphable.registry import load_model

    up = load_model(landmarks="upstream")
    ids = getattr(fitter.regressor, "landmark_ids", None)
    want = up.landmarks if ids is None else ids
    assert torch.equal(fitter.fit_model.landmarks.cpu(), torch.as_tensor(want).cpu())
    assert fitter.model.info.landmark_definition == "3d"  # outputs: the default, 3D-style
    assert fitter.fit_model.mean.data_ptr() == fitter.model.mean.data_ptr()  # same tensors
