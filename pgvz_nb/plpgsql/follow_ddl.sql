-- pgvz_nb function pgvz.follow_ddl, version 5
--
-- Run by event trigger pgvz_follow_ddl at the end of every CREATE TABLE, ALTER TABLE and
-- ALTER SCHEMA. For each vectorizer whose source (or a partition, child, or table running
-- its trigger function) the command touched: follow a renamed or moved source, or a renamed
-- schema, in the catalog; take on a new table created (or renamed) under the source's name
-- after the source was dropped, if it has the key columns (triggers, its rows queued, the
-- embeddings of rows it lacks queued for deletion); refuse the command if it renamed or
-- dropped a key column (every write would fail in the trigger), warn if it did so to a
-- watched column (every UPDATE is queued from then on); give a key column's new type to the
-- queue, inbox, failed and destination tables (an int key made bigint, say); put the
-- triggers on partitions and children that lack them and queue their rows (a table attached
-- with rows); queue the keys of tables detached since, dropping the triggers from them
-- (their rows left the source). A vectorizer with capture = 'wal' has no triggers to follow:
-- its table is only kept from losing the replica identity its key gives (without one,
-- PostgreSQL would refuse every UPDATE and DELETE of a table in a publication).
--
-- SECURITY DEFINER (see sql.create_event_function): it runs as the superuser who installed
-- it, so the guards hold for every role, the table's owner without access to schema pgvz
-- included. It fails the command only to refuse a key change (messages that start with
-- "pgvz_nb:", each with a HINT); anything else that goes wrong for a vectorizer becomes a
-- WARNING, and status() shows what is left uncovered until create() or register() runs
-- again. Key types are followed only to built-in types: a domain's CHECK would run here, as
-- the superuser. Setting pgvz.partition_event_trigger = off in a session turns it off there.
--
-- A copy kept in step with sql.py (tests/test_sql_files.py checks it): the trigger DDL of
-- sql._TRIGGER_DDL in the format() templates.
DECLARE
  -- CREATE TRIGGER of each event, as sql._TRIGGER_DDL makes it: names, source, function
  trigger_sql constant jsonb := jsonb_build_object(
    'insert', 'CREATE TRIGGER %I AFTER INSERT ON %I.%I REFERENCING NEW TABLE AS pgvz_new FOR EACH STATEMENT EXECUTE FUNCTION %I.%I()',
    'update', 'CREATE TRIGGER %I AFTER UPDATE ON %I.%I REFERENCING OLD TABLE AS pgvz_old NEW TABLE AS pgvz_new FOR EACH STATEMENT EXECUTE FUNCTION %I.%I()',
    'delete', 'CREATE TRIGGER %I AFTER DELETE ON %I.%I REFERENCING OLD TABLE AS pgvz_old FOR EACH STATEMENT EXECUTE FUNCTION %I.%I()',
    'truncate', 'CREATE TRIGGER %I BEFORE TRUNCATE ON %I.%I FOR EACH STATEMENT EXECUTE FUNCTION %I.%I()');
  objs oid[];
  v record;
  src oid;
  fn oid;
  tree oid[];
  d record;
  ev text;
  added boolean;
  fresh boolean;
  keys text;
  dkeys text;
  join_on text;
  gone text;
  moved record;
  ns record;
  cfg jsonb;
  bad text;
