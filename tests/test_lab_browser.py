"""The panels tutorial in JupyterLab itself, driven by a real browser (Playwright with Debian's
chromium): open notebooks/07-panels-on-your-table.ipynb, Run All with the clicks left to the
user (PGVZ_NB_CLICK=0), press Create with no table (the panel says why), pick the table,
create, sync (the bar moves before 100%), search with Enter, hover a point on the map.
Hits and map points are titled by the ticket's subject. Then a notebook with a panel is saved,
its kernel shut down, and reopened in a new browser: with the setting the package installs
(jupyter-config/lab-settings/pgvz_nb.json, in JupyterLab's overrides.d) it shows the panel, not
"model not found". Screenshots go to test-artifacts/lab_*.png."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "notebooks" / "07-panels-on-your-table.ipynb"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
#: what the wheel installs as {sys.prefix}/share/jupyter/lab/settings/overrides.d/pgvz_nb.json
LAB_SETTING = ROOT / "jupyter-config" / "lab-settings" / "pgvz_nb.json"

pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(db, schema, tmp_path):
    """JupyterLab on 127.0.0.1 serving a copy of the tutorial; kernels reach the test server."""
    pytest.importorskip("jupyterlab")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (make test installs it as root)")
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(TUTORIAL, root / TUTORIAL.name)
    # JupyterLab's defaults as the package's install leaves them, whatever this venv holds
    settings = tmp_path / "app-settings"
    (settings / "overrides.d").mkdir(parents=True)
    shutil.copy(LAB_SETTING, settings / "overrides.d" / LAB_SETTING.name)
    port = _free_port()
    env = {**os.environ, "PGVZ_DSN": db.dsn, "PGVZ_NB_SCHEMA": schema, "PGVZ_NB_CLICK": "0",
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    with open(tmp_path / "lab.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             "--ServerApp.port_retries=0", "--IdentityProvider.token=", f"--ServerApp.root_dir={root}",
             f"--LabApp.app_settings_dir={settings}", "--allow-root", "--LabApp.news_url=",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        try:
            deadline = time.time() + 90
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=2).close()
                    break
                except OSError:
                    if time.time() > deadline or server.poll() is not None:
                        raise AssertionError("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-3000:]) from None
                    time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/lab/tree/{TUTORIAL.name}"
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"lab_{name}.png"), full_page=False)


def _progress_percent(bar) -> float:
    style = bar.get_attribute("style") or ""
    for part in style.split(";"):
        if part.strip().startswith("width"):
            return float(part.split(":")[1].strip().rstrip("%") or 0)
    return 0.0


def _launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--headless", "--no-sandbox", "--disable-background-networking", "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader"])


def _open(playwright, browser, url: str):
    """A new page with the notebook at ``url`` open, its kernel chosen and idle."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    page.goto(url)
    page.locator(".jp-Notebook").wait_for()
    select = page.get_by_role("button", name="Select", exact=True)  # a stripped notebook asks
    try:
        select.wait_for(timeout=20_000)
        select.click()
    except playwright.TimeoutError:
        pass
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for()
    no_news = page.get_by_role("button", name="No", exact=True)  # JupyterLab asks about its news
    if no_news.count():
        no_news.first.click()
    return page


