"""The tutorial notebooks: committed without outputs, parameters from the environment, and
runnable from a fresh venv built with binder/requirements.txt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_six_tutorials():
    assert [p.stem for p in NOTEBOOKS] == ["01-quickstart", "02-callback-api", "03-monitoring-and-failures",
                                           "04-search-explorer", "05-export-and-schedule", "06-scaling-out"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_without_outputs_and_parameters_first(path):
    book = json.loads(path.read_text())
    code = [c for c in book["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        f"{path.name} has outputs: run nbstripout on it"
    assert "os.environ" in "".join(code[0]["source"]), "the first code cell reads its parameters"


def test_make_strip_would_change_nothing():
    """The same check as `make strip` (nbstripout --keep-id), metadata included."""
    verify = subprocess.run([str(Path(sys.executable).parent / "nbstripout"), "--keep-id", "--verify",
                             *map(str, NOTEBOOKS)], capture_output=True, text=True)
    assert verify.returncode == 0, f"{verify.stdout}{verify.stderr} (run `make strip`)"


def test_binder_files():
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() == "python-3.11"
    post = (ROOT / "binder" / "postBuild").read_text()
    assert post.startswith("#!/bin/bash") and "\nset -e\n" in post and os.access(ROOT / "binder" / "postBuild", os.X_OK)


def test_quickstart_runs_in_a_fresh_venv_from_binder_requirements(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    out = subprocess.run(pip + ["-r", "binder/requirements.txt", "nbclient"], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    post = subprocess.run(["bash", "binder/postBuild"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"})
    assert post.returncode == 0, post.stderr[-2000:]
    run = (
        "import nbformat, nbclient, sys\n"
        "nb = nbformat.read(sys.argv[1], as_version=4)\n"
        "nbclient.NotebookClient(nb, kernel_name='python3', timeout=600).execute()\n"
        "print('cells run:', sum(1 for c in nb.cells if c.cell_type == 'code'))\n"
    )
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "PGVZ_NB_SCHEMA": "binder_quickstart"}
    res = subprocess.run([str(py), "-c", run, str(ROOT / "notebooks" / "01-quickstart.ipynb")],
                         capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "cells run: " in res.stdout
    check = subprocess.run([str(py), "-c", "import pgvz_nb, sys; print(pgvz_nb.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert str(venv) in check.stdout, "the notebook must have run on the fresh venv's pgvz_nb"
