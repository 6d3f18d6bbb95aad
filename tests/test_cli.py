"""The `morphable` command line: info / convert / sample, one-line errors, plugin subcommands."""
import json
import subprocess
import sys

import numpy as np
import scipy.io as sio
import torch

from morphable import cli
from morphable.export import read_mesh
from morphable.formats.native import load_native
from tests.conftest import assert_close, need_shared


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, code=1, match=""):
    assert rc == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("morphable: error: "), err
    assert match in lines[0], lines[0]
    assert "Traceback" not in err


def test_help_lists_commands(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0
    for word in ("info", "convert", "sample", "examples:"):
        assert word in out
    rc, out, _ = run(capsys, "convert", "--help")
    assert rc == 0 and "--trim-index" in out and "--exp-pca" in out


def test_info_default_model(capsys, default_model):
    rc, out, _ = run(capsys, "info")
    assert rc == 0
    s = json.loads(out)
    assert s == json.loads(json.dumps(default_model.summary()))
    assert (s["shape_components"], s["expression_components"], s["landmarks"]) == (100, 53, 68)


def test_info_sfm(capsys):
    d = need_shared("models/sfm")
    rc, out, _ = run(capsys, "info", str(d / "sfm_shape_3448.bin"))
    assert rc == 0 and json.loads(out)["vertices"] == 3448


def test_sample_is_seeded_and_expression_optional(capsys, tmp_path, default_model):
    a, b, c = tmp_path / "a.ply", tmp_path / "b.ply", tmp_path / "c.ply"
    assert run(capsys, "sample", "--seed", "3", "--out", str(a))[0] == 0
    assert run(capsys, "sample", "--seed", "3", "--out", str(b))[0] == 0
    rc, out, _ = run(capsys, "sample", "--seed", "3", "--no-expression", "--out", str(c))
    assert rc == 0 and "wrote" in out
    Va, Fa, _, _ = read_mesh(a)
    assert a.read_bytes() == b.read_bytes()
    assert np.array_equal(Fa, default_model.triangles.numpy())
    g = torch.Generator().manual_seed(3)
    shape, _ = default_model.sample(1, generator=g, expression=False)
    Vc = read_mesh(c)[0]
    assert_close(torch.tensor(Vc), default_model.vertices(shape)[0].double(), atol=1e-3)  # identity only, PLY float32
    assert np.abs(Va - Vc).max() > 0.1  # the expression draw moved something


def test_convert_sfm_round_trip(capsys, tmp_path):
    d = need_shared("models/sfm")
    from morphable.formats.sfm import load_sfm

    out = tmp_path / "sfm.h5"
    rc, text, _ = run(capsys, "convert", str(d / "sfm_shape_3448.bin"), "--n-shape", "10", "--out", str(out))
    assert rc == 0 and "wrote" in text
    m, ref = load_native(out), load_sfm(d / "sfm_shape_3448.bin")
    assert m.n_shape == 10 and torch.equal(m.shape_basis, ref.shape_basis[..., :10])
    assert torch.equal(m.expr_basis, ref.expr_basis) and torch.equal(m.landmarks, ref.landmarks)


def test_convert_bfm2009_with_options(capsys, tmp_path):
    from tests.test_formats_bfm import KEEP, _landmarks, _write_bfm2009, _write_exp

    _write_bfm2009(tmp_path)
    _write_exp(tmp_path)
    out = tmp_path / "bfm.h5"
    base = ["convert", str(tmp_path / "01_MorphableModel.mat"), "--exp-pca", str(tmp_path / "Exp_Pca.bin")]
    rc, _, err = run(capsys, *base, "--landmarks", str(_landmarks(tmp_path)), "--out", str(out))
    assert_one_line_error(rc, err, match="--trim-index")  # says which file is missing
    rc, _, err = run(capsys, *base, "--trim-index", str(tmp_path / "BFM_exp_idx.mat"), "--landmarks",
                     str(_landmarks(tmp_path)), "--n-shape", "2", "--n-expr", "1", "--out", str(out))
    assert rc == 0, err
    m = load_native(out)
    assert (m.n_vertices, m.n_shape, m.n_expr) == (len(KEEP), 2, 1)


def test_errors_are_one_line(capsys, tmp_path):
    rc, _, err = run(capsys, "info", str(tmp_path / "missing.bin"))
    assert_one_line_error(rc, err, match="missing.bin")
    (tmp_path / "cut.bin").write_bytes(b"\x01\x00\x00\x00\x10\x00")
    rc, _, err = run(capsys, "info", str(tmp_path / "cut.bin"))
    assert_one_line_error(rc, err, match="truncated")
    rc, _, err = run(capsys, "sample", "--seed", "x", "--out", "f.obj")
    assert_one_line_error(rc, err, code=2, match="--seed")
    rc, _, err = run(capsys, "frobnicate")
    assert_one_line_error(rc, err, code=2, match="frobnicate")
    sio.savemat(tmp_path / "m.mat", {"shapeMU": np.zeros((3, 1))})
    rc, _, err = run(capsys, "convert", str(tmp_path / "m.mat"), "--blendshapes", "x.bin", "--out", str(tmp_path / "o.h5"))
    assert_one_line_error(rc, err, match="--blendshapes")
    rc, _, err = run(capsys, "convert", str(tmp_path / "m.mat"), "--out", str(tmp_path / "o.obj"))
    assert_one_line_error(rc, err, match=".h5")
    rc, _, err = run(capsys, "sample", "--out", str(tmp_path / "face.stl"))
    assert_one_line_error(rc, err, match=".obj")


def test_console_script_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "morphable.cli", "info", str(tmp_path / "nope.mat")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("morphable: error: ") and len(r.stderr.strip().splitlines()) == 1


def test_plugins_register_subcommands(capsys, tmp_path, monkeypatch):
    pkg = tmp_path / "mplug_ok"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text(
        "def register(sub):\n"
        "    p = sub.add_parser('fit', help='fit a photo')\n"
        "    p.add_argument('image')\n"
        "    p.set_defaults(func=lambda a: print('fitted', a.image) or 0)\n")
    bad = tmp_path / "mplug_bad"
    bad.mkdir()
    (bad / "__init__.py").write_text("")
    (bad / "cli.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "PLUGINS", ("mplug_ok.cli", "mplug_bad.cli", "mplug_absent.cli"))
    rc, out, err = run(capsys, "fit", "face.jpg")
    assert rc == 0 and out.strip() == "fitted face.jpg"
    assert "mplug_bad.cli not loaded" in err and "mplug_absent" not in err  # broken: said; absent: silent
    rc, out, _ = run(capsys, "--help")
    assert "fit" in out and "info" in out
