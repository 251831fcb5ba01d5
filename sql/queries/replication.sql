-- name: flush_position$
-- The primary's WAL position flushed to disk, read after a write's commit: that
-- commit's record ends at or before it (synchronous_commit on), and a standby
-- that has replayed past it sees the write. Not the insert position: WAL inserted
-- but not yet flushed is not streamed, so a standby could wait on it.
SELECT pg_current_wal_flush_lsn()::text;

-- name: replay_position$
-- How far a standby has replayed; NULL on a server that is not in recovery (a
-- primary, or a promoted standby), which must not serve replica reads.
SELECT pg_last_wal_replay_lsn()::text;
