"""The tutorial notebooks: committed without outputs, parameters from the environment; the
Binder files in place (tests/test_fresh_install.py runs them all from a fresh venv)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_nine_tutorials():
    assert [p.stem for p in NOTEBOOKS] == ["01-quickstart", "02-callback-api", "03-monitoring-and-failures",
                                           "04-search-explorer", "05-export-and-schedule", "06-scaling-out",
                                           "07-panels-on-your-table", "08-wal-capture",
                                           "09-model-migration"]


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

# the fresh venv built from binder/requirements.txt (the lab extra), running all nine
# tutorials: tests/test_fresh_install.py
