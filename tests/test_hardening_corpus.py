"""Issue 8: the corruption corpus (tests/corruption.py) through every loader.

Every input runs in a watched worker process (benchmarks.robustness): a segfault or a hang is a
counted failure here, not the end of the test run. Expectations per case are in the corpus:
bad inputs raise the documented MorphableError subclass with a one-line message, good-but-unusual
ones load, degenerate landmarks come back finite and flagged, and code-running pickles are refused
without their side effect.
"""
import hashlib
import json
from collections import Counter

import pytest

from benchmarks.robustness import run_cases
from morphable.errors import InputError
from tests.corruption import (Case, Context, classify, load_manifest, make_corpus, make_fuzz, materialize, run_case,
                              truncations)

SCALE = 0.12  # about 300 inputs; the report (python -m benchmarks.robustness) runs scale 1 (> 1,000 bad)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    cases = make_corpus(root, seed=1, scale=SCALE)
    fuzz = make_fuzz(root, seed=1, n=12)
    return root, cases, fuzz


def _report(results):
    bad = [r for r in results if r["verdict"] not in ("ok", "clear-error")]
    return "\n".join(f"{r['case'].id} ({r['case'].note}): {r['verdict']}: {r['detail'][:300]}" for r in bad[:30])


def test_every_input_is_refused_clearly_or_loaded(corpus):
    root, cases, fuzz = corpus
    results = run_cases(cases + fuzz, root, timeout=60, progress=False)
    verdicts = Counter(r["verdict"] for r in results)
    assert set(verdicts) <= {"ok", "clear-error"}, f"{dict(verdicts)}\n{_report(results)}"
    # every kind of the issue is present, and most inputs are bad ones
    kinds = Counter(c.kind for c in cases)
    assert {"image", "model", "weights", "landmarks"} <= set(kinds)
    assert sum(c.bad for c in cases) > 250
    # the refusals are of the documented subclasses
    by_id = {r["case"].id: r for r in results}
    for c in cases:
        if c.expect == "error":
            assert by_id[c.id]["verdict"] == "clear-error", (c.id, by_id[c.id])
            assert by_id[c.id]["detail"].startswith(c.error), (c.id, c.error, by_id[c.id]["detail"])


def test_classes_named_in_the_issue_are_there(corpus):
    _, cases, _ = corpus
    cls = {c.cls for c in cases}
    for want in ("jpeg-truncated", "jpeg-bitflip", "png-truncated", "png-bitflip", "empty", "not-an-image",
                 "too-small", "bomb", "unusual-ok", "no-face", "many-faces", "bfm2009-layout", "bfm2009-mat-truncated",
                 "statismo-layout", "statismo-h5-truncated", "native-layout", "native-h5-truncated", "sfm-layout",
                 "sfm-bin-truncated", "ict-folder", "weights-truncated", "other-architecture", "malicious-pickle",
                 "flagged", "wrong-shape", "visibility"):
        assert want in cls, want
    notes = " ".join(c.note for c in cases)
    for want in ("text named .jpg", "1x1", "16-bit", "CMYK", "EXIF orientation 6", "30000x30000", "tiled 30 times",
                 "missing", "N+10 vertices", "extra identity", "other", "visibility -1", "all NaN", "all inf",
                 "68 identical points", "(1, 67, 2)"):
        assert want in notes, want


def test_corpus_is_deterministic_for_a_seed(tmp_path):
    def digest(root, cases):
        h = hashlib.sha256(json.dumps([c.__dict__ for c in cases], sort_keys=True).encode())
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.name != "manifest.json" and not p.name.endswith((".h5",)):
                h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
        return h.hexdigest()

    kinds = ("image", "landmarks")
    a = make_corpus(tmp_path / "a", seed=5, scale=0.05, kinds=kinds)
    b = make_corpus(tmp_path / "b", seed=5, scale=0.05, kinds=kinds)
    c = make_corpus(tmp_path / "c", seed=6, scale=0.05, kinds=kinds)
    assert digest(tmp_path / "a", a) == digest(tmp_path / "b", b)
    assert [x.note for x in a] != [x.note for x in c]  # other cut points and flips
    assert [x.__dict__ for x in load_manifest(tmp_path / "a")] == [x.__dict__ for x in a]


def test_scale_1_gives_over_a_thousand_bad_inputs(tmp_path):
    """The count, without writing megabytes: the sampled mutants scale linearly (images and
    models are small; the full run is ``python -m benchmarks.robustness``)."""
    cases = make_corpus(tmp_path, seed=0, scale=1.0, kinds=("image", "model", "landmarks"))
    n_weights_bad = 2 * 30 + 30  # truncations + flips of the weight file at scale 1, + fixed weight cases
    assert sum(c.bad for c in cases) + n_weights_bad >= 1000
    assert len(truncations(bytes(5000), 300, __import__("numpy").random.default_rng(0))) == 300


