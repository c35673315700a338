"""pandas views built from ``cursor.description`` (not ``pd.read_sql``, which wants SQLAlchemy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from .db import column_names

__all__ = ["from_cursor", "search_frame", "typed"]

TIME_COLUMNS = ("queued_at", "retry_after", "first_queued_at", "failed_at", "created_at", "last_success")
COUNT_COLUMNS = ("attempts",)


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Give the bookkeeping columns their dtypes even when empty or all NULL: timestamps
    tz-aware (UTC), counts nullable integers."""
    for col in frame.columns:
        if col in TIME_COLUMNS:
            frame[col] = pd.to_datetime(frame[col], utc=True)
        elif col in COUNT_COLUMNS:
            frame[col] = frame[col].astype("Int64")
    return frame


def from_cursor(cursor) -> pd.DataFrame:
    """All rows of an executed cursor as a DataFrame with the cursor's column names."""
    names = column_names(cursor)
    return typed(pd.DataFrame.from_records(cursor.fetchall(), columns=names))


def search_frame(rows: Sequence[tuple[float, str, dict[str, Any], Any]]) -> pd.DataFrame:
    """Search hits as ``rank, distance, contents, <metadata keys...>, id``.

    Built column by column (a record per hit costs ~2.5x as much: ~1.3 ms for 10 hits,
    as long as the query itself)."""
    fixed = ("rank", "distance", "contents", "id")
    keys: dict[str, None] = {}  # metadata keys in order of first appearance
    for row in rows:
        keys.update((k, None) for k in (row[2] or {}) if k not in fixed)
    data: dict[str, list] = {
        "rank": list(range(1, len(rows) + 1)),
        "distance": [float(r[0]) for r in rows],
        "contents": [r[1] for r in rows],
    }
    for key in keys:
        data[key] = [(r[2] or {}).get(key) for r in rows]
    data["id"] = [r[3] for r in rows]
    return pd.DataFrame(data)
