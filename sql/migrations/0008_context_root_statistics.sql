-- Tell the planner that a message's root follows from its context. Never edit
-- this file once released.
--
-- Since 0007 every probe of messages pins both context_id and root_id, and the
-- service runs generic plans (configure_session), costed on an average context.
-- Taking the two equalities as independent, the planner put that average at
-- (rows per context) / (number of roots): one row, whatever the data. With ties
-- at one row it read a window's probe through the primary key and sorted the
-- whole context by cum_tokens, and a read as of a time likewise by created_at:
-- 16-30 ms for a window of 100,000 messages instead of 0.5, once a database held
-- many short conversations (tests/integration/test_read_cost.py, bench/RESULTS.md).
-- A functional dependency statistic gives back the estimate the plans had
-- before 0007 (rows per context), with which the ordered indexes win again. It
-- is filled by ANALYZE (autovacuum's included); no index changes, nothing to
-- rebuild, and the previous release's statements plan as they did.

CREATE STATISTICS messages_context_root (dependencies) ON context_id, root_id FROM messages;
ANALYZE messages;
