"""Changing a vectorizer's model (or template, or chunking) without downtime.

``v.migrate(embedder=new)`` creates a second vectorizer on the same source, the *shadow*,
called ``<name>~migration``, writing ``<destination>_migration``: its own queue, fed by the
same capture (triggers or the WAL) and backfilled with every row, so it follows every
insert, update, delete and truncate while it is built, and ``pgvz worker`` drains it like
any vectorizer. The live vectorizer keeps following the source and serving searches.

``cutover()`` is one transaction: it takes both catalog rows FOR UPDATE, then ACCESS
EXCLUSIVE on both tables, swaps the tables' names (and their indexes'), and swaps the
catalog rows' names and destinations. Readers by name (SQL, ``v.search``, the LangChain
store) wait for the commit (milliseconds) and then read the other table. Each catalog row
keeps its queue, its model and its table: only names move. A handle opened before (a
worker, an exported script, another notebook) notices at its next write (the pipeline
checks its row's destination under FOR KEY SHARE before writing: Reconfigured, the batch
goes back, the handle opens the vectorizer again) or right after its next search read (the
search asks, in the same transaction, whether the name still means its row).

After the cutover the old vectors are the ``~migration`` side, still followed, so
``rollback()`` (the same swap back) finds them current; ``finish()`` drops the side that is
not live. Both rows carry ``config["migration"]`` (``live``: the id of the live row, the two
names, ``state``): a migration left half-way is found again by ``Vectorizer.open(db,
name).migration``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import psycopg
from langchain_core.embeddings import Embeddings
from psycopg import sql
from psycopg.types.json import Jsonb

from . import sql as q
from .errors import ConfigConflict, LockUnavailable, NotFound, PgvzError, boundary, translate
from .pipeline import PipelineConfig
from .queue import LOCK_TIMEOUT, Queue

if TYPE_CHECKING:
    import pandas as pd

    from .vectorizer import Vectorizer

#: what the shadow is called: the live vectorizer's name and this
SUFFIX = "~migration"

#: US dollars per million tokens, for estimate(): OpenAI's list prices of its embedding models
PRICES = {"text-embedding-3-small": 0.02, "text-embedding-3-large": 0.13, "text-embedding-ada-002": 0.10}


class Migration:
    """A vectorizer's model change in progress (see module docs). ``live`` is the handle the
    migration was started from (after a cutover it embeds with the new model: the handle
    follows the name); ``other`` the side that is not live: the shadow while it is built,
    the old vectors after the cutover."""

    def __init__(self, live: Vectorizer, other: Vectorizer):
        self.live = live
        self.other = other
        #: the last cutover's or rollback's ACCESS EXCLUSIVE time on the destinations, in ms
        self.lock_ms: float | None = None
        self._rates: dict[int, float] = {}  # rows per second of the last sync, by catalog id

    def __repr__(self) -> str:
        return f"Migration({self.live.name!r}, {self.state}: {self._model(self.live)} -> {self._model(self.other)})"

    # --- finding and starting ---------------------------------------------------------

    @classmethod
    def find(cls, v: Vectorizer, *, embedder: Any = None) -> Migration | None:
        """The migration ``v`` takes part in (as the live side or the other), or None.
        ``embedder``: the other side's model, when pgvz_nb cannot rebuild it (a custom one;
        without it, that side can be synced only once it is given, but dropped and switched).

        A start cut short after the shadow was made (no markers yet) is taken up: the
        shadow is marked as being built; markers whose other side is gone (a finish cut
        short) are cleared."""
        v._ready()
        v._follow()
        queue = _queue(v)
        info = queue.config.get("migration")
        if info:
            live_name, other_name = info["live_name"], info["other_name"]
        else:
            live_name = v.name[:-len(SUFFIX)] if v.name.endswith(SUFFIX) else v.name
            other_name = live_name + SUFFIX
        try:
            with v.db.connect() as conn:
                live_row, other_row = Queue.find(conn, live_name), Queue.find(conn, other_name)
                if other_row is not None and (other_row.config.get("migration") or {}).get("live") != other_row.id \
                        and "pipeline" in other_row.config and conn.execute(q.find_relation(), list(_rel(
                            other_row.config["pipeline"]["destination"]))).fetchone() is None:
                    # a side that is not live lost its table (dropped with its schema, say):
                    # nothing to resume; it goes, and the markers below
                    conn.rollback()
                    other_row.drop(conn)
                    other_row = None
        except psycopg.Error as exc:
            raise translate(exc, f"reading the migration of {live_name!r}") from exc
        if live_row is None or other_row is None or live_row.source != other_row.source:
            if info:
                _set_markers(v.db, [r for r in (live_row, other_row) if r is not None], None)
                v._follow()
            return None
        if not info:
            if other_row.config.get("kind") != "pipeline" or "pipeline" not in live_row.config:
                return None
            live_cfg = PipelineConfig.from_json(live_row.config["pipeline"])
            other_cfg = PipelineConfig.from_json(other_row.config["pipeline"])
            _set_markers(v.db, [live_row, other_row], {
                "live": live_row.id, "live_name": live_name, "other_name": other_name,
                "state": "building", "started_at": other_row.created_at.isoformat(),
                "from": live_cfg.model_id(), "to": other_cfg.model_id()})
            v._follow()
        if v.name == other_name:  # opened as the other side: the migration belongs to the live one
            return cls(_open(v.db, live_name, None), v)
        return cls(v, _open(v.db, other_name, embedder))

    @classmethod
    def start(cls, v: Vectorizer, *, embedder: Any = None, template: str | None = None,
              chunk_column: str | None = None, chunk_size: int | None = None,
              chunk_overlap: int | None = None, metadata: Sequence[str] | None = None) -> Migration:
        from .vectorizer import Vectorizer

        v._ready()
        v._follow()
        cfg = v.config
        if v.name.endswith(SUFFIX):
            raise PgvzError(f"{v.name!r} is the other side of a migration; migrate {v.name[:-len(SUFFIX)]!r}")
        dest = shadow_destination(_rel(cfg.destination))
        shadow = Vectorizer(
            v.db, v.source[1], schema=v.source[0], name=v.name + SUFFIX, destination=dest,
            template=template if template is not None else cfg.template,
            chunk_column=chunk_column if chunk_column is not None else cfg.chunk_column,
            chunk_size=chunk_size if chunk_size is not None else cfg.chunk_size,
            chunk_overlap=chunk_overlap if chunk_overlap is not None else cfg.chunk_overlap,
            metadata=list(metadata) if metadata is not None else cfg.metadata,
            time_column=cfg.time_column, where=cfg.where,
            embedder=embedder if embedder is not None else v.embedder,
            batch_size=cfg.batch_size, transient_budget=cfg.transient_budget,
            max_attempts=v._max_attempts, retry_backoff=v._backoff, max_chunks=cfg.max_chunks,
            capture=_queue(v).capture,
        )
        shadow._tag_salt = f"#{time.time_ns()}"  # its own tables (an earlier shadow's names may be taken)
        found = cls.find(v, embedder=embedder)
        if found is not None:
            if found.live is not v:
                raise PgvzError(f"{v.name!r} is the other side of a migration; migrate {found.live.name!r}")
            wanted = shadow.config.to_json()
            have = found.other.config.to_json()
            same = all(wanted[k] == have.get(k) for k in ("template", "chunk_column", "chunk_size",
                                                          "chunk_overlap", "metadata"))
            if same and _identity(shadow) == (have["embedder"].get("identity"), have["embedder"].get("dimensions")):
                if embedder is not None:
                    found.other.set_embedder(embedder)
                return found
            raise ConfigConflict(
                f"a migration of {v.name!r} is in progress ({found.state}, to {found._model(found.other)}); "
                f"finish it first: m = Vectorizer.open(db, {v.name!r}).migration; m.cutover() then "
                "m.finish(), or m.finish(discard=True) to drop the shadow")
        if shadow.config.template == cfg.template and _identity(shadow) == (
                cfg.embedder["identity"], cfg.embedder["dimensions"]) and all(
                getattr(shadow.config, k) == getattr(cfg, k)
                for k in ("chunk_column", "chunk_size", "chunk_overlap", "metadata")):
            raise PgvzError(
                f"nothing to migrate: {v.name!r} already embeds with {cfg.embedder['identity']!r} and "
                "this template, chunking and metadata; give migrate() another embedder=, template=, "
                "chunk_size=, chunk_overlap= or metadata=")
        with v.db.connect() as conn, conn.transaction():
            _portable_security(conn, v.destination)
        with v.db.connect() as conn:  # a shadow left by a start cut short, not taken up: ours, never live
            orphan = Queue.find(conn, shadow.name)
            if orphan is not None and not orphan.config.get("migration"):
                conn.rollback()
                orphan.drop(conn, then=lambda: conn.execute(q.drop_table(_rel(orphan.config["pipeline"]["destination"]))))
        # the shadow: a vectorizer of its own (create() is idempotent: a start cut short
        # by a crash is taken up again here, and by find())
        shadow.create()
        _mirror(v, shadow)
        try:
            with v.db.connect() as conn, conn.transaction():
                conn.execute(q.catalog_lock_rows(), [[_queue(v).id, _queue(shadow).id]])
                live_q, shadow_q = _row(conn, _queue(v).id), _row(conn, _queue(shadow).id)
                info = {"live": live_q.id, "live_name": v.name, "other_name": shadow.name,
                        "state": "building", "started_at": datetime.now(timezone.utc).isoformat(),
                        "from": v.config.model_id(), "to": shadow.config.model_id()}
                for row in (live_q, shadow_q):
                    row.set_extra(conn, migration=info)
        except psycopg.Error as exc:
            raise translate(exc, f"starting a migration of {v.name!r}") from exc
        v._follow()
        shadow._follow()
        return cls(v, shadow)

    # --- state ------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """"building" (the shadow is built; the old model is live), "cut over" (the new model
        is live; the old vectors are kept in sync), "rolled back" (the old model is live
        again; the new vectors are kept in sync)."""
        info = (self.live._queue.config.get("migration") if self.live._queue is not None else None) or {}
        return str(info.get("state", "finished"))

    @staticmethod
    def _model(v: Vectorizer) -> str:
        return v.config.model_id()

    def _refresh(self) -> dict[str, Any]:
        self.live._follow()
        self.other._follow()
        info = self.live._queue.config.get("migration") if self.live._queue is not None else None
        if not info:
            raise NotFound(f"the migration of {self.live.name!r} is over (finished, or the vectorizer dropped)")
        return info

    @boundary("reading the status of the migration of {self.live.name!r}")
    def status(self) -> pd.DataFrame:
        """One row per side (live first): model, pending, embedded rows of the source rows,
        done %, ETA from the last sync's rate, and the model ids the destination holds."""
        import pandas as pd

        from .frames import frame

        info = self._refresh()
        out = []
        for role, v in (("live", self.live), ("shadow" if info["state"] != "cut over" else "old", self.other)):
            st = v.status(full=True)
            pending = int(st["pending"][0])
            rate = self._rates.get(_queue(v).id)
            models = st.attrs["models"]
            out.append({
                "role": role, "name": v.name, "destination": ".".join(v.destination),
                "model": self._model(v), "pending": pending, "failed": int(st["failed"][0]),
                "embedded_rows": int(st["embedded_rows"][0]), "source_rows": int(st["source_rows"][0]),
                "done_pct": float(st["coverage_pct"][0]) if pending or int(st["failed"][0]) else 100.0,
                "eta": pd.Timedelta(seconds=math.ceil(pending / rate)) if rate and pending else (
                    pd.Timedelta(0) if not pending else pd.NaT),
                "models_in_destination": ", ".join(models),
                "state": info["state"],
            })
        result = frame(out)
        result["eta"] = pd.Series(list(result["eta"]), dtype="timedelta64[ns]")
        return result

    # --- work -------------------------------------------------------------------------

    @boundary("syncing the migration of {self.live.name!r}")
    def sync(self, *, progress: bool = True, **options: Any) -> Any:
        """Drain the side that is not live (the shadow's backfill, then every change since),
        then the live one; returns the former's SyncReport. ``options`` go to
        ``Vectorizer.sync`` (lanes=, batch_seconds=, max_batches=, stop=)."""
        self._refresh()
        report = self.other.sync(progress=progress, **options)
        if report.seconds and report.processed:
            self._rates[_queue(self.other).id] = report.processed / report.seconds
        live = self.live.sync(progress=False, **options)
        if live.seconds and live.processed:
            self._rates[_queue(self.live).id] = live.processed / live.seconds
        return report

    @boundary("estimating the migration of {self.live.name!r}")
    def estimate(self) -> pd.DataFrame:
        """What building the shadow costs, without calling the model: source rows, chunks and
        (about: 4 characters a token) tokens to embed, and for a model with a known price the
        cost in US dollars. Reads the source rows (passing ``where``) once, in batches."""
        from .frames import frame
        from .pipeline import Pipeline

        self._refresh()
        v = self.other if self.state != "cut over" else self.live
        cfg = v.config
        pipe = Pipeline(_queue(v), cfg, None)
        cols = cfg.source_columns()
        keys = _queue(v).keys
        rows = chunks = chars = 0
        where = q.UserSQL(cfg.where) if cfg.where else None
        with v.db.connect() as conn, conn.transaction(), conn.cursor(name="pgvz_estimate") as cur:
            cur.itersize = 2000
            cur.execute(q.source_scan(v.source, keys, cols, where))
            for rec in cur:
                key, values = tuple(rec[:len(keys)]), dict(zip(cols, rec[len(keys):]))
                pieces = pipe.chunks(key, values)
                rows += 1
                chunks += len(pieces)
                chars += sum(len(c.text) for c in pieces)
        tokens = math.ceil(chars / 4)
        model = cfg.embedder.get("model") or cfg.embedder.get("identity", "")
        price = next((p for m, p in PRICES.items() if str(model).endswith(m)), None)
        return frame([{"model": cfg.model_id(), "rows": rows, "chunks": chunks, "characters": chars,
                       "tokens_approx": tokens,
                       "cost_usd": round(tokens / 1e6 * price, 4) if price is not None else None}])

    @boundary("comparing the models of {self.live.name!r}")
    def compare(self, queries: Sequence[str] | str, k: int = 10) -> pd.DataFrame:
        """One row per query: overlap@k (the share of source rows both models put in their top
        k), and each model's top hits (titles), old and new side by side."""
        from .frames import frame

        self._refresh()
        if isinstance(queries, str):
            queries = [queries]
        old, new = (self.live, self.other) if self.state != "cut over" else (self.other, self.live)
        out = []
        for text in queries:
            hits = {}
            for side, v in (("old", old), ("new", new)):
                found = v.search(text, k=4 * k)  # chunks: k distinct source rows among them
                key = v.config.metadata_key
                seen: dict[str, str] = {}
                for _, row in found.iterrows():
                    if len(seen) < k:
                        seen.setdefault(str(row[key]) if key in found else str(row["id"]), str(row["title"]))
                hits[side] = seen
            both = set(hits["old"]) & set(hits["new"])
            fewer = max(1, min(k, max(len(hits["old"]), len(hits["new"]))))  # a table of fewer rows than k
            out.append({"query": text, f"overlap_at_{k}": round(len(both) / fewer, 3),
                        "old_top": list(hits["old"].values())[:k], "new_top": list(hits["new"].values())[:k],
                        "old_model": self._model(old), "new_model": self._model(new)})
        return frame(out)

    # --- switching --------------------------------------------------------------------

    @boundary("cutting over the migration of {self.live.name!r}")
    def cutover(self, *, wait: float = 0.0, lock_timeout: float = 5.0) -> Migration:
        """Make the shadow live, in one transaction: every reader of the destination by name
        sees all old vectors before and all new ones after. The old vectors are kept in sync
        until ``finish()``.

        Refused while the shadow is behind the live vectors: while it has failed rows, or
        pending rows that are not pending for the live side too (a change both sides still
        have to apply leaves readers no worse off after the switch than before; under steady
        writes neither queue is ever empty). ``wait``: for up to that many seconds, drain the
        shadow and try again instead of refusing at once."""
        info = self._refresh()
        if info["state"] == "cut over":
            return self
        self._switch(wait, lock_timeout, "cut over")
        return self

    @boundary("rolling back the migration of {self.live.name!r}")
    def rollback(self, *, wait: float = 0.0, lock_timeout: float = 5.0) -> Migration:
        """Make the old vectors live again (they were kept in sync since the cutover);
        refused, as ``cutover()``, while they are behind the live ones. ``cutover()`` again
        goes forward once more."""
        info = self._refresh()
        if info["state"] != "cut over":
            raise PgvzError(f"the migration of {self.live.name!r} is {info['state']!r}: nothing to roll back "
                            "(the old vectors are live)")
        self._switch(wait, lock_timeout, "rolled back")
        return self

    def _switch(self, wait: float, lock_timeout: float, state: str) -> None:
        """_swap until it succeeds: after a sync of the side to make live while it is behind
        (for ``wait`` seconds), and again after a jittered pause while the destinations are
        locked by someone else (for ``lock_timeout`` seconds: each try waits at most
        queue.LOCK_TIMEOUT for the table lock, so readers queued behind it wait no longer)."""
        deadline = time.monotonic() + wait
        lock_deadline = time.monotonic() + lock_timeout
        while True:
            try:
                self._swap(lock_timeout, state)
                return
            except NotCaughtUp:
                if time.monotonic() >= deadline:
                    raise
                self.other.sync(progress=False, max_batches=50)
            except psycopg.errors.LockNotAvailable as exc:
                if time.monotonic() >= lock_deadline:
                    raise LockUnavailable(
                        f"the switch found {'.'.join(self.live.destination)} or its shadow locked by "
                        f"others ({_holders(self.live)}) for {lock_timeout:g} s, trying for "
                        f"{LOCK_TIMEOUT} at a time; nothing changed: try again, or pass lock_timeout= "
                        "longer") from exc
                time.sleep(random.uniform(0.05, 0.25))

    @boundary("finishing the migration of {self.live.name!r}")
    def finish(self, *, discard: bool = False) -> None:
        """End the migration: drop the side that is not live with its table (after a cutover
        the old vectors; after a rollback the new ones). Before any cutover, refused unless
        ``discard=True`` (which drops the shadow: the migration is abandoned)."""
        info = self._refresh()
        if info["state"] == "building" and not discard:
            raise PgvzError(
                f"the migration of {self.live.name!r} was not cut over: finish() would drop the "
                "shadow's vectors; m.cutover() first, or m.finish(discard=True) to abandon it")
        if discard and info["state"] != "building":
            raise PgvzError(
                f"the migration of {self.live.name!r} is {info['state']!r} (since this Migration was "
                "read, maybe): discard=True abandons one never cut over; finish() drops the side that "
                "is not live, or rollback() first to keep the old vectors live")
        self.discard_other(expect=info["state"])

    def discard_other(self, *, expect: str | None = None) -> None:
        """Drop the side that is not live (its catalog row, queue, capture and table) and
        end the migration. ``expect``: the state the caller saw; another one found under the
        catalog rows' lock (a cutover by another session since) is refused. The migration is
        marked "finishing" first, so no switch can run meanwhile; a finish cut short after
        the drop leaves markers that find() clears."""
        live, other = self.live, self.other
        try:
            with live.db.connect() as conn, conn.transaction():
                conn.execute(q.catalog_lock_rows(), [[_queue(live).id, _queue(other).id]])
                lrow, orow = _row(conn, _queue(live).id), _row(conn, _queue(other).id)
                info = lrow.config.get("migration") or {}
                if info.get("live") != lrow.id or (expect is not None and info.get("state") != expect):
                    raise PgvzError(
                        f"the migration of {live.name!r} changed meanwhile (now {info.get('state')!r}, "
                        "by another session); open it again and look before dropping anything")
                for row in (lrow, orow):
                    row.config["migration"] = {**info, "state": "finishing"}
                    conn.execute(q.catalog_set_config(), [Jsonb(row.config), row.id])
        except psycopg.Error as exc:
            raise translate(exc, f"ending the migration of {live.name!r}") from exc
        other._follow()
        other.drop(_alone=True)
        _set_markers(live.db, [_queue(live)], None)
        live._follow()

    def _swap(self, lock_timeout: float, state: str) -> None:
        """The cutover (or rollback): names of the tables, their indexes and the catalog rows
        exchanged in one transaction (see module docs)."""
        live, other = self.live, self.other
        ldest, odest = live.destination, other.destination
        try:
            with live.db.connect() as conn:
                with conn.transaction():
                    # the catalog rows: a batch of a handle opened before holds its row (FOR KEY
                    # SHARE) while it runs; waiting for it holds up no reader of the destination
                    conn.execute(q.set_local(), ["lock_timeout", f"{int(lock_timeout * 1000)}ms"])
                    conn.execute(q.catalog_lock_rows(), [[_queue(live).id, _queue(other).id]])
                    lrow, orow = _row(conn, _queue(live).id), _row(conn, _queue(other).id)
                    marks = lrow.config.get("migration") or {}
                    if lrow.name != live.name or marks.get("live") != lrow.id or marks.get("state") == "finishing":
                        raise PgvzError(f"the migration of {live.name!r} changed meanwhile (another "
                                        "session cut over, rolled back or finished it); open it again")
                    _portable_security(conn, ldest)
                    behind, failed = _behind(conn, orow, lrow)
                    if behind or failed:
                        first_error = conn.execute(q.failed_rows(orow.failed, orow.keys)).fetchone() if failed else None
                        raise NotCaughtUp(
                            f"{other.name!r} has {behind} pending rows the live vectors already have, and "
                            f"{failed} failed rows: its table is not yet what the source implies "
                            f"under {self._model(other)}; run m.sync() first" + (
                                f" (failed rows: m.other.errors(), e.g. {first_error[len(orow.keys) + 1]!r}; "
                                "then m.other.retry_failed())" if first_error else ""))
                    views = [r[0] for r in conn.execute(q.dependent_views(), list(ldest)).fetchall()]
                    if views:
                        raise PgvzError(
                            f"view(s) {', '.join(views)} read {'.'.join(ldest)}; a view names its "
                            "table by oid and would go on showing the old vectors after the switch; "
                            "drop them, switch, and create them again (CREATE VIEW ... as before)")
                    # the catalog first (row locks only), then, in one round trip, the table
                    # lock, the renames and the grants: readers wait only for that and the commit
                    tmp = live.name + "~swap"
                    conn.execute(q.catalog_rename(), [tmp, lrow.id])
                    conn.execute(q.catalog_rename(), [live.name, orow.id])
                    conn.execute(q.catalog_rename(), [other.name, lrow.id])
                    info = {**lrow.config["migration"], "live": orow.id, "state": state,
                            f"{state.replace(' ', '_')}_at": datetime.now(timezone.utc).isoformat()}
                    for row, dest in ((lrow, odest), (orow, ldest)):
                        row.config["pipeline"] = {**row.config["pipeline"], "destination": list(dest)}
                        row.config["migration"] = info
                        conn.execute(q.catalog_set_config(), [Jsonb(row.config), row.id])
                    switch = [q.lock_exclusive(sorted([ldest, odest])), *_swap_names(conn, ldest, odest)]
                    # the table that takes the name gets exactly the grants of the one that had
                    # it (a REVOKE since the migration started included)
                    had = set(map(tuple, conn.execute(q.table_grants(), list(ldest)).fetchall()))
                    has = set(map(tuple, conn.execute(q.table_grants(), list(odest)).fetchall()))
                    switch += [q.grant_on(priv, ldest, role) for role, priv in sorted(had - has, key=str)]
                    switch += [q.revoke_on(priv, ldest, role) for role, priv in sorted(has - had, key=str)]
                    # the table lock waits a moment at most (readers queue behind it); _switch
                    # tries again
                    conn.execute(q.set_local(), ["lock_timeout", LOCK_TIMEOUT])
                    t0 = time.perf_counter()
                    conn.execute(q.one_round_trip(switch))
                self.lock_ms = (time.perf_counter() - t0) * 1000
        except psycopg.errors.LockNotAvailable:
            raise  # _switch tries again
        except psycopg.Error as exc:
            raise translate(exc, f"switching the migration of {live.name!r}") from exc
        # the two handles exchange what they embed: the live one has the new model now (the
        # embedder objects go with them: a custom model needs no rebuilding)
        old_live = _snapshot(live)
        live._take_state(other)
        other._take_state(old_live)
        live._follow()
        other._follow()


