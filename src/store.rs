//! Storage: the only module that touches rusqlite. One `Db` (one SQLite connection) per worker
//! thread, WAL, a busy timeout, prepared statements cached per connection. The schema is the
//! top-level `schema.sql`, embedded and applied by `PRAGMA user_version`.
//!
//! Every multi-row change (a login, an app removal) is one transaction: a failure leaves the
//! database as it was.
//!
//! Secrets at rest (CONTRACT §11) are sealed here and nowhere else: with a key (a `Sealer`,
//! `seal.rs`) every column of [`SEALED`] is written sealed and opened on read, so the rest of
//! the code sees plain values. Without a key nothing is sealed and reading costs a prefix check.
//! The `meta` row `seal_key_id` says which key a database is sealed with: a keyless open of a
//! sealed database, or an open with another key, is refused.

use crate::config::Secret;
use crate::seal::{OpenError, Sealer};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Migrations by `user_version`: entry `i` takes the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../schema.sql"),
    CALLBACK_SEEN,
    META,
    COMPONENT_PRE_AUTH,
];

/// Callbacks already handled, so that a replayed request or WeChat's retry of a message is not
/// applied or forwarded again (`callback::Claim`). `key` is built only by `callback`; a row is
/// forgotten once `expires_at` has passed (the hourly purge deletes it).
const CALLBACK_SEEN: &str = "
CREATE TABLE callback_seen (
    key          TEXT    PRIMARY KEY,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX callback_seen_by_expiry ON callback_seen (expires_at);
";

/// Named facts about the database itself: `seal_key_id`, the id of the key its values are
/// sealed with (absent: none is); `seal_key_file`, where `wafer key rotate` read the key it
/// moved them to (a path, not a secret), so that a serving wafer can adopt it.
const META: &str = "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);";

/// A component's pre-auth code, reused for every authorisation page until an authorisation
/// consumes it or it nears expiry; and the minute's count of `api_query_auth` calls that
/// unauthenticated `/callback` requests caused (`component`).
const COMPONENT_PRE_AUTH: &str = "
ALTER TABLE components ADD COLUMN pre_auth_code TEXT;
ALTER TABLE components ADD COLUMN pre_auth_expires_at INTEGER;
ALTER TABLE components ADD COLUMN query_auth_minute INTEGER NOT NULL DEFAULT 0;
ALTER TABLE components ADD COLUMN query_auth_calls INTEGER NOT NULL DEFAULT 0;
";

/// Every sealed column, as `table.column` (also the associated data a value is sealed for, so a
/// value copied to another column does not open there). A new secret column joins this list
/// and is written with `Db::seal` and read with `Db::unseal` (`users.phone_info` will).
pub const SEALED: &[&str] = &[
    "apps.secret",
    "apps.token",
    "apps.aes_key",
    "apps.prev_aes_key",
    "users.session_key",
    "users.user_info",
    "credentials.value",
    "work_agents.secret",
    "work_agents.token",
    "work_agents.aes_key",
    "work_agents.prev_aes_key",
    "components.secret",
    "components.token",
    "components.aes_key",
    "components.prev_aes_key",
    "components.verify_ticket",
    "authorizers.refresh_token",
];

/// Rows re-sealed per write transaction by [`Db::seal_existing`].
const SEAL_BATCH: usize = 256;

/// The longest one purge transaction holds the write lock (logins wait at most about this).
pub const PURGE_SLICE: Duration = Duration::from_millis(50);

/// How many live sessions (devices) one user may hold; the oldest are evicted beyond it.
pub const MAX_SESSIONS_PER_USER: i64 = 10;

pub struct Db {
    conn: Connection,
    sealer: Option<Arc<Sealer>>,
    /// How long a write on this connection waits for its turn and SQLite's write lock together
    /// ([`BUSY_TIMEOUT`] unless [`Db::wait_for_writes`] says otherwise); also its busy timeout.
    write_wait: Duration,
}

/// A refusal or failure of our own, reported through `rusqlite::Error` like every store error.
fn store_error(msg: impl Into<String>) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
        Some(msg.into()),
    )
}

/// An account with an EncodingAESKey and the previous one (apps, WeCom agents, components).
trait AesKeys {
    fn aes_keys(&self) -> (Option<&Secret>, Option<&Secret>);
}

impl AesKeys for App {
    fn aes_keys(&self) -> (Option<&Secret>, Option<&Secret>) {
        (self.aes_key.as_ref(), self.prev_aes_key.as_ref())
    }
}

impl AesKeys for WorkAgent {
    fn aes_keys(&self) -> (Option<&Secret>, Option<&Secret>) {
        (self.aes_key.as_ref(), self.prev_aes_key.as_ref())
    }
}

impl AesKeys for Component {
    fn aes_keys(&self) -> (Option<&Secret>, Option<&Secret>) {
        (Some(&self.aes_key), self.prev_aes_key.as_ref())
    }
}

/// The next `prev_aes_key` of an upsert: the one given, else the stored key when the key
/// changes (messages in flight during a rotation still open), else the stored previous key.
/// Decided here, not in SQL: sealed values of one key differ every time, so only their plain
/// values can be compared.
fn next_prev_aes_key(
    given: Option<&Secret>,
    new_key: Option<&Secret>,
    stored: Option<&impl AesKeys>,
) -> Option<Secret> {
    if let Some(p) = given {
        return Some(p.clone());
    }
    let (stored_key, stored_prev) = stored?.aes_keys();
    match (new_key, stored_key) {
        (Some(n), Some(k)) if n != k => Some(k.clone()),
        _ => stored_prev.cloned(),
    }
}

/// How long a write waits for its turn and SQLite's write lock together before it fails (a
/// login answers 1006): another process holding the lock (the CLI, a backup, another instance)
/// makes writes fail after this long, not queue up behind each other. A connection may wait
/// less ([`Db::wait_for_writes`]: the server's workers).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Session writes in this process take turns here before asking SQLite for its write lock. SQLite
/// waits for a busy lock by sleeping (1, 2, 5, 10 … 100 ms), so workers contending on it lose
/// whole milliseconds; the turn is handed over at once. A writer waits for the turn and then for
/// SQLite within one deadline ([`BUSY_TIMEOUT`] from when it asked), so writers queued behind one
/// that is stuck on another process each fail at their own deadline, not one after another. A
/// session check's slide only ever tries the turn ([`Db::try_touch_session`]).
struct Turn {
    taken: Mutex<bool>,
    freed: Condvar,
}

static SESSION_WRITES: Turn = Turn {
    taken: Mutex::new(false),
    freed: Condvar::new(),
};

/// The turn, while held.
struct TurnGuard;