def test_panels_tutorial_in_jupyterlab(db, conn, schema, lab):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = _launch(p)
        page = _open(playwright, browser, lab)
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=False).first.click()

        # the SetupPanel, nothing chosen: Create says why it cannot run
        create = page.locator(".widget-button", has_text="Create").first
        create.wait_for()
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for()
        create.scroll_into_view_if_needed()
        create.click(force=True)
        setup = page.locator(".widget-vbox", has=create).first
        page.wait_for_timeout(500)
        _shot(page, "1_create_without_table")
        assert "choose a table first" in setup.inner_text()

        # pick the table (its text column becomes the chunk column), create
        table = setup.locator("select").first
        table.select_option(label=f"{schema}.tickets")
        setup.get_by_text("chunk 1 of", exact=False).first.wait_for()  # the preview
        chunk = setup.locator(".widget-dropdown", has_text="Chunk column").locator("select")
        if chunk.input_value() != "body":
            chunk.select_option(label="body")
        page.wait_for_function("b => !b.disabled", arg=create.element_handle())
        create.click()
        setup.get_by_text("created", exact=False).first.wait_for()
        _shot(page, "2_created")

        # enough rows that a sync takes a few seconds, then Sync all: the bar moves before 100%
        with conn.cursor() as cur:
            cur.execute(sql.SQL(
                "INSERT INTO {} (subject, product, body) SELECT 'Ticket ' || g, 'shop', "
                "repeat('The parcel for order ' || g || ' has not arrived and the tracking page shows no update. ', 6) "
                "FROM generate_series(1, 1500) AS g").format(sql.Identifier(schema, "tickets")))
        sync_button = page.locator(".widget-button", has_text="Sync all").first
        sync_button.scroll_into_view_if_needed()
        page.wait_for_function("b => !b.disabled", arg=sync_button.element_handle())
        sync_button.click()
        bar = page.locator(".pgvz-progress .progress-bar").first
        seen: list[float] = []
        deadline = time.time() + 300
        while time.time() < deadline:
            seen.append(_progress_percent(bar))
            if seen[-1] >= 100:
                break
            if 0 < seen[-1] < 100 and len([s for s in seen if 0 < s < 100]) == 1:
                _shot(page, "3_syncing")
            page.wait_for_timeout(200)
        assert any(0 < s < 100 for s in seen), f"the bar never showed progress between 0 and 100: {seen[:20]}"
        assert seen[-1] >= 100, seen[-20:]
        page.get_by_text("queue empty", exact=False).first.wait_for(timeout=60_000)

        # the SearchPanel cell again (it ran before Create), then a query and Enter
        cell = page.locator(".jp-Cell", has_text="search = SearchPanel(").first
        cell.scroll_into_view_if_needed()
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        query = page.locator(".jp-Cell", has_text="search = SearchPanel(").locator("input[type='text']").first
        query.wait_for()
        query.fill("I cannot sign in to my account")
        query.press("Enter")
        hit = page.locator("tr.pgvz-hit").first
        hit.wait_for()
        _shot(page, "4_search")
        results = page.locator(".pgvz-results").first.inner_text()
        assert "login page" in results or "sign-in code" in results, results[:500]
        # each hit is titled by its ticket's subject (no template names it), not "tickets 3"
        subjects = {str(i): s for i, s in conn.execute(sql.SQL("SELECT id, subject FROM {}").format(
            sql.Identifier(schema, "tickets"))).fetchall()}
        titles = page.locator(".pgvz-results .pgvz-title").all_inner_texts()
        assert titles and set(titles) <= set(subjects.values()), titles
        assert not re.search(r"tickets \d", results), results[:500]

        # the map: a point under the mouse shows its text
        map_box = page.locator(".jp-Cell", has_text="search = SearchPanel(").locator("canvas").first
        map_box.scroll_into_view_if_needed()
        map_box.wait_for()
        bounds = map_box.bounding_box()
        assert bounds is not None
        tip = None
        page.wait_for_timeout(1500)  # the map's first drawing (it animates the points in)
        # hover where a hit is drawn (red, the biggest points after the query's), found in the
        # canvas's own pixels: a blind grid sweep missed the small points in CI
        for _ in range(3):
            spots = _red_spots(map_box.screenshot())
            bounds = map_box.bounding_box() or bounds
            for x, y in spots:
                for dx, dy in ((0, 0), (1, 1), (-1, -1), (2, 0), (0, 2)):
                    page.mouse.move(bounds["x"] + x + dx, bounds["y"] + y + dy)
                    page.wait_for_timeout(300)
                    tip = _tooltip(page)
                    if tip:
                        break
                if tip:
                    break
            if tip:
                break
            page.wait_for_timeout(1000)
        _shot(page, "5_map_hover")
        browser.close()
    assert tip, "no tooltip appeared over the map"
    # a hit of "I cannot sign in to my account": a ticket about logging or signing in
    assert "tickets_id=" in tip and any(w in tip for w in ("parcel", "Subject", "log", "sign-in", "sign in")), tip
    row = re.search(r"\(tickets_id=(\d+)\)", tip)
    assert row and f"{subjects[row.group(1)]} (tickets_id={row.group(1)})" in tip, f"labelled by its subject: {tip}"


