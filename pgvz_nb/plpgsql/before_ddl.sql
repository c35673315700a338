-- pgvz_nb function pgvz.before_ddl, version 2
--
-- Run by event trigger pgvz_before_ddl at the start of DROP TABLE / SCHEMA / OWNED and ALTER
-- SCHEMA. Notes, in transaction-local settings: the names of the schemas the catalog names,
-- by oid (pgvz.schema_names, for pgvz.follow_ddl to follow a schema renamed); and, for
-- pgvz.forget_dropped_partitions, which tables carry a callback vectorizer's triggers
-- without being its source (its partitions and children), as 'oid:vectorizer id:name,...'
-- (pgvz.callback_children). At sql_drop time those tables and triggers are gone from the
-- catalogs, so this is the one moment to see which table belonged to which vectorizer.
DECLARE
  found text;
  names jsonb;
BEGIN
  -- nothing to do when turned off in this session, or when the catalog was dropped by hand
  IF current_setting('pgvz.partition_event_trigger', true) = 'off' OR to_regclass('pgvz.vectorizers') IS NULL THEN RETURN; END IF;
  SELECT string_agg(tg.tgrelid::text || ':' || c.id || ':' || replace(replace(k.relname, ',', '_'), ':', '_'), ',')
  INTO found
  FROM pgvz.vectorizers AS c
  JOIN pg_namespace fn ON fn.nspname = c.config->'function'->>0
  JOIN pg_proc p ON p.pronamespace = fn.oid AND p.proname = c.config->'function'->>1 AND p.pronargs = 0
  JOIN pg_trigger tg ON tg.tgfoid = p.oid AND tg.tgname = c.config->'triggers'->>'insert'
  JOIN pg_class k ON k.oid = tg.tgrelid JOIN pg_namespace kn ON kn.oid = k.relnamespace
  WHERE c.config->>'kind' = 'callback'
    AND NOT (kn.nspname = c.source_schema AND k.relname = c.source_table);
  PERFORM set_config('pgvz.callback_children', coalesce(found, ''), true);
  -- the schemas the catalog names, by oid: an ALTER SCHEMA ... RENAME is then followed from the
  -- old name to the new one exactly (pgvz_follow_ddl), whatever else holds a table of a like name
  SELECT jsonb_object_agg(n.oid::text, n.nspname) INTO names
  FROM pg_namespace n
  WHERE n.nspname IN (SELECT unnest(ARRAY[c.source_schema, c.queue_schema, c.config->'inbox'->>0,
                                          c.config->'failed'->>0, c.config->'function'->>0,
                                          c.config->'pipeline'->'destination'->>0])
                      FROM pgvz.vectorizers AS c);
  PERFORM set_config('pgvz.schema_names', coalesce(names::text, ''), true);
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING 'pgvz_nb: could not note the partitions of callback vectorizers (%)', SQLERRM;
END
