"""Every benchmark script at a tiny size, so `make bench` cannot rot. Timings are never
asserted (this machine is shared); what is checked is what the scripts produce: JSON with
the figures, a PNG, the goals table, and the counts the benchmarks rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.filterwarnings("ignore")


def run(script: str, *args: str, out: Path) -> str:
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", *args, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def result(out: Path, name: str) -> dict:
    png = (out / f"{name}.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000, f"{name}.png is not a plot"
    data = json.loads((out / f"{name}.json").read_text())
    assert data["benchmark"] == name and data["machine"]["cores"] >= 1 and "PostgreSQL" in data["server"]
    return data


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench")


def test_write_overhead(out):
    run("write_overhead.py", "--rows", "2000", "--inserts", "20", "--rounds", "1", out=out)
    v = result(out, "write_overhead")["variants"]
    assert set(v) >= {"none", "empty_stmt_trigger", "pgvz_nb", "pgvz_nb_work_mem_4MB", "timescale_vector"}
    for kind in ("copy", "insert", "autocommit"):
        assert v["none"][f"{kind}_ratio"] == 1.0 and v["pgvz_nb"][f"{kind}_rows_per_s"] > 0
    # the transition table copies every new row: the trigger's COPY touches more fresh pages
    assert v["empty_stmt_trigger"]["copy_page_faults"] > v["none"]["copy_page_faults"]


def test_sync_throughput_counts_unchanged_updates(out):
    run("sync_throughput.py", "--rows", "1000", "--original-rows", "100", "--updates", "50", out=out)
    r = result(out, "sync_throughput")
    assert min(r[k] for k in ("pgvz_1_lane", "pgvz_2_lanes", "pgvz_1_worker", "pgvz_2_workers",
                              "raw_copy", "original")) > 0
    # pgvz_nb embeds nothing for unrelated updates and identical rewrites; the original re-embeds
    assert r["unchanged_updates"]["pgvz_nb"] == 0
    assert r["unchanged_updates"]["timescale_vector"] > 0


def test_scale_drains_both_sizes_in_a_worker_process(out):
    stdout = run("scale.py", "--small", "200", "--large", "2000", out=out)
    r = result(out, "scale")
    assert r["small"]["rows"] == 200 and r["large"]["rows"] == 2000  # the script asserts all embedded
    assert 0 < r["large"]["baseline_rss_mb"] <= r["large"]["peak_rss_mb"]
    assert "peak RSS" in stdout


def test_model_efficiency(out):
    run("model_efficiency.py", "--topics", "2", "--short", "40", "--rounds", "1", "--updates", "10", out=out)
    r = result(out, "model_efficiency")
    assert r["long"]["chunks"] > 2 and r["short"]["chunks"] == 40
    assert r["embed_calls_after_updates"] == 0 and r["cold_start_s"] > 0


@pytest.mark.parametrize("vectors", ["real", "synthetic"])
def test_search_latency(out, vectors):
    run("search_latency.py", "--vectors", vectors, "--rows", "400", "--queries", "10", out=out)
    r = result(out, "search_latency" if vectors == "real" else "search_latency_synthetic")
    assert r["rows"] == 400 and r["queries"] == 10
    assert len(r["cases"]) == 4
    for case in r["cases"].values():
        assert 0 <= case["recall_at_10"] <= 1 and case["p50_ms"] > 0


def test_wal_capture_compares_both_modes_and_the_floor(out):
    stdout = run("wal_capture.py", "--quick", out=out)
    r = result(out, "wal_capture")
    assert r["settings"]["wal_level"] == "logical"
    v = r["variants"]
    assert set(v) == {"none", "empty_stmt_trigger", "triggers", "wal"}
    for kind in ("copy", "insert", "autocommit"):
        assert v["none"][f"{kind}_ratio"] == 1.0
        assert all(v[x][f"{kind}_ratio"] > 0 and v[x][f"{kind}_rows_per_s"] > 0 for x in v)
        cpu = r["cpu_us_per_row"][kind]
        assert cpu["triggers_writer"] > 0 and cpu["wal_total"] > cpu["wal_writer"] > 0
    for shape in ("blog", "narrow"):
        assert r["throughput"][shape]["rows"] == 2000 and r["throughput"][shape]["keys_per_s"] > 0
    lat = r["latency"]
    assert lat["capture_loop"]["n"] == 20  # the script checks every key was queued
    assert all(case["p99_ms"] >= case["p50_ms"] for case in lat.values())
    # the NOTIFY case is one: the embedded server allows 2PC, so triggers notify only when told
    assert lat["worker_triggers_notify"]["wakeups"] > 0 and lat["worker_wal"]["wakeups"] == 0
    for heading in ("1. Write overhead", "2. Capture throughput", "3. Commit-to-queued latency",
                    "4. CPU per written row"):
        assert heading in stdout


def test_migration_cutover_measures_the_lock_and_the_readers(out):
    run("migration_cutover.py", "--rows", "300", "--rounds", "2", "--readers", "1", out=out)
    r = result(out, "migration_cutover")
    assert r["rows"] == 300 and [x["switch"] for x in r["rounds"]] == ["cutover", "rollback"]
    assert r["reader_errors"] == 0  # a reader by name never fails during a switch
    assert all(x["lock_ms"] > 0 and x["reader_queries_during"] >= 0 for x in r["rounds"])


def test_report_lists_every_goal(out):
    """Runs last in this module: the table over everything above."""
    proc = subprocess.run([sys.executable, "benchmarks/report.py", "--out", str(out), "--markdown"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    for goal in (">= 0.9x", ">= 20x", ">= 0.5x", "p50 <= 10 ms", ">= 0.8", "< 500 MB", "| 0 |"):
        assert goal in table, goal
    rows = [line for line in table.splitlines() if line.startswith("| ") and "goal" not in line]
    assert all(line.rstrip().endswith(("| met |", "| MISSED |", "|  |")) for line in rows), table
