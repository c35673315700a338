-- pgvz_nb function pgvz.unsafe_tables, version 1
--
-- For the event functions: what is wrong with a vectorizer's queue (qschema.qtable), inbox,
-- failed and destination tables (named in its catalog config ``cfg``) for a superuser to
-- alter or write them, each and why, or NULL when each is a plain table owned by the
-- vectorizer's owner (cfg->>'owner') or a superuser, with no trigger, rule, or code of
-- another role on it (pgvz.foreign_code). The event functions run as a superuser: they go
-- only into and out of tables as pgvz_nb made them.
SELECT string_agg(format('%I.%I', t.s, t.r) || ' ' || u.why, '; ')
FROM (VALUES (qschema, qtable), (cfg->'inbox'->>0, cfg->'inbox'->>1),
             (cfg->'failed'->>0, cfg->'failed'->>1),
             (cfg->'pipeline'->'destination'->>0, cfg->'pipeline'->'destination'->>1)) AS t(s, r)
JOIN pg_namespace n ON n.nspname = t.s JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.r
JOIN pg_roles o ON o.oid = c.relowner
CROSS JOIN LATERAL (SELECT CASE
    WHEN c.relkind <> 'r' THEN 'is not a plain table'
    WHEN NOT (o.rolsuper OR coalesce(o.rolname = cfg->>'owner', false)) THEN 'is owned by ' || o.rolname
    WHEN EXISTS (SELECT 1 FROM pg_trigger tg WHERE tg.tgrelid = c.oid AND NOT tg.tgisinternal) THEN 'carries triggers'
    WHEN EXISTS (SELECT 1 FROM pg_rewrite rw WHERE rw.ev_class = c.oid AND rw.rulename <> '_RETURN')
      THEN 'carries rules'
    ELSE 'uses ' || pgvz.foreign_code(c.oid, array_remove(ARRAY[cfg->>'owner'], NULL)::name[]) END AS why) AS u
WHERE u.why IS NOT NULL