BEGIN
  -- schema pgvz renamed: every vectorized table's trigger names it (and so would fail)
  IF current_setting('pgvz.partition_event_trigger', true) IS DISTINCT FROM 'off' THEN
    FOR ns IN SELECT n.nspname FROM pg_event_trigger_ddl_commands() AS dc JOIN pg_namespace n ON n.oid = dc.objid
              WHERE dc.classid = 'pg_namespace'::regclass AND dc.command_tag = 'ALTER SCHEMA'
                AND n.oid = (SELECT p.pronamespace FROM pg_event_trigger e JOIN pg_proc p ON p.oid = e.evtfoid
                             WHERE e.evtname = 'pgvz_follow_ddl')
                AND n.nspname <> 'pgvz' LOOP
      RAISE EXCEPTION 'pgvz_nb: schema pgvz holds pgvz_nb''s catalog, queues and trigger functions, and the triggers on every vectorized table name it'
        USING ERRCODE = 'dependent_objects_still_exist',
              HINT = 'keep the name pgvz (to remove pgvz_nb, drop its vectorizers, then the schema)';
    END LOOP;
  END IF;
  -- nothing to do when turned off in this session, or when the catalog was dropped by hand
  IF current_setting('pgvz.partition_event_trigger', true) = 'off' OR to_regclass('pgvz.vectorizers') IS NULL THEN RETURN; END IF;
  -- a schema renamed: each name the catalog held for it (noted by pgvz_before_ddl at the
  -- statement's start, by the schema's oid) becomes the new one; nothing is matched by name
  FOR ns IN SELECT dc.objid, n.nspname AS new, (current_setting('pgvz.schema_names', true)::jsonb)->>(dc.objid::text) AS old
            FROM pg_event_trigger_ddl_commands() AS dc JOIN pg_namespace n ON n.oid = dc.objid
            WHERE dc.classid = 'pg_namespace'::regclass AND dc.command_tag = 'ALTER SCHEMA'
              AND coalesce(current_setting('pgvz.schema_names', true), '') <> '' LOOP
    CONTINUE WHEN ns.old IS NULL OR ns.old = ns.new;
    FOR v IN SELECT * FROM pgvz.vectorizers ORDER BY id LOOP
      IF v.config->'inbox'->>0 = ns.old THEN
        RAISE EXCEPTION 'pgvz_nb: schema % holds the inbox of vectorizer %, which its trigger names on every write (an older pgvz_nb put it there)',
          quote_ident(ns.new), v.name
          USING ERRCODE = 'dependent_objects_still_exist',
                HINT = 'unregister() the vectorizer and register() it again with this pgvz_nb, which keeps inboxes in schema pgvz; then rename the schema';
      END IF;
      cfg := v.config;
      IF cfg->'failed'->>0 = ns.old THEN
        cfg := jsonb_set(cfg, '{failed,0}', to_jsonb(ns.new::text));
      END IF;
      IF cfg->'function'->>0 = ns.old THEN
        cfg := jsonb_set(cfg, '{function,0}', to_jsonb(ns.new::text));
      END IF;
      IF cfg->'pipeline'->'destination'->>0 = ns.old THEN
        cfg := jsonb_set(cfg, '{pipeline,destination,0}', to_jsonb(ns.new::text));
      END IF;
      IF jsonb_typeof(cfg->'backfill') = 'array' THEN
        cfg := jsonb_set(cfg, '{backfill}', coalesce((
          SELECT jsonb_agg(CASE WHEN e->>0 = ns.old THEN jsonb_set(e, '{0}', to_jsonb(ns.new::text)) ELSE e END)
          FROM jsonb_array_elements(cfg->'backfill') AS e), '[]'));
      END IF;
      UPDATE pgvz.vectorizers AS c SET config = cfg,
        source_schema = CASE WHEN c.source_schema = ns.old THEN ns.new ELSE c.source_schema END,
        queue_schema = CASE WHEN c.queue_schema = ns.old THEN ns.new ELSE c.queue_schema END
      WHERE c.id = v.id AND (c.config IS DISTINCT FROM cfg OR ns.old IN (c.source_schema, c.queue_schema));
    END LOOP;
  END LOOP;
  SELECT array_agg(objid) INTO objs FROM pg_event_trigger_ddl_commands()
  WHERE classid = 'pg_class'::regclass;
  IF objs IS NULL THEN
    RETURN;
  END IF;
  <<vectorizers>>
  FOR v IN SELECT * FROM pgvz.vectorizers ORDER BY id LOOP
  BEGIN
    src := (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = v.source_schema AND c.relname = v.source_table);
    IF v.config->>'capture' = 'wal' THEN
      -- its table is the one of the oid create() recorded, wherever it is now (the catalog's
      -- name follows a rename only at the next capture); a table created under the name of
      -- one dropped is not in the publication, and not the vectorizer's until a capture takes
      -- it on: nothing to keep for it
      IF v.config ? 'source_oid' THEN
        src := (SELECT c.oid FROM pg_class c WHERE c.oid = (v.config->>'source_oid')::oid);
      END IF;
      -- and so must each partition's, at any depth (a partition's changes are published as
      -- its own): checked whenever the table or one of its partitions is touched (an ATTACH
      -- names the parent, a REPLICA IDENTITY the partition)
      FOR d IN
        WITH RECURSIVE tree(oid) AS (
          SELECT src WHERE src IS NOT NULL
          UNION ALL
          SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid)
        SELECT c.oid, n.nspname, c.relname FROM tree JOIN pg_class c ON c.oid = tree.oid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r'  -- a partitioned table's own identity publishes nothing: its leaves' do
          AND EXISTS (SELECT 1 FROM tree AS touched WHERE touched.oid = ANY (objs))
          AND NOT (c.relreplident = 'f' OR EXISTS (
            SELECT 1 FROM pg_index x WHERE x.indrelid = c.oid
              AND CASE c.relreplident WHEN 'i' THEN x.indisreplident
                                      WHEN 'd' THEN x.indisprimary AND x.indimmediate ELSE false END
              AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a
                   WHERE a.attrelid = c.oid AND a.attnum = ANY (x.indkey))
                = (SELECT array_agg(k ORDER BY k) FROM jsonb_array_elements_text(v.config->'keys') AS k)))
      LOOP
        RAISE EXCEPTION 'pgvz_nb: %.% is followed through the WAL by vectorizer %, whose key % must stay its replica identity%: without one PostgreSQL refuses every UPDATE and DELETE of a table in a publication',
          d.nspname, d.relname, v.name, v.config->'keys',
          CASE WHEN d.oid = src THEN '' ELSE ' (a partition of the vectorizer''s table)' END
          USING ERRCODE = 'dependent_objects_still_exist',
                HINT = 'switch the vectorizer to capture=''triggers'' first (create() again with capture="triggers"), or drop it; then alter the table';
      END LOOP;
      CONTINUE;
    END IF;
    fn := (SELECT p.oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = v.config->'function'->>0 AND p.proname = v.config->'function'->>1
             AND p.pronargs = 0);
    CONTINUE WHEN fn IS NULL;
    IF src IS NULL THEN
      -- renamed or moved to another schema: the touched table that carries the vectorizer's
      -- triggers and has no parent is its source; the catalog follows it
      SELECT c.oid, n.nspname, c.relname INTO moved FROM pg_trigger tg
      JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE tg.tgfoid = fn AND tg.tgrelid = ANY (objs) AND tg.tgname = v.config->'triggers'->>'insert'
        AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)
      LIMIT 1;
      CONTINUE WHEN NOT FOUND;
      UPDATE pgvz.vectorizers AS c SET source_schema = moved.nspname, source_table = moved.relname,
        config = CASE WHEN jsonb_typeof(c.config->'backfill') = 'array' THEN jsonb_set(c.config, '{backfill}', (
          SELECT jsonb_agg(CASE WHEN e = jsonb_build_array(v.source_schema, v.source_table)
                                THEN jsonb_build_array(moved.nspname, moved.relname) ELSE e END)
          FROM jsonb_array_elements(c.config->'backfill') AS e)) ELSE c.config END
      WHERE c.id = v.id;
      src := moved.oid;
    END IF;
    SELECT string_agg(quote_ident(k), ', ') INTO keys FROM jsonb_array_elements_text(v.config->'keys') AS k;
    -- a table under the source's name without its triggers: the source was dropped (or
    -- renamed away) and this one took its name; it is followed if it has the key columns
    fresh := src = ANY (objs) AND NOT EXISTS (
      SELECT 1 FROM pg_trigger tg WHERE tg.tgrelid = src AND tg.tgfoid = fn
        AND tg.tgname = v.config->'triggers'->>'insert');
    -- this function runs as a superuser: it alters or writes the vectorizer's own tables only
    -- if they are as pgvz_nb made them (owned by the vectorizer's owner or a superuser, with no
    -- code of anyone else's on them), else a role could have its code run as the superuser
    bad := CASE WHEN src = ANY (objs) THEN pgvz.unsafe_tables(v.queue_schema, v.queue_table, v.config) END;
    IF src = ANY (objs) THEN
      SELECT string_agg(quote_ident(k), ', ') INTO gone FROM jsonb_array_elements_text(v.config->'keys') AS k
      WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = src AND a.attname = k
                        AND a.attnum > 0 AND NOT a.attisdropped);
      IF fresh AND NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_roles o ON o.oid = c.relowner
                               WHERE c.oid = src AND (o.rolsuper OR o.rolname = v.config->>'source_owner')) THEN
        RAISE WARNING 'pgvz_nb: vectorizer % does not take on the new table %.%: it belongs to another role than the table it followed',
          v.name, v.source_schema, v.source_table
          USING HINT = 'drop the vectorizer (v.drop(), or unregister()) and create it again on the new table';
        CONTINUE;
      END IF;
      IF gone IS NOT NULL AND fresh THEN
        RAISE WARNING 'pgvz_nb: vectorizer % no longer follows %.%: the new table of that name has no key column %',
          v.name, v.source_schema, v.source_table, gone
          USING HINT = 'drop the vectorizer (v.drop(), or unregister()) and create it again on the new table';
        CONTINUE;
      END IF;
      -- a key column renamed or dropped would make every write to the table fail in the
      -- trigger: refuse the DDL, saying what to do instead
      IF gone IS NOT NULL THEN
        RAISE EXCEPTION 'pgvz_nb: % is the key of vectorizer %, whose triggers on %.% read it on every write',
          gone, v.name, v.source_schema, v.source_table
          USING ERRCODE = 'dependent_objects_still_exist',
                HINT = 'drop the vectorizer first (v.drop(keep_destination=True) keeps the embeddings), then alter the table and create the vectorizer again';
      END IF;
      SELECT string_agg(quote_ident(k), ', ') INTO gone
      FROM jsonb_array_elements_text(CASE jsonb_typeof(v.config->'watched') WHEN 'array' THEN v.config->'watched'
                                     ELSE '[]' END) AS k
      WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = src AND a.attname = k
                        AND a.attnum > 0 AND NOT a.attisdropped);
      IF gone IS NOT NULL THEN
        RAISE WARNING 'pgvz_nb: vectorizer % watches %, no longer in %.%: every UPDATE of the table is queued from now on, changed or not',
          v.name, gone, v.source_schema, v.source_table
          USING HINT = 'create the vectorizer again with replace=True (and a template naming the current columns)';
      END IF;
      -- a key column's new type (int -> bigint, say) goes to the tables holding keys, or the
      -- trigger would fail the first write of a value the old type cannot hold; a table of
      -- that name created again may bring a type the keys kept for the dropped one cannot
      -- take: those named rows that are gone, so they are emptied and it is tried again
      FOR attempt IN 1..2 LOOP
      BEGIN
          FOR d IN
            SELECT t.rel_schema, t.rel_name, t.col, CASE WHEN t.arr THEN k.typ || '[]' ELSE k.typ END AS want,
                   k.builtin, k.k
            FROM (SELECT k.k, k.i, format_type(a.atttypid, a.atttypmod) AS typ,
                         ty.typnamespace = 'pg_catalog'::regnamespace AS builtin
                  FROM jsonb_array_elements_text(v.config->'keys') WITH ORDINALITY AS k(k, i)
                  JOIN pg_attribute a ON a.attrelid = src AND a.attname = k.k
                  JOIN pg_type ty ON ty.oid = a.atttypid) AS k
            CROSS JOIN LATERAL (VALUES
              (v.queue_schema, v.queue_table, k.k, false),
              (v.config->'inbox'->>0, v.config->'inbox'->>1, k.k, true),
              (v.config->'failed'->>0, v.config->'failed'->>1, k.k, false),
              (v.config->'pipeline'->'destination'->>0, v.config->'pipeline'->'destination'->>1,
               v.config->'pipeline'->'dest_keys'->>(k.i::int - 1), false)) AS t(rel_schema, rel_name, col, arr)
            JOIN pg_namespace n ON n.nspname = t.rel_schema
            JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.rel_name
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = t.col AND NOT a.attisdropped
            WHERE format_type(a.atttypid, a.atttypmod) <> CASE WHEN t.arr THEN k.typ || '[]' ELSE k.typ END
          LOOP
            IF bad IS NOT NULL THEN
              RAISE EXCEPTION 'pgvz_nb: the key of vectorizer % changes type, and its tables cannot follow: %',
                v.name, bad
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'put the vectorizer''s tables back as pgvz_nb made them, or drop the vectorizer first (v.drop(keep_destination=True) keeps the embeddings)';
            END IF;
            IF NOT d.builtin THEN
              RAISE EXCEPTION 'pgvz_nb: the key % of vectorizer % becomes %, which is not a built-in type; its tables follow built-in key types only',
                quote_ident(d.k), v.name, d.want
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'drop the vectorizer first (v.drop(keep_destination=True) keeps the embeddings), then alter the table and create the vectorizer again';
            END IF;
            BEGIN
              EXECUTE format('ALTER TABLE %I.%I ALTER COLUMN %I TYPE %s USING %I::text::%s', d.rel_schema, d.rel_name, d.col, d.want, d.col, d.want);
            EXCEPTION WHEN OTHERS THEN
              IF SQLSTATE IN ('55P03', '57014') THEN
                RAISE;  -- the statement's own lock_timeout or statement_timeout: not a refusal
              END IF;
              RAISE EXCEPTION 'pgvz_nb: the key of vectorizer % changes type, and %.%.% cannot follow (%)',
                v.name, d.rel_schema, d.rel_name, d.col, SQLERRM
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'drop the vectorizer first (v.drop(keep_destination=True) keeps the embeddings), then alter the table and create the vectorizer again';
            END;
          END LOOP;
        EXIT;
      EXCEPTION WHEN OTHERS THEN
        IF NOT fresh OR SQLSTATE IN ('55P03', '57014') THEN
          RAISE;
        END IF;
        IF attempt = 2 OR bad IS NOT NULL THEN
          RAISE WARNING '%; vectorizer % does not follow the new table %.%', SQLERRM, v.name, v.source_schema, v.source_table
            USING HINT = 'drop the vectorizer (v.drop(), or unregister()) and create it again on the new table';
          CONTINUE vectorizers;
        END IF;
        FOR d IN SELECT t.s, t.r FROM (VALUES (v.queue_schema, v.queue_table),
                   (v.config->'inbox'->>0, v.config->'inbox'->>1), (v.config->'failed'->>0, v.config->'failed'->>1),
                   (v.config->'pipeline'->'destination'->>0, v.config->'pipeline'->'destination'->>1)) AS t(s, r)
                 JOIN pg_namespace n ON n.nspname = t.s JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.r LOOP
          EXECUTE format('TRUNCATE %I.%I', d.s, d.r);
        END LOOP;
      END;
      END LOOP;
    END IF;
    IF fresh AND bad IS NOT NULL THEN
      RAISE WARNING 'pgvz_nb: vectorizer % does not take on the new table %.%: %', v.name, v.source_schema, v.source_table, bad
        USING HINT = 'drop the vectorizer (v.drop(), or unregister()) and create it again on the new table';
      CONTINUE;
    END IF;
    IF fresh THEN
      -- take on the new table: its triggers, its rows queued (by the next sync, not in the
      -- application's statement), and, for a pipeline, the destination keys it does not hold
      -- queued now, so their embeddings go
      FOR ev IN SELECT jsonb_object_keys(v.config->'triggers') LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_trigger tg WHERE tg.tgrelid = src AND tg.tgname = v.config->'triggers'->>ev);
        EXECUTE format(trigger_sql->>ev,
                       v.config->'triggers'->>ev, v.source_schema, v.source_table,
                       v.config->'function'->>0, v.config->'function'->>1);
      END LOOP;
      UPDATE pgvz.vectorizers AS c SET config = jsonb_set(c.config, '{backfill}',
        coalesce(c.config->'backfill', '[]') || jsonb_build_array(jsonb_build_array(v.source_schema, v.source_table)))
      WHERE c.id = v.id;
      IF v.config->>'kind' = 'pipeline' AND EXISTS (
          SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = v.config->'pipeline'->'destination'->>0
            AND c.relname = v.config->'pipeline'->'destination'->>1) THEN
        SELECT string_agg(quote_ident(dk.k), ', ' ORDER BY sk.i), string_agg(format('s.%I::text = d.%I::text', sk.k, dk.k), ' AND ' ORDER BY sk.i)
        INTO dkeys, join_on
        FROM jsonb_array_elements_text(v.config->'keys') WITH ORDINALITY AS sk(k, i)
        JOIN jsonb_array_elements_text(v.config->'pipeline'->'dest_keys') WITH ORDINALITY AS dk(k, i) ON dk.i = sk.i;
        EXECUTE format('INSERT INTO %I.%I (%s) SELECT DISTINCT %s FROM %I.%I AS d WHERE NOT EXISTS (SELECT 1 FROM %I.%I AS s WHERE %s)', v.queue_schema, v.queue_table, keys, dkeys,
                       v.config->'pipeline'->'destination'->>0, v.config->'pipeline'->'destination'->>1,
                       v.source_schema, v.source_table, join_on);
      END IF;
      RAISE NOTICE 'pgvz_nb: vectorizer % follows the new table %.%; its rows are queued at the next sync', v.name, v.source_schema, v.source_table;
    END IF;
    -- the source and its partitions and children, any depth
    tree := ARRAY(WITH RECURSIVE dd(oid) AS (
                    SELECT src UNION SELECT i.inhrelid FROM pg_inherits i JOIN dd ON i.inhparent = dd.oid)
                  SELECT oid FROM dd);
    CONTINUE WHEN NOT (tree && objs OR EXISTS (
      SELECT 1 FROM pg_trigger tg WHERE tg.tgfoid = fn AND tg.tgrelid = ANY (objs)));
    IF NOT src = ANY (objs) THEN
      bad := pgvz.unsafe_tables(v.queue_schema, v.queue_table, v.config);
    END IF;
    -- partitions and children without the triggers: add them, queue the rows
    FOR d IN
      SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.oid = ANY (tree) AND c.oid <> src AND c.relkind IN ('r', 'p')
    LOOP
      added := false;
      FOR ev IN SELECT jsonb_object_keys(v.config->'triggers') LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_trigger tg WHERE tg.tgrelid = d.oid AND tg.tgfoid = fn
                              AND tg.tgname = v.config->'triggers'->>ev);
        EXECUTE format(trigger_sql->>ev,
                       v.config->'triggers'->>ev, d.nspname, d.relname,
                       v.config->'function'->>0, v.config->'function'->>1);
        added := true;
      END LOOP;
      IF added THEN  -- its rows (attached with the table, say) are queued by the next sync
        UPDATE pgvz.vectorizers AS c SET config = jsonb_set(c.config, '{backfill}',
          coalesce(c.config->'backfill', '[]') || jsonb_build_array(jsonb_build_array(d.nspname, d.relname)))
        WHERE c.id = v.id;
      END IF;
    END LOOP;
    -- tables detached from the source that still run its triggers
    FOR d IN
      SELECT DISTINCT c.oid, n.nspname, c.relname FROM pg_trigger tg
      JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE tg.tgfoid = fn AND NOT tg.tgisinternal AND tg.tgrelid <> ALL (tree)
    LOOP
      -- now, in the statement: the table may be dropped next, and its rows with it
      IF bad IS NULL THEN
        EXECUTE format('INSERT INTO %I.%I (%s) SELECT %s FROM %I.%I', v.queue_schema, v.queue_table, keys, keys, d.nspname, d.relname);
      ELSE
        RAISE WARNING 'pgvz_nb: vectorizer % could not queue the rows of %.%, which left its table: %', v.name, d.nspname, d.relname, bad;
      END IF;
      FOR ev IN SELECT tg.tgname FROM pg_trigger tg WHERE tg.tgrelid = d.oid AND tg.tgfoid = fn LOOP
        EXECUTE format('DROP TRIGGER %I ON %I.%I', ev, d.nspname, d.relname);
      END LOOP;
    END LOOP;
  EXCEPTION WHEN OTHERS THEN
    -- the refusals above are meant; anything else must not fail the application's DDL
    IF SQLERRM LIKE 'pgvz\_nb:%' THEN
      RAISE;
    END IF;
    RAISE WARNING 'pgvz_nb: vectorizer % could not follow this change to its table %.% (%)',
      v.name, v.source_schema, v.source_table, SQLERRM
      USING HINT = 'run create() or register() again; v.status() shows partitions left uncovered';
  END;
  END LOOP;
END
