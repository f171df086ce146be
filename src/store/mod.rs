//! Storage: the only module that touches rusqlite. One `Db` (one SQLite connection) per worker
//! thread; the upstream pool's threads share a [`DbPool`], whose connections are taken per
//! operation. WAL, a busy timeout, prepared statements cached per connection. The schema is the
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
//!
//! One file per table (`apps`, `sessions`: users and sessions, `credentials`: credentials and
//! quotas, `work_agents`, `components`: components and authorisers, `callback_seen`); this file
//! holds the connection, the migrations, the sealing seam, the session writers' turn and
//! [`Error`]. The seam another backend implements is `Db`'s public methods and the row types:
//! none of them carries a rusqlite type, and every failure is a [`store::Error`](Error).
//!
//! Two backends sit behind that seam (CONTRACT §10): a `Db` holds a SQLite connection or a
//! handle on the process's MySQL pool (`mysql.rs`). The queries are written once, in `sql.rs`'s
//! terms ([`sql::Sql`], [`sql::Row`], `args!`); what the dialects cannot share (the schema,
//! migration bookkeeping, the health probe, SQLite's pragmas, what sealing does around its
//! pass: the named lock, the files' clean-up) is under a `match` on the connection, in this
//! file and `mysql.rs`.

use crate::seal::{OpenError, Sealer};
use crate::secret::Secret;
use ::mysql::prelude::Queryable;
use rusqlite::{Connection, TransactionBehavior};
use sql::{args, Row, Sql};
use std::borrow::Cow;
use std::cell::RefCell;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

mod apps;
mod callback_seen;
mod components;
mod copy;
mod credentials;
mod leases;
mod mysql;
mod sessions;
pub(crate) mod sql;
mod work_agents;

pub use self::mysql::{redact, Target};

pub use apps::{App, AppUpsert};
pub use components::{Authorizer, Component, ComponentUpsert};
pub use copy::Copied;
pub use credentials::{utc_day, Quota, StoredCredential};
pub use sessions::{
    Imported, ImportedSession, ImportedUser, LoginResult, LoginWrite, SessionRow, Slides,
    MAX_SESSIONS_PER_USER, PURGE_SLICE, SLIDES_FLUSH_AT, SLIDES_FLUSH_EVERY, SLIDES_MAX_PENDING,
    SLIDE_GRACE_SECS,
};
pub use work_agents::WorkAgent;

/// An accounts change in progress ([`Db::change_accounts`]): the one way to write an app, a
/// WeCom agent or a component, and to delete credentials with it, inside that change's write
/// transaction. Its methods sit with their tables.
pub struct Change<'a, 'c> {
    db: &'a Db,
    sql: &'a Sql<'c>,
}

/// A storage failure: what the database (or sealing) said, in words for the log and an
/// operator; whether it was another writer holding the lock past this connection's wait.
#[derive(Debug, Clone)]
pub struct Error {
    message: String,
    busy: bool,
    /// MySQL chose this transaction as a deadlock's victim (it may simply be run again).
    deadlock: bool,
    /// SQLite's code for it, if SQLite said it.
    sqlite: Option<rusqlite::ErrorCode>,
}

impl Error {
    fn new(message: impl Into<String>) -> Error {
        Error::busy_or(message, false)
    }

    fn busy_or(message: impl Into<String>, busy: bool) -> Error {
        Error {
            message: message.into(),
            busy,
            deadlock: false,
            sqlite: None,
        }
    }

    /// Another writer held the lock for longer than this connection waits.
    pub fn is_busy(&self) -> bool {
        self.busy
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error {
            busy: is_busy(&e),
            message: e.to_string(),
            deadlock: false,
            sqlite: e.sqlite_error_code(),
        }
    }
}

impl From<::mysql::Error> for Error {
    fn from(e: ::mysql::Error) -> Error {
        // 1205: lock wait timeout; 1213: deadlock.
        let code = match &e {
            ::mysql::Error::MySqlError(m) => m.code,
            _ => 0,
        };
        Error {
            deadlock: code == 1213,
            ..Error::busy_or(e.to_string(), code == 1205 || code == 1213)
        }
    }
}

/// How many times a MySQL transaction is tried when the server keeps choosing it as a
/// deadlock's victim.
const DEADLOCK_TRIES: u32 = 3;

/// What every public `Db` method answers.
pub type Result<T> = std::result::Result<T, Error>;

/// Migrations by `user_version`: entry `i` takes the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../schema.sql"),
    CALLBACK_SEEN,
    META,
    COMPONENT_PRE_AUTH,
    PHONE_INFO,
    AUTHORIZER_INFO,
    LEASES,
    QUERY_AUTH_TIMES,
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
/// consumes it or it nears expiry; and the clock minute's count of `api_query_auth` calls that
/// unauthenticated `/callback` requests caused (`component`; no longer used: `QUERY_AUTH_TIMES`
/// replaced it, and the columns stay so that an older instance on the same database runs on).
const COMPONENT_PRE_AUTH: &str = "
ALTER TABLE components ADD COLUMN pre_auth_code TEXT;
ALTER TABLE components ADD COLUMN pre_auth_expires_at INTEGER;
ALTER TABLE components ADD COLUMN query_auth_minute INTEGER NOT NULL DEFAULT 0;
ALTER TABLE components ADD COLUMN query_auth_calls INTEGER NOT NULL DEFAULT 0;
";

/// A user's phone number (`qcloud.cam.phone`, `/v1/sessions/phone_number`): sealed JSON
/// `{phoneNumber, purePhoneNumber, countryCode}`.
const PHONE_INFO: &str = "ALTER TABLE users ADD COLUMN phone_info TEXT;";

