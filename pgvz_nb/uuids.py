"""Time-based (version 1) uuids, as ``timescale_vector.client.uuid_from_time`` makes them."""

from __future__ import annotations

import calendar
import random
import uuid
from datetime import datetime, timedelta, timezone

__all__ = ["time_from_uuid", "uuid_from_time"]

# 100-ns intervals between the uuid epoch (1582-10-15) and the Unix epoch
_UUID_EPOCH_OFFSET = 0x01B21DD213814000


def uuid_from_time(time_arg: datetime | float | None = None, node: int | None = None,
                   clock_seq: int | None = None) -> uuid.UUID:
    """A v1 uuid whose timestamp is ``time_arg`` (datetime or Unix seconds); random node/clock_seq.

    A naive datetime is taken as local time, as timescale_vector does (PostgreSQL reads a
    naive timestamp as local too). Integer arithmetic: the float version drifts after 2255.
    """
    if time_arg is None:
        return uuid.uuid1(node, clock_seq)
    if isinstance(time_arg, datetime):
        if time_arg.tzinfo is None:
            time_arg = time_arg.astimezone(timezone.utc)
        seconds = calendar.timegm(time_arg.utctimetuple())
        microseconds = seconds * 1_000_000 + time_arg.microsecond
    else:
        microseconds = int(time_arg * 1e6)
    intervals = microseconds * 10 + _UUID_EPOCH_OFFSET
    time_low = intervals & 0xFFFFFFFF
    time_mid = (intervals >> 32) & 0xFFFF
    time_hi_version = (intervals >> 48) & 0x0FFF
    if clock_seq is None:
        clock_seq = random.getrandbits(14)
    elif clock_seq > 0x3FFF:
        raise ValueError("clock_seq is out of range (need a 14-bit value)")
    if node is None:
        node = random.getrandbits(48)
    return uuid.UUID(
        fields=(time_low, time_mid, time_hi_version, 0x80 | ((clock_seq >> 8) & 0x3F),
                clock_seq & 0xFF, node),
        version=1,
    )


def time_from_uuid(value: uuid.UUID) -> datetime:
    """The UTC timestamp inside a v1 uuid (microsecond precision)."""
    micros = (value.time - _UUID_EPOCH_OFFSET) // 10
    return datetime.fromtimestamp(0, timezone.utc) + timedelta(microseconds=micros)