def _red_spots(png: bytes) -> list[tuple[float, float]]:
    """Centres of the hit points (#d62728) in a screenshot of the map's canvas, in CSS px."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = img.size
    px = img.load()
    found = [(x, y) for y in range(0, h, 2) for x in range(0, w, 2)
             if abs(px[x, y][0] - 0xD6) < 30 and px[x, y][1] < 80 and px[x, y][2] < 80]
    spots: list[list[tuple[int, int]]] = []
    for x, y in found:  # clusters 12 px apart: one per point
        for spot in spots:
            if abs(spot[0][0] - x) < 12 and abs(spot[0][1] - y) < 12:
                spot.append((x, y))
                break
        else:
            spots.append([(x, y)])
    return [(sum(p[0] for p in sp) / len(sp), sum(p[1] for p in sp) / len(sp)) for sp in spots]


def _tooltip(page) -> str | None:
    """jupyter-scatter's tooltip text when it shows: a positioned div in the widget's shadow root."""
    found = page.evaluate("""() => {
        const out = [];
        const walk = (root) => root.querySelectorAll('*').forEach(e => {
            if (e.shadowRoot) walk(e.shadowRoot);
            const s = getComputedStyle(e);
            if ((s.position === 'absolute' || s.position === 'fixed') && s.visibility !== 'hidden'
                && s.opacity !== '0' && /Label/.test(e.textContent || '')
                && /Text/.test(e.textContent || '') && (e.textContent || '').length < 3000)
                out.push(e.textContent.slice(0, 300));
        });
        walk(document); return out; }""")
    return found[0] if found else None


REOPEN = {
    "cells": [{"cell_type": "code", "execution_count": None, "id": "panel", "metadata": {}, "outputs": [],
               "source": ["import os\n", "import pgvz_nb as pgvz\n",
                          "from pgvz_nb.embedders import HashingEmbedder\n",
                          "from pgvz_nb.sample import load_blog\n", "from pgvz_nb.widgets import SyncPanel\n",
                          "db = pgvz.connect()\n", "schema = os.environ['PGVZ_NB_SCHEMA']\n",
                          "load_blog(db, schema=schema)\n",
                          "v = pgvz.Vectorizer(db, f'{schema}.blog', chunk_column='contents',\n",
                          "                    embedder=HashingEmbedder(64)).create()\n",
                          "v.sync(progress=False)\n", "SyncPanel(v, refresh=0)"]}],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                 "language_info": {"name": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def test_a_saved_panel_reopens_as_a_panel_not_model_not_found(db, schema, lab, tmp_path):
    """Saved with the package's setting, the notebook holds its widgets' state; reopened with no
    live kernel behind it, JupyterLab draws the panel from that state."""
    playwright = pytest.importorskip("playwright.sync_api")
    path = tmp_path / "lab" / "reopen.ipynb"
    path.write_text(json.dumps(REOPEN))
    base = lab.split("/lab/tree/")[0]
    with playwright.sync_playwright() as p:
        browser = _launch(p)
        page = _open(playwright, browser, f"{base}/lab/tree/{path.name}")
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=False).first.click()
        page.locator(".pgvz-sync .widget-button", has_text="Run one batch").wait_for()
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for()
        page.keyboard.press("Control+s")
        deadline = time.time() + 60
        while "application/vnd.jupyter.widget-state+json" not in json.loads(path.read_text())["metadata"].get(
                "widgets", {}):
            assert time.time() < deadline, "the saved notebook holds no widget state"
            page.wait_for_timeout(300)
        # no kernel left to ask for the panel's models: only the notebook's saved state has them
        # (shut down from the page, which holds the _xsrf cookie a DELETE needs)
        page.evaluate("""async () => {
            const x = document.cookie.match(/_xsrf=([^;]+)/);
            const headers = x ? {'X-XSRFToken': decodeURIComponent(x[1])} : {};
            for (const k of await (await fetch('/api/kernels')).json())
                await fetch('/api/kernels/' + k.id, {method: 'DELETE', headers});
        }""")
        page.close()
        with urllib.request.urlopen(f"{base}/api/kernels", timeout=10) as answer:
            assert json.load(answer) == [], "a kernel is still running"
        again = _open(playwright, browser, f"{base}/lab/tree/{path.name}")  # a new browser context
        again.locator(".jp-OutputArea-output .pgvz-sync .widget-button", has_text="Run one batch").wait_for()
        _shot(again, "6_reopened_panel")
        text = again.locator(".jp-Notebook").inner_text()
        browser.close()
    assert "model not found" not in text, text[:1000]
    assert "Sync all" in text and "Failed rows" in text, text[:1000]
