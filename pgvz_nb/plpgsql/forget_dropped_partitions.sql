-- pgvz_nb function pgvz.forget_dropped_partitions, version 5
--
-- Run by event trigger pgvz_forget_dropped_partitions when objects are dropped (sql_drop).
-- If the dropped ones include a pipeline vectorizer's trigger on a table other than its
-- source (a partition dropped with DROP TABLE, whose rows are gone before any trigger could
-- read their keys), queue every destination key that no longer has a source row, so its
-- embeddings go: an anti-join over the destination, in the dropping transaction, seconds for
-- millions of chunks. Refuses to drop a partition or child of a callback vectorizer's source
-- (noted by pgvz.before_ddl); anything else that goes wrong becomes a WARNING. Refuses to drop
-- the REPLICA IDENTITY USING INDEX index of a capture = 'wal' vectorizer's table: PostgreSQL
-- would then refuse every UPDATE and DELETE of that published table.
DECLARE
  dropped text[];
  v record;
  keys text;
  dkeys text;
  join_on text;
  bad text;
BEGIN
  -- nothing to do when turned off in this session, or when the catalog was dropped by hand
  IF current_setting('pgvz.partition_event_trigger', true) = 'off' OR to_regclass('pgvz.vectorizers') IS NULL THEN RETURN; END IF;
  IF EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() AS o WHERE o.object_type = 'index') THEN
    -- its table by the oid create() recorded (the catalog's name follows a rename only at
    -- the next capture, and a table created under the name of one dropped is not its own),
    -- and each of its partitions (their changes are published as their own)
    FOR v IN WITH RECURSIVE tree(vname, oid) AS (
               SELECT c.name, k.oid FROM pgvz.vectorizers AS c
               JOIN pg_class k ON k.oid = CASE WHEN c.config ? 'source_oid' THEN (c.config->>'source_oid')::oid
                 ELSE (SELECT k2.oid FROM pg_class k2 JOIN pg_namespace n2 ON n2.oid = k2.relnamespace
                       WHERE n2.nspname = c.source_schema AND k2.relname = c.source_table) END
               WHERE c.config->>'capture' = 'wal'
               UNION ALL
               SELECT tree.vname, i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid)
             SELECT tree.vname AS name, n.nspname AS source_schema, k.relname AS source_table
             FROM tree JOIN pg_class k ON k.oid = tree.oid JOIN pg_namespace n ON n.oid = k.relnamespace
             WHERE k.relreplident = 'i'
               AND NOT EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = k.oid AND x.indisreplident) LOOP
      RAISE EXCEPTION 'pgvz_nb: %.% is followed through the WAL by vectorizer %, and this drops the index that is its replica identity: without one PostgreSQL refuses every UPDATE and DELETE of a table in a publication',
        v.source_schema, v.source_table, v.name
        USING ERRCODE = 'dependent_objects_still_exist',
              HINT = 'give the table another replica identity first (ALTER TABLE ... REPLICA IDENTITY DEFAULT, its key being the primary key), or switch the vectorizer to capture=''triggers'' first';
    END LOOP;
  END IF;
  -- a partition or child of a callback vectorizer's source, dropped while the source stays:
  -- its rows are gone before any trigger could read their keys, and a callback queue has no
  -- destination to find them in, so the consumer would never hear of them
  FOR v IN SELECT c.name, c.source_schema, c.source_table, t.relname
           FROM pg_event_trigger_dropped_objects() AS o
           JOIN (SELECT split_part(x, ':', 1)::oid AS rel, split_part(x, ':', 2)::int AS vid,
                        split_part(x, ':', 3) AS relname
                 FROM unnest(string_to_array(current_setting('pgvz.callback_children', true), ',')) AS x) AS t
             ON t.rel = o.objid
           JOIN pgvz.vectorizers AS c ON c.id = t.vid
           WHERE o.object_type = 'table'
             AND EXISTS (SELECT 1 FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace
                         WHERE n.nspname = c.source_schema AND k.relname = c.source_table) LOOP
    RAISE EXCEPTION 'pgvz_nb: % is a partition or child of %.%, whose callback vectorizer % learns of removed rows only from its triggers, and the rows of a dropped table can no longer be read',
      v.relname, v.source_schema, v.source_table, v.name
      USING ERRCODE = 'dependent_objects_still_exist',
            HINT = 'detach it first (ALTER TABLE ... DETACH PARTITION, or NO INHERIT): its rows are queued as deleted and its triggers taken off; then drop it';
  END LOOP;
  SELECT array_agg(o.address_names[3]) INTO dropped FROM pg_event_trigger_dropped_objects() AS o
  WHERE o.object_type = 'trigger';
  IF dropped IS NULL THEN
    RETURN;
  END IF;
  FOR v IN SELECT * FROM pgvz.vectorizers AS c WHERE c.config->>'kind' = 'pipeline'
           AND EXISTS (SELECT 1 FROM jsonb_each_text(c.config->'triggers') AS t WHERE t.value = ANY (dropped))
           ORDER BY c.id LOOP
    BEGIN
      CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                WHERE n.nspname = v.source_schema AND c.relname = v.source_table)
        OR NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = v.config->'pipeline'->'destination'->>0
                         AND c.relname = v.config->'pipeline'->'destination'->>1);
      bad := pgvz.unsafe_tables(v.queue_schema, v.queue_table, v.config);  -- as a superuser: only tables as pgvz_nb made them
      IF bad IS NOT NULL THEN
        RAISE EXCEPTION '%', bad;
      END IF;
      SELECT string_agg(quote_ident(k.k), ', ' ORDER BY k.i), string_agg(quote_ident(d.k), ', ' ORDER BY k.i),
             string_agg(format('s.%I::text = d.%I::text', k.k, d.k), ' AND ' ORDER BY k.i)
      INTO keys, dkeys, join_on
      FROM jsonb_array_elements_text(v.config->'keys') WITH ORDINALITY AS k(k, i)
      JOIN jsonb_array_elements_text(v.config->'pipeline'->'dest_keys') WITH ORDINALITY AS d(k, i) ON d.i = k.i;
      EXECUTE format('INSERT INTO %I.%I (%s) SELECT DISTINCT %s FROM %I.%I AS d WHERE NOT EXISTS (SELECT 1 FROM %I.%I AS s WHERE %s)', v.queue_schema, v.queue_table, keys, dkeys,
                     v.config->'pipeline'->'destination'->>0, v.config->'pipeline'->'destination'->>1,
                     v.source_schema, v.source_table, join_on);
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'pgvz_nb: vectorizer % could not queue the keys of dropped rows (%); run its reconcile()',
        v.name, SQLERRM;
    END;
  END LOOP;
END
