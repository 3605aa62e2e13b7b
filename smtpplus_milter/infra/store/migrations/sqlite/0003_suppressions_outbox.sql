-- The suppression list, soft-failure streaks, the notification outbox and complaint/unsubscribe reports (version 3).
-- One entry per (scope, address): scope is 'user:NAME', 'list:NAME' or 'global'; reason one of
-- hard_bounce, soft_bounce, complaint, unsubscribe, manual. Times are seconds since 1970 UTC;
-- expires NULL = never. created_by says who made it (the follower, ingest, or USER@HOST of a
-- command), source_node/source_queue_id the message that caused it, if any.
CREATE TABLE suppressions (
    scope TEXT NOT NULL,
    address TEXT NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('hard_bounce', 'soft_bounce', 'complaint', 'unsubscribe', 'manual')),
    created REAL NOT NULL,
    expires REAL,
    source_node TEXT,
    source_queue_id TEXT,
    created_by TEXT NOT NULL,
    PRIMARY KEY (scope, address)
);
-- The RCPT check's snapshot and `recipients` look entries up by address.
CREATE INDEX suppressions_address ON suppressions (address);

-- Messages in a row to the address (for the user) that failed softly, and since when.
ALTER TABLE contacts ADD COLUMN soft_streak INTEGER NOT NULL DEFAULT 0;
ALTER TABLE contacts ADD COLUMN soft_since REAL;

-- The notification outbox: one row per mail to send (a bounce or complaint notice to one address,
-- or one line of a daily digest). Enqueued in the transaction that recorded the outcome, so a
-- replayed log line never enqueues twice; (to_address, dedup) keeps one row per recipient and
-- message. Several relay hosts share the outbox: a sender claims rows for a lease (claimed_by,
-- claimed_until) and marks them sent; a lease that runs out (a crashed sender) frees the row.
CREATE TABLE notifications (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('bounce', 'complaint')),
    mode TEXT NOT NULL CHECK (mode IN ('immediate', 'daily')),
    to_address TEXT NOT NULL,
    dedup TEXT NOT NULL,
    digest TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL,
    next_try REAL NOT NULL,
    tries INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    claimed_by TEXT,
    claimed_until REAL,
    sent_at REAL,
    UNIQUE (to_address, dedup)
);
CREATE INDEX notifications_due ON notifications (sent_at, next_try);

-- Complaints and unsubscribes per message and recipient (they do not change the delivery
-- state); the key makes a report read twice (ingest retried by Postfix) count once.
CREATE TABLE reports (
    node TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('complaint', 'unsubscribe')),
    at REAL NOT NULL,
    detail TEXT,
    PRIMARY KEY (node, queue_id, recipient, kind)
);