/// An authoriser's profile as WeChat's `api_get_authorizer_info` gave it (`authorizer_info`
/// JSON; NULL until a fetch succeeded); a component's `forward_url`, where its authorisation
/// events are relayed.
const AUTHORIZER_INFO: &str = "
ALTER TABLE authorizers ADD COLUMN info TEXT;
ALTER TABLE components ADD COLUMN forward_url TEXT;
";

/// Every table, for a check of them all.
const TABLES: &[&str] = &[
    "apps",
    "users",
    "sessions",
    "credentials",
    "upstream_quota",
    "work_agents",
    "components",
    "authorizers",
    "callback_seen",
    "meta",
    "leases",
];

/// Named claims with an owner and an expiry in the database's clock (`leases.rs`): which
/// instance refreshes a credential when several share the database.
const LEASES: &str = "
CREATE TABLE leases (
    name        TEXT    PRIMARY KEY,
    owner       TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL
);
";

/// The times (unix seconds, space-separated) of the `api_query_auth` calls `/callback` made for
/// a component in the last 60 s, at most `QUERY_AUTH_PER_MINUTE` of them (`components.rs`,
/// `count_query_auth`): the bound holds in every 60 s, not per clock minute.
const QUERY_AUTH_TIMES: &str =
    "ALTER TABLE components ADD COLUMN query_auth_times TEXT NOT NULL DEFAULT '';";

/// Every sealed column, as `table.column` (also the associated data a value is sealed for, so a
/// value copied to another column does not open there). A new secret column joins this list
/// and is written with `Db::seal` and read with `Db::unseal`.
pub const SEALED: &[&str] = &[
    "apps.secret",
    "apps.token",
    "apps.aes_key",
    "apps.prev_aes_key",
    "users.session_key",
    "users.user_info",
    "users.phone_info",
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

/// The primary key of each table with a column in [`SEALED`], by which the sealing pass pages
/// the same way on both backends (`true`: an integer column).
const SEALED_KEYS: &[(&str, &[(&str, bool)])] = &[
    ("apps", &[("id", true)]),
    ("users", &[("id", false)]),
    ("credentials", &[("`key`", false)]),
    ("work_agents", &[("corpid", false), ("agentid", false)]),
    ("components", &[("appid", false)]),
    (
        "authorizers",
        &[("component_appid", false), ("authorizer_appid", false)],
    ),
];

/// The MySQL named lock a sealing pass holds ([`Db::seal_existing`]).
const SEAL_LOCK: &str = "wafer_seal";

pub struct Db {
    conn: Conn,
    sealer: Option<Arc<Sealer>>,
    /// How long a write on this connection waits for its turn and SQLite's write lock together
    /// ([`BUSY_TIMEOUT`] unless [`Db::wait_for_writes`] says otherwise); also its busy timeout.
    write_wait: Duration,
    /// The slides this `Db` records instead of writing, shared by one server's handles
    /// ([`Db::share_slides`]; SQLite only). `None`: a slide is written at once.
    slides: Option<Arc<Slides>>,
}

/// The connection of a `Db`: SQLite's own, a handle on a pool of SQLite connections taken per
/// operation ([`DbPool`]), or a handle on the process's MySQL pool.
enum Conn {
    Lite(Connection),
    Pool(Pooled),
    My(Arc<mysql::Server>),
}

/// The page cache of a pool's session-writer connection ([`LitePool::writer`]), KiB: SQLite's
/// default, a worker's.
const WRITER_CACHE_KIB: i64 = 2048;

/// The SQLite connections of a [`DbPool`]: each operation, or each session write with everything
/// inside it, takes an idle connection (or opens one) and gives it back; up to `keep` idle ones
/// are kept.
struct LitePool {
    path: std::path::PathBuf,
    idle: Mutex<Vec<Connection>>,
    keep: usize,
    cache_kib: i64,
    /// The connection every session write of the pool's handles uses, taken inside this
    /// process's turn of session writes (so never by two at once). One connection for all of
    /// them keeps its page cache: a connection's own commits leave its cache valid, while
    /// another connection's commit empties it, and a login's write on a connection just taken
    /// from `idle` read every page of its trees from the file again.
    writer: Mutex<Option<Connection>>,
}

/// A `Db`'s handle on a [`LitePool`], with the connection it holds for the length of a session
/// write (so that the statements inside it share one connection and one transaction).
struct Pooled {
    pool: Arc<LitePool>,
    pinned: RefCell<Option<Connection>>,
}

/// A SQLite connection for the length of one operation: the `Db`'s own, the one it holds for a
/// session write, or one taken from its pool and given back on drop.
enum Lite<'a> {
    Own(&'a Connection),
    Pinned(std::cell::Ref<'a, Connection>),
    Taken(&'a LitePool, Option<Connection>),
}

impl std::ops::Deref for Lite<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match self {
            Lite::Own(c) => c,
            Lite::Pinned(c) => c,
            Lite::Taken(_, c) => c.as_ref().expect("a taken connection is held until drop"),
        }
    }
}

impl Drop for Lite<'_> {
    fn drop(&mut self) {
        if let Lite::Taken(pool, c) = self {
            if let Some(c) = c.take() {
                pool.give_back(c);
            }
        }
    }
}

