"""morphable.render: z-buffer known answers, visibility, colour sampling, overlay, speed."""
import time

import numpy as np
import pytest
import torch

from morphable.geometry import angles_to_rotmat
from morphable.render import (barycentric, overlay, rasterize, sample_colors, shade, vertex_normals,
                              vertex_visibility)


def test_nearer_triangle_wins_in_the_overlap():
    V = np.array([[5, 5, 1.0], [45, 5, 1.0], [5, 45, 1.0],  # far (depth 1)
                  [15, 15, 5.0], [60, 15, 5.0], [15, 60, 5.0]])  # near (depth 5)
    for T in (np.array([[0, 1, 2], [3, 4, 5]]), np.array([[3, 4, 5], [0, 1, 2]])):  # order must not matter
        depth, tid = rasterize(V, T, 64, 64)
        near = int(np.where((T == 3).any(1))[0][0])
        assert tid[20, 20] == near and depth[20, 20] == 5.0  # overlap
        assert tid[8, 8] == 1 - near and depth[8, 8] == 1.0  # far triangle only
        assert tid[55, 5] == -1 and depth[55, 5] == -np.inf  # background
        assert tid[30, 50] == -1  # outside both (x + y = 80 > 75, the near one's hypotenuse)


def test_axis_aligned_triangle_pixel_count_and_depth_plane():
    # right triangle with legs of 40 px: pixel centres inside or on it: sum_{i=0..40} (41 - i) = 861
    V = np.array([[10, 10, 0.0], [50, 10, 40.0], [10, 50, 80.0]])  # depth plane z = (x-10) + 2 (y-10)
    depth, tid = rasterize(V, np.array([[0, 1, 2]]), 64, 64)
    n = int((tid == 0).sum())
    assert abs(n - 861) <= 41, n  # within one edge's worth of pixels
    assert n == 861  # the documented rule (centres on an edge are in) gives exactly this
    ys, xs = np.nonzero(tid == 0)
    np.testing.assert_allclose(depth[ys, xs], (xs - 10) + 2 * (ys - 10), atol=1e-9)
    bc = barycentric(tid, V, np.array([[0, 1, 2]]))
    np.testing.assert_allclose(bc[ys, xs].sum(-1), 1.0, atol=1e-9)
    # clipping: a triangle half outside the image draws only inside, without error
    depth, tid = rasterize(V - [30, 30, 0], np.array([[0, 1, 2]]), 64, 64)
    assert 0 < (tid == 0).sum() < 861 and tid.shape == (64, 64)


def test_degenerate_and_empty_inputs():
    V = np.array([[1, 1, 0.0], [5, 5, 0.0], [9, 9, 0.0]])  # collinear
    _, tid = rasterize(V, np.array([[0, 1, 2]]), 16, 16)
    assert (tid == -1).all()
    _, tid = rasterize(V, np.zeros((0, 3), int), 16, 16)
    assert (tid == -1).all()
    with pytest.raises(ValueError):
        rasterize(V, np.array([[0, 1, 7]]), 16, 16)


def _sphere(radius=30.0, center=(50.0, 50.0, 0.0)):
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=3)
    V = np.asarray(s.vertices) * radius + center  # x right, y down, z toward the camera
    return V, np.asarray(s.faces), np.asarray(s.vertices)


def test_visibility_of_back_and_occluded_vertices():
    V, T, unit = _sphere()
    vis = vertex_visibility(V, T, 100, 100)
    assert vis[unit[:, 2] > 0.2].all()  # the camera-facing half
    assert not vis[unit[:, 2] < -0.2].any()  # the back half, hidden by the front
    # a small occluder in front hides the front vertices under it
    occ = np.array([[40, 40, 80.0], [60, 40, 80.0], [40, 60, 80.0], [60, 60, 80.0]])
    V2 = np.vstack([V, occ])
    T2 = np.vstack([T, len(V) + np.array([[0, 1, 2], [1, 3, 2]])])
    vis2 = vertex_visibility(V2, T2, 100, 100)
    under = (np.abs(V[:, 0] - 50) < 8) & (np.abs(V[:, 1] - 50) < 8) & (unit[:, 2] > 0)
    assert under.any() and not vis2[: len(V)][under].any()
    assert vis2[len(V):].all()
    # outside the image: not visible
    vis3 = vertex_visibility(V + [80, 0, 0], T, 100, 100)
    assert not vis3[V[:, 0] + 80 > 100].any()