impl Turn {
    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait for the turn until `deadline`; `None` past it.
    fn take_by(&'static self, deadline: Instant) -> Option<TurnGuard> {
        let mut taken = self.lock();
        while *taken {
            let left = deadline.checked_duration_since(Instant::now())?;
            taken = self
                .freed
                .wait_timeout(taken, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *taken = true;
        Some(TurnGuard)
    }

    /// The turn if it is free now.
    fn try_take(&'static self) -> Option<TurnGuard> {
        let mut taken = self.lock();
        if *taken {
            return None;
        }
        *taken = true;
        Some(TurnGuard)
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        *SESSION_WRITES.lock() = false;
        SESSION_WRITES.freed.notify_one();
    }
}

/// `SQLITE_BUSY` with a note: what a write that ran out of time answers, whether it waited in
/// this process's turn or in SQLite.
fn busy(note: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
        Some(note.to_string()),
    )
}

/// Is this SQLite saying that someone else holds the lock?
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

#[derive(Debug, Clone)]
pub struct App {
    pub id: i64,
    pub appid: String,
    pub secret: Secret,
    pub kind: String,
    pub title: String,
    pub login_days: i64,
    pub session_secs: i64,
    pub token: Option<Secret>,
    pub aes_key: Option<Secret>,
    pub prev_aes_key: Option<Secret>,
    pub forward_url: Option<String>,
}

/// What `app add` and `[[app]]` write; `None` keeps the stored value on update.
#[derive(Debug, Clone, Default)]
pub struct AppUpsert {
    pub appid: String,
    pub secret: Secret,
    pub kind: Option<String>,
    pub title: Option<String>,
    pub login_days: Option<i64>,
    pub session_secs: Option<i64>,
    pub token: Option<Secret>,
    pub aes_key: Option<Secret>,
    /// The previous EncodingAESKey, set explicitly (`[[app]] prev_aes_key`). Without it, a
    /// changed `aes_key` makes the stored one the previous key.
    pub prev_aes_key: Option<Secret>,
    pub forward_url: Option<String>,
}

/// A session row joined with its user and app, as a session check sees it.
#[derive(Debug)]
pub struct SessionRow {
    pub user_id: String,
    pub app_pk: i64,
    pub appid: String,
    pub openid: String,
    pub unionid: Option<String>,
    pub session_key: Secret,
    pub user_info: Option<String>,
    pub created: i64,
    pub expires_at: i64,
    pub idle_secs: i64,
    pub last_visit: i64,
}

/// What a login writes, in one transaction.
pub struct LoginWrite<'a> {
    pub app_pk: i64,
    pub openid: &'a str,
    pub unionid: Option<&'a str>,
    pub session_key: &'a str,
    /// New user data to store; `None` keeps what is stored.
    pub user_info: Option<&'a str>,
    pub new_user_id: &'a str,
    pub skey_hash: &'a [u8; 32],
    pub now: i64,
    pub expires_at: i64,
    pub idle_secs: i64,
}

pub struct LoginResult {
    pub user_id: String,
    pub is_new_user: bool,
    pub user_info: Option<String>,
}

const APP_COLUMNS: &str =
    "id, appid, secret, kind, title, login_days, session_secs, token, aes_key, prev_aes_key, forward_url";

/// Create the database file readable and writable by its owner only (0600, whatever the umask),
/// before SQLite opens it: SQLite gives the -wal and -shm files it creates the main file's mode,
/// so all three are owner-only. An existing file (and its -wal and -shm) that others may read is
/// tightened to its owner's bits, with one line on stderr: every secret in it was readable. A
/// file we cannot tighten (someone else's) is left as it is, and said so.
fn owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let owner_only = std::fs::Permissions::from_mode(0o600);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        // The umask may have taken bits away from 0600; make it exactly that.
        Ok(file) => return file.set_permissions(owner_only),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = Path::new(&file);
        let Ok(meta) = std::fs::metadata(file) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o077 == 0 || !meta.is_file() {
            continue;
        }
        match std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode & 0o700)) {
            Ok(()) => eprintln!(
                "wafer: {} was readable by others (mode {:o}); now by its owner only",
                file.display(),
                mode & 0o777
            ),
            Err(e) => eprintln!(
                "wafer: {} is readable by others (mode {:o}) and could not be tightened: {e}",
                file.display(),
                mode & 0o777
            ),
        }
    }
    Ok(())
}

impl Db {
    /// Open (creating if needed) and bring the schema up to date, without a key: refused on a
    /// sealed database.
    pub fn open(path: &Path) -> rusqlite::Result<Db> {
        Db::open_with(path, None)
    }

    /// Open with the key the process holds, if any (`storage.key_file`). Refused when the
    /// database is sealed and there is no key, or it is sealed with a key this is not (unless
    /// a rotation names where that key is and this process can read it). A database that has
    /// never been sealed opens either way; [`Db::seal_existing`] seals it.
    pub fn open_with(path: &Path, sealer: Option<Arc<Sealer>>) -> rusqlite::Result<Db> {
        let db = Db::open_unchecked(path, sealer)?;
        let Some(sealed_with) = db.meta("seal_key_id")? else {
            return Ok(db);
        };
        let Some(s) = &db.sealer else {
            return Err(store_error(format!(
                "the database is sealed (key id {sealed_with}): set storage.key_file (or WAFER_KEY_FILE) to its key file"
            )));
        };
        if !s.holds(&sealed_with) {
            db.seek_key(s, &sealed_with, true);
        }
        if !s.holds(&sealed_with) {
            return Err(store_error(format!(
                "storage.key_file is key id {}, but the database is sealed with key id {sealed_with}: wrong key file",
                s.current_id()
            )));
        }
        Ok(db)
    }