impl LitePool {
    /// An idle connection (its busy timeout set to `wait`), or a new one.
    fn take(&self, wait: Duration) -> Result<Connection> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        self.ready(idle, self.cache_kib, wait)
    }

    /// The session writer's connection ([`LitePool::writer`]), opened the first time, with a
    /// worker's page cache.
    fn take_writer(&self, wait: Duration) -> Result<Connection> {
        let kept = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.ready(kept, WRITER_CACHE_KIB, wait)
    }

    /// `kept`, or a new connection with a page cache of `cache_kib`; its busy timeout `wait`.
    fn ready(
        &self,
        kept: Option<Connection>,
        cache_kib: i64,
        wait: Duration,
    ) -> Result<Connection> {
        let conn = match kept {
            Some(c) => c,
            None => {
                let c = open_lite(&self.path)?;
                // The refresher thread checkpoints.
                c.pragma_update(None, "wal_autocheckpoint", 0)?;
                c.pragma_update(None, "cache_size", -cache_kib)?;
                c
            }
        };
        conn.busy_timeout(wait)?;
        Ok(conn)
    }

    fn give_back_writer(&self, conn: Connection) {
        if conn.is_autocommit() {
            *self.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.keep && conn.is_autocommit() {
            idle.push(conn);
        }
    }

    /// Connections idle in the pool now.
    fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Database handles for threads that use the database only now and then (the upstream pool,
/// whose requests spend most of their time waiting on WeChat): on SQLite, each operation of a
/// [`DbPool::db`] (or each session write, with all it does) takes a connection from a
/// [`LitePool`] and gives it back, so a thread waiting on something else holds none; on MySQL,
/// the process's pool, taken per operation already.
pub struct DbPool {
    lite: Option<Arc<LitePool>>,
    /// MySQL's handle (or, on SQLite, unused).
    my: Option<Arc<mysql::Server>>,
    sealer: Option<Arc<Sealer>>,
    write_wait: Duration,
    /// Given to every handle ([`DbPool::share_slides`]).
    slides: Option<Arc<Slides>>,
}

impl DbPool {
    /// Open `target` (migrated, its key checked) and keep at most `keep` idle SQLite
    /// connections, each with a page cache of `cache_kib`.
    pub fn open(
        target: &Target,
        sealer: Option<Arc<Sealer>>,
        keep: usize,
        cache_kib: i64,
    ) -> Result<DbPool> {
        let first = Db::open_with(target, sealer)?;
        let (lite, my) = match (first.conn, target) {
            (Conn::My(s), _) => (None, Some(s)),
            (Conn::Lite(conn), Target::File(path)) => {
                conn.pragma_update(None, "wal_autocheckpoint", 0)?;
                conn.pragma_update(None, "cache_size", -cache_kib)?;
                let pool = Arc::new(LitePool {
                    path: path.clone(),
                    idle: Mutex::new(Vec::with_capacity(keep)),
                    keep,
                    cache_kib,
                    writer: Mutex::new(None),
                });
                pool.give_back(conn);
                (Some(pool), None)
            }
            _ => return Err(store_error("a database pool of an unexpected kind")),
        };
        Ok(DbPool {
            lite,
            my,
            sealer: first.sealer,
            write_wait: first.write_wait,
            slides: None,
        })
    }

    /// A handle for one thread (or one request): it holds no connection until an operation.
    pub fn db(&self) -> Db {
        let conn = match (&self.lite, &self.my) {
            (Some(pool), _) => Conn::Pool(Pooled {
                pool: pool.clone(),
                pinned: RefCell::new(None),
            }),
            (None, Some(s)) => Conn::My(s.clone()),
            (None, None) => unreachable!("a DbPool is opened with one or the other"),
        };
        Db {
            conn,
            sealer: self.sealer.clone(),
            write_wait: self.write_wait,
            slides: self.slides.clone(),
        }
    }

    /// Record the session slides of every handle in `slides` (SQLite; on MySQL, nothing: slides
    /// are written at once). See [`Db::share_slides`].
    pub fn share_slides(&mut self, slides: &Arc<Slides>) {
        if self.lite.is_some() {
            self.slides = Some(slides.clone());
        }
    }

    /// Idle SQLite connections kept now (0 on MySQL).
    pub fn idle(&self) -> usize {
        self.lite.as_ref().map_or(0, |p| p.idle())
    }
}

/// Open a SQLite connection with the settings every one of ours has (WAL, a busy timeout,
/// foreign keys, a statement cache). The schema is not touched.
fn open_lite(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// A refusal or failure of our own.
fn store_error(msg: impl Into<String>) -> Error {
    Error::new(msg)
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
/// session check's slide is recorded to be written behind ([`Db::slide_session`]), or, written
/// at once, only ever tries the turn.
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

/// The least time between two of `/healthz`'s committed writes ([`Db::health`]).
pub const HEALTH_WRITE_EVERY: Duration = Duration::from_secs(1);

/// The outcome of `/healthz`'s last committed write and when it was made, shared by one
/// server's connections, so that a flood of `/healthz` commits at most one write per
/// [`HEALTH_WRITE_EVERY`].
#[derive(Default)]
pub struct HealthProbe(Mutex<Option<(Instant, Health)>>);

/// What `/healthz` finds: `Err` says what failed, in words for an operator.
type Health = std::result::Result<(), String>;

impl HealthProbe {
    /// `write`'s outcome, or the last one when it was made within [`HEALTH_WRITE_EVERY`]. The
    /// caller that finds it older makes the next write; callers meanwhile answer the last
    /// outcome rather than write too, or wait (only the very first calls all write).
    fn write(&self, write: impl FnOnce() -> Health) -> Health {
        {
            let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
            match &mut *last {
                Some((at, outcome)) if at.elapsed() < HEALTH_WRITE_EVERY => return outcome.clone(),
                Some((at, _)) => *at = Instant::now(),
                None => {}
            }
        }
        let outcome = write();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), outcome.clone()));
        outcome
    }
}

/// `SQLITE_BUSY` with a note: what a write that ran out of time answers, whether it waited in
/// this process's turn or in SQLite.
fn busy(note: &str) -> Error {
    Error::busy_or(note, true)
}

/// Is this SQLite saying that someone else holds the lock?
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

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
            Ok(()) => log::warn!(
                "wafer: {} was readable by others (mode {:o}); now by its owner only",
                file.display(),
                mode & 0o777
            ),
            Err(e) => log::warn!(
                "wafer: {} is readable by others (mode {:o}) and could not be tightened: {e}",
                file.display(),
                mode & 0o777
            ),
        }
    }
    Ok(())
}

