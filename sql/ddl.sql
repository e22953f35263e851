-- session_reaper and DDL: a target stores its table as an OID and its column, predicate and SET
-- list as text, so Postgres records no dependency on them; these event triggers stand in for one
-- (src/ddl.rs). A dropped table's target goes with it, an archive table still in use cannot be
-- dropped, and a target that a change to its table leaves unable to run is disabled with a
-- WARNING.
--
-- None of these functions is SECURITY DEFINER: event trigger functions run as the role whose
-- DDL fired them, and the Rust functions read the command's objects from
-- pg_event_trigger_dropped_objects() / pg_event_trigger_ddl_commands(), which fail outside an
-- event trigger. Called by hand they do nothing but fail, so EXECUTE stays with PUBLIC (any
-- role's DROP or ALTER TABLE must be able to run them). Writes to the registry switch to the
-- extension's owner inside Rust, as reaper_register does.

CREATE FUNCTION reaper_forget_dropped() RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_forget_dropped_wrapper';
COMMENT ON FUNCTION reaper_forget_dropped()
    IS 'session_reaper: in a sql_drop event trigger, unregister the targets of dropped tables and refuse to drop an archive table in use';

CREATE FUNCTION reaper_recheck_altered() RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'reaper_recheck_altered_wrapper';
COMMENT ON FUNCTION reaper_recheck_altered()
    IS 'session_reaper: in a ddl_command_end event trigger, disable the targets an ALTER TABLE or ALTER TYPE left unable to run';

CREATE FUNCTION reaper_on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@.reaper_forget_dropped();
END
$$;
COMMENT ON FUNCTION reaper_on_sql_drop() IS 'session_reaper: the sql_drop event trigger''s function';

CREATE FUNCTION reaper_on_alter_table() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@.reaper_recheck_altered();
END
$$;
COMMENT ON FUNCTION reaper_on_alter_table() IS 'session_reaper: the ddl_command_end event trigger''s function';

-- Every drop: DROP TABLE, DROP SCHEMA … CASCADE, DROP OWNED, and the column drops of ALTER
-- TABLE … DROP COLUMN or DROP TYPE … CASCADE. DROP EXTENSION session_reaper drops these
-- triggers with the rest, and they do not fire for it.
CREATE EVENT TRIGGER reaper_forget_dropped_tables ON sql_drop
    EXECUTE FUNCTION reaper_on_sql_drop();
COMMENT ON EVENT TRIGGER reaper_forget_dropped_tables
    IS 'session_reaper: a dropped table''s target goes with it; an archive table in use cannot be dropped alone';

-- The commands that rename, drop or retype a table's column: ALTER TABLE, and ALTER TYPE … CASCADE
-- for the columns of typed tables (CREATE TABLE … OF type). ALTER TABLE also moves a table to
-- another schema (where the predicate's unqualified names resolve) and gives it another owner (as
-- whom the rule runs).
CREATE EVENT TRIGGER reaper_recheck_altered_tables ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER TYPE')
    EXECUTE FUNCTION reaper_on_alter_table();
COMMENT ON EVENT TRIGGER reaper_recheck_altered_tables
    IS 'session_reaper: a target that an ALTER leaves unable to run is disabled, with a WARNING';
