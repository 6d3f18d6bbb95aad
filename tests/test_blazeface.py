"""fitting.blazeface / fitting.tflite / BlazeFaceDetector: the default detector, known answers.

Anchors, decoding and weighted NMS are checked against hand-computed values; the torch network
against Google's LiteRT interpreter when ``ai-edge-litert`` is installed; detection on the shipped
example photo, several faces per photo with ``min_face``, tiles for small faces, the fallback, and
``morphable fit`` on the 21 faces68 photos (../shared).
"""
import json

import cv2
import numpy as np
import pytest
import torch

from fitting.blazeface import BLAZEFACE_MODELS, BlazeFace, decode, head_layers, letterbox, ssd_anchors, weighted_nms
from fitting.detect import (BlazeFaceDetector, Detections, DlibCNNDetector, FallbackDetector, box_iou, make_detector)
from fitting.images import EXAMPLE_PHOTO, load_image
from fitting.tflite import TFLiteNet, read_tflite
from morphable.errors import InputError, WeightsError
from tests.conftest import need_shared


@pytest.fixture(scope="module")
def astronaut():
    return load_image(EXAMPLE_PHOTO)


def _mixed(a):
    """1024 x 512: the astronaut (face ~85 px) on the left, the same at 3/4 size (~60 px) on the right."""
    small = cv2.resize(a, (384, 384), interpolation=cv2.INTER_AREA)
    img = np.zeros((512, 1024, 3), np.uint8)
    img[:, :512] = a
    img[64:448, 576:960] = small
    return img


def test_anchors_from_the_model_outputs():
    for name, layers, n, size in (("short", [(16, 16, 2), (8, 8, 6)], 896, 128), ("full", [(48, 48, 1)], 2304, 192)):
        g = read_tflite(BLAZEFACE_MODELS[name])
        boxes_out = next(i for i in g.outputs if g.tensors[i].shape[-1] == 16)
        assert head_layers(g, boxes_out) == layers
        a = ssd_anchors(layers)
        assert a.shape == (n, 2)
        assert BlazeFace(name).anchors.shape == (n, 2) and BlazeFace(name).size == size
    a = ssd_anchors([(16, 16, 2), (8, 8, 6)])
    np.testing.assert_allclose(a[:3], [[0.5 / 16, 0.5 / 16]] * 2 + [[1.5 / 16, 0.5 / 16]])  # 2 per cell, x fastest
    np.testing.assert_allclose(a[512:518], [[0.5 / 8, 0.5 / 8]] * 6)  # the 8 x 8 layer: 6 per cell
    np.testing.assert_allclose(a[-1], [7.5 / 8, 7.5 / 8])


def test_decode_a_hand_made_raw_output():
    anchors = np.array([[0.25, 0.75], [0.5, 0.5]])
    raw = np.zeros((2, 16))
    raw[0, :4] = [12.8, -25.6, 64.0, 32.0]  # px of a 128 input: centre +0.1, -0.2; size 0.5 x 0.25
    raw[0, 4:6] = [6.4, 6.4]  # first keypoint: anchor + 0.05
    boxes, kps, scores = decode(raw, np.array([0.0, 2.0]), anchors, 128)
    np.testing.assert_allclose(boxes[0], [0.35 - 0.25, 0.55 - 0.125, 0.35 + 0.25, 0.55 + 0.125])
    np.testing.assert_allclose(kps[0, 0], [0.30, 0.80])
    np.testing.assert_allclose(kps[0, 1:], [[0.25, 0.75]] * 5)
    np.testing.assert_allclose(boxes[1], [0.5, 0.5, 0.5, 0.5])  # zero size: dropped later as invalid
    np.testing.assert_allclose(scores, [0.5, 1 / (1 + np.exp(-2.0))])
    assert decode(np.zeros((0, 16)), np.zeros(0), np.zeros((0, 2)), 128)[0].shape == (0, 4)


