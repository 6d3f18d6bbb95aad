"""dlib's MMOD face detector run by torch (fitting.mmod): the model file read right, the same
detections as dlib itself on real photos, clear errors for bad files."""
import numpy as np
import pytest

from fitting.detect import MMOD_MODEL, DlibCNNDetector, box_iou, dlib_detector_available
from fitting.images import load_image
from fitting.mmod import load_mmod
from morphable.errors import MorphableError


def test_model_file_is_read_as_dlibs_face_detector():
    net = load_mmod(MMOD_MODEL)
    convs = [m for m in net.net if m.__class__.__name__ == "Conv2d" and m.groups == 1]
    assert [c.out_channels for c in convs] == [16, 32, 32, 45, 45, 45, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1, 1, 1]
    assert [c.kernel_size[0] for c in convs] == [5, 5, 5, 5, 5, 5, 9]
    # window every 8 px of a level; output cell 0 sees the input around pixel 2 + 2*2 + 4*2 = 14
    assert (net.stride, net.offset) == (8, 14.0) and net.window == (80, 80)
    assert net.nms_iou == pytest.approx(0.3383, abs=1e-4)  # dlib's learned suppression threshold
    # dlib's input_rgb_image_pyramid means (dnn/input.h: 122.782, 117.001, 104.298)
    assert net.mean.flatten().tolist() == pytest.approx([122.782, 117.001, 104.298], abs=1e-3)
    # batch norm folded: every per-channel scale finite and positive
    affine = [m for m in net.net if m.__class__.__name__ == "Conv2d" and m.groups > 1]
    assert len(affine) == 6 and all(bool((a.weight > 0).all()) for a in affine)


@pytest.mark.skipif(not dlib_detector_available(), reason="dlib not installed")
@pytest.mark.parametrize("name", ["image00019", "image00158", "image00545"])
def test_torch_backend_finds_what_dlib_finds(shared, name):
    """Frontal and profile dev photos: the same face, at most one pyramid level (5/6 in size) and a
    window step apart (IoU >= 0.6; concentric boxes one level apart have IoU 0.69), nearly the same
    margin. The pyramids are resampled differently (OpenCV here, dlib's own filter there)."""
    img = load_image(shared / "data/aflw2000-3d-dev" / f"{name}.jpg")
    bt, mt = DlibCNNDetector().raw(img)
    bd, md = DlibCNNDetector(backend="dlib").raw(img)
    assert len(bt) >= 1 and len(bd) >= 1
    assert box_iou(bt[:1], bd[:1])[0, 0] >= 0.6, (bt[:1], bd[:1])
    assert abs(mt[0] - md[0]) < 0.1, (mt[0], md[0])


def test_blank_image_has_no_face():
    raw, margins = DlibCNNDetector().raw(np.full((240, 320, 3), 128, np.uint8))
    assert raw.shape == (0, 4) and margins.shape == (0,)


def test_bad_model_files_are_refused_clearly(tmp_path):
    data = MMOD_MODEL.read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MorphableError, match="truncated"):
        load_mmod(cut)
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x01\x01\x01\x05hello" + bytes(100))
    with pytest.raises(MorphableError, match="not a dlib MMOD detector"):
        load_mmod(junk)
    with pytest.raises(MorphableError, match="not found"):
        load_mmod(tmp_path / "missing.dat")
    with pytest.raises(MorphableError, match="not found"):
        DlibCNNDetector(model_path=str(tmp_path / "missing.dat"))
