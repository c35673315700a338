"""pandas views built from ``cursor.description`` (not ``pd.read_sql``, which wants SQLAlchemy),
and their readable display.

Every view is a ``Frame``: a DataFrame that keeps its real dtypes (tz-aware timestamps,
timedeltas, nullable counts) for computing, and displays them for reading: no
microseconds, ages as "6 s ago", "—" for a missing value, whole texts wrapped, and only
the columns that matter (``shown``; the others stay in the frame).
"""

from __future__ import annotations

import functools
import html
import json
import re
import string
import sys
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any, ClassVar

import pandas as pd

from .db import column_names

__all__ = ["Frame", "chunk_text", "from_cursor", "interactive", "interactive_data", "readable", "search_frame", "show",
           "typed"]

TIME_COLUMNS = ("queued_at", "retry_after", "first_queued_at", "failed_at", "created_at", "last_success")
COUNT_COLUMNS = ("attempts",)
#: metadata or template fields that make a good title for a hit, best first
TITLE_NAMES = ("title", "name", "subject", "headline", "heading", "topic")
#: column types (format_type's spelling, modifier cut) whose values are text to show or embed
TEXT_TYPES = ("text", "character varying", "character", "varchar", "citext")
MISSING = "—"
_ROWS_SHOWN = 60  # a longer frame shows its first and last rows


def is_text_type(sql_type: str) -> bool:
    """A column of this type holds text (``TEXT_TYPES``): varchar(200) does, jsonb does not."""
    return sql_type.split("(")[0].strip() in TEXT_TYPES


class Frame(pd.DataFrame):
    """A DataFrame that displays readably (see module docs). ``shown``: the columns its
    display starts with, while it still holds every column it was made with."""

    _metadata: ClassVar[list[str]] = ["_pgvz_shown", "_pgvz_made_with", "_pgvz_hint"]
    _pgvz_shown: list[Any] | None = None
    _pgvz_made_with: list[Any] | None = None
    _pgvz_hint: str = ""

    @property
    def _constructor(self):
        return Frame

    def show_columns(self, columns: Sequence[str] | None, hint: str = "") -> Frame:
        """Display ``columns`` first (None: all); the others stay in the frame; returns self."""
        self._pgvz_shown = None if columns is None else [c for c in columns if c in self.columns]
        self._pgvz_made_with = list(self.columns)
        self._pgvz_hint = hint
        return self

    def shown(self) -> list[Any]:
        """The columns the display shows: ``shown``, unless the frame lost or gained columns
        since (``frame[["a", "b"]]`` shows a and b)."""
        cols = list(self.columns)
        if self._pgvz_shown is None or self._pgvz_made_with != cols:
            return cols
        return list(self._pgvz_shown)

    def readable(self, *, width: int | None = None) -> pd.DataFrame:
        """The shown columns as display strings (``width``: cut texts to that many characters)."""
        return readable(self, self.shown(), width=width)

    def __repr__(self) -> str:
        if not self._readable_ok():
            return pd.DataFrame.__repr__(self)
        shown = self.readable(width=60)
        return shown.to_string(index=not isinstance(self.index, pd.RangeIndex)) + self._note("text")

    def _repr_html_(self) -> str | None:
        if not self._readable_ok():
            return pd.DataFrame._repr_html_(self)  # type: ignore[attr-defined]  # not in pandas-stubs
        return table_html(self.readable(), index=not isinstance(self.index, pd.RangeIndex)) + self._note("html")

    def _readable_ok(self) -> bool:
        # a frame reshaped beyond what the readable display handles gets pandas' own
        return len(self.columns) > 0 and self.columns.is_unique and self.columns.nlevels == 1

    def _note(self, kind: str) -> str:
        shown = self.shown()
        hidden = [str(c) for c in self.columns if c not in shown]
        parts = [f"{len(self)} rows"] if len(self) > _ROWS_SHOWN else []
        if hidden:
            parts.append(f"{len(hidden)} more column(s) in the frame: {', '.join(hidden)}"
                         + (f"; {self._pgvz_hint}" if self._pgvz_hint else ""))
        if not parts:
            return ""
        note = "; ".join(parts)
        return f"<p style='font-size:smaller;opacity:.7'>{html.escape(note)}</p>" if kind == "html" else f"\n({note})"


