"""Issue 8, safe loading: no file of the user's can run code or make a loader read outside its folder.

* no ``pickle.load``/``torch.load`` without ``weights_only=True`` (and no ``np.load`` with
  ``allow_pickle=True``, ``eval``/``exec``, ``yaml.load``) in the package code;
* weight files that need unpickling are refused, and their payload never runs;
* the ``.mat``/``.h5``/``.bin``/OBJ readers never evaluate anything (checked by making every
  evaluation hook explode while they read the whole model corpus);
* ICT-FaceKit folders: names and symlinks that lead outside the folder are refused with
  ModelFormatError (decision: a model folder may be downloaded; following a link out of it
  would let it read any file of the machine); links inside the folder are fine.
"""
import ast
import builtins
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from morphable.errors import ModelFormatError, MorphableError, WeightsError
from tests.corruption import Context, make_corpus, malicious_pickle, run_case, write_ict_folder

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("morphable", "fitting", "regressors", "benchmarks")


def _sources():
    for pkg in PACKAGES:
        yield from sorted((REPO / pkg).rglob("*.py"))


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            base = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            kw = {k.arg: k.value for k in node.keywords}
            yield node, base, name, kw


def test_no_unsafe_deserialisation_in_the_package():
    bad = []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for node, base, name, kw in _calls(tree):
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            const = lambda k: isinstance(kw.get(k), ast.Constant) and kw[k].value  # noqa: E731
            if base == "pickle" and name in ("load", "loads", "Unpickler"):
                bad.append(f"{where}: pickle.{name}")
            if base == "torch" and name == "load" and const("weights_only") is not True:
                bad.append(f"{where}: torch.load without weights_only=True")
            if name == "load" and base in ("np", "numpy") and const("allow_pickle") is True:
                bad.append(f"{where}: np.load(allow_pickle=True)")
            if isinstance(node.func, ast.Name) and name in ("eval", "exec"):
                bad.append(f"{where}: {name}()")
            if base == "yaml" and name in ("load", "unsafe_load", "full_load"):
                bad.append(f"{where}: yaml.{name}")
            if base in ("marshal", "shelve", "dill", "joblib", "cloudpickle") and name in ("load", "loads", "open"):
                bad.append(f"{where}: {base}.{name}")
    assert not bad, "\n".join(bad)
    # the grep the issue asks for, as text (docstrings included): torch.load always with weights_only=True
    for path in _sources():
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\btorch\.load\(", line):
                assert "weights_only=True" in line, f"{path.relative_to(REPO)}:{i}: {line.strip()}"
            assert not re.search(r"\bpickle\.(load|loads|Unpickler)\(", line), f"{path.relative_to(REPO)}:{i}"


def test_code_running_weight_files_are_refused(tmp_path):
    from regressors.weights import load_regressor, read_weight_file

    hows = ("pickle", "torch", "torch-legacy")
    for how in hows:
        sentinel, evil = tmp_path / f"pwned-{how}", tmp_path / f"evil-{how}.pt"
        malicious_pickle(evil, sentinel, how)
        for fn in (read_weight_file, load_regressor):
            with pytest.raises(WeightsError, match="refused to load") as ei:
                fn(evil)
            assert "\n" not in str(ei.value)
        assert not sentinel.exists()
    # the payloads are live: an unsafe loader (in a throwaway process) runs them
    code = ("import pickle, sys, torch\n"
            "for how in sys.argv[2:]:\n"
            "    p = f'{sys.argv[1]}/evil-{how}.pt'\n"
            "    try:\n"
            "        torch.load(p, weights_only=False) if how != 'pickle' else pickle.load(open(p, 'rb'))\n"
            "    except Exception:\n"
            "        pass\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path), *hows], cwd=REPO, capture_output=True, timeout=120)
    for how in hows:
        assert (tmp_path / f"pwned-{how}").exists(), f"the {how} test file does not run code as it claims"


def test_model_readers_never_evaluate_anything(tmp_path, monkeypatch):
    """Every model-file case of the corpus read while pickle, eval, exec and compile explode."""
    cases = [c for c in make_corpus(tmp_path, seed=3, scale=0.05, kinds=("model",))]
    ctx = Context(tmp_path)

    def boom(*a, **k):
        raise AssertionError("a model reader tried to evaluate or unpickle something")

    class NoUnpickler:
        def __init__(self, *a, **k):
            boom()

    def run_all():
        n = 0
        for c in cases:
            try:
                run_case(c, ctx)
            except MorphableError:
                pass
            n += 1
        return n

    run_all()  # imports first: importing a module legitimately runs exec
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    monkeypatch.setattr(builtins, "eval", boom)
    monkeypatch.setattr(builtins, "exec", boom)
    assert run_all() > 100


# --------------------------------------------------------------------------- ICT folder confinement
@pytest.fixture()
def ict(tmp_path):
    d = tmp_path / "model" / "FaceXModel"
    write_ict_folder(d)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.obj").write_text((d / "identity001.obj").read_text())
    return d, outside


def _load(d):
    from morphable.formats.ict import load_ict

    return load_ict(d, region="full")


def test_ict_folder_loads_and_inside_links_are_followed(ict):
    d, _ = ict
    m = _load(d)
    assert (m.n_vertices, m.n_shape, m.n_expr) == (162, 3, 2)
    (d / "identity002.obj").unlink()
    os.symlink("identity001.obj", d / "identity002.obj")  # inside the folder: fine
    assert _load(d).n_shape == 3
    # the folder itself may be reached through a link (e.g. MORPHABLE_ICT_DIR -> a symlinked checkout)
    link = d.parent / "linked"
    os.symlink(d, link)
    assert _load(link).n_shape == 3


@pytest.mark.parametrize("how", ["symlink-absolute", "symlink-relative", "dotdot-name", "absolute-name", "neutral-link",
                                 "index-link"])
def test_ict_paths_leading_outside_the_folder_are_refused(ict, how):
    d, outside = ict
    import json

    if how == "symlink-absolute":
        (d / "identity001.obj").unlink()
        os.symlink(outside / "secret.obj", d / "identity001.obj")
    elif how == "symlink-relative":
        (d / "jawOpen.obj").unlink()
        os.symlink("../../elsewhere/secret.obj", d / "jawOpen.obj")
    elif how == "neutral-link":
        (outside / "n.obj").write_text((d / "generic_neutral_mesh.obj").read_text())
        (d / "generic_neutral_mesh.obj").unlink()
        os.symlink(outside / "n.obj", d / "generic_neutral_mesh.obj")
    elif how == "index-link":
        (outside / "vi.json").write_text((d / "vertex_indices.json").read_text())
        (d / "vertex_indices.json").unlink()
        os.symlink(outside / "vi.json", d / "vertex_indices.json")
    else:
        j = json.loads((d / "vertex_indices.json").read_text())
        j["expressions"][0] = "../../elsewhere/secret" if how == "dotdot-name" else str(outside / "secret")
        (d / "vertex_indices.json").write_text(json.dumps(j))
    with pytest.raises(ModelFormatError, match="outside the model folder") as ei:
        _load(d)
    assert "\n" not in str(ei.value)
    # the registry and the command line refuse it the same way
    from morphable.cli import main
    from morphable.registry import load_model

    with pytest.raises(ModelFormatError):
        load_model(d, region="full", cache=False)
    assert main(["info", str(d), "--region", "full"]) == 1


def test_failed_native_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """``morphable convert`` / the model cache write through save_native: a write that fails half
    way (disk full, Ctrl-C) leaves neither the target nor a temporary file."""
    import h5py

    from morphable.formats.native import save_native
    from tests.corruption import tiny_model

    real = h5py.Group.create_dataset
    calls = []

    def failing(self, name, *a, **k):
        calls.append(name)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return real(self, name, *a, **k)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(OSError):
        save_native(tiny_model(), tmp_path / "m.h5")
    assert list(tmp_path.iterdir()) == []
