"""The SearchPanel in a real browser: Voila serves a notebook on 127.0.0.1, Playwright drives
Debian's chromium, types a query, presses Enter, reads the rendered results and opens the
map. The screenshots are kept in test-artifacts/."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import pgvz_nb as pgvz
from pgvz_nb.sample import load_blog

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
NOTEBOOK_CELLS = [
    "import os\nimport pgvz_nb as pgvz\nfrom pgvz_nb.widgets import SearchPanel",
    "db = pgvz.connect(os.environ['PGVZ_PANEL_DSN'])\n"
    "v = pgvz.Vectorizer.open(db, os.environ['PGVZ_PANEL_VECTORIZER'])\n"
    "panel = SearchPanel(v, filters=['category'])\npanel",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(path: Path) -> None:
    cells = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": src}
             for src in NOTEBOOK_CELLS]
    path.write_text(json.dumps({
        "cells": cells, "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    }))


def test_search_panel_in_a_real_browser(db, schema, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("voila")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (make test installs it as root)")
    load_blog(db, schema=schema)
    v = pgvz.Vectorizer(db, f"{schema}.blog", template="Author {author}, title: {title}, contents:{chunk}",
                        chunk_column="contents", metadata=["author", "category"]).create()
    v.sync(progress=False)
    nb = tmp_path / "panel.ipynb"
    _notebook(nb)
    port = _free_port()
    env = {**os.environ, "PGVZ_PANEL_DSN": db.dsn, "PGVZ_PANEL_VECTORIZER": v.name}
    server = subprocess.Popen(
        [sys.executable, "-m", "voila", str(nb), f"--port={port}", "--no-browser", "--Voila.ip=127.0.0.1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError("voila did not start:\n" + (server.stdout.read() if server.poll() is not None else ""))
                time.sleep(0.5)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, timeout=120_000)
            box = page.locator("input[placeholder='Blogs about cats']")
            box.wait_for(timeout=120_000)
            box.fill("Blogs about cats")
            box.press("Enter")  # Enter searches: no click on Search
            first = page.locator("tr.pgvz-hit").first
            first.wait_for(timeout=60_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "search_panel.png"), full_page=True)
            text = first.inner_text()
            marks = page.locator("tr.pgvz-hit mark").count()
            # the map, drawn with the results: a jupyter-scatter canvas
            page.get_by_text("hover a point for its text").wait_for(timeout=60_000)
            canvas = page.locator(".jupyter-widgets canvas").first
            canvas.wait_for(timeout=60_000)
            canvas.scroll_into_view_if_needed()
            page.wait_for_timeout(1000)  # the points fade in
            page.locator(".widget-vbox", has=canvas).last.screenshot(path=str(ARTIFACTS / "search_panel_map.png"))
            browser.close()
        assert "some super interesting content about cats" in text
        assert "Matvey Arye" in text
        assert marks >= 1  # query words highlighted
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        v.close()
