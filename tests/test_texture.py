"""morphable.texture and the rasteriser's depth/normal maps: known answers on flat meshes.

Image frame: x, y px (y down), depth px larger = nearer. The square below spans image pixels
8..56 and the whole UV square, so texel (r, c) of a 16 x 16 texture sits at image
(9.5 + 3c, 9.5 + 3r).
"""
import numpy as np
import pytest
import trimesh

from morphable.errors import InputError, ModelFormatError, MorphableWarning
from morphable.render import depth_map, face_normals, normal_map
from morphable.texture import fill_holes, sample_texture

SQUARE = np.array([[8, 8, 0], [56, 8, 0], [56, 56, 0], [8, 56, 0]], float)
SQUARE_UV = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], float)
FRONT = np.array([[0, 2, 1], [0, 3, 2]])  # counter-clockwise on screen with y up: faces the camera


def _gradient(H=64, W=64):
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([xx * 4, yy * 4, np.full_like(xx, 50)], -1).astype(np.uint8)


def test_flat_square_texels_are_the_photo_under_them():
    assert (face_normals(SQUARE, FRONT)[:, 2] > 0).all()
    tex = sample_texture(_gradient(), SQUARE, FRONT, SQUARE_UV, size=16, min_face_px=0)
    assert tex.image.shape == (16, 16, 3) and tex.image.dtype == np.uint8
    assert tex.covered.all() and tex.from_photo.all() and not tex.from_mirror.any()
    r, c = np.mgrid[0:16, 0:16]
    expect = np.stack([4 * (9.5 + 3 * c), 4 * (9.5 + 3 * r), np.full(r.shape, 50.0)], -1)  # bilinear of a linear image
    assert np.abs(tex.image - expect).max() <= 1
    assert tex.photo_fraction == 1.0 and tex.warning is None
    # the mesh comes back in the image-aligned right-handed frame: y = H - 1 - row
    np.testing.assert_allclose(tex.vertices, np.c_[SQUARE[:, 0], 63 - SQUARE[:, 1], SQUARE[:, 2]])


def test_back_facing_triangle_is_not_sampled():
    img = np.zeros((64, 64, 3), np.uint8)
    img[:] = (220, 30, 30)
    yy, xx = np.mgrid[0:64, 0:64]
    img[yy > xx] = (30, 30, 220)  # blue under the lower-left triangle only
    # the lower-left triangle (own vertices, so vertex normals do not mix) is wound the other way
    V, uv = np.concatenate([SQUARE, SQUARE[[0, 2, 3]]]), np.concatenate([SQUARE_UV, SQUARE_UV[[0, 2, 3]]])
    T = np.array([[0, 2, 1], [4, 5, 6]])
    assert face_normals(V, T)[1, 2] < 0
    tex = sample_texture(img, V, T, uv, size=16, min_face_px=0)
    r, c = np.mgrid[0:16, 0:16]
    front, back = c > r + 1, c < r - 1
    assert tex.from_photo[front].all() and not tex.from_photo[back].any()
    assert (np.abs(tex.image[front].astype(int) - (220, 30, 30)) <= 2).all()
    # the hidden triangle is filled from the seen one around it, never with the blue under it
    assert (tex.image[back][:, 2] < 100).all() and (tex.image[back][:, 0] > 150).all()


def test_occluded_triangle_is_not_sampled():
    # two squares on the same pixels, each with half of the UV square; the far one is hidden
    near = SQUARE + [0, 0, 10]
    V = np.concatenate([SQUARE, near])
    uv = np.concatenate([SQUARE_UV * [0.5, 1], SQUARE_UV * [0.5, 1] + [0.5, 0]])  # far: left half, near: right
    T = np.concatenate([FRONT, FRONT + 4])
    tex = sample_texture(_gradient(), V, T, uv, size=16, min_face_px=0)
    assert tex.covered.all()
    assert not tex.from_photo[:, :7].any() and tex.from_photo[:, 9:].all()


def test_hidden_side_is_filled_from_its_mirror():
    # A (image x 36..60, right half of the UV square) faces the camera; B is A mirrored to
    # x 4..28 (left half of the UV square), so it faces away; mirror pairs A's and B's vertices
    A = np.array([[36, 8, 0], [60, 8, 0], [60, 56, 0], [36, 56, 0]], float)
    B = A * [-1, 1, 1] + [64, 0, 0]
    uvA = np.array([[0.5, 1], [1, 1], [1, 0], [0.5, 0]])
    uvB = uvA * [-1, 1] + [1, 0]
    V, uv, T = np.concatenate([A, B]), np.concatenate([uvA, uvB]), np.concatenate([FRONT, FRONT + 4])
    assert (face_normals(V, T)[2:, 2] < 0).all()
    mirror = np.array([4, 5, 6, 7, 0, 1, 2, 3])
    tex = sample_texture(_gradient(), V, T, uv, mirror=mirror, size=16, min_face_px=0)
    inner = (slice(2, 14), slice(2, 6))  # B's texels away from the UV border between the halves
    assert tex.from_mirror[inner].all() and not tex.from_photo[:, :8].any()
    assert np.abs(tex.image[:, 2:6].astype(int) - tex.image[:, 13:9:-1]).max() <= 2  # column c == 15 - c
    without = sample_texture(_gradient(), V, T, uv, size=16, min_face_px=0)
    assert not without.from_mirror.any()