class NotCaughtUp(PgvzError):
    """The side to make live is behind the live one (see Migration.cutover)."""


#: a side with more pending keys than this is taken to be behind without comparing keys
_PENDING_COMPARED = 10_000


def _behind(conn: psycopg.Connection, side: Queue, live: Queue) -> tuple[int, int]:
    """(pending keys of ``side`` that ``live`` has no pending change for, failed keys of ``side``)."""
    state = side.state(conn)
    if state.rows == 0:
        return 0, state.failed
    _, rows = side.pending(conn, _PENDING_COMPARED + 1)
    if len(rows) > _PENDING_COMPARED:
        return len(rows), state.failed
    n = len(side.keys)
    _, live_rows = live.pending(conn, _PENDING_COMPARED * 10)
    theirs = {tuple(r[:n]) for r in live_rows}
    return len({tuple(r[:n]) for r in rows} - theirs), state.failed


def _identity(v: Vectorizer) -> tuple[str, int]:
    """What tells two models apart: the embedder's identity and its vector size."""
    from .embedders import embedder_dimensions, embedder_identity

    return embedder_identity(v.embedder), embedder_dimensions(v.embedder)


def shadow_destination(dest: q.Rel) -> q.Rel:
    """The shadow's table: ``<dest>_migration``, or for a long name one that differs from
    ``dest`` within the first 50 bytes, where pgvz_nb's index names cut it (sql.index_name)."""
    if len((dest[1] + "_migration").encode()) <= 50:
        return (dest[0], dest[1] + "_migration")
    return (dest[0], q.cut(dest[1], 30) + "_" + q.name_tag(dest[1]) + "_migration")