    fn open_unchecked(path: &Path, sealer: Option<Arc<Sealer>>) -> rusqlite::Result<Db> {
        owner_only(path).map_err(|e| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!("making it readable by its owner only: {e}")),
            )
        })?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.set_prepared_statement_cache_capacity(64);
        let mut db = Db {
            conn,
            sealer,
            write_wait: BUSY_TIMEOUT,
        };
        db.migrate()?;
        Ok(db)
    }

    /// Make writes on this connection wait at most `wait` (for their turn and SQLite's lock
    /// together) rather than [`BUSY_TIMEOUT`].
    pub fn wait_for_writes(&mut self, wait: Duration) -> rusqlite::Result<()> {
        self.conn.busy_timeout(wait)?;
        self.write_wait = wait;
        Ok(())
    }

    fn migrate(&mut self) -> rusqlite::Result<()> {
        // Read first: an up-to-date database (every open but the first) needs no write lock, so
        // opening a connection never waits behind a writer (the start-up purge, a login storm).
        let version: usize = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version >= MIGRATIONS.len() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
        }
        tx.commit()
    }

    // ---- sealing at rest (CONTRACT §11; the key and cipher are `seal.rs`) ----

    /// A `meta` value: a named fact about the database itself.
    pub fn meta(&self, name: &str) -> rusqlite::Result<Option<String>> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()
    }

    fn set_meta(&self, name: &str, value: &str) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = ?2",
            )?
            .execute([name, value])?;
        Ok(())
    }

    /// The accounts generation (`meta.accounts_generation`): bumped by every change to the
    /// apps, WeCom agents or components (`accounts`), so that every process serving this
    /// database notices a change another one made ([`Db::accounts_generation`]).
    pub fn bump_accounts_generation(&self) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (name, value) VALUES ('accounts_generation', '1')
                 ON CONFLICT (name) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            )?
            .execute([])?;
        Ok(())
    }

    /// The accounts generation: 0 until the first change.
    pub fn accounts_generation(&self) -> rusqlite::Result<i64> {
        Ok(self
            .meta("accounts_generation")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// A value as `aad`'s column stores it: sealed under the current key when this process
    /// holds one, else the value itself (borrowed, no allocation). At most once a second it
    /// also checks whether a rotation has moved the database to a new key, and seals with that
    /// one from then on (so a rotation running beside this process finishes).
    fn seal<'a>(&self, aad: &str, plain: &'a str) -> rusqlite::Result<Cow<'a, str>> {
        let Some(s) = &self.sealer else {
            return Ok(Cow::Borrowed(plain));
        };
        if s.due(false) {
            if let Ok(Some(id)) = self.meta("seal_key_id") {
                if id != s.current_id() {
                    self.seek_key(s, &id, true);
                }
            }
        }
        s.seal(aad, plain)
            .map(Cow::Owned)
            .map_err(|e| store_error(format!("sealing {aad}: no random bytes: {e}")))
    }

    fn seal_opt<'a>(
        &self,
        aad: &str,
        plain: Option<&'a str>,
    ) -> rusqlite::Result<Option<Cow<'a, str>>> {
        plain.map(|p| self.seal(aad, p)).transpose()
    }

    /// A stored value of `aad`'s column in clear. A value in clear (never sealed) comes back as
    /// it is, with no allocation; a sealed one needs the key its id names.
    fn unseal(&self, aad: &str, stored: String) -> rusqlite::Result<String> {
        let Some(id) = crate::crypto::sealed_key_id(&stored) else {
            return Ok(stored);
        };
        let Some(s) = &self.sealer else {
            return Err(store_error(format!(
                "{aad} is sealed (key id {id}) and no storage.key_file is set"
            )));
        };
        match s.open(aad, &stored) {
            Err(OpenError::UnknownKey(id)) => {
                self.seek_key(s, &id, false);
                s.open(aad, &stored)
            }
            opened => opened,
        }
        .map_err(|e| store_error(format!("{aad}: {e}")))
    }

    fn unseal_opt(&self, aad: &str, stored: Option<String>) -> rusqlite::Result<Option<String>> {
        stored.map(|v| self.unseal(aad, v)).transpose()
    }

    fn secret(&self, aad: &str, r: &rusqlite::Row, i: usize) -> rusqlite::Result<Secret> {
        self.unseal(aad, r.get(i)?).map(Secret::new)
    }

    fn secret_opt(
        &self,
        aad: &str,
        r: &rusqlite::Row,
        i: usize,
    ) -> rusqlite::Result<Option<Secret>> {
        Ok(self.unseal_opt(aad, r.get(i)?)?.map(Secret::new))
    }

    /// Adopt key `id` from the file a rotation recorded (`meta.seal_key_file`), if this process
    /// can read it and it is that key. Unless `now`, at most once per `Sealer::RECHECK_MS`.
    fn seek_key(&self, s: &Sealer, id: &str, now: bool) {
        if !(now || s.due(true)) {
            return;
        }
        let Ok(Some(file)) = self.meta("seal_key_file") else {
            return;
        };
        match Sealer::read_key_file(Path::new(&file), "the rotation's key file") {
            Ok(key) if key.id() == id => {
                if s.adopt(key) {
                    eprintln!("wafer: the database moved to key id {id} (a rotation): sealing with it, from {file}");
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("wafer: key id {id} is needed: {e}"),
        }
    }

    /// Seal every value of [`SEALED`] that is not sealed under the current key: values in
    /// clear, and values under another key this process holds (a rotation). The current key
    /// is recorded in `meta` first, so from then on a keyless open is refused. The values go in
    /// write transactions of [`SEAL_BATCH`] rows, each row rewritten only if unchanged since it
    /// was read (a serving wafer may write beside a rotation). Clear text is not left behind in
    /// the files: overwritten cells are zeroed (`secure_delete`), the first sealing rebuilds the
    /// file (`VACUUM`: free pages may hold clear text deleted long ago) and the WAL is truncated.
    /// Returns how many values were sealed; values under a key this process does not hold are
    /// an error saying how many.
    pub fn seal_existing(&self) -> rusqlite::Result<usize> {
        let Some(s) = self.sealer.clone() else {
            return Ok(0);
        };
        let current = s.current_id();
        self.set_meta("seal_key_id", &current)?;
        self.conn.pragma_update(None, "secure_delete", "ON")?;
        let prefix = format!("v1:{current}:");
        let (mut sealed, mut were_clear, mut unknown) = (0, 0, 0);
        for aad in SEALED {
            let (table, column) = aad.split_once('.').unwrap_or_default();
            let mut select = self.conn.prepare(&format!(
                "SELECT rowid, {column} FROM {table}
                 WHERE rowid > ?1 AND {column} IS NOT NULL AND substr({column}, 1, ?2) != ?3
                 ORDER BY rowid LIMIT {SEAL_BATCH}"
            ))?;
            let update =
                format!("UPDATE {table} SET {column} = ?1 WHERE rowid = ?2 AND {column} = ?3");
            let mut after = i64::MIN;
            loop {
                let batch = select
                    .query_map(params![after, prefix.len(), prefix], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let Some(&(last, _)) = batch.last() else {
                    break;
                };
                after = last;
                let tx = rusqlite::Transaction::new_unchecked(
                    &self.conn,
                    TransactionBehavior::Immediate,
                )?;
                for (rowid, stored) in &batch {
                    let clear = crate::crypto::sealed_key_id(stored).is_none();
                    let plain = if clear {
                        Cow::Borrowed(stored.as_str())
                    } else {
                        match s.open(aad, stored) {
                            Ok(p) => Cow::Owned(p),
                            Err(OpenError::UnknownKey(_)) => {
                                unknown += 1;
                                continue;
                            }
                            Err(e) => return Err(store_error(format!("{aad}: {e}"))),
                        }
                    };
                    let value = s
                        .seal(aad, &plain)
                        .map_err(|e| store_error(format!("sealing {aad}: no random bytes: {e}")))?;
                    let n = tx
                        .prepare_cached(&update)?
                        .execute(params![value, rowid, stored])?;
                    sealed += n;
                    if clear {
                        were_clear += n;
                    }
                }
                tx.commit()?;
            }
        }
        if were_clear > 0 {
            if let Err(e) = self.conn.execute_batch("VACUUM") {
                eprintln!("wafer: VACUUM after sealing failed ({e}): values deleted before may linger in clear in free pages until a VACUUM");
            }
        }
        if sealed > 0 {
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
        if unknown > 0 {
            return Err(store_error(format!(
                "{unknown} value(s) are sealed under a key other than key id {current}: use the key file they were sealed with, or finish `wafer key rotate`"
            )));
        }
        Ok(sealed)
    }

    /// Move every sealed value to `key` (`wafer key rotate`), read from `file`: the file is
    /// recorded first, then the key id, so a serving wafer that finds the new id also finds
    /// where its key is; then [`Db::seal_existing`]. A database never sealed is sealed.
    pub fn rotate_to(
        &mut self,
        key: crate::crypto::SealKey,
        file: &Path,
    ) -> rusqlite::Result<usize> {
        match &self.sealer {
            Some(s) => {
                s.adopt(key);
            }
            None => self.sealer = Some(Arc::new(Sealer::new(key))),
        }
        let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        self.set_meta("seal_key_file", &file.to_string_lossy())?;
        self.seal_existing()
    }

    /// Leave checkpoints to someone else ([`Db::checkpoint`] on another connection): a
    /// connection that commits otherwise copies the WAL back into the database itself every
    /// thousand pages, and stalls the request it is serving (and every writer behind it).
    pub fn no_autocheckpoint(&self) -> rusqlite::Result<()> {
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)
    }

    /// Bound this connection's page cache (SQLite's default is 2 MiB).
    pub fn set_cache_kib(&self, kib: i64) -> rusqlite::Result<()> {
        self.conn.pragma_update(None, "cache_size", -kib)
    }

    /// Copy what the WAL holds back into the database, without waiting for readers or writers.
    pub fn checkpoint(&self) -> rusqlite::Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
    }

    /// Run `write` (one statement, or a transaction it begins and ends) in this process's turn of
    /// session writes, within `bound` for the turn and SQLite's write lock together: past it,
    /// `SQLITE_BUSY`.
    fn session_write<T>(
        &self,
        bound: Duration,
        write: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let deadline = Instant::now() + bound;
        let _turn = SESSION_WRITES
            .take_by(deadline)
            .ok_or_else(|| busy("waited too long for this process's other writers"))?;
        self.conn
            .busy_timeout(deadline.saturating_duration_since(Instant::now()))?;
        let written = write(&self.conn);
        let restored = self.conn.busy_timeout(self.write_wait);
        let written = written?;
        restored?;
        Ok(written)
    }

    /// What `/healthz` asks: a read of a table, then a committed write, the write within `bound`
    /// (its turn and SQLite's lock together). The write sets the header's `user_version` to the
    /// value it has, inside a write transaction: one page really committed, with no table of its
    /// own. `Err` says which failed and why, in words for an operator.
    pub fn health(&self, bound: Duration) -> Result<(), String> {
        self.conn
            .prepare_cached("SELECT count(*) FROM (SELECT 1 FROM apps LIMIT 1)")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map_err(|e| format!("database cannot read: {e}"))?;
        self.session_write(bound, |conn| {
            let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
            let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()
        })
        .map_err(|e| {
            let why = match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    format!("locked by another writer for over {} ms", bound.as_millis())
                }
                Some(rusqlite::ErrorCode::DiskFull) => "disk full".to_string(),
                Some(rusqlite::ErrorCode::ReadOnly) => "read-only".to_string(),
                _ => e.to_string(),
            };
            format!("database cannot write: {why}")
        })
    }

    pub fn integrity_check(&self) -> rusqlite::Result<String> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
    }

    // ---- apps ----

    /// Insert or update an app (its credentials are `accounts`' to forget).
    pub fn upsert_app(&self, a: &AppUpsert, now: i64) -> rusqlite::Result<App> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let stored = self.app_by_appid(&a.appid)?;
        let prev = next_prev_aes_key(a.prev_aes_key.as_ref(), a.aes_key.as_ref(), stored.as_ref());
        tx.execute(
            "INSERT INTO apps (appid, secret, kind, title, login_days, session_secs, token, aes_key, forward_url, created_at, prev_aes_key)
             VALUES (?1, ?2, COALESCE(?3, 'miniprogram'), COALESCE(?4, ''), COALESCE(?5, 30), COALESCE(?6, 2592000), ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (appid) DO UPDATE SET
               secret = excluded.secret,
               kind = COALESCE(?3, kind),
               title = COALESCE(?4, title),
               login_days = COALESCE(?5, login_days),
               session_secs = COALESCE(?6, session_secs),
               token = COALESCE(?7, token),
               prev_aes_key = ?11,
               aes_key = COALESCE(?8, aes_key),
               forward_url = COALESCE(?9, forward_url)",
            params![
                a.appid,
                self.seal("apps.secret", a.secret.expose())?,
                a.kind,
                a.title,
                a.login_days,
                a.session_secs,
                self.seal_opt("apps.token", a.token.as_ref().map(Secret::expose))?,
                self.seal_opt("apps.aes_key", a.aes_key.as_ref().map(Secret::expose))?,
                a.forward_url,
                now,
                self.seal_opt("apps.prev_aes_key", prev.as_ref().map(Secret::expose))?,
            ],
        )?;
        let app = self
            .app_by_appid(&a.appid)?
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        tx.commit()?;
        Ok(app)
    }

    fn app_from_row(&self, r: &rusqlite::Row) -> rusqlite::Result<App> {
        Ok(App {
            id: r.get(0)?,
            appid: r.get(1)?,
            secret: self.secret("apps.secret", r, 2)?,
            kind: r.get(3)?,
            title: r.get(4)?,
            login_days: r.get(5)?,
            session_secs: r.get(6)?,
            token: self.secret_opt("apps.token", r, 7)?,
            aes_key: self.secret_opt("apps.aes_key", r, 8)?,
            prev_aes_key: self.secret_opt("apps.prev_aes_key", r, 9)?,
            forward_url: r.get(10)?,
        })
    }

    pub fn app_by_appid(&self, appid: &str) -> rusqlite::Result<Option<App>> {
        self.conn
            .prepare_cached(&format!("SELECT {APP_COLUMNS} FROM apps WHERE appid = ?1"))?
            .query_row([appid], |r| self.app_from_row(r))
            .optional()
    }

    pub fn app_by_id(&self, id: i64) -> rusqlite::Result<Option<App>> {
        self.conn
            .prepare_cached(&format!("SELECT {APP_COLUMNS} FROM apps WHERE id = ?1"))?
            .query_row([id], |r| self.app_from_row(r))
            .optional()
    }

    /// The mini-program app when exactly one is registered (the single-app fallback).
    pub fn sole_miniprogram_app(&self) -> rusqlite::Result<Option<App>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE kind = 'miniprogram' LIMIT 2"
        ))?;
        let apps = stmt
            .query_map([], |r| self.app_from_row(r))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(if apps.len() == 1 {
            apps.into_iter().next()
        } else {
            None
        })
    }

    pub fn list_apps(&self) -> rusqlite::Result<Vec<App>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {APP_COLUMNS} FROM apps ORDER BY id"))?;
        let apps = stmt.query_map([], |r| self.app_from_row(r))?.collect();
        apps
    }

    /// Remove an app with its users and sessions (cascade). False when there was no such app.
    pub fn remove_app(&self, appid: &str) -> rusqlite::Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM apps WHERE appid = ?1", [appid])?
            > 0)
    }

    // ---- sessions ----

    /// Record a login: upsert the user, insert the session, evict the oldest sessions beyond
    /// the cap. One transaction: either all of it is stored or none.
    /// Fails (`SQLITE_BUSY`) after this connection's write wait ([`BUSY_TIMEOUT`]).
    pub fn record_login(&mut self, w: &LoginWrite) -> rusqlite::Result<LoginResult> {
        let session_key = self.seal("users.session_key", w.session_key)?;
        let user_info = self.seal_opt("users.user_info", w.user_info)?;
        let mut login = self.session_write(self.write_wait, |conn| {
            Self::login_tx(conn, w, &session_key, user_info.as_deref())
        })?;
        // Stored user data is opened only when this login brought none.
        if w.user_info.is_none() {
            login.user_info = self.unseal_opt("users.user_info", login.user_info)?;
        }
        Ok(login)
    }

    /// The login's transaction, with `session_key` and `user_info` as they are stored (sealed
    /// or not). The answer's `user_info` is the one given, else the stored one as stored.
    fn login_tx(
        conn: &Connection,
        w: &LoginWrite,
        session_key: &str,
        user_info: Option<&str>,
    ) -> rusqlite::Result<LoginResult> {
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        let existing: Option<(String, Option<String>)> = tx
            .prepare_cached("SELECT id, user_info FROM users WHERE app = ?1 AND openid = ?2")?
            .query_row(params![w.app_pk, w.openid], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let is_new_user = existing.is_none();
        let (user_id, user_info) = match existing {
            Some((id, stored)) => {
                tx.prepare_cached(
                    "UPDATE users SET session_key = ?2, unionid = COALESCE(?3, unionid),
                       user_info = COALESCE(?4, user_info), updated_at = ?5 WHERE id = ?1",
                )?
                .execute(params![id, session_key, w.unionid, user_info, w.now])?;
                (id, w.user_info.map(str::to_string).or(stored))
            }
            None => {
                tx.prepare_cached(
                    "INSERT INTO users (id, app, openid, unionid, session_key, user_info, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![w.new_user_id, w.app_pk, w.openid, w.unionid, session_key, user_info, w.now])?;
                (w.new_user_id.to_string(), w.user_info.map(str::to_string))
            }
        };
        tx.prepare_cached(
            "INSERT INTO sessions (skey_hash, user_id, created, expires_at, idle_secs, last_visit)
             VALUES (?1, ?2, ?3, ?4, ?5, ?3)",
        )?
        .execute(params![
            &w.skey_hash[..],
            user_id,
            w.now,
            w.expires_at,
            w.idle_secs
        ])?;
        tx.prepare_cached(
            "DELETE FROM sessions WHERE user_id = ?1 AND seq NOT IN
               (SELECT seq FROM sessions WHERE user_id = ?1 ORDER BY seq DESC LIMIT ?2)",
        )?
        .execute(params![user_id, MAX_SESSIONS_PER_USER])?;
        tx.commit()?;
        Ok(LoginResult {
            user_id,
            is_new_user,
            user_info,
        })
    }

    /// The session with this skey hash, if it belongs to user `id`. One indexed lookup.
    pub fn session(&self, id: &str, skey_hash: &[u8; 32]) -> rusqlite::Result<Option<SessionRow>> {
        self.conn
            .prepare_cached(
                "SELECT s.user_id, u.app, a.appid, u.openid, u.unionid, u.session_key, u.user_info,
                        s.created, s.expires_at, s.idle_secs, s.last_visit
                 FROM sessions s JOIN users u ON u.id = s.user_id JOIN apps a ON a.id = u.app
                 WHERE s.skey_hash = ?1 AND s.user_id = ?2",
            )?
            .query_row(params![&skey_hash[..], id], |r| {
                Ok(SessionRow {
                    user_id: r.get(0)?,
                    app_pk: r.get(1)?,
                    appid: r.get(2)?,
                    openid: r.get(3)?,
                    unionid: r.get(4)?,
                    session_key: self.secret("users.session_key", r, 5)?,
                    user_info: self.unseal_opt("users.user_info", r.get(6)?)?,
                    created: r.get(7)?,
                    expires_at: r.get(8)?,
                    idle_secs: r.get(9)?,
                    last_visit: r.get(10)?,
                })
            })
            .optional()
    }

    /// Slide a session's `last_visit` if that can be done now: without waiting for the turn or
    /// for SQLite's lock. `Ok(false)` when someone else is writing (the slide is skipped; the
    /// next check tries again).
    pub fn try_touch_session(&self, skey_hash: &[u8; 32], now: i64) -> rusqlite::Result<bool> {
        let Some(_turn) = SESSION_WRITES.try_take() else {
            return Ok(false);
        };
        self.conn.busy_timeout(Duration::ZERO)?;
        let touched = self
            .conn
            .prepare_cached(
                "UPDATE sessions SET last_visit = ?2 WHERE skey_hash = ?1 AND last_visit < ?2",
            )
            .and_then(|mut s| s.execute(params![&skey_hash[..], now]));
        self.conn.busy_timeout(self.write_wait)?;
        match touched {
            Ok(_) => Ok(true),
            Err(e) if is_busy(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn revoke_session(&self, skey_hash: &[u8; 32]) -> rusqlite::Result<bool> {
        self.session_write(self.write_wait, |conn| {
            Ok(conn
                .prepare_cached("DELETE FROM sessions WHERE skey_hash = ?1")?
                .execute(params![&skey_hash[..]])?
                > 0)
        })
    }

    pub fn set_user_info(&self, user_id: &str, user_info: &str, now: i64) -> rusqlite::Result<()> {
        let user_info = self.seal("users.user_info", user_info)?;
        self.session_write(self.write_wait, |conn| {
            conn.prepare_cached("UPDATE users SET user_info = ?2, updated_at = ?3 WHERE id = ?1")?
                .execute(params![user_id, user_info, now])?;
            Ok(())
        })
    }

    /// Delete sessions past either clock. Returns how many went.
    ///
    /// The sliding clock is not indexed, so finding them is a scan of the table (~150 ms at a
    /// million sessions). One `DELETE` would hold SQLite's write lock for the whole scan (and
    /// for all the deletions: 10.6 s for half a million), and every login and sliding check
    /// would wait. Instead the scan is a read (no write lock), and the deletions go in write
    /// transactions of at most [`PURGE_SLICE`] each, checking both clocks again (a session may
    /// have been used in between), so writers get their turn in between.
    pub fn purge_expired_sessions(&self, now: i64) -> rusqlite::Result<usize> {
        self.purge_in_slices(now, PURGE_SLICE)
    }

    fn purge_in_slices(&self, now: i64, slice: Duration) -> rusqlite::Result<usize> {
        let seqs: Vec<i64> = self
            .conn
            .prepare_cached(
                "SELECT seq FROM sessions WHERE expires_at < ?1 OR last_visit + idle_secs < ?1",
            )?
            .query_map([now], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut purged = 0;
        let mut left = seqs.as_slice();
        while !left.is_empty() {
            purged += self.session_write(self.write_wait, |conn| {
                let tx =
                    rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
                let started = Instant::now();
                let mut purged = 0;
                {
                    let mut delete = tx.prepare_cached(
                        "DELETE FROM sessions
                         WHERE seq = ?1 AND (expires_at < ?2 OR last_visit + idle_secs < ?2)",
                    )?;
                    while let Some((seq, rest)) = left.split_first() {
                        purged += delete.execute(params![seq, now])?;
                        left = rest;
                        if started.elapsed() >= slice {
                            break;
                        }
                    }
                }
                tx.commit()?;
                Ok(purged)
            })?;
        }
        Ok(purged)
    }

    /// Sessions not yet past either clock (for `/metrics`).
    pub fn count_live_sessions(&self, now: i64) -> rusqlite::Result<i64> {
        self.conn
            .prepare_cached(
                "SELECT count(*) FROM sessions WHERE expires_at >= ?1 AND last_visit + idle_secs >= ?1",
            )?
            .query_row([now], |r| r.get(0))
    }
}

/// A stored credential: value and expiry from one row.
#[derive(Debug, Clone)]
pub struct StoredCredential {
    pub value: Secret,
    pub expires_at: i64,
    pub updated_at: i64,
}

/// Today's upstream accounting for one credential key.
#[derive(Debug, Clone, Default)]
pub struct Quota {
    pub calls: i64,
    pub forced: i64,
    pub last_forced: i64,
    pub blocked_until: i64,
}

#[derive(Debug, Clone)]
pub struct WorkAgent {
    pub corpid: String,
    pub agentid: String,
    pub secret: Secret,
    pub remark: String,
    pub token: Option<Secret>,
    pub aes_key: Option<Secret>,
    pub prev_aes_key: Option<Secret>,
    pub forward_url: Option<String>,
}

const AGENT_COLUMNS: &str =
    "corpid, agentid, secret, remark, token, aes_key, prev_aes_key, forward_url";

impl Db {
    // ---- credentials ----

    pub fn credential(&self, key: &str) -> rusqlite::Result<Option<StoredCredential>> {
        self.conn
            .prepare_cached("SELECT value, expires_at, updated_at FROM credentials WHERE key = ?1")?
            .query_row([key], |r| {
                Ok(StoredCredential {
                    value: self.secret("credentials.value", r, 0)?,
                    expires_at: r.get(1)?,
                    updated_at: r.get(2)?,
                })
            })
            .optional()
    }

    pub fn put_credential(
        &self,
        key: &str,
        value: &str,
        expires_at: i64,
        now: i64,
    ) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO credentials (key, value, expires_at, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET value = ?2, expires_at = ?3, updated_at = ?4",
            )?
            .execute(params![key, self.seal("credentials.value", value)?, expires_at, now])?;
        Ok(())
    }

    pub fn delete_credentials_with_prefix(&self, prefix: &str) -> rusqlite::Result<usize> {
        // An empty prefix would be every credential: never what a caller means.
        if prefix.is_empty() {
            return Ok(0);
        }
        self.conn.execute(
            "DELETE FROM credentials WHERE substr(key, 1, length(?1)) = ?1",
            [prefix],
        )
    }

    pub fn quota(&self, key: &str, day: &str) -> rusqlite::Result<Quota> {
        Ok(self
            .conn
            .prepare_cached("SELECT calls, forced, last_forced, blocked_until FROM upstream_quota WHERE key = ?1 AND day = ?2")?
            .query_row([key, day], |r| {
                Ok(Quota { calls: r.get(0)?, forced: r.get(1)?, last_forced: r.get(2)?, blocked_until: r.get(3)? })
            })
            .optional()?
            .unwrap_or_default())
    }

    /// Count one upstream call (and a forced one when `forced`).
    pub fn count_upstream(
        &self,
        key: &str,
        day: &str,
        forced: bool,
        now: i64,
    ) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO upstream_quota (key, day, calls, forced, last_forced) VALUES (?1, ?2, 1, ?3, ?4)
                 ON CONFLICT (key, day) DO UPDATE SET calls = calls + 1, forced = forced + ?3,
                   last_forced = CASE WHEN ?3 = 1 THEN ?4 ELSE last_forced END",
            )?
            .execute(params![key, day, forced as i64, if forced { now } else { 0 }])?;
        Ok(())
    }

    /// After 45009: no calls for this key before `until`.
    pub fn block_upstream(&self, key: &str, day: &str, until: i64) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO upstream_quota (key, day, blocked_until) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key, day) DO UPDATE SET blocked_until = ?3",
            )?
            .execute(params![key, day, until])?;
        Ok(())
    }

    // ---- WeCom agents ----

    fn agent_from_row(&self, r: &rusqlite::Row) -> rusqlite::Result<WorkAgent> {
        Ok(WorkAgent {
            corpid: r.get(0)?,
            agentid: r.get(1)?,
            secret: self.secret("work_agents.secret", r, 2)?,
            remark: r.get(3)?,
            token: self.secret_opt("work_agents.token", r, 4)?,
            aes_key: self.secret_opt("work_agents.aes_key", r, 5)?,
            prev_aes_key: self.secret_opt("work_agents.prev_aes_key", r, 6)?,
            forward_url: r.get(7)?,
        })
    }

    pub fn upsert_work_agent(&self, a: &WorkAgent, now: i64) -> rusqlite::Result<()> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let stored = self.work_agent(&a.corpid, &a.agentid)?;
        let prev = next_prev_aes_key(a.prev_aes_key.as_ref(), a.aes_key.as_ref(), stored.as_ref());
        tx.execute(
            "INSERT INTO work_agents (corpid, agentid, secret, remark, token, aes_key, forward_url, created_at, prev_aes_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (corpid, agentid) DO UPDATE SET secret = ?3, remark = ?4,
               token = COALESCE(?5, token),
               prev_aes_key = ?9,
               aes_key = COALESCE(?6, aes_key),
               forward_url = COALESCE(?7, forward_url)",
            params![
                a.corpid,
                a.agentid,
                self.seal("work_agents.secret", a.secret.expose())?,
                a.remark,
                self.seal_opt("work_agents.token", a.token.as_ref().map(Secret::expose))?,
                self.seal_opt("work_agents.aes_key", a.aes_key.as_ref().map(Secret::expose))?,
                a.forward_url,
                now,
                self.seal_opt("work_agents.prev_aes_key", prev.as_ref().map(Secret::expose))?,
            ],
        )?;
        tx.commit()
    }

    pub fn work_agent(&self, corpid: &str, agentid: &str) -> rusqlite::Result<Option<WorkAgent>> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {AGENT_COLUMNS} FROM work_agents WHERE corpid = ?1 AND agentid = ?2"
            ))?
            .query_row([corpid, agentid], |r| self.agent_from_row(r))
            .optional()
    }

    pub fn list_work_agents(&self) -> rusqlite::Result<Vec<WorkAgent>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {AGENT_COLUMNS} FROM work_agents ORDER BY corpid, agentid"
        ))?;
        let agents = stmt.query_map([], |r| self.agent_from_row(r))?.collect();
        agents
    }

    pub fn remove_work_agent(&self, corpid: &str, agentid: &str) -> rusqlite::Result<bool> {
        Ok(self.conn.execute(
            "DELETE FROM work_agents WHERE corpid = ?1 AND agentid = ?2",
            [corpid, agentid],
        )? > 0)
    }
}

