"""pandas views built from ``cursor.description`` (not ``pd.read_sql``, which wants SQLAlchemy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

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
    names = [d.name for d in cursor.description]
    return typed(pd.DataFrame.from_records(cursor.fetchall(), columns=names))


def search_frame(rows: Sequence[tuple[float, str, dict[str, Any], Any]]) -> pd.DataFrame:
    """Search hits as ``rank, distance, contents, <metadata keys...>, id``."""
    records = []
    for rank, (distance, contents, metadata, id_) in enumerate(rows, start=1):
        rec: dict[str, Any] = {"rank": rank, "distance": float(distance), "contents": contents}
        for key, value in (metadata or {}).items():
            if key not in ("rank", "distance", "contents", "id"):
                rec[key] = value
        rec["id"] = id_
        records.append(rec)
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        frame = pd.DataFrame(columns=["rank", "distance", "contents", "id"])
    cols = ["rank", "distance", "contents"] + [
        c for c in frame.columns if c not in ("rank", "distance", "contents", "id")
    ] + ["id"]
    return frame[cols]