def _rel(names: Sequence[str]) -> q.Rel:
    return (names[0], names[1])


def _portable_security(conn: psycopg.Connection, dest: q.Rel) -> None:
    """Refuse a destination whose protection would not move with its name: row-level
    security, policies or column grants (a switch moves table grants only)."""
    found = conn.execute(q.destination_security(), list(dest)).fetchone()
    if found is not None and any(found):
        rls, policies, columns = found
        what = ", ".join(w for w, on in (("row-level security", rls), ("policies", policies),
                                         ("column-level grants", columns)) if on)
        raise PgvzError(
            f"{'.'.join(dest)} has {what}: a migration's switch moves the table's name and its "
            "table-level grants, and the shadow would be read without them; to migrate, remove "
            "them for the switch and put them on again after it (or grant on the whole table)")


def _set_markers(db: Any, rows: Sequence[Queue], info: dict[str, Any] | None) -> None:
    """Set (or with None, remove) the migration markers of catalog rows, together."""
    try:
        with db.connect() as conn, conn.transaction():
            conn.execute(q.catalog_lock_rows(), [[r.id for r in rows]])
            for r in rows:
                fresh = _row(conn, r.id)
                if info is None:
                    fresh.config.pop("migration", None)
                else:
                    fresh.config["migration"] = info
                conn.execute(q.catalog_set_config(), [Jsonb(fresh.config), fresh.id])
    except psycopg.Error as exc:
        raise translate(exc, "recording a migration") from exc


