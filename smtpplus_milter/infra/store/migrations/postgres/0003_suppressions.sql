-- The suppression list and the soft-failure streaks (version 3).
-- One entry per (scope, address): scope is 'user:NAME', 'list:NAME' or 'global'; reason one of
-- hard_bounce, soft_bounce, complaint, unsubscribe, manual. Times are seconds since 1970 UTC;
-- expires NULL = never. created_by says who made it (the follower, ingest, or USER@HOST of a
-- command), source_node/source_queue_id the message that caused it, if any.
CREATE TABLE suppressions (
    scope TEXT NOT NULL,
    address TEXT NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('hard_bounce', 'soft_bounce', 'complaint', 'unsubscribe', 'manual')),
    created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION,
    source_node TEXT,
    source_queue_id TEXT,
    created_by TEXT NOT NULL,
    PRIMARY KEY (scope, address)
);
-- The RCPT check's snapshot and `recipients` look entries up by address.
CREATE INDEX suppressions_address ON suppressions (address);

-- Messages in a row to the address (for the user) that failed softly, and since when.
ALTER TABLE contacts ADD COLUMN soft_streak INTEGER NOT NULL DEFAULT 0;
ALTER TABLE contacts ADD COLUMN soft_since DOUBLE PRECISION;