def frame(data: Any, shown: Sequence[str] | None = None, hint: str = "", **kwargs: Any) -> Frame:
    """A ``Frame`` of ``data`` (what ``pd.DataFrame`` takes) displaying ``shown`` first."""
    return Frame(data, **kwargs).show_columns(shown, hint)


# --- display strings ----------------------------------------------------------------------

def span(seconds: float) -> str:
    """A length of time, rounded for reading: 6 s, 3 min, 2.5 h, 4 d."""
    s = abs(seconds)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86400:
        return f"{s / 3600:.1f} h".replace(".0 h", " h")
    return f"{s / 86400:.0f} d"


def ago(seconds: float) -> str:
    """How long ago (positive) or from now (negative): "6 s ago", "in 3 min", "just now"."""
    if abs(seconds) < 1:
        return "just now"
    return f"{span(seconds)} ago" if seconds > 0 else f"in {span(seconds)}"


_ISO = re.compile(r"^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?$")


def time_text(value: datetime, now: datetime | None = None) -> str:
    """A point in time to the second, in UTC when it has a zone, with its age when it is
    within a month of now: "2026-12-01 14:13:32 UTC (6 s ago)"."""
    if value.tzinfo is None:
        return f"{value:%Y-%m-%d %H:%M:%S}"
    value = value.astimezone(timezone.utc)
    now = now or datetime.now(timezone.utc)
    text = f"{value:%Y-%m-%d %H:%M:%S} UTC"
    delta = (now - value).total_seconds()
    return f"{text} ({ago(delta)})" if abs(delta) < 30 * 86400 else text


def cell_text(value: Any, column: str = "", now: datetime | None = None, width: int | None = None) -> str:
    """One value as display text; ``column`` ending in ``_age``: a timedelta reads "6 s ago"."""
    if value is None or value is pd.NaT or value is pd.NA:
        return MISSING
    if isinstance(value, float) and value != value:  # NaN
        return MISSING
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        return time_text(value, now)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (pd.Timedelta, timedelta)):
        seconds = value.total_seconds()
        return ago(seconds) if column.endswith("_age") else span(seconds)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15 and column not in ("distance", "score"):
            return f"{value:.1f}"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, default=str, ensure_ascii=False)
    text = str(value)
    iso = _ISO.match(text)
    if iso:  # a time as JSON metadata holds it: to the second, a midnight UTC as its date
        day, clock, zone = iso.groups()
        return day if clock == "00:00:00" and zone in (None, "Z", "+00:00") else f"{day} {clock}{zone or ''}"
    if width is not None and len(text) > width:
        text = text[: width - 1].rstrip() + "…"
    return text


def readable(df: pd.DataFrame, columns: Sequence[str] | None = None, *, width: int | None = None,
             rows: int = _ROWS_SHOWN) -> pd.DataFrame:
    """``df``'s ``columns`` as display strings, at most ``rows`` of them (first and last)."""
    cols = list(df.columns) if columns is None else list(columns)
    part = pd.DataFrame(df)[cols]
    if len(part) > rows:
        part = pd.concat([part.head(rows - 5), part.tail(5)])
    now = datetime.now(timezone.utc)
    out = pd.DataFrame({
        c: [cell_text(v, str(c), now, width) for v in part[c].tolist()] for c in cols
    }, index=part.index, columns=cols)
    return out