class _Unrebuilt(Embeddings):
    """The model of a migration's side that pgvz_nb cannot rebuild (a custom one) and was not
    given: the side can be switched and dropped; embedding with it says what to do."""

    def __init__(self, name: str, stored: dict[str, Any]):
        self.name, self.model_id, self.dimensions = name, stored["identity"], int(stored["dimensions"])

    def _refuse(self) -> Any:
        raise PgvzError(
            f"{self.name!r} embeds with {self.model_id!r}, which pgvz_nb cannot rebuild by itself; "
            "give it: Migration.find(v, embedder=<that model>), or v.migrate(embedder=<that model>) "
            "with the settings it was started with")

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._refuse()

    def embed_query(self, text: str) -> list[float]:
        return self._refuse()


def _open(db: Any, name: str, embedder: Any) -> Vectorizer:
    """A side of a migration, with ``embedder`` or its own model rebuilt, else a stand-in that
    refuses to embed (_Unrebuilt)."""
    from .vectorizer import Vectorizer

    try:
        v = Vectorizer.open(db, name, embedder=embedder)
    except NotFound:
        raise
    except PgvzError:
        if embedder is not None:
            raise
        with db.connect() as conn:
            row = Queue.open(conn, name)
        v = Vectorizer.open(db, name, embedder=_Unrebuilt(name, row.config["pipeline"]["embedder"]))
    v._ready()
    return v


