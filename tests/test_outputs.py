"""fitting.outputs: the three per-face files, their frames and atomic writing."""
import json

import numpy as np
import pytest
import trimesh

from fitting.outputs import FaceRecord, mesh_frame_vertices, output_paths, record_json, write_face


def _record(ict_model, H=120, W=160, **kw):
    X = ict_model.mean.double().numpy()
    s = 0.5 * W / np.ptp(X[:, 0])
    c = (X.max(0) + X.min(0)) / 2
    t = np.array([W / 2 - s * c[0], H / 2 + s * c[1]])
    V = np.c_[s * X[:, 0] + t[0], -s * X[:, 1] + t[1], s * X[:, 2]]
    img = np.zeros((H, W, 3), np.uint8)
    img[:, : W // 2] = (200, 40, 40)
    img[:, W // 2:] = (40, 40, 200)
    args = dict(image=img, stem="photo", index=0, vertices_img=V, triangles=ict_model.triangles.numpy(),
                landmarks=V[ict_model.landmarks.numpy(), :2], rotation=np.eye(3), angles_deg=[10.0, -5.0, 2.0],
                scale=s, translation=t, rmse=1.25, converged=True, box=[10, 20, 110, 120], model_name="ict-facekit")
    args.update(kw)
    return FaceRecord(**args)


def test_paths():
    p = output_paths("out", "img", 0)
    assert [p[k].name for k in ("mesh", "json", "overlay")] == ["img.obj", "img.json", "img_overlay.png"]
    p = output_paths("out", "img", 2)
    assert [p[k].name for k in ("mesh", "json", "overlay")] == ["img_2.obj", "img_2.json", "img_2_overlay.png"]


def test_write_face_files_frames_and_json(tmp_path, ict_model):
    rec = _record(ict_model)
    files = write_face(rec, tmp_path / "out")
    assert set(files) == {"mesh", "json", "overlay"} and all(p.is_file() for p in files.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["photo.json", "photo.obj", "photo_overlay.png"]
    # mesh: model vertex order, image-aligned right-handed frame, colours from the photo
    m = trimesh.load(files["mesh"], process=False)
    assert len(m.vertices) == ict_model.n_vertices and len(m.faces) == len(rec.triangles)
    np.testing.assert_allclose(m.vertices, mesh_frame_vertices(rec.vertices_img, 120), atol=1e-6)
    np.testing.assert_allclose(m.vertices[:, 1], 119 - rec.vertices_img[:, 1], atol=1e-6)
    col = np.asarray(m.visual.vertex_colors)[:, :3].astype(int)
    left = rec.vertices_img[:, 0] < 70  # image-left half is red in the photo
    red, grey = (col == [200, 40, 40]).all(1), (col == [200, 200, 200]).all(1)
    assert (red | grey)[left].all()  # sampled from the photo, or neutral where hidden
    assert red[left].mean() > 0.8
    # JSON
    d = json.loads(files["json"].read_text())
    assert d["pose"]["yaw"] == 10.0 and d["pose"]["pitch"] == -5.0 and d["pose"]["roll"] == 2.0
    assert np.array(d["rotation"]).shape == (3, 3) and len(d["landmarks"]) == 68
    assert d["rmse_px"] == 1.25 and d["converged"] is True and d["box"] == [10, 20, 110, 120]
    assert d["model"] == "ict-facekit" and d["image_size"] == [160, 120] and d["files"]["mesh"] == "photo.obj"
    # overlay PNG is the photo's size
    from PIL import Image

    assert Image.open(files["overlay"]).size == (160, 120)
    # no temporary files remain
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_json_nan_becomes_null_and_second_face_suffix(tmp_path, ict_model):
    rec = _record(ict_model, rmse=float("nan"), box=None, index=1)
    files = write_face(rec, tmp_path)
    assert files["json"].name == "photo_1.json"
    d = json.loads(files["json"].read_text())
    assert d["rmse_px"] is None and d["box"] is None and d["face"] == 1
    assert record_json(rec)["pose"]["units"] == "degrees"


def test_failed_write_leaves_no_partial_file(tmp_path, ict_model, monkeypatch):
    import fitting.outputs as outputs

    rec = _record(ict_model)
    # an earlier, complete JSON must survive a failed rewrite untouched
    write_face(rec, tmp_path)
    before = (tmp_path / "photo.json").read_bytes()

    def boom(path, text_writer):  # fail in the middle of writing the JSON
        def half(p):
            open(p, "w").write("{ half")
            raise OSError("disk full")
        return orig(path, half)

    orig = outputs._atomic
    monkeypatch.setattr(outputs, "_atomic", lambda path, w: boom(path, w) if path.suffix == ".json" else orig(path, w))
    with pytest.raises(OSError, match="disk full"):
        write_face(_record(ict_model, angles_deg=[1.0, 2.0, 3.0]), tmp_path)
    assert (tmp_path / "photo.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_extra_outputs_paths_and_no_uv(tmp_path, ict_model):
    from morphable.errors import ModelFormatError

    p = output_paths("out", "img", 1, extras=("normals", "texture", "depth"))
    assert [p[k].name for k in ("textured_obj", "textured_mtl", "texture", "glb", "depth", "normals")] == [
        "img_1_textured.obj", "img_1_textured.mtl", "img_1_textured.png", "img_1.glb", "img_1_depth.png",
        "img_1_normals.png"]
    assert list(output_paths("out", "img")) == ["mesh", "json", "overlay"]  # the defaults are unchanged
    with pytest.raises(ValueError, match="unknown output"):
        output_paths("out", "img", extras=("shadows",))
    with pytest.raises(ModelFormatError, match="no texture coordinates"):
        write_face(_record(ict_model), tmp_path, extras=("texture",))  # rec.uv is None
    assert not list(tmp_path.iterdir())  # refused before any file was written
    files = write_face(_record(ict_model, uv=ict_model.uv.numpy()), tmp_path, extras=("texture", "depth"),
                       texture_size=32)
    assert set(files) == {"mesh", "json", "overlay", "textured_obj", "textured_mtl", "texture", "glb", "depth"}
    assert all(f.is_file() for f in files.values())
    d = json.loads(files["json"].read_text())
    assert d["depth_png"]["near_px"] > d["depth_png"]["far_px"] and "normals_png" not in d
