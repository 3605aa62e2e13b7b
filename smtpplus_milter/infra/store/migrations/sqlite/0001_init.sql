-- The tracking store, version 1 (SQLite). Times are seconds since 1970 UTC (REAL).
-- One row per message the milter accepted; (node, queue_id) is the message's identity. The rcpt_*
-- columns count its recipients per current state (kept by the store with every state change) so that
-- stats read one row per message and never join the recipients.
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    username TEXT NOT NULL,
    list_name TEXT,
    envelope_from TEXT NOT NULL,
    header_from TEXT,
    subject TEXT,
    message_id TEXT,
    size INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    queue TEXT,
    accepted_at REAL NOT NULL,
    -- The UTC day of accepted_at (whole days since 1970): stats by date group on it through an index.
    day INTEGER NOT NULL,
    rcpt_total INTEGER NOT NULL DEFAULT 0,
    rcpt_delivered INTEGER NOT NULL DEFAULT 0,
    rcpt_deferred INTEGER NOT NULL DEFAULT 0,
    rcpt_bounced INTEGER NOT NULL DEFAULT 0,
    rcpt_expired INTEGER NOT NULL DEFAULT 0,
    rcpt_suppressed INTEGER NOT NULL DEFAULT 0,
    complaints INTEGER NOT NULL DEFAULT 0,
    unsubscribes INTEGER NOT NULL DEFAULT 0,
    UNIQUE (node, queue_id)
);
-- Covering index for stats by date: read in day order, so the grouping needs no sort and no table
-- row (accepted_at is in it for the exact since/until bounds inside the first and last day).
CREATE INDEX messages_day ON messages (day, accepted_at, rcpt_total, rcpt_delivered, rcpt_deferred,
    rcpt_bounced, rcpt_expired, rcpt_suppressed, complaints, unsubscribes);
CREATE INDEX messages_accepted ON messages (accepted_at);
CREATE INDEX messages_user ON messages (username, accepted_at);
CREATE INDEX messages_queue_id ON messages (queue_id);
CREATE INDEX messages_message_id ON messages (message_id);

-- One row per envelope recipient of a message, with its current state.
CREATE TABLE recipients (
    message INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'deferred', 'delivered', 'bounced', 'expired', 'suppressed')),
    PRIMARY KEY (message, address)
);
CREATE INDEX recipients_address ON recipients (address);

-- Every delivery attempt as the log told it, keyed by what makes a log line unique, so a replayed
-- line is recognised. Not tied to a message row: an attempt may arrive before the milter's record.
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    at REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('sent', 'deferred', 'bounced', 'expired')),
    dsn TEXT NOT NULL DEFAULT '',
    relay TEXT,
    delay REAL,
    reply TEXT,
    class TEXT CHECK (class IS NULL OR class IN ('hard', 'soft', 'blocked')),
    UNIQUE (node, queue_id, recipient, at, status, dsn)
);
CREATE INDEX attempts_at ON attempts (at);

-- Queue-id changes: new_queue_id continues queue_id (kind queued_as) or notifies about it.
CREATE TABLE links (
    node TEXT NOT NULL,
    new_queue_id TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('queued_as', 'notification')),
    PRIMARY KEY (node, new_queue_id)
);
CREATE INDEX links_queue_id ON links (node, queue_id);

-- The log follower's position per node, saved in the transaction of the attempts it read.
CREATE TABLE positions (
    node TEXT PRIMARY KEY,
    file_id TEXT NOT NULL,
    byte_offset INTEGER NOT NULL
);

-- The recipients database: one row per (user, address).
CREATE TABLE contacts (
    username TEXT NOT NULL,
    address TEXT NOT NULL,
    first_sent REAL NOT NULL,
    last_sent REAL NOT NULL,
    messages INTEGER NOT NULL,
    state TEXT NOT NULL,
    suppressed TEXT,
    PRIMARY KEY (username, address)
);
CREATE INDEX contacts_last_sent ON contacts (last_sent);