def _holders(v: Vectorizer) -> str:
    """Who holds locks on the destination, for a message."""
    try:
        with v.db.connect() as conn:
            rows = conn.execute(q.lock_holders(), {"schema": v.destination[0], "table": v.destination[1]}).fetchall()
    except psycopg.Error:
        return "unknown sessions"
    return "; ".join(f"pid {r[0]} ({r[1] or 'no application_name'}, {r[2]}, open {r[3]}): {r[4]}"
                     for r in rows) or "sessions gone since"


def _queue(v: Vectorizer) -> Queue:
    if v._queue is None:
        raise NotFound(f"vectorizer {v.name!r} is not created")
    return v._queue


def _row(conn: psycopg.Connection, id_: int) -> Queue:
    row = conn.execute(q.catalog_get_by_id(), [id_]).fetchone()
    if row is None:
        raise NotFound(f"vectorizer {id_} of the migration is gone (dropped meanwhile)")
    return Queue(row)


def _snapshot(v: Vectorizer) -> Any:
    class _State:
        pass

    s = _State()
    for attr in ("source", "capture", "embedder", "config", "_queue", "_max_attempts", "_backoff"):
        setattr(s, attr, getattr(v, attr))
    return s


def _swap_names(conn: psycopg.Connection, a: q.Rel, b: q.Rel) -> list[sql.Composed]:
    """The statements that exchange the names of tables ``a`` and ``b`` (one schema) and of
    pgvz_nb's indexes on them (which of those exist is asked now, before any lock)."""
    tmp = q.fit_name(a[1], "_pgvz_swap")
    out = [q.rename_table(a, tmp), q.rename_table(b, a[1]), q.rename_table((a[0], tmp), b[1])]
    for kind in q.INDEX_KINDS:
        ia, ib = q.index_name(a, kind), q.index_name(b, kind)
        have_a = conn.execute(q.find_relation(), [a[0], ia]).fetchone() is not None
        have_b = conn.execute(q.find_relation(), [b[0], ib]).fetchone() is not None
        itmp = q.fit_name(ia, "_pgvz_swap")
        if have_a:
            out.append(q.rename_index(a[0], ia, itmp))
        if have_b:
            out.append(q.rename_index(b[0], ib, ia))
        if have_a:
            out.append(q.rename_index(a[0], itmp, ib))
    return out


