-- Indexes for the read commands (version 2).
-- `messages show QID` finds a message by a queue id it continued as without knowing the node.
CREATE INDEX links_new_queue_id ON links (new_queue_id);
-- `recipients --user U` reads one user's recipients, most recently sent first.
CREATE INDEX contacts_user ON contacts (username, last_sent);