def test_weighted_nms_blends_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
    kps = np.array([[[2, 2]], [[4, 2]], [[55, 55]]], float)
    b, s, k = weighted_nms(boxes, np.array([0.9, 0.6, 0.7]), kps, iou=0.3)
    # IoU of the first two = 90 / 110 > 0.3: one box, weights 0.9 and 0.6, the best one's score
    np.testing.assert_allclose(b, [[0.4, 0, 10.4, 10], [50, 50, 60, 60]])
    np.testing.assert_allclose(s, [0.9, 0.7])
    np.testing.assert_allclose(k, [[[2.8, 2]], [[55, 55]]])
    b, s, _ = weighted_nms(boxes, np.array([0.9, 0.6, 0.7]), iou=0.9)  # not overlapping enough: all kept
    assert len(b) == 3 and s.tolist() == [0.9, 0.7, 0.6]
    assert len(weighted_nms(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 6, 2)))[0]) == 0


def test_letterbox_maps_back_exactly():
    img = np.zeros((100, 300, 3), np.uint8)
    img[40:60, 140:160] = 255
    x, (sx, sy, ox, oy) = letterbox(img, 192)
    assert x.shape == (192, 192, 3) and x.dtype == np.float32
    assert (sx, sy, ox, oy) == (192 / 300, 64 / 100, 0, 64)
    assert x[0, 0, 0] == -1.0 and x[100, 96, 0] == 1.0  # black border, white square
    # the white square's edges map back to image pixels 140..160, 40..60
    ys, xs = np.nonzero(x[..., 0] > 0)
    assert abs((xs.min() - ox) / sx - 140) < 2 and abs((ys.max() + 1 - oy) / sy - 60) < 2


def test_torch_network_matches_the_tflite_interpreter(astronaut):
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert (the TFLite reference) not installed")
    torch.set_num_threads(1)
    for name in ("short", "full"):
        path = str(BLAZEFACE_MODELS[name])
        net = TFLiteNet(read_tflite(path))
        interp = litert.Interpreter(model_path=path, num_threads=1)
        interp.allocate_tensors()
        x, _ = letterbox(astronaut, net.input_shape[1])
        interp.set_tensor(interp.get_input_details()[0]["index"], x[None])
        interp.invoke()
        ref = {o["name"]: interp.get_tensor(o["index"]) for o in interp.get_output_details()}
        ours = net(torch.from_numpy(x[None]))
        g = read_tflite(path)
        for i, t in zip(g.outputs, ours):
            r = ref[g.tensors[i].name]
            assert t.shape == r.shape
            assert np.abs(t.numpy() - r).max() < 1e-4 * max(1.0, np.abs(r).max()), (name, g.tensors[i].name)


def test_reader_refuses_foreign_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        read_tflite(tmp_path / "missing.tflite")
    (tmp_path / "x.tflite").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="not a TFLite model"):
        read_tflite(tmp_path / "x.tflite")
    data = BLAZEFACE_MODELS["short"].read_bytes()
    (tmp_path / "cut.tflite").write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError):
        TFLiteNet(read_tflite(tmp_path / "cut.tflite"))


def test_astronaut_face_found_where_mmod_finds_it(astronaut):
    d = BlazeFaceDetector().detect(astronaut)
    assert len(d) == 1 and d.sources == ["blazeface-short"] and d.scores[0] > 0.8
    m = DlibCNNDetector(min_face=0.15).detect(astronaut)  # the face is ~17 % of the side: below MMOD's default
    assert len(m) == 1
    assert box_iou(d.boxes[:1], m.boxes[:1])[0, 0] > 0.5
    raw = BlazeFace()(astronaut)
    eyes = raw.keypoints[0, :2]
    assert eyes[0, 0] < eyes[1, 0] and abs(eyes[0, 1] - eyes[1, 1]) < 10  # right eye image-left, level


