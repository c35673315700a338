"""Shared helpers and output of the benchmarks, and the summary `make bench` prints at the end.

Every script writes ``benchmarks/results/<name>.json`` (its figures and the machine they
ran on) and ``<name>.png`` (a plot of its ratios). ``python benchmarks/report.py`` reads
them all and prints one table: each goal of the benchmark issue, the measured value, and
whether it was met; ``--markdown`` prints the same table for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def add_out_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", default=str(RESULTS), help="directory for <name>.json and <name>.png")


def drop_bench_schema(db, schema: str, embedder=None) -> None:
    """Drop a benchmark's schema and every vectorizer on a table in it (their queues live in
    pgvz). ``embedder``: what to open them with (the default model when None)."""
    import pgvz_nb as pgvz
    from psycopg import sql

    for name in pgvz.vectorizers(db).name:
        if name.startswith(schema + "."):
            pgvz.Vectorizer.open(db, name, embedder=embedder).drop()
    with db.connect() as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def machine() -> dict:
    """What the figures ran on: they are only comparable on one machine."""
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = float("nan")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_gb, 1),
            "python": platform.python_version(), "system": platform.platform(terse=True)}


def server_version(db) -> str:
    with db.connect() as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
        vec = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    return f"PostgreSQL {pg.split()[0]}, pgvector {vec[0] if vec else '?'}" + (" (embedded)" if db.embedded else "")


def save(out: str, name: str, report: dict, db=None, plot=None) -> Path:
    """Write <out>/<name>.json (with machine and time) and, given ``plot(ax)``, <name>.png."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": name, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), **({"server": server_version(db)} if db is not None else {}), **report}
    path = directory / f"{name}.json"
    path.write_text(json.dumps(report, indent=2, default=float))
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
        plot(ax)
        fig.tight_layout()
        fig.savefig(directory / f"{name}.png")
        plt.close(fig)
    print(f"wrote {path} and {name}.png" if plot else f"wrote {path}")
    return path


def bars(ax, labels: list[str], values: list[float], *, title: str, xlabel: str,
         goal: float | None = None, fmt: str = "{:.2f}") -> None:
    """Horizontal bars with their values written on them, and the goal as a dashed line."""
    y = list(range(len(labels)))[::-1]
    ax.barh(y, values, color="#4c72b0")
    ax.set_yticks(y, labels)
    for yi, v in zip(y, values):
        ax.text(v, yi, " " + fmt.format(v), va="center", fontsize=8)
    if goal is not None:
        ax.axvline(goal, color="#c44e52", linestyle="--", linewidth=1)
        ax.text(goal, max(y) + 0.45, f" goal {fmt.format(goal)}", color="#c44e52", fontsize=8)
    ax.set_xlim(0, max(values + [goal or 0]) * 1.2)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)


# --- the summary ------------------------------------------------------------------------


def _load(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}


def _r(x: float, goal: float) -> str:
    """Two decimals, or three when two would round across the goal (0.896 is not 0.90)."""
    two = f"{x:.2f}"
    return two if (float(two) >= goal) == (x >= goal) else f"{x:.3f}"


