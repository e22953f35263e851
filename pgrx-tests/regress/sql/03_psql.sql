-- What psql's \dx+, \df+, \d+ and SHOW/pg_settings tell a DBA about the extension: every object
-- has a comment, every setting a description (and a unit when it is a time), and every time
-- a function or view returns is an interval or a timestamp, never a bare number.
CREATE EXTENSION IF NOT EXISTS session_reaper;

-- Objects of the extension (what \dx+ session_reaper lists) without a comment: none. The row
-- types of its tables and views (and their arrays), which PostgreSQL 18 records as members
-- too, come with the relation and are described by its comment.
SELECT pg_describe_object(d.classid, d.objid, 0) AS without_comment
  FROM pg_depend d
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'session_reaper')
   AND obj_description(d.objid, d.classid::regclass::name) IS NULL
   AND NOT EXISTS (SELECT FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem
                    WHERE d.classid = 'pg_type'::regclass AND t.oid = d.objid
                      AND (t.typrelid <> 0 OR e.typrelid <> 0))
 ORDER BY 1;

-- Settings without a short and a long description, or a time setting without a unit: none.
SELECT name, short_desc, extra_desc, unit
  FROM pg_settings
 WHERE name LIKE 'reaper.%'
   AND (coalesce(short_desc, '') = '' OR coalesce(extra_desc, '') = ''
        OR (vartype = 'integer' AND unit IS NULL
            AND name ~ '(interval|delay|runtime|timeout|retention|lag)$'))
 ORDER BY name;

-- Result columns of the extension's functions and views, with a time-like name but not an
-- interval or timestamp type: none.
WITH ext AS (
  SELECT d.classid, d.objid FROM pg_depend d
   WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
     AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'session_reaper')
), columns AS (
  SELECT p.proname::text AS object, a.name, a.type
    FROM ext JOIN pg_proc p ON ext.classid = 'pg_proc'::regclass AND p.oid = ext.objid
   CROSS JOIN LATERAL unnest(p.proargnames, p.proallargtypes::oid[], p.proargmodes)
                      AS a(name, type, mode)
   WHERE a.mode = 't'
  UNION ALL
  SELECT c.relname::text, att.attname::text, att.atttypid
    FROM ext JOIN pg_class c ON ext.classid = 'pg_class'::regclass AND c.oid = ext.objid
    JOIN pg_attribute att ON att.attrelid = c.oid AND att.attnum > 0 AND NOT att.attisdropped
   WHERE c.relkind = 'v'
)
SELECT object, name, format_type(type, NULL) AS type
  FROM columns
 WHERE name ~ '(_at|duration|_age|_batch|grace|ttl|_ms|_seconds|_secs)$'
   AND type NOT IN ('interval'::regtype, 'timestamptz'::regtype)
 ORDER BY 1, 2;

-- The time columns of reaper_stats(), as a scrape or psql shows them.
SELECT a.name, format_type(a.type, NULL) AS type
  FROM pg_proc p
 CROSS JOIN LATERAL unnest(p.proargnames, p.proallargtypes::oid[], p.proargmodes) AS a(name, type, mode)
 WHERE p.proname = 'reaper_stats' AND a.mode = 't'
   AND a.type IN ('interval'::regtype, 'timestamptz'::regtype)
 ORDER BY a.name;