/// An Open Platform component as registered (`component add`, `[[component]]`).
#[derive(Debug, Clone)]
pub struct Component {
    pub appid: String,
    pub secret: Secret,
    pub token: Secret,
    pub aes_key: Secret,
    pub prev_aes_key: Option<Secret>,
    pub redirect_uri: Option<String>,
    /// The last `component_verify_ticket` WeChat pushed, and when.
    pub verify_ticket: Option<Secret>,
    pub ticket_at: Option<i64>,
}

/// What `component add` and `[[component]]` write. A changed `aes_key` moves the stored one to
/// `prev_aes_key` (unless one is given), so messages in flight during a rotation still open.
#[derive(Debug, Clone)]
pub struct ComponentUpsert {
    pub appid: String,
    pub secret: Secret,
    pub token: Secret,
    pub aes_key: Secret,
    pub prev_aes_key: Option<Secret>,
    pub redirect_uri: Option<String>,
}

/// An account that authorised a component.
#[derive(Debug, Clone)]
pub struct Authorizer {
    pub component_appid: String,
    pub authorizer_appid: String,
    pub refresh_token: Secret,
    /// JSON as WeChat sent it.
    pub func_info: String,
    pub authorized_at: i64,
    pub revoked_at: Option<i64>,
}

const COMPONENT_COLUMNS: &str =
    "appid, secret, token, aes_key, prev_aes_key, redirect_uri, verify_ticket, ticket_at";

