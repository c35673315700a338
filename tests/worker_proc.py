"""A worker process for the concurrency tests: drains one queue with Vectorize.process.

argv: dsn schema table worker_no batch_size. For each claimed key it takes a slot in
``inflight`` (a unique key, on its own autocommit connection, so every worker sees it)
and records a violation if another worker already holds that key; then it writes the
content version it saw into ``ledger`` through the claim's own connection.
"""

import random
import sys
import time

import psycopg
from psycopg import sql

import pgvz_nb as pgvz

dsn, schema, table, worker, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
side = psycopg.connect(dsn, autocommit=True)
inflight = sql.Identifier(schema, "inflight")
violations = sql.Identifier(schema, "violations")
ledger = sql.Identifier(schema, "ledger")


def callback(rows, vec):
    for r in rows:
        try:
            side.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(inflight), [r["locked_id"], worker])
        except psycopg.errors.UniqueViolation:
            side.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(violations), [r["locked_id"], worker])
    time.sleep(random.uniform(0, 0.004))
    for r in rows:
        vec.connection.execute(
            sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, clock_timestamp())").format(ledger),
            [r["locked_id"], worker, r["version"]],
        )
        side.execute(sql.SQL("DELETE FROM {} WHERE key = %s AND worker = %s").format(inflight),
                     [r["locked_id"], worker])


v = pgvz.Vectorize(dsn, table, schema_name=schema)
idle = 0
while idle < 20:  # the parent keeps writing for a while: stop after ~1 s of nothing to do
    if v.process(callback, batch_size=batch) == 0:
        idle = idle + 1 if v.last_result.answer == "empty" else 0
        time.sleep(0.05)
    else:
        idle = 0
