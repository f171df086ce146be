-- wafer's schema. Embedded in the binary (store.rs) and applied by `PRAGMA user_version`:
-- version 1 is this whole file. A later change appends a migration to store::MIGRATIONS rather
-- than editing a released version.

-- Registered mini programs and official accounts. `id` is the numeric app_id of the /mina dialect.
CREATE TABLE apps (
    id            INTEGER PRIMARY KEY,
    appid         TEXT    NOT NULL UNIQUE,
    secret        TEXT    NOT NULL,
    kind          TEXT    NOT NULL DEFAULT 'miniprogram' CHECK (kind IN ('miniprogram', 'official')),
    title         TEXT    NOT NULL DEFAULT '',
    login_days    INTEGER NOT NULL DEFAULT 30,
    session_secs  INTEGER NOT NULL DEFAULT 2592000,
    token         TEXT,            -- callback token (server URL verification)
    aes_key       TEXT,            -- EncodingAESKey (43 chars)
    prev_aes_key  TEXT,            -- the previous EncodingAESKey, tried when the current one fails
    forward_url   TEXT,
    created_at    INTEGER NOT NULL
);

-- One row per (app, openid): the public `id`, the latest session_key WeChat gave, the user's data.
CREATE TABLE users (
    id           TEXT    PRIMARY KEY,                 -- 32 lowercase hex, stable per (app, openid)
    app          INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    openid       TEXT    NOT NULL,
    unionid      TEXT,
    session_key  TEXT    NOT NULL,                    -- never leaves the server
    user_info    TEXT,                                -- JSON object, or NULL
    updated_at   INTEGER NOT NULL,
    UNIQUE (app, openid)
);

-- One row per live login (device). Only sha256(skey) is stored. Expiry limits are copied from the
-- app at login so that a session check is one indexed lookup with no join on settings. `seq`
-- (the rowid) orders a user's logins, so the oldest is evicted first even within one second.
CREATE TABLE sessions (
    seq          INTEGER PRIMARY KEY,
    skey_hash    BLOB    NOT NULL UNIQUE,
    user_id      TEXT    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created      INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,                    -- created + login_days * 86400 (absolute)
    idle_secs    INTEGER NOT NULL,                    -- session_secs (sliding)
    last_visit   INTEGER NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

-- Every hosted credential (access tokens, tickets, component and authoriser tokens): value and
-- expiry in one row. `key` is built only by credential::Key.
CREATE TABLE credentials (
    key          TEXT    PRIMARY KEY,
    value        TEXT    NOT NULL,
    expires_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

-- Upstream calls per credential key per UTC day, for WeChat's quotas (force_refresh 20/day).
CREATE TABLE upstream_quota (
    key          TEXT    NOT NULL,
    day          TEXT    NOT NULL,                    -- YYYY-MM-DD, UTC
    calls        INTEGER NOT NULL DEFAULT 0,
    forced       INTEGER NOT NULL DEFAULT 0,
    last_forced  INTEGER NOT NULL DEFAULT 0,
    blocked_until INTEGER NOT NULL DEFAULT 0,         -- set on 45009: no calls before this time
    PRIMARY KEY (key, day)
);

-- WeCom agents: tokens are per (corpid, agent secret), so every key carries both ids.
CREATE TABLE work_agents (
    corpid       TEXT    NOT NULL,
    agentid      TEXT    NOT NULL,
    secret       TEXT    NOT NULL,
    remark       TEXT    NOT NULL DEFAULT '',
    token        TEXT,
    aes_key      TEXT,
    prev_aes_key TEXT,
    forward_url  TEXT,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (corpid, agentid)
);

-- Open Platform components and what WeChat pushed to them.
CREATE TABLE components (
    appid          TEXT    PRIMARY KEY,
    secret         TEXT    NOT NULL,
    token          TEXT    NOT NULL,
    aes_key        TEXT    NOT NULL,
    prev_aes_key   TEXT,
    redirect_uri   TEXT,
    verify_ticket  TEXT,
    ticket_at      INTEGER,
    created_at     INTEGER NOT NULL
);

-- Accounts that authorised a component. The refresh token is the only way back without a new
-- authorisation: it is persisted before anything else is done with a query_auth answer.
CREATE TABLE authorizers (
    component_appid   TEXT    NOT NULL REFERENCES components(appid) ON DELETE CASCADE,
    authorizer_appid  TEXT    NOT NULL,
    refresh_token     TEXT    NOT NULL,
    func_info         TEXT    NOT NULL DEFAULT '[]',  -- JSON as WeChat sent it
    authorized_at     INTEGER NOT NULL,
    revoked_at        INTEGER,
    PRIMARY KEY (component_appid, authorizer_appid)
);