/// A `meta` value on connection `c`.
fn meta_on(c: &Sql, name: &str) -> Result<Option<String>> {
    c.row("SELECT value FROM meta WHERE name = ?1", args![name], |r| {
        r.get(0)
    })
}

fn bump_accounts_generation_on(c: &Sql) -> Result<()> {
    c.exec(
        "INSERT INTO meta (name, value) VALUES ('accounts_generation', '1')
         ON CONFLICT (name) DO UPDATE SET value = value + 1",
        &[],
    )?;
    Ok(())
}

fn set_meta_on(c: &Sql, name: &str, value: &str) -> Result<()> {
    c.exec(
        "INSERT INTO meta (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = ?2",
        args![name, value],
    )?;
    Ok(())
}

/// The refusal of a database sealed with key `id`, which `s` does not hold.
fn wrong_key(s: &Sealer, id: &str) -> Error {
    store_error(format!(
        "storage.key_file is key id {}, but the database is sealed with key id {id}: wrong key file",
        s.current_id()
    ))
}

/// A primary key's value, as the sealing pass pages by it.
#[derive(Clone)]
enum KeyVal {
    Int(i64),
    Text(String),
}

impl KeyVal {
    fn arg(&self) -> sql::Arg<'_> {
        match self {
            KeyVal::Int(i) => sql::Arg::Int(*i),
            KeyVal::Text(t) => sql::Arg::Text(t),
        }
    }
}

/// What a sealing pass did.
#[derive(Default)]
struct SealPass {
    /// The key id it sealed with.
    current: String,
    sealed: usize,
    /// Of those, values that were in clear.
    were_clear: usize,
    /// Values under a key the process does not hold, left as they are.
    unknown: usize,
}

impl Db {
    /// Open (creating if needed) and bring the schema up to date, without a key: refused on a
    /// sealed database.
    pub fn open(path: &Path) -> Result<Db> {
        Db::open_with(&Target::File(path.to_path_buf()), None)
    }

