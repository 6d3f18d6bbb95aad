"""300-W ``.pts`` files: the 1-based -> 0-based conversion happens once, in the reader."""
import numpy as np
import pytest

from morphable.errors import InputError
from morphable.formats.pts import read_pts
from tests.conftest import need_shared


def _write(path, pts):
    path.write_text("version: 1\nn_points:  68\n{\n" + "".join(f"{x:.3f} {y:.3f}\n" for x, y in pts) + "}\n")


def test_round_trip_and_one_based(tmp_path):
    pts = np.random.default_rng(0).uniform(0, 300, (68, 2)).round(3)
    _write(tmp_path / "a.pts", pts)
    np.testing.assert_allclose(read_pts(tmp_path / "a.pts", one_based=False), pts, atol=0)
    np.testing.assert_allclose(read_pts(tmp_path / "a.pts"), pts - 1.0, atol=1e-12)  # 300-W's MATLAB pixels


@pytest.mark.parametrize("text,match", [("version: 1\n{\n1 2\n}\n", "expected 68 points, got 1"),
                                        ("no braces at all", "not a .pts landmark file"),
                                        ("{\n1 x\n}", "not a .pts landmark file")])
def test_bad_files_say_what_is_wrong(tmp_path, text, match):
    (tmp_path / "b.pts").write_text(text)
    with pytest.raises(InputError, match=match):
        read_pts(tmp_path / "b.pts")
    with pytest.raises(InputError, match="cannot read"):
        read_pts(tmp_path / "missing.pts")


def test_a_real_300w_file():
    d = need_shared("data/300w/afw")
    f = sorted(d.glob("*.pts"))[0]
    p = read_pts(f)
    first = f.read_text().split("{")[1].split()[:2]
    assert p.shape == (68, 2) and p[0].tolist() == [float(first[0]) - 1, float(first[1]) - 1]