def test_small_face_warns_and_still_gives_a_texture():
    with pytest.warns(MorphableWarning, match="only 48 px"):
        tex = sample_texture(_gradient(), SQUARE, FRONT, SQUARE_UV, size=16)
    assert "48 px" in tex.warning and tex.from_photo.all()


def test_model_without_uv_and_bad_inputs():
    with pytest.raises(ModelFormatError, match="no texture coordinates"):
        sample_texture(_gradient(), SQUARE, FRONT, np.zeros((0, 2)))
    with pytest.raises(InputError):
        sample_texture(_gradient(), SQUARE, FRONT, SQUARE_UV[:3])
    with pytest.raises(InputError):
        sample_texture(_gradient().astype(float), SQUARE, FRONT, SQUARE_UV)


def test_fill_holes_keeps_known_pixels_and_pads_the_rest():
    img = np.zeros((9, 13, 3))
    known = np.zeros((9, 13), bool)
    img[2:5, 3:6], known[2:5, 3:6] = (10, 200, 90), True
    out = fill_holes(img, known)
    assert out.shape == img.shape
    np.testing.assert_allclose(out, np.broadcast_to([10, 200, 90], img.shape), atol=1e-3)  # one colour: everywhere


def test_obj_mtl_png_and_glb_load_as_textured_meshes(tmp_path):
    tex = sample_texture(_gradient(), SQUARE, FRONT, SQUARE_UV, size=16, min_face_px=0)
    obj = tex.save(tmp_path / "face.obj")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.mtl", "face.obj", "face.png"]
    m = trimesh.load(obj, process=False)
    assert m.visual.kind == "texture" and len(m.vertices) == 4
    glb = tex.save(tmp_path / "face.glb")
    scene = trimesh.load(glb)
    (g,) = scene.geometry.values()
    assert g.visual.kind == "texture" and len(g.vertices) == 4 and len(g.faces) == 2
    np.testing.assert_array_equal(np.asarray(g.visual.material.baseColorTexture.convert("RGB")), tex.image)
    assert tex.trimesh().visual.kind == "texture"
    with pytest.raises(InputError, match=".ply"):
        tex.save(tmp_path / "face.ply")


def test_depth_and_normal_maps_of_a_known_plane():
    # z = 0.5 x + 0.25 y + 10 (image frame, y down): depth is that at every covered pixel centre;
    # in the view frame (y up) z = 0.5 x - 0.25 y_up + 10, so the normal is (-0.5, 0.25, 1) / |.|
    V = SQUARE.copy()
    V[:, 2] = 0.5 * V[:, 0] + 0.25 * V[:, 1] + 10
    d = depth_map(V, FRONT, 64, 64)
    yy, xx = np.mgrid[0:64, 0:64]
    inside = (xx >= 8) & (xx <= 56) & (yy >= 8) & (yy <= 56)
    np.testing.assert_allclose(d[inside], (0.5 * xx + 0.25 * yy + 10)[inside], atol=1e-9)
    assert np.isnan(d[~inside]).all()
    n = normal_map(V, FRONT, 64, 64)
    expect = np.array([-0.5, 0.25, 1.0]) / np.linalg.norm([-0.5, 0.25, 1.0])
    np.testing.assert_allclose(n[inside], np.broadcast_to(expect, n[inside].shape), atol=1e-9)
    assert (n[~inside] == 0).all()
    np.testing.assert_allclose(normal_map(V, FRONT, 64, 64, smooth=False)[inside], n[inside], atol=1e-9)


def test_face_fit_texture_and_maps(ict_model):
    from fitting.pipeline import FaceFit
    from morphable.landmark_definition import mirror_vertices

    H, W = 120, 160
    X = ict_model.mean.double().numpy()
    s = 0.35 * W / np.ptp(X[:, 0])
    V = np.c_[s * X[:, 0] + W / 2, -s * X[:, 1] + H / 2, s * X[:, 2]]
    lm = V[ict_model.landmarks.numpy(), :2]
    face = FaceFit(V, ict_model.triangles.numpy(), lm, np.eye(3), np.zeros(3), s, np.array([W / 2, H / 2]), 0.5,
                   True, np.r_[lm.min(0), lm.max(0)], uv=ict_model.uv.double().numpy(),
                   mirror=mirror_vertices(ict_model.mean).numpy(), image_size=(H, W))
    img = np.zeros((H, W, 3), np.uint8)
    img[:] = (180, 120, 90)
    with pytest.warns(MorphableWarning, match="under 64 px"):  # a ~50 px face: a blurry texture
        tex = face.texture(img, size=64)
    assert tex.image.shape == (64, 64, 3) and tex.photo_fraction > 0.5
    assert (np.abs(tex.image.astype(int) - (180, 120, 90)) <= 2).all()  # one colour in, one colour out
    assert face.depth_map().shape == (H, W) and np.isfinite(face.depth_map()).sum() > 100
    assert face.normal_map().shape == (H, W, 3)
    with pytest.raises(InputError, match="fitted in a 160 x 120"):
        face.texture(np.zeros((40, 30, 3), np.uint8))
    with pytest.raises(ModelFormatError):
        FaceFit(V, face.triangles, lm, np.eye(3), np.zeros(3), s, face.translation, 0.5, True, face.box).texture(img)
