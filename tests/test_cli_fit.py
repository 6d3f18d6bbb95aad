"""``morphable fit`` end to end with a fake pipeline (the model's mean face placed in the image):
expands folders, writes three files per face, reports every bad image, exits non-zero, resumes,
prints JSON, and stops cleanly on SIGINT."""
import json
import os
import signal
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from fitting.pipeline import FaceFit
from morphable.cli import main


def _mean_face_fit(model, image, shift=0.0):
    H, W = image.shape[:2]
    X = model.mean.double().numpy()
    s = 0.45 * W / np.ptp(X[:, 0])
    c = (X.max(0) + X.min(0)) / 2
    t = np.array([W / 2 - s * c[0] + shift, H / 2 + s * c[1]])
    V = np.c_[s * X[:, 0] + t[0], -s * X[:, 1] + t[1], s * X[:, 2]]
    lm = V[model.landmarks.numpy(), :2]
    return FaceFit(V, model.triangles.numpy(), lm, np.eye(3), np.zeros(3), s, t, 0.5, True,
                   np.r_[lm.min(0), lm.max(0)])


@pytest.fixture
def fake_pipeline(monkeypatch, ict_model):
    """Install a fake ``fitting.pipeline``: no face in flat images, two faces in wide ones."""
    calls = []

    def fit_all(image, options):
        calls.append((image.shape, options))
        if image.std() < 1.0:
            return []
        faces = [_mean_face_fit(ict_model, image)]
        if image.shape[1] >= 2 * image.shape[0]:
            faces.append(_mean_face_fit(ict_model, image, shift=image.shape[1] / 4))
        return faces

    mod = types.ModuleType("fitting.pipeline")
    mod.fit_all = fit_all
    monkeypatch.setitem(sys.modules, "fitting.pipeline", mod)
    return calls