def test_sample_colors_bilinear_and_neutral():
    img = np.zeros((10, 10, 3), np.uint8)
    img[:, 5:] = 200
    V = np.array([[4.5, 3.0, 0], [7.0, 2.0, 0], [1.0, 1.0, 0], [50.0, 1.0, 0]])
    c = sample_colors(img, V, visible=np.array([True, True, False, True]), neutral=(1, 2, 3))
    assert c.dtype == np.uint8 and c.shape == (4, 3)
    assert c[0].tolist() == [100] * 3  # half way between 0 and 200
    assert c[1].tolist() == [200] * 3
    assert c[2].tolist() == [1, 2, 3] and c[3].tolist() == [1, 2, 3]  # occluded, outside


def _ict_face(ict_model, angles=(0.0, 0.0, 0.0), size=450):
    R = angles_to_rotmat(torch.tensor(angles, dtype=torch.float64)).numpy()
    X = ict_model.mean.double().numpy()
    s = 0.55 * size / np.ptp(X[:, 0])
    Y = X @ R.T
    c = (Y.max(0) + Y.min(0)) / 2
    V = np.c_[s * (Y[:, 0] - c[0]) + size / 2, -s * (Y[:, 1] - c[1]) + size / 2, s * Y[:, 2]]
    return V, ict_model.triangles.numpy(), R


def test_ict_face_normals_speed_and_yaw_visibility(ict_model):
    V, T, _ = _ict_face(ict_model)
    n = vertex_normals(V, T)
    nose = int(ict_model.landmarks[30])
    assert n[nose, 2] > 0.8  # outward normals (counter-clockwise winding) face the camera
    sh = shade(V, T)
    assert sh.min() >= 0.0 and sh.max() <= 1.0
    rasterize(V, T, 450, 450)  # warm-up
    t = time.perf_counter()
    depth, tid = rasterize(V, T, 450, 450)
    dt = time.perf_counter() - t
    assert dt < 1.0, f"rasterize took {dt:.2f} s"
    assert (tid >= 0).sum() > 0.2 * 450 * 450
    # turned 60 degrees to image-left (positive yaw): the subject's right cheek (-x in the model)
    # turns away and is hidden, the left cheek (+x) turns toward the camera
    Vy, T, _ = _ict_face(ict_model, (0.0, np.radians(60.0), 0.0))
    vis = vertex_visibility(Vy, T, 450, 450)
    X = ict_model.mean.numpy()
    far, near = X[:, 0] < -55, X[:, 0] > 55
    assert vis[near].mean() > 0.8 and vis[far].mean() < 0.3


def test_overlay_blends_and_draws(ict_model):
    V, T, R = _ict_face(ict_model, size=200)
    img = np.full((200, 200, 3), 40, np.uint8)
    out = overlay(img, V, T, landmarks=V[ict_model.landmarks.numpy(), :2], rotation=R, alpha=0.6)
    assert out.shape == img.shape and out.dtype == np.uint8
    _, tid = rasterize(V, T, 200, 200)
    assert (out[tid >= 0] != 40).any(axis=-1).mean() > 0.95  # the mesh is drawn where it covers
    assert (out[tid < 0] == 40).all(axis=-1).mean() > 0.95  # the photo elsewhere (bar the axes)
    ys, xs = np.nonzero(tid >= 0)
    cx, cy = int(round(xs.mean())), int(round(ys.mean()))
    # x axis (red) points right, y axis (green) points up in the image for R = I
    right = out[cy, cx + 10: cx + 25]
    up = out[cy - 25: cy - 10, cx]
    assert (right[:, 0] > 200).any() and (right[:, 1] < 80).any()
    assert (up[:, 1] > 200).any() and (up[:, 0] < 80).any()
    plain = overlay(img, V, T, alpha=0.0)
    assert (plain == img).all()