def table_html(shown: pd.DataFrame, *, index: bool = False) -> str:
    """An HTML table of display strings, escaped; texts wrap (newlines kept) instead of being cut."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in ([""] if index else []) + list(shown.columns))
    body = []
    for idx, row in zip(shown.index, shown.itertuples(index=False)):
        cells = [f"<th>{html.escape(str(idx))}</th>"] if index else []
        for value in row:
            long = len(value) > 40
            style = " style='text-align:left;white-space:pre-wrap;min-width:24em;max-width:60em'" if long else ""
            cells.append(f"<td{style}>{html.escape(value)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<table class='dataframe pgvz-frame'><thead><tr style='text-align:left'>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def show(df: pd.DataFrame, **options: Any) -> None:
    """Display ``df`` as an interactive table (sortable, searchable, paged) with itables
    when it is installed (the ``notebook`` extra), else as its readable table. ``options``
    go to itables (e.g. ``pageLength=25``)."""
    table = interactive(df, **options)
    try:
        from IPython.display import display
    except ImportError:  # no IPython: the text form
        sys.stdout.write(f"{table!r}\n")
        return
    display(table)


def interactive(df: pd.DataFrame, **options: Any) -> Any:
    """``show``'s table as an object, to end a cell with: the itables HTML when itables is
    installed, else ``df`` as a ``Frame`` (its readable display)."""
    try:
        from IPython.display import HTML
        from itables import to_html_datatable
    except ImportError:
        return df if isinstance(df, Frame) else Frame(df)
    return HTML(to_html_datatable(interactive_data(df), **{"showIndex": False, **options}))


def interactive_data(df: pd.DataFrame) -> pd.DataFrame:
    """What the interactive table holds: the shown columns as display text, except numbers,
    which stay numbers so that they sort as numbers. A time's text starts with its ISO date,
    so it sorts in time order; an age ("6 s ago") does not: sort the frame itself for that."""
    shown = df.shown() if isinstance(df, Frame) else list(df.columns)
    data = readable(df, shown, rows=max(len(df), 1))
    for c in shown:
        col = df[c]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            data[c] = col.astype("float64" if col.hasnans else col.dtype).to_numpy()
    return data


# --- the views ------------------------------------------------------------------------------

def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Give the bookkeeping columns their dtypes even when empty or all NULL: timestamps
    tz-aware (UTC), counts nullable integers."""
    for col in frame.columns:
        if col in TIME_COLUMNS:
            frame[col] = pd.to_datetime(frame[col], utc=True)
        elif col in COUNT_COLUMNS:
            frame[col] = frame[col].astype("Int64")
    return frame


def from_cursor(cursor, shown: Sequence[str] | None = None) -> Frame:
    """All rows of an executed cursor as a Frame with the cursor's column names."""
    names = column_names(cursor)
    result = frame(pd.DataFrame.from_records(cursor.fetchall(), columns=names))
    typed(result)
    return result.show_columns(shown)


class _TemplateParser:
    """Reads a formatted chunk back into its fields: the template's fixed text, each field a
    shortest match, ``{chunk}`` the longest."""

    def __init__(self, template: str):
        pattern, self.fields = [], []
        seen_chunk = False
        for literal, name, _spec, _conv in string.Formatter().parse(template):
            pattern.append(re.escape(literal))
            if name is None:
                continue
            base = name.split(".")[0].split("[")[0]
            if base == "chunk":
                pattern.append("(?P=chunk)" if seen_chunk else "(?P<chunk>.*)")
                seen_chunk = True
            else:
                pattern.append("(.*?)")
                self.fields.append(base)
        self.has_chunk = seen_chunk
        self.regex = re.compile("^" + "".join(pattern) + "$", re.DOTALL)

    def parse(self, contents: str) -> tuple[str, dict[str, str]] | None:
        found = self.regex.match(contents)
        if found is None:
            return None
        fields: dict[str, str] = {}
        groups = [g for i, g in enumerate(found.groups(), 1) if i != found.re.groupindex.get("chunk")]
        for name, value in zip(self.fields, groups):
            fields.setdefault(name, value)
        return (found.group("chunk") if self.has_chunk else contents), fields


@functools.lru_cache(maxsize=64)
def _parser(template: str) -> _TemplateParser:
    return _TemplateParser(template)


@functools.lru_cache(maxsize=64)
def _renderer(template: str) -> Any:
    from .pipeline import _Template  # the pipeline's own rendering, so the cut fits exactly

    return _Template(template)


_MARK = "\x00pgvz chunk\x00"  # no stored text holds a NUL (PostgreSQL text cannot)