def test_derived_mutants_and_sentinels(corpus, tmp_path):
    root, cases, _ = corpus
    derived = [c for c in cases if "derive" in c.args]
    assert derived and all(c.kind == "weights" for c in derived)
    c = derived[0]
    p = materialize(c, root)
    base = (root / c.args["derive"]["base"]).read_bytes()
    assert p.read_bytes() != base and len(p.read_bytes()) <= len(base)
    p.unlink()
    # the malicious pickles' sentinels were never created by the run above, nor by this one
    ctx = Context(root)
    evil = [c for c in cases if c.sentinel]
    assert len(evil) == 3
    for c in evil:
        verdict, detail = classify(c, *_run(c, ctx), root)
        assert verdict == "clear-error" and "refused" in detail, detail
        assert not (root / c.sentinel).exists()


def _run(c: Case, ctx):
    try:
        return run_case(c, ctx), None
    except Exception as e:  # noqa: BLE001
        return None, e


def test_command_line_on_broken_models_one_line_no_partial_file(corpus, tmp_path, capsys, monkeypatch):
    """One model input per class through ``morphable info`` and ``convert`` (in-process; the
    report runs the real console in subprocesses): exit 0 or 1, one error line, no output file
    left behind by a failed conversion."""
    from morphable.cli import main

    root, cases, _ = corpus
    monkeypatch.setenv("MORPHABLE_CACHE", str(tmp_path / "cache"))
    seen = set()
    for c in cases:
        if c.kind != "model" or c.loader not in ("native", "bfm2017", "bfm2009", "sfm", "ict") or c.cls in seen:
            continue
        seen.add(c.cls)
        src = str(root / c.path)
        region = ["--region", "full"] if c.loader == "ict" else []
        lm = ["--landmarks", str(root / c.args["landmarks"])] if "landmarks" in c.args else []
        out = tmp_path / c.cls / "out.h5"
        for argv in (["info", src, *region], ["convert", src, "--out", str(out), *region, *lm]):
            rc = main(argv)
            err = capsys.readouterr().err
            lines = [ln for ln in err.splitlines() if ln.startswith("morphable: error:")]
            assert rc in (0, 1) and "Traceback" not in err, (c.id, argv[0], rc, err)
            if c.expect == "error":
                assert rc == 1 and len(lines) == 1, (c.id, argv[0], err)
            if rc == 1 and argv[0] == "convert":
                assert not out.parent.exists() or not any(out.parent.iterdir()), (c.id, list(out.parent.iterdir()))
    assert len(seen) >= 8


def test_pixel_limit_refuses_first_and_can_be_raised(corpus, monkeypatch):
    from fitting.images import load_image

    root, cases, _ = corpus
    bomb = next(c for c in cases if c.note.startswith("30000x30000"))
    with pytest.raises(InputError, match="over the limit of 100 Mpx.*--max-pixels"):
        load_image(root / bomb.path)
    assert (root / bomb.path).stat().st_size < 200  # refused on the header: there are no pixels to decode
    small = next(c for c in cases if "max_pixels" in c.args)
    with pytest.raises(InputError, match="MORPHABLE_MAX_PIXELS"):
        load_image(root / small.path, max_pixels=small.args["max_pixels"])
    monkeypatch.setenv("MORPHABLE_MAX_PIXELS", "1000")
    with pytest.raises(InputError):
        load_image(root / small.path)
    monkeypatch.setenv("MORPHABLE_MAX_PIXELS", "2e8")
    assert load_image(root / small.path).shape[2] == 3


def test_benchmark_runner_survives_a_damaged_dataset(tmp_path, capsys):
    """``python -m benchmarks.aflw2000_3d`` on a dataset with a damaged annotation .mat (a data
    type code that makes scipy's reader crash the process) or damaged predictions: exit 2 and one
    ``error:`` line naming the file."""
    import subprocess
    import sys

    import numpy as np
    import scipy.io as sio
    from PIL import Image

    from benchmarks.aflw2000_3d import main
    from tests.corruption import REPO, good_landmarks

    preds = []
    for k in range(3):
        g = good_landmarks(None, k)
        Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(tmp_path / f"image{k:05d}.jpg")
        sio.savemat(tmp_path / f"image{k:05d}.mat", {"pt3d_68": np.r_[g.T + 1, np.zeros((1, 68))],
                                                     "Pose_Para": np.array([[0.1, 0.2, 0.0, 0, 0, 0, 1]])})
        preds.append(g)
    np.save(tmp_path / "pred.npy", np.stack(preds))
    args = ["--data", str(tmp_path), "--predictions", str(tmp_path / "pred.npy"), "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    good = (tmp_path / "pred.npy").read_bytes()
    (tmp_path / "pred.npy").write_bytes(good[: len(good) // 2])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "pred.npy" in err[0]
    (tmp_path / "pred.npy").write_bytes(good)
    b = bytearray((tmp_path / "image00001.mat").read_bytes())
    assert b[184] == 9  # pt3d_68's data element: miDOUBLE
    b[184] = 15  # miCOMPRESSED inside a matrix: scipy 1.17 segfaults on it
    (tmp_path / "image00001.mat").write_bytes(bytes(b))
    r = subprocess.run([sys.executable, "-m", "benchmarks.aflw2000_3d", *args], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "image00001.mat" in lines[0]
