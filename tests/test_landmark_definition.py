"""morphable.landmark_definition: re-selecting the 68 landmark vertices from fitted, annotated faces."""
import json

import numpy as np
import pytest
import torch

from morphable.errors import ModelFormatError
from morphable.geometry import angles_to_rotmat, project
from morphable.landmark_definition import (IBUG68_MIRROR, REFINED_ICT_LANDMARKS, mirror_vertices, read_landmark_file,
                                           select_landmark_vertices)


def _faces(model, ids, B=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = torch.randn(B, model.n_shape, generator=g) * 0.7
    expr = torch.rand(B, model.n_expr, generator=g) * 0.3
    ang = (torch.rand(B, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([0.3, 0.5, 0.3], dtype=torch.float64)
    R = angles_to_rotmat(ang)
    s = 1.0 + torch.rand(B, generator=g, dtype=torch.float64)
    t = 200 + 30 * torch.rand(B, 2, generator=g, dtype=torch.float64)
    X = model.select(torch.as_tensor(ids), shape, expr).double()
    return shape, expr, R, s, t, project(X, R, s, t)


def test_recovers_the_vertices_that_made_the_annotations(ict_model):
    """Annotations made from known vertices near the upstream ones: the selection finds exactly them."""
    up = ict_model.landmarks.clone()
    mean = ict_model.mean
    g = torch.Generator().manual_seed(1)
    truth = up.clone()
    for i in range(68):  # a random vertex 3-8 mm away from each upstream landmark
        d = (mean - mean[up[i]]).norm(dim=-1)
        c = torch.where((d > 3) & (d < 8))[0]
        truth[i] = c[torch.randint(len(c), (1,), generator=g)]
    shape, expr, R, s, t, y = _faces(ict_model, truth)
    res = select_landmark_vertices(ict_model, shape, expr, R, s, t, y, radius_mm=12.0, symmetric=False)
    assert np.array_equal(res.ids, truth.numpy())
    assert res.cost_after.max() < 1e-10 and (res.cost_before > res.cost_after).all()
    assert np.array_equal(res.previous, up.numpy()) and res.n_faces == 40


def test_symmetric_selection_gives_mirror_pairs(ict_model):
    shape, expr, R, s, t, y = _faces(ict_model, ict_model.landmarks, B=10)
    y = y + torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)  # noisy annotations
    res = select_landmark_vertices(ict_model, shape, expr, R, s, t, y, radius_mm=10.0)
    mir = mirror_vertices(ict_model.mean.double())
    for i in range(68):
        j = IBUG68_MIRROR[i]
        if j != i:
            assert res.ids[j] == mir[res.ids[i]] or res.ids[i] == mir[res.ids[j]]


def test_mirror_vertices_known_answer():
    mean = torch.tensor([[-1.0, 0, 0], [1.0, 0, 0], [0.0, 2, 0], [2.0, 5, 1], [-2.1, 5, 1]])
    assert mirror_vertices(mean).tolist() == [1, 0, 2, 4, 3]


def test_shipped_definition_is_what_the_refined_model_uses(ict_model):
    from morphable.registry import load_model

    d = json.loads(REFINED_ICT_LANDMARKS.read_text())
    assert ict_model.info.landmark_definition == "refined"
    assert ict_model.landmarks.tolist() == d["ids"]
    up = load_model(region="narrow", landmarks="upstream")
    assert up.info.landmark_definition == "upstream"
    assert up.landmarks.tolist() == d["previous"] and up.landmarks.tolist() != d["ids"]
    # every other buffer is shared, not copied
    assert up.mean.data_ptr() == ict_model.mean.data_ptr()
    with pytest.raises(ModelFormatError, match="landmarks must be"):
        load_model(landmarks="bfm-2009")


def test_with_landmarks_leaves_the_original_alone(ict_model):
    before = ict_model.landmarks.clone()
    other = ict_model.with_landmarks(np.arange(68), definition="test")
    assert other.landmarks.tolist() == list(range(68)) and other.info.landmark_definition == "test"
    assert torch.equal(ict_model.landmarks, before) and ict_model.info.landmark_definition == "refined"
    with pytest.raises(ModelFormatError):
        ict_model.with_landmarks(np.arange(67))
    with pytest.raises(ModelFormatError):
        ict_model.with_landmarks(np.full(68, ict_model.n_vertices))


def test_read_landmark_file_errors(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(ModelFormatError, match="not a landmark definition"):
        read_landmark_file(tmp_path / "a.json", 100)
    (tmp_path / "b.json").write_text(json.dumps({"ids": list(range(68))}))
    with pytest.raises(ModelFormatError, match="68 vertex ids below 50"):
        read_landmark_file(tmp_path / "b.json", 50)
    assert read_landmark_file(tmp_path / "b.json", 100).tolist() == list(range(68))