def chunk_text(contents: str, template: str | None,
               values: dict[str, Any] | None = None) -> tuple[str, dict[str, str]]:
    """The chunk's own text inside the stored ``contents`` and the template fields around it.

    The destination stores only the formatted template ("Author {author}, title: {title},
    contents:{chunk}"). With the source row's ``values`` the template is rendered around a
    mark, as the pipeline renders it, and its text before and after the chunk cut off.
    Without them (or when the row has changed since), the template's fixed text is matched:
    each other field takes the shortest text that fits, so a field value holding the text
    that follows it in the template ("a: b" before ": {chunk}") is cut there. A template
    without ``{chunk}``, or contents it does not match, give the contents themselves."""
    if not template or template == "{chunk}":
        return contents, {}
    try:
        parser = _parser(template)
    except (ValueError, re.error):  # a template str.format itself would refuse
        return contents, {}
    if values is not None and parser.has_chunk:
        try:
            around = _renderer(template).render(values, _MARK).split(_MARK)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError):
            around = []
        if len(around) == 2 and contents.startswith(around[0]) and contents.endswith(around[1]) \
                and len(contents) >= len(around[0]) + len(around[1]):
            fields = {f: "" if values.get(f) is None else str(values[f]) for f in parser.fields}
            return contents[len(around[0]):len(contents) - len(around[1])], fields
    parsed = parser.parse(contents)
    return parsed if parsed is not None else (contents, {})


def search_frame(rows: Sequence[tuple[float, str, dict[str, Any], Any]], *, template: str | None = None,
                 key: str | None = None, label: str | None = None,
                 values: Sequence[dict[str, Any] | None] | None = None) -> Frame:
    """Search hits as ``rank, distance, title, text, <metadata keys...>, id, contents``.

    ``text`` is the chunk's own text (``chunk_text``, given each hit's source ``values``
    when known; named ``chunk`` when a metadata key is ``text``); ``title`` the first metadata key or template field named like one
    (``TITLE_NAMES``), else ``label`` and the source ``key`` ("blog 3"), else absent.
    ``contents``, the text that was embedded, stays in the frame, after the others and out
    of the display. Built column by column (a record per hit costs ~2.5x as much: ~1.3 ms
    for 10 hits, as long as the query itself)."""
    fixed = ("rank", "distance", "contents", "id", "score")
    keys: dict[str, None] = {}  # metadata keys in order of first appearance
    for row in rows:
        keys.update((k, None) for k in (row[2] or {}) if k not in fixed)
    text_col = "chunk" if "text" in keys else "text"
    given = list(values) if values is not None else [None] * len(rows)
    parsed = [chunk_text(r[1], template, v) for r, v in zip(rows, given)]
    lower = {k.lower(): k for k in keys}
    fields = {f.lower(): f for p in parsed for f in p[1]}
    title: list[Any] | None = None
    title_meta = next((lower[n] for n in TITLE_NAMES if n in lower), None)
    if title_meta is None:
        field = next((fields[n] for n in TITLE_NAMES if n in fields), None)
        if field is not None and "title" not in keys:
            title = [p[1].get(field) for p in parsed]
        elif key is not None and key in keys and "title" not in keys:
            title = [f"{label} {(r[2] or {}).get(key)}" if label else (r[2] or {}).get(key) for r in rows]
    data: dict[str, list] = {
        "rank": list(range(1, len(rows) + 1)),
        "distance": [float(r[0]) for r in rows],
    }
    if title_meta is not None:
        data[title_meta] = [(r[2] or {}).get(title_meta) for r in rows]
    elif title is not None:
        data["title"] = title
    data[text_col] = [p[0] for p in parsed]
    for k in keys:
        if k != title_meta:
            data[k] = [(r[2] or {}).get(k) for r in rows]
    data["id"] = [r[3] for r in rows]
    data["contents"] = [r[1] for r in rows]
    shown = [c for c in data if c not in ("id", "contents")]
    return frame(data, shown, "contents is the text as embedded (template and chunk)")
