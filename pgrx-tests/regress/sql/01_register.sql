-- What a DBA sees from psql when registering targets, good and bad.
CREATE EXTENSION IF NOT EXISTS session_reaper;
SET TimeZone = 'America/New_York';
CREATE TABLE sessions (id bigserial PRIMARY KEY, token text, pinned boolean NOT NULL DEFAULT false,
                       expires_at timestamptz NOT NULL);
CREATE INDEX ON sessions (expires_at);
CREATE TABLE web_sessions (sid text PRIMARY KEY, sess json, expire timestamp NOT NULL);
CREATE VIEW live_sessions AS SELECT * FROM sessions;

SELECT reaper_register('sessions');
-- A timestamp column: the zone it is read in is said out loud.
SELECT reaper_register('web_sessions', 'expire');
-- Registering again replaces the rule and keeps the id.
SELECT reaper_register('sessions', grace => '5 minutes', predicate => 'NOT pinned', schedule => '*/15 * * * *');
SELECT id, target, column_name, timezone, grace, ttl, predicate, batch_size, schedule, action, enabled
  FROM reaper_targets ORDER BY id;

-- The exact SQL each rule becomes.
SELECT target, statement FROM reaper_dry_run() ORDER BY target::text;

-- Bad input: each an ERROR that names the object and says what to do.
SELECT reaper_register('no_such_table');
SELECT reaper_register('live_sessions');
SELECT reaper_register('sessions', 'expires');
SELECT reaper_register('sessions', 'token');
SELECT reaper_register('sessions', batch_size => 0);
SELECT reaper_register('sessions', schedule => 'sometimes');
SELECT reaper_register('sessions', timezone => 'UTC');
SELECT reaper_register('web_sessions', 'expire', timezone => 'Mars/Olympus_Mons');
SELECT reaper_register('sessions', predicate => 'pinned AND');
SELECT reaper_register('sessions', predicate => 'id');
SELECT reaper_register('sessions', predicate => 'true); DROP TABLE sessions; SELECT (1');
SELECT reaper_register('sessions', action => 'archive');
SELECT reaper_unregister('live_sessions');
-- Nothing above changed the registry.
SELECT count(*) AS targets FROM reaper_targets;

SELECT reaper_enable('web_sessions', false);
SELECT target, enabled FROM reaper_targets ORDER BY id;
SELECT reaper_unregister('web_sessions');
SELECT target FROM reaper_targets ORDER BY id;
SELECT reaper_unregister('sessions');
DROP TABLE sessions, web_sessions CASCADE;
