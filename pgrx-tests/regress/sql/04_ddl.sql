-- What a DBA sees when DDL changes a registered table (issue 17 items 6 and 15), and NULL
-- arguments (item 13).
CREATE EXTENSION IF NOT EXISTS session_reaper;
CREATE TABLE ddl_sessions (id bigint, pinned boolean NOT NULL DEFAULT false, expires_at timestamptz NOT NULL);
CREATE TABLE ddl_tokens (id bigint, expires_at timestamptz NOT NULL);
CREATE TABLE ddl_tokens_archive (LIKE ddl_tokens);
SELECT reaper_register('ddl_sessions', predicate => 'NOT pinned') > 0 AS registered;
SELECT reaper_register('ddl_tokens', action => 'archive', archive_table => 'ddl_tokens_archive') > 0 AS registered;

-- A NULL that has no meaning: an ERROR naming the argument.
SELECT reaper_register(NULL);
SELECT reaper_register('ddl_sessions', NULL);
SELECT reaper_unregister(NULL);
SELECT reaper_enable('ddl_sessions', NULL);

-- A change the rule survives leaves the target alone.
ALTER TABLE ddl_sessions ADD COLUMN note text;
-- A rename the predicate does not survive disables the target, and says how to re-register.
ALTER TABLE ddl_sessions RENAME COLUMN pinned TO kept;
SELECT target, enabled FROM reaper_targets WHERE target::text LIKE 'ddl_%' ORDER BY id;
SELECT reaper_register('ddl_sessions', predicate => 'NOT kept') > 0 AS registered;
-- Dropping the column the predicate uses: the same.
ALTER TABLE ddl_sessions DROP COLUMN kept;
SELECT target, enabled FROM reaper_targets WHERE target::text LIKE 'ddl_%' ORDER BY id;

-- An archive table in use cannot be dropped alone.
DROP TABLE ddl_tokens_archive;
-- Dropping a registered table takes its target with it, the archive table too when both go.
DROP TABLE ddl_tokens, ddl_tokens_archive;
DROP TABLE ddl_sessions;
SELECT count(*) AS targets FROM reaper_targets WHERE target::text LIKE 'ddl_%';
