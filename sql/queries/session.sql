-- name: configure_session$
-- Sets a new pooled connection's statement timeout and time zone.
SELECT set_config('statement_timeout', %(statement_timeout)s, false),
       set_config('TimeZone', 'UTC', false);

-- name: ping$
-- One round trip, for the health check.
SELECT 1;
