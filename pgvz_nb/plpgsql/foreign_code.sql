-- pgvz_nb function pgvz.foreign_code, version 1
--
-- What code on table ``rel`` belongs to a role that is neither a superuser nor one of
-- ``trusted``, as a text, or NULL if none: the functions, types (domains and their CHECKs),
-- operators and operator classes its columns, defaults, generated columns, constraints and
-- indexes use, except an extension's (pgvector's). Such code runs with the privileges of
-- whoever writes into the table, or alters it. Foreign keys count too (a cascade writes
-- elsewhere). Called by pgvz.unsafe_tables; sql.relation_trust puts the same text in its
-- query (with rel and trusted as the columns of a one-row subquery), so it holds no percent
-- sign, which a query with parameters would read as a placeholder.
SELECT coalesce(string_agg(DISTINCT pg_describe_object(dep.refclassid, dep.refobjid, 0)
                              || ' owned by ' || r.rolname, ', '),
               (SELECT 'a foreign key ' || fk.conname || ' with a table of ' || fr.rolname
                FROM pg_constraint fk
                JOIN pg_class ft ON ft.oid = CASE WHEN fk.conrelid = rel THEN fk.confrelid ELSE fk.conrelid END
                JOIN pg_roles fr ON fr.oid = ft.relowner
                WHERE fk.contype = 'f' AND (fk.conrelid = rel OR fk.confrelid = rel)
                  AND NOT fr.rolsuper AND fr.rolname <> ALL (trusted) LIMIT 1))
 FROM pg_depend dep
 JOIN pg_roles r ON r.oid = CASE dep.refclassid
      WHEN 'pg_proc'::regclass THEN (SELECT x.proowner FROM pg_proc x WHERE x.oid = dep.refobjid)
      WHEN 'pg_type'::regclass THEN (SELECT x.typowner FROM pg_type x WHERE x.oid = dep.refobjid)
      WHEN 'pg_operator'::regclass THEN (SELECT x.oprowner FROM pg_operator x WHERE x.oid = dep.refobjid)
      WHEN 'pg_opclass'::regclass THEN (SELECT x.opcowner FROM pg_opclass x WHERE x.oid = dep.refobjid) END
 WHERE dep.deptype IN ('n', 'a')
   AND ((dep.classid = 'pg_class'::regclass
         AND (dep.objid = rel OR dep.objid IN (SELECT i.indexrelid FROM pg_index i WHERE i.indrelid = rel)))
        OR (dep.classid = 'pg_constraint'::regclass
            AND dep.objid IN (SELECT k.oid FROM pg_constraint k WHERE k.conrelid = rel))
        OR (dep.classid = 'pg_attrdef'::regclass
            AND dep.objid IN (SELECT a.oid FROM pg_attrdef a WHERE a.adrelid = rel)))
   AND NOT r.rolsuper AND r.rolname <> ALL (trusted)
   AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = dep.refclassid AND e.objid = dep.refobjid
                   AND e.deptype = 'e')
