-- Sessions (sidecar placement sessions) and EP sessions, as service/store.py describes them.
-- Arrays are raw blobs: counts float64 [L, E]; EP batches int32 [L, E].
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    num_layers INTEGER NOT NULL,
    num_experts INTEGER NOT NULL,
    counts BYTEA NOT NULL,
    plan_counts BYTEA NOT NULL,
    plan TEXT,
    version INTEGER NOT NULL,
    num_observations BIGINT NOT NULL,
    touched_s DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    lease_until_s DOUBLE PRECISION
);
-- Observation ids already counted (exactly-once retries); the last few thousand per session.
CREATE TABLE observations_seen (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    observation_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (session_id, observation_id)
);
CREATE INDEX observations_seen_seq ON observations_seen (session_id, seq);
CREATE TABLE ep_sessions (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    placement TEXT NOT NULL,
    version INTEGER NOT NULL,
    num_batches BIGINT NOT NULL,
    moved_last INTEGER NOT NULL DEFAULT 0,
    touched_s DOUBLE PRECISION NOT NULL
);
CREATE TABLE ep_batches (
    session_id TEXT NOT NULL REFERENCES ep_sessions (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    hist BYTEA NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE INDEX sessions_touched ON sessions (touched_s);
CREATE INDEX ep_sessions_touched ON ep_sessions (touched_s);
