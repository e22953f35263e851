-- The actions beyond delete, as a DBA uses them from psql: archive, update (soft expiry) and
-- drop_partitions; what the dry run says about each, and the errors bad options get.
SET client_min_messages = warning;
CREATE TABLE logins (id bigint PRIMARY KEY, account text NOT NULL, expires_at timestamptz NOT NULL,
                     ended_at timestamptz);
INSERT INTO logins SELECT g, 'acct' || g % 7, now() - interval '1 hour' + g * interval '1 minute', NULL
  FROM generate_series(1, 120) g;

-- archive: dead rows move, in the same transaction, into a table with the same columns.
CREATE TABLE logins_archive (LIKE logins, archived_at timestamptz NOT NULL DEFAULT now());
SELECT reaper_register('logins', action => 'archive', archive_table => 'logins_archive', enabled => false) > 0 AS registered;
SELECT action, would_delete, partitions_to_drop FROM reaper_dry_run('logins');
SELECT target, rows_deleted, status FROM reaper_purge('logins');
SELECT (SELECT count(*) FROM logins) AS kept, (SELECT count(*) FROM logins_archive) AS archived,
       (SELECT count(*) FROM logins WHERE expires_at < now()) AS dead_left;

-- update: soft expiry; the predicate keeps it from updating the same rows on every run.
UPDATE logins SET expires_at = expires_at - interval '1 hour' WHERE id <= 80;
SELECT reaper_register('logins', action => 'update', update_set => 'ended_at = expires_at',
                       predicate => 'ended_at IS NULL', enabled => false) > 0 AS registered;
SELECT target, rows_deleted, status FROM reaper_purge('logins');
SELECT target, rows_deleted, status FROM reaper_purge('logins');
SELECT count(*) FILTER (WHERE ended_at IS NOT NULL) AS ended, count(*) AS rows FROM logins;

-- drop_partitions: whole days that hold only dead rows go at once.
CREATE TABLE visits (id bigint, expires_at timestamptz NOT NULL) PARTITION BY RANGE (expires_at);
CREATE TABLE visits_old PARTITION OF visits FOR VALUES FROM ('2020-01-01') TO ('2020-01-02');
CREATE TABLE visits_now PARTITION OF visits FOR VALUES FROM ('2020-01-02') TO (MAXVALUE);
INSERT INTO visits VALUES (1, '2020-01-01 12:00+00'), (2, '2020-01-02 12:00+00'), (3, now() + interval '1 day');
SELECT reaper_register('visits', action => 'drop_partitions', enabled => false) > 0 AS registered;
SELECT action, would_delete, partitions_to_drop FROM reaper_dry_run('visits');
SELECT target, rows_deleted, partitions_dropped, status FROM reaper_purge('visits');
SELECT id FROM visits ORDER BY id;
SELECT to_regclass('visits_old') IS NULL AS old_partition_gone;

-- Bad options: each an ERROR that names the table and says what to do.
SELECT reaper_register('logins', action => 'update', update_set => 'ended_at = now()');
SELECT reaper_register('logins', action => 'update', update_set => 'ended_at = now() WHERE true',
                       predicate => 'ended_at IS NULL');
CREATE TABLE logins_thin (id bigint, expires_at timestamptz);
SELECT reaper_register('logins', action => 'archive', archive_table => 'logins_thin');
SELECT reaper_register('logins', action => 'drop_partitions');
CREATE TABLE visits_by_list (id bigint, expires_at timestamptz) PARTITION BY LIST (id);
SELECT reaper_register('visits_by_list', action => 'drop_partitions');
SELECT reaper_register('visits', action => 'drop_partitions', predicate => 'id > 1');
