"""benchmarks.w300: the 300-W validation scores are hand-computable."""
import numpy as np
import pytest

from benchmarks import w300
from tests.conftest import need_shared


def _face(x0=100.0, y0=50.0, w=40.0, h=90.0):
    """68 points on a w x h box with the outer eye corners 36 / 45 at a known distance (20 px)."""
    rng = np.random.default_rng(0)
    p = np.c_[x0 + rng.uniform(0, w, 68), y0 + rng.uniform(0, h, 68)]
    p[0], p[1] = [x0, y0], [x0 + w, y0 + h]  # the box corners
    p[36], p[45] = [x0 + 10, y0 + 30], [x0 + 30, y0 + 30]
    return p


def test_scores_by_hand():
    gt = np.stack([_face(), _face(x0=0.0, w=40.0, h=90.0)])
    pred = gt.copy()
    pred[:, 48:68] += [3.0, 4.0]  # the mouth 5 px off
    s = w300.score(pred, gt)
    box = np.sqrt(40.0 * 90.0)
    assert s.n == 2
    assert s.nme_io_interior == pytest.approx(20 * 5.0 / 51 / 20.0 * 100)  # 20 of 51 interior points, io 20 px
    assert s.nme_box_interior == pytest.approx(20 * 5.0 / 51 / box * 100)
    assert s.nme_box_68 == pytest.approx(20 * 5.0 / 68 / box * 100)
    r = s.errors.regions()
    assert r["outer_lips"].signed_x.all == pytest.approx(300 / box) and r["inner_lips"].signed_y.all == pytest.approx(400 / box)
    assert r["jaw"].nme.all == 0.0 and r["eyes"].signed_y.all == 0.0
    assert "inner_lips" in w300.format_report(s, "test")


def test_load_faces_reads_the_common_subset():
    d = need_shared("data/300w")
    photos, pts = w300.load_faces(d, w300.VALIDATION_FOLDERS)
    assert len(photos) == 541 and pts.shape == (541, 68, 2) and all(p.is_file() for p in photos[:5])
