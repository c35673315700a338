"""uuid_from_time: the semantics of timescale_vector.client.uuid_from_time."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pgvz_nb as pgvz
from pgvz_nb.uuids import time_from_uuid


def test_v1_uuid_carries_the_time():
    t = datetime(2021, 1, 1, tzinfo=timezone.utc)
    u = pgvz.uuid_from_time(t)
    assert u.version == 1 and u.variant == uuid.RFC_4122
    # 100-ns intervals since 1582-10-15
    assert u.time == int((t - datetime(1582, 10, 15, tzinfo=timezone.utc)).total_seconds()) * 10_000_000
    assert time_from_uuid(u) == t


def test_article_example_prefix():
    # the article's output: 2021-01-01 gives '4a784000-4bc4-11eb-...'
    u = pgvz.uuid_from_time(datetime(2021, 1, 1, tzinfo=timezone.utc))
    assert str(u).startswith("4a784000-4bc4-11eb-")


def test_naive_datetime_is_local_time_and_seconds_are_accepted():
    aware = datetime(2023, 5, 2, 12, 30, tzinfo=timezone.utc)
    naive_local = aware.astimezone().replace(tzinfo=None)
    assert pgvz.uuid_from_time(naive_local).time == pgvz.uuid_from_time(aware).time
    assert pgvz.uuid_from_time(aware.timestamp()).time == pgvz.uuid_from_time(aware).time


def test_node_and_clock_seq_are_random_unless_given():
    t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert pgvz.uuid_from_time(t) != pgvz.uuid_from_time(t)
    assert pgvz.uuid_from_time(t, node=1, clock_seq=2) == pgvz.uuid_from_time(t, node=1, clock_seq=2)


def test_postgres_orders_by_time_like_python(conn):
    base = datetime(2020, 1, 1, tzinfo=timezone.utc)
    us = [pgvz.uuid_from_time(base + timedelta(days=d)) for d in (3, 1, 2)]
    # uuid_extract_timestamp reads v1 timestamps (PostgreSQL 17+)
    got = conn.execute("SELECT uuid_extract_timestamp(u) FROM unnest(%s::uuid[]) u", [us]).fetchall()
    assert [g[0] for g in got] == [base + timedelta(days=d) for d in (3, 1, 2)]