def _mirror(live: Vectorizer, shadow: Vectorizer) -> None:
    """The live destination's indexes (HNSW, time, full text), and the grants on its tables
    (destination, queue, inbox, failed), on the shadow's."""
    try:
        with live.db.connect() as conn, conn.transaction():
            for kind, make in (("_hnsw", q.create_hnsw_index), ("_time", q.create_time_index),
                               ("_fts", q.create_fts_index)):
                if conn.execute(q.find_relation(), [live.destination[0], q.index_name(live.destination, kind)]
                                ).fetchone() is not None:
                    conn.execute(make(shadow.destination))
            # the destination's readers, and a worker role granted for the live vectorizer
            # (grant_worker): it drains the shadow too
            lq, sq = _queue(live), _queue(shadow)
            pairs = [(live.destination, shadow.destination), (lq.queue, sq.queue), (lq.inbox, sq.inbox),
                     (lq.failed, sq.failed)]
            for theirs, ours in pairs:
                for role, privilege in conn.execute(q.table_grants(), list(theirs)).fetchall():
                    conn.execute(q.grant_on(privilege, ours, role))
    except psycopg.Error as exc:
        raise translate(exc, f"building the indexes of {'.'.join(shadow.destination)}") from exc


__all__ = ["PRICES", "SUFFIX", "Migration"]