def test_several_faces_largest_first_and_min_face(astronaut):
    img = _mixed(astronaut)
    d = BlazeFaceDetector().detect(img)
    assert len(d) == 2
    side = np.maximum(d.boxes[:, 2] - d.boxes[:, 0], d.boxes[:, 3] - d.boxes[:, 1])
    assert side[0] > side[1] and d.boxes[0, 2] < 512 < d.boxes[1, 0]  # the big face (left) first
    assert 0.9 < side[1] / side[0] / 0.75 < 1.1
    # min_face (fraction of the 512 px side) between the two sizes keeps only the big one
    cut = (side[0] + side[1]) / 2 / 512
    kept = BlazeFaceDetector(min_face=cut).detect(img)
    assert len(kept) == 1 and box_iou(kept.boxes, d.boxes[:1])[0, 0] > 0.9
    assert len(BlazeFaceDetector(max_faces=1).detect(img)) == 1
    # side by side twice (the brief's case)
    two = BlazeFaceDetector().detect(np.concatenate([astronaut, astronaut], 1))
    assert len(two) == 2 and abs(two.boxes[1, 0] - two.boxes[0, 0] - 512) < 3


def test_small_faces_need_min_face_and_tiles(astronaut):
    big = np.zeros((768, 1536, 3), np.uint8)
    big[200:712, 900:1412] = astronaut  # face ~85 px: 5.5 % of the longer side, below one pass's floor
    tiles = BlazeFaceDetector(min_face=0.1).detect(big)  # 77 px and up: tiles of ~480 px
    assert len(tiles) >= 1
    ref = BlazeFaceDetector().detect(astronaut).boxes[0] + [900, 200, 900, 200]
    assert box_iou(tiles.boxes[:1], ref[None])[0, 0] > 0.6


def test_fallback_runs_only_when_the_fast_detector_finds_nothing():
    class Stub:
        def __init__(self, boxes):
            self.calls = 0
            self.d = Detections(np.array(boxes, float).reshape(-1, 4), np.ones(len(boxes)), ["s"] * len(boxes))

        def detect(self, image):
            self.calls += 1
            return self.d

    img = np.zeros((10, 10, 3), np.uint8)
    fast, slow = Stub([[1, 1, 5, 5]]), Stub([[2, 2, 6, 6], [0, 0, 3, 3]])
    assert FallbackDetector(fast, slow).detect(img).boxes.tolist() == [[1, 1, 5, 5]] and slow.calls == 0
    empty = Stub([])
    out = FallbackDetector(empty, slow, max_faces=1).detect(img)
    assert out.boxes.tolist() == [[2, 2, 6, 6]] and slow.calls == 1
    det = make_detector("auto")
    assert isinstance(det, FallbackDetector) and isinstance(det.primary, BlazeFaceDetector)
    assert isinstance(make_detector("blazeface", min_face=0.2), BlazeFaceDetector)


def test_bad_and_odd_images():
    det = BlazeFaceDetector()
    with pytest.raises(InputError, match="uint8 RGB"):
        det.detect(np.zeros((50, 50), np.uint8))
    with pytest.raises(InputError, match="min_face"):
        BlazeFaceDetector(min_face=0)
    with pytest.raises(InputError, match="threshold"):
        BlazeFace(threshold=1.5)
    for shape in ((16, 16, 3), (20, 2000, 3), (3000, 24, 3)):
        assert len(det.detect(np.full(shape, 128, np.uint8))) == 0
    assert len(BlazeFaceDetector(min_face=0.05).detect(np.full((400, 4000, 3), 90, np.uint8))) == 0  # tiles capped


def test_morphable_fit_finds_all_faces68_photos(tmp_path, capsys):
    faces = need_shared("data/faces68")
    from morphable.cli import main

    rc = main(["fit", str(faces), "--out", str(tmp_path / "out"), "--json", "--no-lm"])
    rows = json.loads(capsys.readouterr().out)
    rows = rows.get("images", rows) if isinstance(rows, dict) else rows
    assert len(rows) == 21
    missed = [r["image"] for r in rows if r["status"] != "ok"]
    assert rc == 0 and not missed, missed