const AUTHORIZER_COLUMNS: &str =
    "component_appid, authorizer_appid, refresh_token, func_info, authorized_at, revoked_at";

impl Db {
    // ---- Open Platform components ----

    fn component_from_row(&self, r: &rusqlite::Row) -> rusqlite::Result<Component> {
        Ok(Component {
            appid: r.get(0)?,
            secret: self.secret("components.secret", r, 1)?,
            token: self.secret("components.token", r, 2)?,
            aes_key: self.secret("components.aes_key", r, 3)?,
            prev_aes_key: self.secret_opt("components.prev_aes_key", r, 4)?,
            redirect_uri: r.get(5)?,
            verify_ticket: self.secret_opt("components.verify_ticket", r, 6)?,
            ticket_at: r.get(7)?,
        })
    }

    fn authorizer_from_row(&self, r: &rusqlite::Row) -> rusqlite::Result<Authorizer> {
        Ok(Authorizer {
            component_appid: r.get(0)?,
            authorizer_appid: r.get(1)?,
            refresh_token: self.secret("authorizers.refresh_token", r, 2)?,
            func_info: r.get(3)?,
            authorized_at: r.get(4)?,
            revoked_at: r.get(5)?,
        })
    }

    /// Insert or update a component.
    pub fn upsert_component(&self, c: &ComponentUpsert, now: i64) -> rusqlite::Result<()> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let stored = self.component(&c.appid)?;
        let prev = next_prev_aes_key(c.prev_aes_key.as_ref(), Some(&c.aes_key), stored.as_ref());
        tx.execute(
            "INSERT INTO components (appid, secret, token, aes_key, prev_aes_key, redirect_uri, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (appid) DO UPDATE SET secret = ?2, token = ?3,
               prev_aes_key = ?5,
               aes_key = ?4,
               redirect_uri = COALESCE(?6, redirect_uri)",
            params![
                c.appid,
                self.seal("components.secret", c.secret.expose())?,
                self.seal("components.token", c.token.expose())?,
                self.seal("components.aes_key", c.aes_key.expose())?,
                self.seal_opt("components.prev_aes_key", prev.as_ref().map(Secret::expose))?,
                c.redirect_uri,
                now
            ],
        )?;
        tx.commit()
    }

    pub fn component(&self, appid: &str) -> rusqlite::Result<Option<Component>> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {COMPONENT_COLUMNS} FROM components WHERE appid = ?1"
            ))?
            .query_row([appid], |r| self.component_from_row(r))
            .optional()
    }

    pub fn list_components(&self) -> rusqlite::Result<Vec<Component>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COMPONENT_COLUMNS} FROM components ORDER BY appid"
        ))?;
        let components = stmt
            .query_map([], |r| self.component_from_row(r))?
            .collect();
        components
    }

    /// Keep the ticket WeChat just pushed, made at `created` (its `CreateTime`), unless the
    /// stored one is newer. False when nothing changed (no such component, or a newer ticket).
    pub fn set_verify_ticket(
        &self,
        appid: &str,
        ticket: &str,
        created: i64,
    ) -> rusqlite::Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE components SET verify_ticket = ?2, ticket_at = ?3
                 WHERE appid = ?1 AND (ticket_at IS NULL OR ticket_at <= ?3)",
            )?
            .execute(params![
                appid,
                self.seal("components.verify_ticket", ticket)?,
                created
            ])?
            > 0)
    }

    /// The stored pre-auth code and its expiry (unix seconds), if any.
    pub fn pre_auth_code(&self, appid: &str) -> rusqlite::Result<Option<(String, i64)>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT pre_auth_code, pre_auth_expires_at FROM components WHERE appid = ?1",
            )?
            .query_row([appid], |r| {
                Ok(r.get::<_, Option<String>>(0)?
                    .zip(r.get::<_, Option<i64>>(1)?))
            })
            .optional()?
            .flatten())
    }

    pub fn set_pre_auth_code(
        &self,
        appid: &str,
        code: &str,
        expires_at: i64,
    ) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE components SET pre_auth_code = ?2, pre_auth_expires_at = ?3 WHERE appid = ?1",
            )?
            .execute(params![appid, code, expires_at])?;
        Ok(())
    }

    /// Forget the stored pre-auth code: only if it is `code` when one is given.
    pub fn forget_pre_auth_code(&self, appid: &str, code: Option<&str>) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE components SET pre_auth_code = NULL, pre_auth_expires_at = NULL
                 WHERE appid = ?1 AND (?2 IS NULL OR pre_auth_code = ?2)",
            )?
            .execute(params![appid, code])?;
        Ok(())
    }

    /// Count one `api_query_auth` call in the current minute (`now / 60`), if fewer than
    /// `per_minute` were made in it: one statement, so concurrent callers cannot both take the
    /// last one. False when the minute's calls are used up (or there is no such component).
    pub fn count_query_auth(
        &self,
        appid: &str,
        now: i64,
        per_minute: i64,
    ) -> rusqlite::Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE components SET
                   query_auth_calls = CASE WHEN query_auth_minute = ?2 THEN query_auth_calls + 1 ELSE 1 END,
                   query_auth_minute = ?2
                 WHERE appid = ?1 AND (query_auth_minute != ?2 OR query_auth_calls < ?3)",
            )?
            .execute(params![appid, now.div_euclid(60), per_minute])?
            > 0)
    }

    /// Record an authorisation (new, renewed or re-granted after a revocation): the refresh
    /// token and the function scopes, in one statement.
    pub fn upsert_authorizer(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
        refresh_token: &str,
        func_info: &str,
        now: i64,
    ) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO authorizers (component_appid, authorizer_appid, refresh_token, func_info, authorized_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (component_appid, authorizer_appid) DO UPDATE SET
                   refresh_token = ?3, func_info = ?4, authorized_at = ?5, revoked_at = NULL",
            )?
            .execute(params![
                component_appid,
                authorizer_appid,
                self.seal("authorizers.refresh_token", refresh_token)?,
                func_info,
                now
            ])?;
        Ok(())
    }

    pub fn authorizer(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> rusqlite::Result<Option<Authorizer>> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {AUTHORIZER_COLUMNS} FROM authorizers
                 WHERE component_appid = ?1 AND authorizer_appid = ?2"
            ))?
            .query_row([component_appid, authorizer_appid], |r| {
                self.authorizer_from_row(r)
            })
            .optional()
    }

    /// The authorisers of a component that have not revoked it, oldest first.
    pub fn list_authorizers(&self, component_appid: &str) -> rusqlite::Result<Vec<Authorizer>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {AUTHORIZER_COLUMNS} FROM authorizers
             WHERE component_appid = ?1 AND revoked_at IS NULL
             ORDER BY authorized_at, authorizer_appid"
        ))?;
        let list = stmt
            .query_map([component_appid], |r| self.authorizer_from_row(r))?
            .collect();
        list
    }

    /// Store a rotated refresh token (only for a live authorisation).
    pub fn set_refresh_token(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
        refresh_token: &str,
    ) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE authorizers SET refresh_token = ?3
                 WHERE component_appid = ?1 AND authorizer_appid = ?2 AND revoked_at IS NULL",
            )?
            .execute(params![
                component_appid,
                authorizer_appid,
                self.seal("authorizers.refresh_token", refresh_token)?
            ])?;
        Ok(())
    }

    /// Mark an authorisation revoked by an event made at `created`. False when there was no
    /// live one, or it was authorised after `created` (the same second still revokes).
    pub fn revoke_authorizer(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
        created: i64,
        now: i64,
    ) -> rusqlite::Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE authorizers SET revoked_at = ?4
                 WHERE component_appid = ?1 AND authorizer_appid = ?2 AND revoked_at IS NULL
                   AND authorized_at <= ?3",
            )?
            .execute(params![component_appid, authorizer_appid, created, now])?
            > 0)
    }

    // ---- callbacks already handled ----

    /// Remember every key until its expiry, all or none: true when none of them was remembered
    /// (an expired row counts as forgotten), false (and nothing written) when one was.
    pub fn claim_callback(&self, keys: &[(String, i64)], now: i64) -> rusqlite::Result<bool> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        for (key, expires_at) in keys {
            let fresh = tx
                .prepare_cached(
                    "INSERT INTO callback_seen (key, expires_at) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at
                     WHERE callback_seen.expires_at <= ?3",
                )?
                .execute(params![key, expires_at, now])?;
            if fresh == 0 {
                return Ok(false); // the transaction rolls back on drop
            }
        }
        tx.commit()?;
        Ok(true)
    }

    /// Forget keys claimed for a callback that was not handled after all.
    pub fn release_callback(&self, keys: &[(String, i64)]) -> rusqlite::Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM callback_seen WHERE key = ?1 AND expires_at = ?2")?;
        for (key, expires_at) in keys {
            stmt.execute(params![key, expires_at])?;
        }
        Ok(())
    }

    /// Delete the remembered callbacks whose time has passed. Returns how many went.
    pub fn purge_callback_seen(&self, now: i64) -> rusqlite::Result<usize> {
        self.conn
            .prepare_cached("DELETE FROM callback_seen WHERE expires_at <= ?1")?
            .execute([now])
    }
}

