"""A wheel built from the repository, installed into a fresh venv, finds its shipped recipes by name.

Offline, as everything here: the wheel is built without build isolation (setuptools from the project's venv),
installed with --no-deps into a new venv that sees the project's dependencies through a .pth file (not its
editable install of fbcompress), and run from a folder outside the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_an_installed_wheel_finds_the_shipped_recipes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "fbcompress", src / "fbcompress", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(dist), str(src)], check=True, capture_output=True, text=True)
    wheel = next(dist.glob("fbcompress-*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, text=True)

    code = ("import fbcompress, fbcompress.recipes as r; print(fbcompress.__file__); "
            "print(r.load_recipe('quickstart').train.steps, r.load_recipe('smoke').train.steps, "
            "sorted(p.name for p in r.RECIPES_DIR.glob('*.yaml')))")
    out = subprocess.run([str(python), "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True)
    installed, figures = out.stdout.strip().splitlines()
    assert Path(installed).is_relative_to(venv), installed  # the wheel's copy, not the checkout
    assert figures.startswith("1200 6 ") and "'fashiongen-bert-base.yaml', 'quickstart.yaml', 'smoke.yaml'" in figures