def goals(r: dict[str, dict]) -> list[tuple[str, str, str, bool | None]]:
    """(figure, goal, measured, met) for every result present."""
    rows: list[tuple[str, str, str, bool | None]] = []
    if w := r.get("write_overhead"):
        v = w["variants"]
        c = v["pgvz_nb"]["copy_ratio"]
        rows.append((f"COPY {w['rows']:,} rows, pgvz_nb vs none (work_mem {w.get('server_work_mem', '?')})",
                     ">= 0.9x", f"{_r(c, 0.9)}x", c >= 0.9))
        if "pgvz_nb_work_mem_4MB" in v:
            rows.append(("COPY, pgvz_nb at work_mem 4MB", "-", f"{v['pgvz_nb_work_mem_4MB']['copy_ratio']:.2f}x", None))
        rows.append(("COPY, empty transition-table trigger (floor)", "-",
                      f"{v['empty_stmt_trigger']['copy_ratio']:.2f}x", None))
        if "timescale_vector" in v:
            rows.append(("COPY, the original's row trigger", "-", f"{v['timescale_vector']['copy_ratio']:.2f}x", None))
        rows.append((f"{w['inserts']:,} single INSERTs in one transaction, pgvz_nb", "-",
                     f"{v['pgvz_nb']['insert_ratio']:.2f}x", None))
        if "autocommit_ratio" in v["pgvz_nb"]:
            rows.append((f"{w['inserts']:,} single INSERTs, autocommit, pgvz_nb", "-",
                         f"{v['pgvz_nb']['autocommit_ratio']:.2f}x", None))
    if s := r.get("sync_throughput"):
        if "original" in s:
            x = s["pgvz_1_lane"] / s["original"]
            rows.append(("sync, zero-cost embedder: pgvz_nb / the original's loop", ">= 20x", f"{x:.0f}x", x >= 20))
        limit = s.get("raw_copy_prebuilt", s["raw_copy"])
        x = s["pgvz_1_lane"] / limit
        rows.append((f"sync {s['rows']:,} rows: pgvz_nb 1 lane / raw binary COPY (prebuilt bytes)", ">= 0.5x",
                     f"{_r(x, 0.5)}x ({s['pgvz_1_lane']:,.0f} vs {limit:,.0f} rows/s)", x >= 0.5))
        rows.append(("sync: 2 lanes / raw COPY (prebuilt bytes)", "-", f"{s['pgvz_2_lanes'] / limit:.2f}x", None))
        rows.append(("sync: 1 lane / raw COPY encoded row by row in Python", "-",
                     f"{s['pgvz_1_lane'] / s['raw_copy']:.2f}x ({s['raw_copy']:,.0f} rows/s)", None))
        rows.append(("workers: 2 processes / 1", "-", f"{s['pgvz_2_workers'] / s['pgvz_1_worker']:.2f}x", None))
        u = s["unchanged_updates"]
        rows.append(("embedding calls, 10k unrelated updates + 10k identical rewrites", "0",
                     f"{u['pgvz_nb']} (original: {u.get('timescale_vector', '?')})", u["pgvz_nb"] == 0))
    if m := r.get("model_efficiency"):
        for label in ("long", "short"):
            e = m[label]["efficiency"]
            rows.append((f"model efficiency, {m[label]['chunks']} {label} texts: sync / raw encode", ">= 0.9",
                         _r(e, 0.9), e >= 0.9))
        rows.append(("default model cold start (import, load, first query)", "-", f"{m['cold_start_s']:.2f} s", None))
    for key in ("search_latency", "search_latency_synthetic"):
        if s := r.get(key):
            kind = s.get("vectors", "synthetic")
            for label, c in s["cases"].items():
                # the goal is for embeddings; synthetic clusters are a harder worst case, shown as is
                ok = c["p50_ms"] <= 10 and c["recall_at_10"] >= 0.95 if kind == "real" else None
                goal = "p50 <= 10 ms, recall >= 0.95" if kind == "real" else "- (worst case)"
                rows.append((f"search {s['rows']:,} x 384 ({kind}), {label}", goal,
                             f"p50 {c['p50_ms']:.1f} ms, p95 {c['p95_ms']:.1f} ms, recall {c['recall_at_10']:.3f}", ok))
            if "dataframe_overhead_ms" in s:
                rows.append(("search: DataFrame over raw rows (p50 difference)", "-",
                             f"{s['dataframe_overhead_ms']:+.2f} ms", None))
    if s := r.get("scale"):
        x = s["large"]["rows_per_s"] / s["small"]["rows_per_s"]
        rows.append((f"backfill rows/s at {s['large']['rows']:,} / at {s['small']['rows']:,}", ">= 0.8",
                     f"{_r(x, 0.8)} ({s['large']['rows_per_s']:,.0f} vs {s['small']['rows_per_s']:,.0f} rows/s)", x >= 0.8))
        peak = s["large"]["peak_rss_mb"]
        rows.append((f"worker peak RSS, {s['large']['rows']:,} rows", "< 500 MB", f"{peak:.0f} MB", peak < 500))
    if s := r.get("migration_cutover"):
        med = s["median"]
        rows.append((f"migration cutover on {s['rows']:,} rows: lock held (median of {len(s['rounds'])})", "-",
                     f"{med['lock_ms']:.1f} ms", None))
        rows.append(("readers' slowest query during a switch / in as long a quiet stretch", "-",
                     f"{med['reader_max_ms_during']:.1f} / {med['reader_max_ms_quiet']:.1f} ms, "
                     f"{s['reader_errors']} errors", None))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description="Print the goals table from benchmarks/results/*.json")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    results = _load(Path(args.out))
    if not results:
        raise SystemExit(f"no results in {args.out}: run `make bench` first")
    rows = goals(results)
    any_result = next(iter(results.values()))
    m = any_result["machine"]
    where = f"{m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, Python {m['python']}"
    server = next((x["server"] for x in results.values() if "server" in x), "")
    mark = {True: "met", False: "MISSED", None: ""}
    if args.markdown:
        print(f"Machine: {where}; {server}.\n")
        print("| figure | goal | measured | |\n|---|---|---|---|")
        for fig, goal, val, ok in rows:
            print(f"| {fig} | {goal} | {val} | {mark[ok]} |")
        return
    print(f"machine: {where}\nserver:  {server}")
    width = max(len(r[0]) for r in rows)
    for fig, goal, val, ok in rows:
        print(f"{fig:<{width}}  {goal:<29}  {val:<44}  {mark[ok]}")


if __name__ == "__main__":
    main()
