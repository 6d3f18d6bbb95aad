"""Known answers for the crop convention (0-based pixel centres on integers)."""
import math

import numpy as np
import torch

from morphable.crop import CropBox, box_from_landmarks, camera_to_crop, camera_to_image, crop_image, to_crop, to_image
from tests.conftest import assert_close


def test_box_from_landmarks_known_answer():
    pts = np.array([[10.0, 20.0], [30.0, 60.0]])  # w=20, h=40, centre (20, 40)
    b = box_from_landmarks(pts)
    side = 40 * math.sqrt(2)
    assert b == CropBox(int(round(20 - side / 2)), int(round(40 - side / 2)), int(round(side)))


def test_crop_pixel_mapping_exact():
    img = np.zeros((100, 100), np.float32)
    img[40, 30] = 1.0  # a dot at x=30, y=40
    box = CropBox(20, 30, 40)  # 40 px -> 120 px: k = 1/3
    c = crop_image(img, box, 120)
    yx = np.unravel_index(np.argmax(c), c.shape)
    p = to_crop(torch.tensor([[[30.0, 40.0]]], dtype=torch.float64), [box], 120)[0, 0]
    assert abs(p[0] - yx[1]) <= 1 and abs(p[1] - yx[0]) <= 1
    # the centroid of the upsampled dot is exactly the mapped point
    ys, xs = np.mgrid[:120, :120]
    cx, cy = (c * xs).sum() / c.sum(), (c * ys).sum() / c.sum()
    assert abs(cx - float(p[0])) < 0.05 and abs(cy - float(p[1])) < 0.05


def test_round_trips_and_camera():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(3, 68, 2, generator=g, dtype=torch.float64) * 400
    boxes = torch.tensor([[10, 20, 200], [-50, 30, 333], [0, 0, 120]])
    assert_close(to_image(to_crop(p, boxes), boxes), p, atol=1e-9)
    s, t = torch.rand(3, dtype=torch.float64), torch.rand(3, 2, dtype=torch.float64) * 100
    s2, t2 = camera_to_image(*camera_to_crop(s, t, boxes), boxes)
    assert_close(s2, s, atol=1e-12)
    assert_close(t2, t, atol=1e-9)
    # the camera mapping agrees with the point mapping: x = s*q + t in each frame
    q = torch.rand(3, 68, 2, generator=g, dtype=torch.float64)
    sc, tc = camera_to_crop(s, t, boxes)
    assert_close(to_crop(s[:, None, None] * q + t[:, None], boxes), sc[:, None, None] * q + tc[:, None], atol=1e-9)


def test_zero_padding_outside_image():
    img = np.full((10, 10, 3), 255, np.uint8)
    c = crop_image(img, CropBox(-10, -10, 20), 20)
    assert c[:10, :10].max() == 0 and c[10:, 10:].min() == 255
