"""Issue 8, batch jobs lose nothing: ``morphable fit DIR --out OUT`` (a real subprocess) on a folder
mixing good photos and corpus bad files writes every good result, reports each bad file on its own
line and exits 1; interrupted by SIGINT or SIGTERM after the first result and re-run with
``--resume``, it finishes only what is missing and ends with the same bytes as an uninterrupted run.

The regressor is a tiny randomly initialised network (the trained weights are not committed yet):
the fitted faces are nonsense, which does not matter here.
"""
import json
import signal

import numpy as np
import pytest

from benchmarks.robustness import _diff, _snapshot, make_batch, run_fit
from tests.conftest import need_shared
from tests.corruption import make_corpus, save_tiny_regressor


@pytest.fixture(scope="module")
def batch(tmp_path_factory, ict_model):
    need_shared("data/faces68")
    root = tmp_path_factory.mktemp("batch")
    cases = make_corpus(root / "corpus", seed=2, scale=0.03, kinds=("image",))
    weights = save_tiny_regressor(root / "tiny.pt", model=ict_model)
    goods, bads = make_batch(root / "in", cases, root / "corpus", 3, 4, np.random.default_rng(0))
    ref = root / "reference"
    rc, out, err, _ = run_fit(root / "in", ref, weights, timeout=600)
    return root, weights, goods, bads, ref, rc, out, err


def _outputs_complete(folder, stems):
    from fitting.outputs import output_paths

    return {s: all(p.is_file() for p in output_paths(folder, s, 0).values()) for s in stems}


def test_good_written_bad_reported_nonzero_exit(batch):
    root, weights, goods, bads, ref, rc, out, err = batch
    assert rc == 1, err
    assert "Traceback" not in err
    assert all(_outputs_complete(ref, goods).values()), _outputs_complete(ref, goods)
    errors = [ln for ln in err.splitlines() if ln.startswith("morphable: error:")]
    assert len(errors) == len(bads)
    for b in bads:  # each bad file on its own line, named
        assert sum(f"/{b}." in ln for ln in errors) == 1, (b, errors)
    assert not [p for p in ref.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    for j in ref.glob("*.json"):
        doc = json.loads(j.read_text())
        assert doc["stem"].split("_")[0].isdigit() and "_good" in doc["stem"]
    assert f"{len(goods)} image(s) fitted" in err and f"{len(bads)} failed" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_then_resume_gives_the_same_bytes(batch, sig):
    root, weights, goods, bads, ref, *_ = batch
    out = root / f"out-{sig.name}"
    rc, so, se, _ = run_fit(root / "in", out, weights, interrupt=sig, timeout=600)
    assert rc == 130, se
    assert "Traceback" not in se and "interrupted" in se
    done = {s for s, ok in _outputs_complete(out, goods).items() if ok}
    assert 1 <= len(done) < len(goods), "interrupted after the first image, before the last"
    # nothing half-written: no temporary files, every face's three files or none
    assert not [p for p in out.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    assert {j.stem for j in out.glob("*.json")} == {p.stem for p in out.glob("*.obj")}
    rc2, so2, se2, _ = run_fit(root / "in", out, weights, resume=True, timeout=600)
    assert rc2 == 1 and "Traceback" not in se2
    skipped = [ln.split(":")[0] for ln in so2.splitlines() if ": skipped" in ln]
    assert sorted(p.rsplit("/", 1)[-1].split(".")[0] for p in skipped) == sorted(done)  # only what was missing
    assert _diff(_snapshot(ref), _snapshot(out)) == []
