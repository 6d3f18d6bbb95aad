"""What ``pip install`` puts into site-packages, and the top-level entry point.

The wheel holds only what users import (``morphable``, ``fitting``, ``regressors``);
``benchmarks`` stays in the checkout (``python -m benchmarks.NAME``) and no installed package
imports it.
"""
import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALLED = {"morphable", "fitting", "regressors"}


def _python_sources(src: Path, dst: Path) -> None:
    """The build inputs without package data: pyproject, README and every package's .py files
    (the top-level names are what is tested, and copying 20 MB of data would only slow it)."""
    dst.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(src / name, dst / name)
    for pkg in [*INSTALLED, "benchmarks"]:
        shutil.copytree(src / pkg, dst / pkg, ignore=lambda d, names: [
            n for n in names if not (n.endswith(".py") or (Path(d) / n).is_dir()) or n == "__pycache__"])


def test_wheel_installs_only_the_user_packages(tmp_path):
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("pip is not available in this environment: cannot build the wheel")
    try:
        import setuptools
    except ImportError:
        pytest.skip("setuptools is not installed: the wheel is built without network, from the installed backend")
    assert int(setuptools.__version__.split(".")[0]) >= 64
    src = tmp_path / "src"
    _python_sources(REPO, src)
    out = tmp_path / "wheels"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    (whl,) = out.glob("morphable-*.whl")
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        (top_txt,) = [n for n in names if n.endswith(".dist-info/top_level.txt")] or [None]
        listed = set(z.read(top_txt).decode().split()) if top_txt else top
    assert top == INSTALLED, top
    assert listed == INSTALLED and "benchmarks" not in top
    assert "morphable/texture.py" in names and "fitting/pipeline.py" in names


def test_installed_packages_never_import_benchmarks():
    offenders = []
    for pkg in sorted(INSTALLED):
        for f in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                        "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                    mods.append(str(node.args[0].value))
                offenders += [f"{f.relative_to(REPO)}:{node.lineno} {m}" for m in mods
                              if m == "benchmarks" or m.startswith("benchmarks.")]
    assert not offenders, "installed packages import the checkout-only benchmarks: " + ", ".join(offenders)


def test_morphable_fit_from_another_directory(tmp_path):
    code = ("import sys, morphable\n"
            "assert 'fitting.pipeline' not in sys.modules, 'import morphable must stay light'\n"
            "f = morphable.fit\n"
            "import fitting, fitting.pipeline\n"
            "assert f is fitting.fit is fitting.pipeline.fit\n"
            "assert 'fit' in morphable.__all__\n"
            "try:\n    morphable.no_such_name\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit('no error')\n"
            "print(f.__module__)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == "fitting.pipeline"
