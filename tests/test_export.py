"""Mesh export: write -> read round trips keep vertex order, faces, colours and UVs."""
import numpy as np
import pytest
import torch
import trimesh

from morphable.errors import InputError
from morphable.export import read_mesh, write_mesh


def _mesh(seed=0):
    rng = np.random.default_rng(seed)
    V = rng.normal(size=(60, 3)) * 70.0
    V[10] = V[11]            # a duplicate position: must not be merged
    F = rng.integers(0, 58, size=(90, 3))  # vertices 58, 59 unreferenced: must not be dropped
    C = rng.integers(0, 256, size=(60, 3)).astype(np.uint8)
    UV = rng.random((60, 2))
    return V, F, C, UV


@pytest.mark.parametrize("suffix", [".obj", ".ply"])
@pytest.mark.parametrize("with_colors,with_uv", [(False, False), (True, False), (False, True), (True, True)])
def test_round_trip(tmp_path, suffix, with_colors, with_uv):
    V, F, C, UV = _mesh()
    p = write_mesh(tmp_path / f"m{suffix}", V, F, colors=C if with_colors else None, uv=UV if with_uv else None)
    V2, F2, C2, UV2 = read_mesh(p)
    tol = 1e-7 if suffix == ".obj" else 1e-5 * 300  # OBJ: 8 decimals; PLY: float32
    assert V2.shape == V.shape and np.abs(V2 - V).max() < tol
    assert np.array_equal(F2, F)
    assert (C2 is not None) == with_colors and (not with_colors or np.array_equal(C2, C))
    assert (UV2 is not None) == with_uv and (not with_uv or np.abs(UV2 - UV).max() < 1e-7)
    assert [q.name for q in tmp_path.iterdir()] == [p.name]  # no temp files, no material without texture


def test_float_colours_and_torch_inputs(tmp_path):
    V, F, C, _ = _mesh(1)
    Cf = torch.tensor(C / 255.0)
    p = write_mesh(tmp_path / "m.ply", torch.tensor(V, dtype=torch.float32), torch.tensor(F), colors=Cf)
    V2, F2, C2, _ = read_mesh(p)
    assert np.array_equal(C2, C) and np.array_equal(F2, F)
    assert np.abs(V2 - V.astype(np.float32)).max() < 1e-4


def test_textured_obj_writes_mtl_and_png(tmp_path):
    V, F, _, UV = _mesh(2)
    tex = np.zeros((8, 16, 3), np.uint8)
    tex[:, :8, 0] = 255
    p = write_mesh(tmp_path / "face.obj", V, F, uv=UV, texture=tex)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["face.mtl", "face.obj", "face.png"]
    text = p.read_text()
    assert "mtllib face.mtl" in text and text.count("\nvt ") == 60
    assert "map_Kd face.png" in (tmp_path / "face.mtl").read_text()
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(tmp_path / "face.png"))[..., :3], tex)
    V2, F2, _, UV2 = read_mesh(p)
    assert np.array_equal(F2, F) and np.abs(UV2 - UV).max() < 1e-7 and np.abs(V2 - V).max() < 1e-7


def test_obj_faces_reference_per_vertex_uv(tmp_path):
    V, F, _, UV = _mesh(3)
    p = write_mesh(tmp_path / "m.obj", V, F, uv=UV)
    faces = [ln.split()[1:] for ln in p.read_text().splitlines() if ln.startswith("f ")]
    assert faces[0] == [f"{i + 1}/{i + 1}" for i in F[0]]  # 1-based, vt index == v index
    # other tools see the same vertex order when every vertex is used (trimesh drops unused ones)
    F_all = np.concatenate([F, np.arange(60).reshape(20, 3)])
    p = write_mesh(tmp_path / "all.obj", V, F_all, uv=UV)
    m = trimesh.load(p, process=False, maintain_order=True)
    assert np.abs(np.asarray(m.vertices) - V).max() < 1e-7 and np.array_equal(m.faces, F_all)


def test_bad_inputs_and_atomicity(tmp_path):
    V, F, C, UV = _mesh()
    p = write_mesh(tmp_path / "keep.obj", V, F)
    before = p.read_bytes()
    for kwargs in ({"triangles": F + 100}, {"colors": C[:5]}, {"uv": UV[:, :1]}, {"vertices": V[:, :2]},
                   {"colors": C / 100.0}, {"texture": np.zeros((2, 2, 3), np.uint8)}):
        args = {"vertices": V, "triangles": F, **kwargs}
        with pytest.raises(InputError):
            write_mesh(p, **args)
    assert p.read_bytes() == before  # a failed write leaves the old file alone
    bad = V.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_mesh(p, bad, F)
    with pytest.raises(InputError, match=".stl"):
        write_mesh(tmp_path / "m.stl", V, F)
    with pytest.raises(FileNotFoundError):
        read_mesh(tmp_path / "absent.obj")
