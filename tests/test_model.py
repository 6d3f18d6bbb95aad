"""MorphableModel: known answers, select/landmarks, batch/dtype/device, native h5 round trip,
and the default model as users see it."""
import numpy as np
import pytest
import torch
import trimesh

from morphable import cli
from morphable.errors import InputError
from morphable.formats.native import load_native, save_native
from morphable.model import ModelInfo, MorphableModel
from tests.conftest import assert_close, need_shared


def tiny_model() -> MorphableModel:
    """3 vertices, 2 shape components, 1 blendshape; every number chosen by hand."""
    mean = [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]]
    S = np.zeros((3, 3, 2))
    S[0, 0, 0] = 2.0   # shape 0 moves vertex 0 along x by 2 mm per unit
    S[2, 2, 1] = -1.0  # shape 1 moves vertex 2 along -z
    S[1, 1, 1] = 0.5
    E = np.zeros((3, 3, 1))
    E[1, 2, 0] = 4.0   # the blendshape lifts vertex 1 by 4 mm in z
    info = ModelInfo(name="tiny", source="hand", licence="none", expr_kind="blendshape", expression_names=["lift"])
    return MorphableModel(mean, S, E, [[0, 1, 2]], [2, 0, 1, 1], info, shape_std=[2.0, 1.0], expr_std=[1.0],
                          expr_lower=[0.0], expr_upper=[1.0], contour_right=[0], contour_left=[1],
                          uv=[[0, 0], [1, 0], [0, 1]])


def test_vertices_known_answer():
    m = tiny_model()
    V = m.vertices(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5]]))
    want = torch.tensor([[[2.0, 0.0, 0.0], [10.0, 1.0, 2.0], [0.0, 10.0, -2.0]]])
    assert_close(V, want)
    assert_close(m.vertices(torch.zeros(1, 2)), m.mean[None])
    assert_close(m.vertices(expr=torch.tensor([[1.0]]))[0, 1], torch.tensor([10.0, 0.0, 4.0]))


def test_select_and_landmarks_equal_full_vertices():
    m = tiny_model()
    g = torch.Generator().manual_seed(0)
    a, e = torch.randn(4, 2, generator=g), torch.rand(4, 1, generator=g)
    V = m.vertices(a, e)
    assert_close(m.landmark_points(a, e), V[:, m.landmarks])
    idx = torch.tensor([[0, 2], [1, 1], [2, 0], [0, 0]])
    assert_close(m.select(idx, a, e), torch.stack([V[b, idx[b]] for b in range(4)]))


def test_default_model_select_matches_vertices(ict_model):
    g = torch.Generator().manual_seed(1)
    a, e = ict_model.sample(2, generator=g)
    V = ict_model.vertices(a, e)
    assert_close(ict_model.landmark_points(a, e), V[:, ict_model.landmarks], atol=1e-4)


def test_batch_and_dtype_follow_inputs():
    m = tiny_model()
    for dt in (torch.float32, torch.float64):
        V = m.vertices(torch.ones(5, 2, dtype=dt))
        assert V.shape == (5, 3, 3) and V.dtype == dt
        assert m.landmark_points(torch.ones(5, 2, dtype=dt)).dtype == dt
    a = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    m.vertices(a)[:, 0, 0].sum().backward()
    assert_close(a.grad, torch.tensor([[2.0, 0.0], [2.0, 0.0]], dtype=torch.float64))  # d x0 / d a0 = 2
    with pytest.raises(InputError):
        m.vertices(torch.zeros(2, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_device_follows_model_and_inputs():
    m = tiny_model().to("cuda")
    V = m.vertices(torch.zeros(1, 2, device="cuda"))
    assert V.device.type == "cuda"


def _assert_same_model(a: MorphableModel, b: MorphableModel):
    for name, buf in a.named_buffers():
        other = getattr(b, name)
        assert buf.dtype == other.dtype and torch.equal(buf, other), name
    assert a.info == b.info


def test_native_round_trip_is_lossless(tmp_path):
    m = tiny_model()
    p = save_native(m, tmp_path / "tiny.h5")
    _assert_same_model(m, load_native(p))
    assert [q.name for q in tmp_path.iterdir()] == ["tiny.h5"]  # no temp file left


def test_native_round_trip_real_sfm(tmp_path):
    d = need_shared("models/sfm")
    from morphable.formats.sfm import load_sfm

    m = load_sfm(d / "sfm_shape_3448.bin")
    _assert_same_model(m, load_native(save_native(m, tmp_path / "sfm.h5")))


def test_default_model_sizes(ict_model):
    assert (ict_model.n_shape, ict_model.n_expr, ict_model.n_landmarks) == (100, 53, 68)
    assert ict_model.info.units == "mm"


def test_sample_obj_is_a_face_sized_mesh(tmp_path, default_model, capsys):
    """The default (face) region: the face to the ears, about 19 cm wide; narrow: about 15 cm."""
    out = tmp_path / "f.obj"
    assert cli.main(["sample", "--seed", "0", "--out", str(out)]) == 0
    mesh = trimesh.load(out)  # what a user's viewer/tool sees
    width, height, depth = mesh.extents
    assert 170.0 <= width <= 210.0 and height > 150.0 and depth > 80.0, mesh.extents
    assert len(mesh.vertices) == default_model.n_vertices == 9409
    assert cli.main(["sample", "--seed", "0", "--region", "narrow", "--out", str(out)]) == 0
    width, height, depth = trimesh.load(out).extents
    assert 130.0 <= width <= 170.0 and height > width and depth > 50.0