    /// Open with the key the process holds, if any (`storage.key_file`). Refused when the
    /// database is sealed and there is no key, or it is sealed with a key this is not (unless
    /// a rotation names where that key is and this process can read it). A database that has
    /// never been sealed opens either way; [`Db::seal_existing`] seals it.
    pub fn open_with(target: &Target, sealer: Option<Arc<Sealer>>) -> Result<Db> {
        let db = Db::open_unchecked(target, sealer)?;
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
            return Err(wrong_key(s, &sealed_with));
        }
        Ok(db)
    }

    fn open_unchecked(target: &Target, sealer: Option<Arc<Sealer>>) -> Result<Db> {
        let path = match target {
            Target::File(path) => path,
            Target::Mysql(server) => {
                server.migrate(BUSY_TIMEOUT)?;
                return Ok(Db {
                    conn: Conn::My(server.clone()),
                    sealer,
                    write_wait: BUSY_TIMEOUT,
                    slides: None,
                });
            }
        };
        owner_only(path)
            .map_err(|e| store_error(format!("making it readable by its owner only: {e}")))?;
        let conn = open_lite(path)?;
        let mut db = Db {
            conn: Conn::Lite(conn),
            sealer,
            write_wait: BUSY_TIMEOUT,
            slides: None,
        };
        db.migrate()?;
        Ok(db)
    }

    /// Another handle on the same MySQL pool, for another thread (`None` on SQLite).
    pub fn sibling(&self) -> Option<Db> {
        match &self.conn {
            Conn::Lite(_) | Conn::Pool(_) => None,
            Conn::My(s) => Some(Db {
                conn: Conn::My(s.clone()),
                sealer: self.sealer.clone(),
                write_wait: self.write_wait,
                slides: None,
            }),
        }
    }

    /// The SQLite connection for one operation (`None` on MySQL): see [`Lite`].
    fn lite(&self) -> Result<Option<Lite<'_>>> {
        match &self.conn {
            Conn::Lite(c) => Ok(Some(Lite::Own(c))),
            Conn::Pool(p) => {
                if let Ok(c) = std::cell::Ref::filter_map(p.pinned.borrow(), Option::as_ref) {
                    return Ok(Some(Lite::Pinned(c)));
                }
                Ok(Some(Lite::Taken(
                    &p.pool,
                    Some(p.pool.take(self.write_wait)?),
                )))
            }
            Conn::My(_) => Ok(None),
        }
    }

    /// Run `f` with this `Db`'s SQLite connection held throughout (a pooled `Db` takes one and
    /// pins it, so every operation inside `f` uses it); MySQL: `f` as it is.
    fn pinned<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let Conn::Pool(p) = &self.conn else {
            return f();
        };
        if p.pinned.borrow().is_some() {
            return f();
        }
        let conn = p.pool.take(self.write_wait)?;
        *p.pinned.borrow_mut() = Some(conn);
        let out = f();
        if let Some(conn) = p.pinned.borrow_mut().take() {
            p.pool.give_back(conn);
        }
        out
    }

    /// Is this database a MySQL server's (not a SQLite file)?
    pub fn is_mysql(&self) -> bool {
        matches!(self.conn, Conn::My(_))
    }

    /// Run `f` on this `Db`'s connection: SQLite's, or one taken from the MySQL pool for the
    /// duration of `f` (waiting at most the write wait for one).
    fn run<T>(&self, f: impl FnOnce(&Sql) -> Result<T>) -> Result<T> {
        match &self.conn {
            Conn::My(s) => {
                let mut c = s.conn(self.write_wait)?;
                f(&Sql::My(RefCell::new(&mut c)))
            }
            _ => {
                let c = self
                    .lite()?
                    .ok_or_else(|| store_error("no SQLite connection"))?;
                f(&Sql::Lite(&c))
            }
        }
    }

    /// Run `f` in a write transaction (SQLite: `BEGIN IMMEDIATE`), committed when it answers
    /// `Ok`, rolled back otherwise.
    fn tx<T>(&self, mut f: impl FnMut(&Sql) -> Result<T>) -> Result<T> {
        let mut v = None;
        self.tx_or_undo(|c| {
            v = Some(f(c)?);
            Ok(true)
        })?;
        v.ok_or_else(|| store_error("a transaction's value went missing"))
    }

    /// Run `f` in a write transaction, committed when it answers `Ok(true)`, rolled back when
    /// it answers `Ok(false)` or an error ([`Sql::tx_or_undo`]).
    fn tx_or_undo(&self, f: impl FnMut(&Sql) -> Result<bool>) -> Result<bool> {
        self.run(|c| c.tx_or_undo(f))
    }

    /// One statement on this `Db`'s connection; how many rows it changed (or matched).
    fn exec(&self, sql: &str, args: &[sql::Arg]) -> Result<usize> {
        self.run(|c| c.exec(sql, args))
    }

    /// The first row of a query, mapped by `f`.
    fn row<T>(
        &self,
        sql: &str,
        args: &[sql::Arg],
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<Option<T>> {
        self.run(|c| c.row(sql, args, f))
    }

    /// Every row of a query, mapped by `f`.
    fn rows<T>(
        &self,
        sql: &str,
        args: &[sql::Arg],
        f: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.run(|c| c.rows(sql, args, f))
    }

    /// Make writes on this connection wait at most `wait` (for their turn and SQLite's lock
    /// together; on MySQL, for a pooled connection) rather than [`BUSY_TIMEOUT`].
    pub fn wait_for_writes(&mut self, wait: Duration) -> Result<()> {
        if let Conn::Lite(c) = &self.conn {
            // (A pooled connection gets `write_wait` as its busy timeout when it is taken.)
            c.busy_timeout(wait)?;
        }
        self.write_wait = wait;
        Ok(())
    }

    fn migrate(&mut self) -> Result<()> {
        let Conn::Lite(conn) = &mut self.conn else {
            return Ok(());
        };
        // Read first: an up-to-date database (every open but the first) needs no write lock, so
        // opening a connection never waits behind a writer (the start-up purge, a login storm).
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version >= MIGRATIONS.len() {
            return Ok(());
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
        }
        Ok(tx.commit()?)
    }

    // ---- sealing at rest (CONTRACT §11; the key and cipher are `seal.rs`) ----

    /// A `meta` value: a named fact about the database itself.
    pub fn meta(&self, name: &str) -> Result<Option<String>> {
        self.run(|c| meta_on(c, name))
    }

    fn set_meta(&self, name: &str, value: &str) -> Result<()> {
        self.run(|c| set_meta_on(c, name, value))
    }

    /// The accounts generation (`meta.accounts_generation`): bumped by every change to the
    /// apps, WeCom agents or components ([`Db::change_accounts`]), so that every process
    /// serving this database notices a change another one made ([`Db::accounts_generation`]).
    pub fn bump_accounts_generation(&self) -> Result<()> {
        self.run(bump_accounts_generation_on)
    }

    /// Run `f`, a change to the accounts, as one write transaction that also bumps the accounts
    /// generation: the account written, the credentials it makes stale (deleted by the broker
    /// through [`Change`]) and the notice to every other process commit together or not at all.
    /// `f` may run again (a MySQL deadlock is retried).
    pub fn change_accounts<T>(&self, mut f: impl FnMut(&Change) -> Result<T>) -> Result<T> {
        self.tx(|sql| {
            let v = f(&Change { db: self, sql })?;
            bump_accounts_generation_on(sql)?;
            Ok(v)
        })
    }

    /// The accounts generation: 0 until the first change.
    pub fn accounts_generation(&self) -> Result<i64> {
        Ok(self
            .meta("accounts_generation")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// A value as `aad`'s column stores it: sealed under the current key when this process
    /// holds one, else the value itself (borrowed, no allocation). At most once a second it
    /// also checks whether a rotation has moved the database to a new key, and seals with that
    /// one from then on (so a rotation running beside this process finishes).
    fn seal<'a>(&self, aad: &str, plain: &'a str) -> Result<Cow<'a, str>> {
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

    fn seal_opt<'a>(&self, aad: &str, plain: Option<&'a str>) -> Result<Option<Cow<'a, str>>> {
        plain.map(|p| self.seal(aad, p)).transpose()
    }

    /// A stored value of `aad`'s column in clear. A value in clear (never sealed) comes back as
    /// it is, with no allocation; a sealed one needs the key its id names.
    fn unseal(&self, aad: &str, stored: String) -> Result<String> {
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

    fn unseal_opt(&self, aad: &str, stored: Option<String>) -> Result<Option<String>> {
        stored.map(|v| self.unseal(aad, v)).transpose()
    }

    fn secret(&self, aad: &str, r: &Row, i: usize) -> Result<Secret> {
        self.unseal(aad, r.get(i)?).map(Secret::new)
    }

    fn secret_opt(&self, aad: &str, r: &Row, i: usize) -> Result<Option<Secret>> {
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
                    log::warn!("wafer: the database moved to key id {id} (a rotation): sealing with it, from {file}");
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("wafer: key id {id} is needed: {e}"),
        }
    }

    /// Seal every value of [`SEALED`] that is not sealed under the current key: values in
    /// clear, and values under another key this process holds (a rotation). The current key
    /// is recorded in `meta` first, so from then on a keyless open is refused; a database that
    /// another process sealed with another key since this one opened it is refused, as
    /// [`Db::open_with`] would. The values go in write transactions of [`SEAL_BATCH`] rows
    /// (paged by each table's primary key, [`SEALED_KEYS`]), each row rewritten only if
    /// unchanged since it was read (a serving wafer may write beside a rotation). Returns how
    /// many values were sealed; values under a key this process does not hold are an error
    /// saying how many.
    ///
    /// SQLite: clear text is not left behind in the files: overwritten cells are zeroed
    /// (`secure_delete`), the first sealing rebuilds the file (`VACUUM`: free pages may hold
    /// clear text deleted long ago) and the WAL is truncated. MySQL: the pass holds the named
    /// lock `wafer_seal` on its connection, so instances starting at once seal one after
    /// another (the later ones find nothing left, or refuse another key), and the first
    /// sealing rebuilds the tables it rewrote (`OPTIMIZE TABLE`).
    pub fn seal_existing(&self) -> Result<usize> {
        let Some(s) = self.sealer.clone() else {
            return Ok(0);
        };
        let pass = match &self.conn {
            Conn::Pool(_) => {
                return Err(store_error(
                    "the sealing pass needs a connection of its own, not a pooled handle",
                ))
            }
            Conn::Lite(conn) => {
                conn.pragma_update(None, "secure_delete", "ON")?;
                let pass = self.seal_pass(&Sql::Lite(conn), &s)?;
                if pass.were_clear > 0 {
                    if let Err(e) = conn.execute_batch("VACUUM") {
                        log::warn!("wafer: VACUUM after sealing failed ({e}): values deleted before may linger in clear in free pages until a VACUUM");
                    }
                }
                if pass.sealed > 0 {
                    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                }
                pass
            }
            Conn::My(server) => {
                let mut c = server.conn(self.write_wait)?;
                mysql::lock(&mut c, SEAL_LOCK, mysql::SEAL_LOCK_SECS, "sealing pass")?;
                let pass = self.seal_pass(&Sql::My(RefCell::new(&mut c)), &s);
                let _ = c.query_drop(format!("DO RELEASE_LOCK('{SEAL_LOCK}')"));
                let pass = pass?;
                if pass.were_clear > 0 {
                    let tables: Vec<&str> = SEALED_KEYS.iter().map(|(t, _)| *t).collect();
                    if let Err(e) = c.query_drop(format!("OPTIMIZE TABLE {}", tables.join(", "))) {
                        log::warn!("wafer: OPTIMIZE TABLE after sealing failed ({e}): values overwritten may linger in clear in the tables' free space until the tables are rebuilt");
                    }
                }
                pass
            }
        };
        if pass.unknown > 0 {
            return Err(store_error(format!(
                "{} value(s) are sealed under a key other than key id {}: use the key file they were sealed with, or finish `wafer key rotate`",
                pass.unknown, pass.current
            )));
        }
        Ok(pass.sealed)
    }

    /// The sealing pass of [`Db::seal_existing`], on one connection `c`.
    fn seal_pass(&self, c: &Sql, s: &Sealer) -> Result<SealPass> {
        if let Some(id) = meta_on(c, "seal_key_id")? {
            if !s.holds(&id) {
                self.seek_key(s, &id, true);
            }
            if !s.holds(&id) {
                return Err(wrong_key(s, &id));
            }
        }
        let current = s.current_id();
        set_meta_on(c, "seal_key_id", &current)?;
        let prefix = format!("v1:{current}:");
        let mut pass = SealPass {
            current,
            ..SealPass::default()
        };
        for aad in SEALED {
            let (table, column) = aad.split_once('.').unwrap_or_default();
            let keys = SEALED_KEYS
                .iter()
                .find(|(t, _)| *t == table)
                .map(|(_, k)| *k)
                .ok_or_else(|| store_error(format!("{aad}: no primary key to page by")))?;
            let names: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
            let list = names.join(", ");
            let select = |after: bool| {
                let marks: Vec<String> = (0..keys.len()).map(|i| format!("?{}", i + 3)).collect();
                let after = match after {
                    true => format!("AND ({list}) > ({})", marks.join(", ")),
                    false => String::new(),
                };
                format!(
                    "SELECT {list}, {column} FROM {table}
                     WHERE {column} IS NOT NULL AND substr({column}, 1, ?1) != ?2 {after}
                     ORDER BY {list} LIMIT {SEAL_BATCH}"
                )
            };
            let (first, next) = (select(false), select(true));
            let matches: Vec<String> = names
                .iter()
                .enumerate()
                .map(|(i, k)| format!(" AND {k} = ?{}", i + 3))
                .collect();
            let update = format!(
                "UPDATE {table} SET {column} = ?1 WHERE {column} = ?2{}",
                matches.concat()
            );
            let prefix_len = i64::try_from(prefix.len()).unwrap_or(i64::MAX);
            let mut after: Option<Vec<KeyVal>> = None;
            loop {
                let mut args = vec![sql::Arg::Int(prefix_len), sql::Arg::Text(&prefix)];
                if let Some(a) = &after {
                    args.extend(a.iter().map(KeyVal::arg));
                }
                let query = if after.is_some() { &next } else { &first };
                let batch = c.rows(query, &args, |r| {
                    let key = keys
                        .iter()
                        .enumerate()
                        .map(|(i, (_, int))| match int {
                            true => r.get(i).map(KeyVal::Int),
                            false => r.get(i).map(KeyVal::Text),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Ok((key, r.get::<String>(keys.len())?))
                })?;
                let Some((last, _)) = batch.last() else {
                    break;
                };
                after = Some(last.clone());
                let mut done = SealPass::default();
                c.tx_or_undo(|c| {
                    done = SealPass::default();
                    for (key, stored) in &batch {
                        let clear = crate::crypto::sealed_key_id(stored).is_none();
                        let plain = if clear {
                            Cow::Borrowed(stored.as_str())
                        } else {
                            match s.open(aad, stored) {
                                Ok(p) => Cow::Owned(p),
                                Err(OpenError::UnknownKey(_)) => {
                                    done.unknown += 1;
                                    continue;
                                }
                                Err(e) => return Err(store_error(format!("{aad}: {e}"))),
                            }
                        };
                        let value = s.seal(aad, &plain).map_err(|e| {
                            store_error(format!("sealing {aad}: no random bytes: {e}"))
                        })?;
                        let mut args = vec![sql::Arg::Text(&value), sql::Arg::Text(stored)];
                        args.extend(key.iter().map(KeyVal::arg));
                        let n = c.exec(&update, &args)?;
                        done.sealed += n;
                        if clear {
                            done.were_clear += n;
                        }
                    }
                    Ok(true)
                })?;
                pass.sealed += done.sealed;
                pass.were_clear += done.were_clear;
                pass.unknown += done.unknown;
            }
        }
        Ok(pass)
    }

    /// Move every sealed value to `key` (`wafer key rotate`), read from `file`: the file is
    /// recorded first, then the key id, so a serving wafer that finds the new id also finds
    /// where its key is; then [`Db::seal_existing`]. A database never sealed is sealed.
    pub fn rotate_to(&mut self, key: crate::crypto::SealKey, file: &Path) -> Result<usize> {
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
    /// Nothing to do on MySQL.
    pub fn no_autocheckpoint(&self) -> Result<()> {
        match &self.conn {
            Conn::Lite(c) => Ok(c.pragma_update(None, "wal_autocheckpoint", 0)?),
            // Set on every pooled connection when it is opened.
            Conn::Pool(_) | Conn::My(_) => Ok(()),
        }
    }

    /// Bound this connection's page cache (SQLite's default is 2 MiB). Nothing on MySQL.
    pub fn set_cache_kib(&self, kib: i64) -> Result<()> {
        match &self.conn {
            Conn::Lite(c) => Ok(c.pragma_update(None, "cache_size", -kib)?),
            // The pool's size, given to `Db::shared_pool`.
            Conn::Pool(_) | Conn::My(_) => Ok(()),
        }
    }

    /// Copy what the WAL holds back into the database, without waiting for readers or
    /// writers. Nothing on MySQL.
    pub fn checkpoint(&self) -> Result<()> {
        match self.lite()? {
            Some(c) => Ok(c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?),
            None => Ok(()),
        }
    }

    /// Run `write` (one statement, or a transaction it begins and ends) in this process's turn of
    /// session writes, within `bound` for the turn and SQLite's write lock together: past it,
    /// busy. On MySQL there is no single write lock to queue for: `write` runs at once.
    fn session_write<T>(&self, bound: Duration, write: impl FnOnce() -> Result<T>) -> Result<T> {
        if matches!(self.conn, Conn::My(_)) {
            return write();
        }
        let deadline = Instant::now() + bound;
        let take_turn = || {
            SESSION_WRITES
                .take_by(deadline)
                .ok_or_else(|| busy("waited too long for this process's other writers"))
        };
        // A pool's handle writes on the pool's one session-writer connection, taken in the turn
        // (and given back before the turn is).
        let writer = match &self.conn {
            Conn::Pool(p) if p.pinned.borrow().is_none() => Some((p, take_turn()?)),
            _ => None,
        };
        if let Some((p, _)) = &writer {
            *p.pinned.borrow_mut() = Some(p.pool.take_writer(self.write_wait)?);
        }
        let written = self.pinned(|| {
            let _turn = match writer {
                Some(_) => None,
                None => Some(take_turn()?),
            };
            let conn = self
                .lite()?
                .ok_or_else(|| store_error("no SQLite connection"))?;
            conn.busy_timeout(deadline.saturating_duration_since(Instant::now()))?;
            let written = write();
            let restored = conn.busy_timeout(self.write_wait);
            let written = written?;
            restored?;
            Ok(written)
        });
        if let Some((p, _turn)) = writer {
            if let Some(conn) = p.pinned.borrow_mut().take() {
                p.pool.give_back_writer(conn);
            }
        }
        written
    }

    /// What `/healthz` asks: a read of a table, then a write, the write within `bound` (its
    /// turn and SQLite's lock together; on MySQL, getting a connection). `Err` says which failed
    /// and why, in words for an operator.
    ///
    /// Anyone may ask (`/healthz` needs no key), so the committed write is rationed: at most one
    /// per [`HEALTH_WRITE_EVERY`] for all the connections sharing `probe` (one server's); calls
    /// in between answer that write's outcome. On SQLite every call still takes the write lock
    /// (`BEGIN IMMEDIATE`, then a rollback: nothing written, no WAL frame), so a writer that
    /// holds the lock is seen at once, and a disk that fills up or a file made read-only within
    /// a second. The committed write sets the header's `user_version` to the value it has: one
    /// page really committed, with no table of its own; on MySQL it rewrites the `meta` row
    /// `schema_version`.
    pub fn health(&self, bound: Duration, probe: &HealthProbe) -> Health {
        let conn = match &self.conn {
            Conn::Lite(c) => c,
            Conn::Pool(_) => return Err("the health probe needs a connection of its own".into()),
            Conn::My(s) => {
                let mut c = s
                    .conn(bound)
                    .map_err(|e| format!("database cannot be reached: {e}"))?;
                let sql = Sql::My(RefCell::new(&mut c));
                sql.row(
                    "SELECT count(*) FROM (SELECT 1 FROM apps LIMIT 1) t",
                    &[],
                    |r| r.get::<i64>(0),
                )
                .map_err(|e| format!("database cannot read: {e}"))?;
                return probe.write(|| {
                    sql.exec(
                        "UPDATE meta SET value = value WHERE name = 'schema_version'",
                        &[],
                    )
                    .map(drop)
                    .map_err(|e| format!("database cannot write: {e}"))
                });
            }
        };
        conn.prepare_cached("SELECT count(*) FROM (SELECT 1 FROM apps LIMIT 1)")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map_err(|e| format!("database cannot read: {e}"))?;
        let cannot_write = |e: Error| {
            let why = match e.sqlite {
                _ if e.busy => {
                    format!("locked by another writer for over {} ms", bound.as_millis())
                }
                Some(rusqlite::ErrorCode::DiskFull) => "disk full".to_string(),
                Some(rusqlite::ErrorCode::ReadOnly) => "read-only".to_string(),
                _ => e.to_string(),
            };
            format!("database cannot write: {why}")
        };
        let write = |commit: bool| {
            self.session_write(bound, || {
                let tx =
                    rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
                if !commit {
                    return Ok(tx.rollback()?);
                }
                let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
                tx.pragma_update(None, "user_version", version)?;
                Ok(tx.commit()?)
            })
            .map_err(cannot_write)
        };
        write(false)?;
        probe.write(|| write(true))
    }

    pub fn integrity_check(&self) -> Result<String> {
        match &self.conn {
            Conn::Lite(_) | Conn::Pool(_) => {
                let c = self
                    .lite()?
                    .ok_or_else(|| store_error("no SQLite connection"))?;
                Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
            }
            Conn::My(s) => {
                // CHECK TABLE answers (table, op, type, text) rows; "OK" or "Table is already
                // up to date" for a sound table.
                let rows: Vec<(String, String, String, String)> = s
                    .conn(self.write_wait)?
                    .query(format!("CHECK TABLE {}", TABLES.join(", ")))?;
                let bad: Vec<String> = rows
                    .into_iter()
                    .filter(|(_, _, _, text)| text != "OK" && !text.contains("up to date"))
                    .map(|(table, _, kind, text)| format!("{table}: {kind}: {text}"))
                    .collect();
                Ok(if bad.is_empty() {
                    "ok".to_string()
                } else {
                    bad.join("\n")
                })
            }
        }
    }
}
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn count(db: &Db, sql: &str) -> i64 {
        db.row(sql, &[], |r| r.get(0)).unwrap().unwrap()
    }

    /// Statements without parameters, on either backend (a test's set-up).
    pub(crate) fn batch(db: &Db, sql: &str) {
        db.run(|c| c.batch(sql)).unwrap()
    }

    pub(crate) fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        (dir, db)
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
        let probe = HealthProbe::default();
        assert_eq!(
            db.health(Duration::from_millis(200), &probe),
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
        db.health(Duration::from_millis(200), &probe).unwrap();
        assert_ne!(version(&writer), before);
    }

    #[test]
    fn the_sealing_pass_pages_every_sealed_table_by_its_primary_key() {
        let (_dir, db) = db();
        for aad in SEALED {
            let table = aad.split_once('.').unwrap().0;
            let keys = SEALED_KEYS
                .iter()
                .find(|(t, _)| *t == table)
                .unwrap_or_else(|| panic!("{table} is in SEALED_KEYS"))
                .1;
            // (name, declared type, position in the primary key)
            let mut pk: Vec<(String, String, i64)> = db
                .rows(
                    &format!(
                        "SELECT name, type, pk FROM pragma_table_info('{table}') WHERE pk > 0"
                    ),
                    &[],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .unwrap();
            pk.sort_by_key(|c| c.2);
            let want: Vec<(String, bool)> = pk
                .into_iter()
                .map(|(name, kind, _)| (name, kind == "INTEGER"))
                .collect();
            let have: Vec<(String, bool)> = keys
                .iter()
                .map(|(k, int)| (k.replace('`', ""), *int))
                .collect();
            assert_eq!(have, want, "{table}");
        }
    }

    #[test]
    fn migrate_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.db");
        drop(Db::open(&p).unwrap());
        let db = Db::open(&p).unwrap();
        assert_eq!(db.integrity_check().unwrap(), "ok");
    }
}