/// The UTC calendar day of a unix time, `YYYY-MM-DD` (WeChat's quotas reset daily).
pub fn utc_day(unix: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = unix.div_euclid(86400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(db: &Db, sql: &str) -> i64 {
        db.conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        (dir, db)
    }

    #[test]
    fn callbacks_are_claimed_all_or_none_and_forgotten_after_their_time() {
        let (_dir, db) = db();
        let k = |s: &str, at: i64| (s.to_string(), at);
        assert!(db.claim_callback(&[k("a", 100), k("b", 100)], 10).unwrap());
        assert_eq!(count(&db, "SELECT count(*) FROM callback_seen"), 2);
        // One key remembered: nothing claimed, nothing written.
        assert!(!db.claim_callback(&[k("c", 100), k("b", 100)], 10).unwrap());
        assert_eq!(count(&db, "SELECT count(*) FROM callback_seen"), 2);
        // Released keys can be claimed again; expired ones count as forgotten.
        db.release_callback(&[k("a", 100)]).unwrap();
        assert!(db.claim_callback(&[k("a", 100)], 10).unwrap());
        assert!(db.claim_callback(&[k("b", 200)], 100).unwrap());
        assert_eq!(db.purge_callback_seen(150).unwrap(), 1);
        assert_eq!(count(&db, "SELECT count(*) FROM callback_seen"), 1);
    }

    #[test]
    fn query_auth_calls_are_counted_per_clock_minute() {
        let (_dir, db) = db();
        let c = ComponentUpsert {
            appid: "wxc".into(),
            secret: Secret::new("s"),
            token: Secret::new("t"),
            aes_key: Secret::new("k"),
            prev_aes_key: None,
            redirect_uri: None,
        };
        db.upsert_component(&c, 0).unwrap();
        let allowed = |now| {
            (0..5)
                .filter(|_| db.count_query_auth("wxc", now, 3).unwrap())
                .count()
        };
        assert_eq!(allowed(600), 3);
        assert_eq!(allowed(659), 0, "the same minute");
        assert_eq!(allowed(660), 3, "the next one");
        assert!(!db.count_query_auth("wxnone", 660, 3).unwrap());
    }

    #[test]
    fn utc_days() {
        for (t, d) in [
            (0, "1970-01-01"),
            (951_782_400, "2000-02-29"),
            (1_795_305_600, "2026-11-22"),
            (-1, "1969-12-31"),
        ] {
            assert_eq!(utc_day(t), d, "{t}");
        }
    }

    #[test]
    fn opening_an_up_to_date_database_does_not_wait_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.db");
        drop(Db::open(&p).unwrap());
        let writer = Connection::open(&p).unwrap();
        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        // With the write lock held elsewhere (the start-up purge, say), a new connection opens at
        // once; before, it waited out the 5 s busy timeout and failed.
        let started = std::time::Instant::now();
        let db = Db::open(&p).unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        // It reads; it cannot write, and says so within its bound.
        let started = std::time::Instant::now();
        assert_eq!(
            db.health(Duration::from_millis(200)),
            Err("database cannot write: locked by another writer for over 200 ms".into())
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        writer.execute_batch("COMMIT").unwrap();
        // The probe's write is a real commit: another connection sees the database change.
        let version = |c: &Connection| -> i64 {
            c.query_row("PRAGMA data_version", [], |r| r.get(0))
                .unwrap()
        };
        let before = version(&writer);
        db.health(Duration::from_millis(200)).unwrap();
        assert_ne!(version(&writer), before);
    }

    #[test]
    fn purge_goes_in_slices_and_spares_the_live() {
        let (_d, db) = db();
        db.conn
            .execute_batch(
                "INSERT INTO apps (id, appid, secret, created_at) VALUES (1, 'wx1', 's', 0);
                 INSERT INTO users (id, app, openid, session_key, updated_at) VALUES ('u', 1, 'o', 'k', 0);",
            )
            .unwrap();
        // 2,500 sessions (over two batches): every third past the absolute clock, every third
        // idle past the sliding one, the rest live.
        let now = 1_000_000;
        for i in 0..2500i64 {
            let (expires_at, last_visit) = match i % 3 {
                0 => (now - 1, now),
                1 => (now + 100, now - 200),
                _ => (now + 100, now - 50),
            };
            db.conn
                .execute(
                    "INSERT INTO sessions (skey_hash, user_id, created, expires_at, idle_secs, last_visit)
                     VALUES (?1, 'u', 0, ?2, 100, ?3)",
                    params![&crate::ids::skey_hash(&i.to_string())[..], expires_at, last_visit],
                )
                .unwrap();
        }
        let live = 2500 / 3;
        // A zero slice: one deletion per write transaction, so the slicing itself is exercised.
        assert_eq!(
            db.purge_in_slices(now, Duration::ZERO).unwrap(),
            2500 - live
        );
        let left: i64 = db
            .conn
            .query_row("SELECT count(*) FROM sessions WHERE expires_at > ?1 AND last_visit + idle_secs >= ?1", [now], |r| r.get(0))
            .unwrap();
        let all = count(&db, "SELECT count(*) FROM sessions");
        assert_eq!((left, all), (live as i64, live as i64));
        assert_eq!(db.purge_expired_sessions(now).unwrap(), 0);
    }

    #[test]
    fn migrate_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.db");
        drop(Db::open(&p).unwrap());
        let db = Db::open(&p).unwrap();
        assert_eq!(db.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn login_caps_sessions_and_keeps_id() {
        let (_d, mut db) = db();
        let app = db
            .upsert_app(
                &AppUpsert {
                    appid: "wx1".into(),
                    secret: Secret::new("s"),
                    ..Default::default()
                },
                0,
            )
            .unwrap();
        let mut first_id = None;
        for i in 0..(MAX_SESSIONS_PER_USER + 3) {
            let hash = crate::ids::skey_hash(&format!("skey{i}"));
            let r = db
                .record_login(&LoginWrite {
                    app_pk: app.id,
                    openid: "o1",
                    unionid: None,
                    session_key: "k",
                    user_info: None,
                    new_user_id: &format!("{i:032x}"),
                    skey_hash: &hash,
                    now: 1000 + i,
                    expires_at: 100_000,
                    idle_secs: 100,
                })
                .unwrap();
            assert_eq!(r.is_new_user, i == 0);
            let id = first_id.get_or_insert(r.user_id.clone());
            assert_eq!(&r.user_id, id);
        }
        let id = first_id.unwrap();
        let n = count(&db, "SELECT count(*) FROM sessions");
        assert_eq!(n, MAX_SESSIONS_PER_USER);
        assert!(db
            .session(&id, &crate::ids::skey_hash("skey0"))
            .unwrap()
            .is_none());
        assert!(db
            .session(&id, &crate::ids::skey_hash("skey12"))
            .unwrap()
            .is_some());
        assert!(db.remove_app("wx1").unwrap());
        let n = count(&db, "SELECT count(*) FROM sessions");
        assert_eq!(n, 0);
    }
}