def _photo(path, w=96, h=80, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _photo(d / "a.jpg")
    _photo(d / "b.png", seed=1)
    _photo(d / "wide.png", w=160, h=64, seed=2)  # the fake finds two faces here
    Image.new("RGB", (64, 64), (90, 90, 90)).save(d / "blank.png")  # no face
    (d / "notes.jpg").write_text("not an image\n")
    (d / "empty.png").write_bytes(b"")
    good = (d / "a.jpg").read_bytes()
    (d / "cut.jpg").write_bytes(good[: len(good) // 3])
    (d / "readme.txt").write_text("ignored: not an image extension")
    return d


def _outputs(out, stem, k=0):
    base = stem if k == 0 else f"{stem}_{k}"
    return [out / f"{base}.obj", out / f"{base}.json", out / f"{base}_overlay.png"]


def test_folder_with_good_and_bad_files(folder, tmp_path, fake_pipeline, capsys):
    out = tmp_path / "out"
    rc = main(["fit", str(folder), "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 1  # some images failed
    for stem in ("a", "b", "wide"):
        assert all(p.is_file() for p in _outputs(out, stem)), stem
    assert all(p.is_file() for p in _outputs(out, "wide", 1))  # second face of the same image
    assert not (out / "blank.obj").exists() and not list(out.glob(".*"))
    err_lines = [ln for ln in cap.err.splitlines() if ln.startswith("morphable: error:")]
    assert len(err_lines) == 4  # blank, notes, empty, cut: one line each
    joined = "\n".join(err_lines)
    assert "blank.png: no face found" in joined
    assert "notes.jpg: not an image file" in joined
    assert "empty.png: file is empty" in joined
    assert "cut.jpg: image data is truncated" in joined
    assert "readme.txt" not in cap.out + cap.err  # not an image extension: not picked up
    ok_lines = [ln for ln in cap.out.splitlines() if "face(s)" in ln]
    assert len(ok_lines) == 3 and "wide.png: 2 face(s)" in cap.out
    assert "3 image(s) fitted, 4 face(s)" in cap.err and "4 failed" in cap.err
    d = json.loads((out / "a.json").read_text())
    assert d["pose"]["yaw"] == 0.0 and len(d["landmarks"]) == 68 and d["model"] == "ict-facekit"
    assert d["image"].endswith("a.jpg")


def test_resume_json_and_options(folder, tmp_path, fake_pipeline, capsys):
    out = tmp_path / "out"
    assert main(["fit", str(folder / "a.jpg"), str(folder / "b.png"), "--out", str(out), "--no-lm",
                 "--iterations", "3"]) == 0
    opts = fake_pipeline[0][1]
    assert opts.lm is False and opts.iterations == 3 and opts.device == "cpu"
    mtime = (out / "a.obj").stat().st_mtime_ns
    capsys.readouterr()
    rc = main(["fit", str(folder / "a.jpg"), str(folder / "b.png"), str(folder / "blank.png"), "--out", str(out),
               "--resume", "--json"])
    cap = capsys.readouterr()
    assert rc == 1  # blank.png has no face
    assert (out / "a.obj").stat().st_mtime_ns == mtime  # not rewritten
    doc = json.loads(cap.out)
    status = {os.path.basename(r["image"]): r["status"] for r in doc["images"]}
    assert status == {"a.jpg": "skipped", "b.png": "skipped", "blank.png": "error"}
    assert doc["failed"] == 1 and "skipped" in cap.err


def test_same_stem_twice_and_stale_faces(tmp_path, fake_pipeline, capsys):
    d1, d2 = tmp_path / "x", tmp_path / "y"
    d1.mkdir(), d2.mkdir()
    _photo(d1 / "p.jpg")
    _photo(d2 / "p.jpg", seed=3)
    _photo(d1 / "p.png", w=160, h=64)  # two faces, stem p
    out = tmp_path / "out"
    assert main(["fit", str(d1 / "p.png"), str(d1 / "p.jpg"), str(d2 / "p.jpg"), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.json"))
    assert names == ["p.json", "p_1.json", "p_jpg.json", "p_jpg_2.json"]
    # re-fitting p.png with one face now removes the stale second face
    _photo(d1 / "p.png", w=96, h=80)
    assert main(["fit", str(d1 / "p.png"), "--out", str(out)]) == 0
    assert not (out / "p_1.json").exists() and not (out / "p_1.obj").exists()


def test_sigint_finishes_current_image_then_stops(folder, tmp_path, fake_pipeline, monkeypatch, capsys):
    mod = sys.modules["fitting.pipeline"]
    inner = mod.fit_all

    def interrupting(image, options):
        if len(fake_pipeline) == 0:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first image is being fitted
        return inner(image, options)

    monkeypatch.setattr(mod, "fit_all", interrupting)
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in the background
    rc = main(["fit", str(folder / "a.jpg"), str(folder / "b.png"), "--out", str(out)])
    assert rc == 130
    assert all(p.is_file() for p in _outputs(out, "a"))  # the current image was finished
    assert not (out / "b.json").exists()  # the next one was not started
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_abort_mid_image_removes_its_files(folder, tmp_path, fake_pipeline, monkeypatch):
    import fitting.cli as fcli

    real = fcli.write_face

    def write_then_die(rec, out_dir, **kw):
        files = real(rec, out_dir, **kw)
        if rec.index == 1:  # killed after the first face of 'wide' was written
            raise KeyboardInterrupt
        return files

    monkeypatch.setattr(fcli, "write_face", write_then_die)
    out = tmp_path / "out"
    rc = main(["fit", str(folder / "a.jpg"), str(folder / "wide.png"), "--out", str(out)])
    assert rc == 130
    assert all(p.is_file() for p in _outputs(out, "a"))
    assert not list(out.glob("wide*")) and not list(out.glob(".*"))


def test_no_inputs_and_bad_out(tmp_path, fake_pipeline, capsys):
    assert main(["fit", "--out", str(tmp_path / "o")]) == 1
    assert "no images given" in capsys.readouterr().err
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["fit", str(f), "--out", str(f)]) == 1
    assert "not a folder" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o")]) == 1
    assert "missing.jpg: no such file" in capsys.readouterr().err


def test_example_inputs():
    """--example needs nothing outside the package: the shipped photo, readable, a 512x512 colour image."""
    from fitting.cli import example_inputs
    from fitting.images import EXAMPLE_PHOTO, load_image

    ((label, stem, src),) = example_inputs()
    assert stem == "astronaut" and "public domain" in label and src == EXAMPLE_PHOTO
    assert load_image(src).shape == (512, 512, 3)


def test_setup_error_is_fatal_once(folder, tmp_path, fake_pipeline, monkeypatch, capsys):
    from morphable.errors import WeightsError

    def no_weights(image, options):
        raise WeightsError("default.pt: regressor weight file not found; train one")

    monkeypatch.setattr(sys.modules["fitting.pipeline"], "fit_all", no_weights)
    assert main(["fit", str(folder), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("weight file not found") == 1  # not repeated for every image


def test_options_use_the_pipeline_config(tmp_path, fake_pipeline):
    from dataclasses import dataclass as dc

    from fitting.cli import build_options

    @dc
    class FitConfig:
        model: str = None
        weights: str = None
        refine: bool = True
        iterations: int = 5
        device: str = "cpu"

    args = types.SimpleNamespace(no_lm=True, iterations=None, model="m.h5", weights=None, device="cpu")
    cfg = build_options(args, types.SimpleNamespace(FitConfig=FitConfig))
    assert cfg == FitConfig(model="m.h5", refine=False, iterations=5)


def test_texture_depth_and_normals_outputs(folder, tmp_path, fake_pipeline, monkeypatch, ict_model, capsys):
    """--texture --save depth,normals: the textured OBJ/MTL/PNG, the GLB and both maps beside the
    usual three files; a face this small (~40 px) is warned about and still written."""
    import dataclasses

    import trimesh

    mod = sys.modules["fitting.pipeline"]
    plain = mod.fit_all
    uv = ict_model.uv.double().numpy()
    monkeypatch.setattr(mod, "fit_all", lambda image, options: [dataclasses.replace(f, uv=uv)
                                                                for f in plain(image, options)])
    out = tmp_path / "out"
    rc = main(["fit", str(folder / "a.jpg"), "--out", str(out), "--texture", "--save", "depth,normals",
               "--texture-size", "64"])
    err = capsys.readouterr().err
    assert rc == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a.glb", "a.json", "a.obj", "a_depth.png", "a_normals.png", "a_overlay.png", "a_textured.mtl",
                     "a_textured.obj", "a_textured.png"]
    assert "morphable: warning:" in err and "under 64 px" in err
    assert trimesh.load(out / "a_textured.obj", process=False).visual.kind == "texture"
    (g,) = trimesh.load(out / "a.glb").geometry.values()
    assert g.visual.kind == "texture" and len(g.vertices) == ict_model.n_vertices
    d = json.loads((out / "a.json").read_text())
    assert d["files"]["glb"] == "a.glb" and d["files"]["depth"] == "a_depth.png"
    # the 16-bit depth PNG decodes to the rasteriser's depth map by the rule in the JSON
    import cv2

    from morphable.render import depth_map

    face = plain(np.asarray(Image.open(folder / "a.jpg").convert("RGB")), None)[0]
    val = cv2.imread(str(out / "a_depth.png"), cv2.IMREAD_UNCHANGED)
    assert val.dtype == np.uint16 and val.shape == (80, 96)
    far, near = d["depth_png"]["far_px"], d["depth_png"]["near_px"]
    want = depth_map(face.vertices_img, face.triangles, 80, 96)
    assert ((val > 0) == np.isfinite(want)).all()
    got = far + (val[val > 0].astype(float) - 1) * (near - far) / 65534
    assert np.abs(got - want[val > 0]).max() <= (near - far) / 65534
    nrm = np.asarray(Image.open(out / "a_normals.png"))
    assert nrm.shape == (80, 96, 3) and (nrm[val == 0] == 0).all()
    z = nrm[val > 0, 2]
    assert (z > 127).mean() > 0.99 and np.median(z) > 200  # faces us (a few grazing pixels at folds may not)
    # resume counts the extras: all there -> skipped
    assert main(["fit", str(folder / "a.jpg"), "--out", str(out), "--texture", "--save", "depth,normals",
                 "--resume"]) == 0
    assert "skipped" in capsys.readouterr().out


def test_texture_without_uv_stops_before_writing(folder, tmp_path, fake_pipeline, capsys):
    out = tmp_path / "out"
    assert main(["fit", str(folder / "a.jpg"), str(folder / "b.png"), "--out", str(out), "--texture"]) == 1
    err = capsys.readouterr().err
    assert err.count("no texture coordinates") == 1  # fatal for the run, said once
    assert not list(out.glob("a*"))


def test_bad_save_list(tmp_path, capsys):
    assert main(["fit", "--example", "--out", str(tmp_path / "o"), "--save", "depth,bogus"]) == 2
    assert "unknown output bogus" in capsys.readouterr().err
