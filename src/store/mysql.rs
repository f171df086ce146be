//! The MySQL backend's own parts (CONTRACT §10): where the database is ([`Target`]), the
//! process's connection pool, the schema in MySQL's dialect and its migrations.
//!
//! Everything else is the queries `sql.rs` shares with SQLite. Each `Db` on MySQL holds a
//! handle on the process's pool and takes a connection for one operation at a time (a
//! transaction keeps it to its end), so a thread that waits (for a lease, for WeChat) holds
//! none. Taking one waits at most the `Db`'s write wait; reads and writes on the socket are
//! bounded too: a database that stops answering is an error within the bound, never a hang.

use super::{Error, Result};
use mysql::prelude::Queryable;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Connections per process: `MIN` opened at start (a wrong URL or password fails there), at
/// most `MAX` (a few per worker thread would exhaust a small server under N instances).
pub const POOL_MIN: usize = 2;
pub const POOL_MAX: usize = 32;

/// How long one read or write on a database connection may take.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the database is: a SQLite file, or a MySQL-compatible server (the pool, opened once
/// per process and shared by every `Db`).
#[derive(Clone)]
pub enum Target {
    File(PathBuf),
    Mysql(Arc<Server>),
}

pub struct Server {
    pub(super) pool: mysql::Pool,
    /// The schema was brought up to date by this process: later `Db`s skip the check.
    migrated: std::sync::atomic::AtomicBool,
    /// The URL with its password replaced by `***`: what logs and errors show.
    shown: String,
}

impl Target {
    /// `mysql://…` is a server (connected now); anything else is a SQLite file's path.
    pub fn open(spec: &str) -> std::result::Result<Target, String> {
        if spec.starts_with("mysql://") {
            Server::connect(spec).map(|s| Target::Mysql(Arc::new(s)))
        } else {
            Ok(Target::File(PathBuf::from(spec)))
        }
    }

    /// The configured database: `storage.url` when set, else the file `storage.path`.
    pub fn from_config(s: &crate::config::StorageConfig) -> std::result::Result<Target, String> {
        let url = s.url.expose();
        if url.is_empty() {
            Ok(Target::File(PathBuf::from(&s.path)))
        } else if !url.starts_with("mysql://") {
            Err(format!("storage.url {}: not a mysql:// URL", redact(url)))
        } else {
            Target::open(url)
        }
    }

    /// The SQLite file, if this is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Target::File(p) => Some(p),
            Target::Mysql(_) => None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::File(p) => write!(f, "{}", p.display()),
            Target::Mysql(s) => f.write_str(&s.shown),
        }
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// `url` with the password (between `user:` and `@`) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// The password in `url`, if any, percent-decoded (to scrub it from a driver's message).
fn password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.rsplit_once('@')?.0;
    let pass = userinfo.split_once(':')?.1;
    (!pass.is_empty()).then(|| {
        percent_encoding::percent_decode_str(pass)
            .decode_utf8_lossy()
            .into_owned()
    })
}

/// `?ssl-mode=` as MySQL's clients spell it (the crate has no such parameter): the URL without
/// it, and the TLS options it asks for (`None`: plain TCP). `REQUIRED` encrypts without checking
/// the certificate (as MySQL's clients do), `VERIFY_CA` checks it against the roots (add the
/// crate's `root_cert_path=` for a private CA) but not the host name, `VERIFY_IDENTITY` checks
/// both; `DISABLED` and `PREFERRED` connect without TLS.
fn ssl_mode(url: &str) -> std::result::Result<(String, Option<mysql::SslOpts>), String> {
    let Some((head, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let (mut kept, mut tls) = (Vec::new(), None);
    for pair in query.split('&') {
        let Some(mode) = pair
            .strip_prefix("ssl-mode=")
            .or_else(|| pair.strip_prefix("ssl_mode="))
        else {
            kept.push(pair);
            continue;
        };
        let plain = mysql::SslOpts::default();
        tls = match mode.to_ascii_uppercase().as_str() {
            "DISABLED" | "PREFERRED" => None,
            "REQUIRED" => Some(
                plain
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            "VERIFY_CA" => Some(plain.with_danger_skip_domain_validation(true)),
            "VERIFY_IDENTITY" => Some(plain),
            other => {
                return Err(format!(
                    "ssl-mode={other}: expected DISABLED, PREFERRED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY"
                ))
            }
        };
    }
    Ok(match kept.is_empty() {
        true => (head.to_string(), tls),
        false => (format!("{head}?{}", kept.join("&")), tls),
    })
}

impl Server {
    fn connect(url: &str) -> std::result::Result<Server, String> {
        let shown = redact(url);
        let fail = |what: String| {
            let mut what = what;
            if let Some(p) = password(url) {
                what = what.replace(&p, "***");
            }
            format!("storage.url {shown}: {what}")
        };
        let (url_rest, tls) = ssl_mode(url).map_err(&fail)?;
        let opts =
            mysql::Opts::from_url(&url_rest).map_err(|e| fail(format!("not a valid URL: {e}")))?;
        let opts = match tls {
            Some(tls) => mysql::OptsBuilder::from_opts(opts)
                .ssl_opts(Some(tls))
                .into(),
            None => opts,
        };
        if opts.get_db_name().is_none_or(str::is_empty) {
            return Err(fail(
                "names no database (mysql://USER:PASS@HOST:PORT/DB)".into(),
            ));
        }
        let constraints =
            mysql::PoolConstraints::new(POOL_MIN, POOL_MAX).expect("POOL_MIN <= POOL_MAX");
        let opts = mysql::OptsBuilder::from_opts(opts)
            .pool_opts(
                mysql::PoolOpts::new()
                    .with_constraints(constraints)
                    // Statements stay prepared across uses of a connection.
                    .with_reset_connection(false),
            )
            .read_timeout(Some(SOCKET_TIMEOUT))
            .write_timeout(Some(SOCKET_TIMEOUT))
            .tcp_connect_timeout(Some(CONNECT_TIMEOUT))
            .stmt_cache_size(64)
            // An UPDATE counts the rows it matched, as SQLite does.
            .additional_capabilities(mysql::consts::CapabilityFlags::CLIENT_FOUND_ROWS)
            .init(vec![
                "SET SESSION sql_mode = 'STRICT_TRANS_TABLES,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'",
                "SET NAMES utf8mb4",
            ]);
        let pool = mysql::Pool::new(opts).map_err(|e| fail(format!("cannot connect: {e}")))?;
        Ok(Server {
            pool,
            shown,
            migrated: Default::default(),
        })
    }

    /// Bring the schema up to date, once per process ([`migrate`]).
    pub(super) fn migrate(&self, wait: Duration) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        migrate(&mut self.conn(wait)?)?;
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    /// A connection from the pool, waiting at most `wait` for one.
    pub(super) fn conn(&self, wait: Duration) -> Result<mysql::PooledConn> {
        self.pool
            .try_get_conn(wait)
            .map_err(|e| Error::busy_or(format!("{}: {e}", self.shown), true))
    }
}

/// MySQL's migrations, entry for entry those of SQLite (`MIGRATIONS`): entry `i` takes the
/// database from `meta.schema_version` `i` to `i + 1`. A migration only adds what the
/// previous release can ignore, so instances upgrade one at a time.
pub const MIGRATIONS: &[&str] = &[
    SCHEMA,
    "CREATE TABLE callback_seen (
        `key`        VARCHAR(255) NOT NULL PRIMARY KEY,
        expires_at   BIGINT NOT NULL,
        INDEX callback_seen_by_expiry (expires_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    // `meta` itself is made before any migration (it holds the version).
    "",
    "ALTER TABLE components ADD COLUMN pre_auth_code TEXT,
        ADD COLUMN pre_auth_expires_at BIGINT,
        ADD COLUMN query_auth_minute BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN query_auth_calls BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE users ADD COLUMN phone_info MEDIUMTEXT",
    "ALTER TABLE authorizers ADD COLUMN info MEDIUMTEXT;
     ALTER TABLE components ADD COLUMN forward_url TEXT",
    "CREATE TABLE leases (
        name        VARCHAR(255) NOT NULL PRIMARY KEY,
        owner       VARCHAR(64)  NOT NULL,
        expires_at  BIGINT       NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    // VARCHAR, not TEXT: a TEXT column takes no default before MySQL 8.0.13 (60 times fit).
    "ALTER TABLE components ADD COLUMN query_auth_times VARCHAR(1024) NOT NULL DEFAULT ''",
];

/// `schema.sql` in MySQL's words: binary collation (comparisons exact, as in SQLite),
/// BIGINT times, VARBINARY hashes, TEXT for sealed values.
const SCHEMA: &str = "
CREATE TABLE apps (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    appid         VARCHAR(64)  NOT NULL UNIQUE,
    secret        TEXT         NOT NULL,
    kind          VARCHAR(16)  NOT NULL DEFAULT 'miniprogram',
    title         VARCHAR(255) NOT NULL DEFAULT '',
    login_days    BIGINT       NOT NULL DEFAULT 30,
    session_secs  BIGINT       NOT NULL DEFAULT 2592000,
    token         TEXT,
    aes_key       TEXT,
    prev_aes_key  TEXT,
    forward_url   TEXT,
    created_at    BIGINT       NOT NULL,
    CHECK (kind IN ('miniprogram', 'official'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE users (
    id           VARCHAR(64)  NOT NULL PRIMARY KEY,
    app          BIGINT       NOT NULL,
    openid       VARCHAR(128) NOT NULL,
    unionid      VARCHAR(128),
    session_key  TEXT         NOT NULL,
    user_info    MEDIUMTEXT,
    updated_at   BIGINT       NOT NULL,
    UNIQUE (app, openid),
    FOREIGN KEY (app) REFERENCES apps (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE sessions (
    seq          BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    skey_hash    VARBINARY(32) NOT NULL UNIQUE,
    user_id      VARCHAR(64)   NOT NULL,
    created      BIGINT        NOT NULL,
    expires_at   BIGINT        NOT NULL,
    idle_secs    BIGINT        NOT NULL,
    last_visit   BIGINT        NOT NULL,
    INDEX sessions_by_user (user_id),
    INDEX sessions_by_expiry (expires_at),
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE credentials (
    `key`        VARCHAR(255) NOT NULL PRIMARY KEY,
    value        TEXT         NOT NULL,
    expires_at   BIGINT       NOT NULL,
    updated_at   BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE upstream_quota (
    `key`         VARCHAR(255) NOT NULL,
    day           CHAR(10)     NOT NULL,
    calls         BIGINT       NOT NULL DEFAULT 0,
    forced        BIGINT       NOT NULL DEFAULT 0,
    last_forced   BIGINT       NOT NULL DEFAULT 0,
    blocked_until BIGINT       NOT NULL DEFAULT 0,
    PRIMARY KEY (`key`, day)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE work_agents (
    corpid       VARCHAR(64)  NOT NULL,
    agentid      VARCHAR(64)  NOT NULL,
    secret       TEXT         NOT NULL,
    remark       VARCHAR(255) NOT NULL DEFAULT '',
    token        TEXT,
    aes_key      TEXT,
    prev_aes_key TEXT,
    forward_url  TEXT,
    created_at   BIGINT       NOT NULL,
    PRIMARY KEY (corpid, agentid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE components (
    appid          VARCHAR(64) NOT NULL PRIMARY KEY,
    secret         TEXT        NOT NULL,
    token          TEXT        NOT NULL,
    aes_key        TEXT        NOT NULL,
    prev_aes_key   TEXT,
    redirect_uri   TEXT,
    verify_ticket  TEXT,
    ticket_at      BIGINT,
    created_at     BIGINT      NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE authorizers (
    component_appid   VARCHAR(64) NOT NULL,
    authorizer_appid  VARCHAR(64) NOT NULL,
    refresh_token     TEXT        NOT NULL,
    func_info         MEDIUMTEXT  NOT NULL,
    authorized_at     BIGINT      NOT NULL,
    revoked_at        BIGINT,
    PRIMARY KEY (component_appid, authorizer_appid),
    FOREIGN KEY (component_appid) REFERENCES components (appid) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
";

/// The table of named facts, which also holds `schema_version`: made before any migration.
const META: &str = "CREATE TABLE IF NOT EXISTS meta (
    name   VARCHAR(191) NOT NULL PRIMARY KEY,
    value  TEXT         NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// How long a starting instance waits for another one's migration.
const MIGRATION_LOCK_SECS: u32 = 60;

/// How long a starting instance waits for another one's sealing pass (the first sealing of a
/// large database takes minutes).
pub(super) const SEAL_LOCK_SECS: u32 = 600;

/// Take the named lock `name` (`GET_LOCK`) on connection `c`, waiting at most `secs` for another
/// instance holding it (said once in the log); released with `RELEASE_LOCK` or when `c`
/// closes. `what` names it in the log and the error.
pub(super) fn lock(c: &mut mysql::PooledConn, name: &str, secs: u32, what: &str) -> Result<()> {
    let mut get = |secs: u32| -> Result<bool> {
        let got: Option<Option<i64>> =
            c.query_first(format!("SELECT GET_LOCK('{name}', {secs})"))?;
        Ok(got.flatten() == Some(1))
    };
    if get(0)? {
        return Ok(());
    }
    log::info!("wafer: waiting for another instance's {what} (at most {secs} s)");
    if get(secs)? {
        return Ok(());
    }
    Err(Error::new(format!(
        "another instance held the {what} lock for over {secs} s"
    )))
}

/// Bring the schema up to date. Instances starting at once take turns on a named lock
/// (`GET_LOCK`); the one that gets it first migrates, the others then find nothing to do.
/// MySQL commits each DDL statement by itself, so the version is written after each step.
fn migrate(c: &mut mysql::PooledConn) -> Result<()> {
    let version = |c: &mut mysql::PooledConn| -> Result<usize> {
        let v: Option<String> =
            c.query_first("SELECT value FROM meta WHERE name = 'schema_version'")?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
    };
    c.query_drop(META)?;
    if version(c)? >= MIGRATIONS.len() {
        return Ok(());
    }
    lock(c, "wafer_migrate", MIGRATION_LOCK_SECS, "migration")?;
    let migrated = (|| {
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version(c)?) {
            for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
                c.query_drop(stmt)?;
            }
            c.exec_drop(
                "INSERT INTO meta (name, value) VALUES ('schema_version', ?)
                 ON DUPLICATE KEY UPDATE value = VALUES(value)",
                ((i + 1).to_string(),),
            )?;
        }
        Ok(())
    })();
    let _ = c.query_drop("DO RELEASE_LOCK('wafer_migrate')");
    migrated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("mysql://u:s3cret@db:3306/w?ssl-mode=REQUIRED"),
            "mysql://u:***@db:3306/w?ssl-mode=REQUIRED"
        );
        assert_eq!(redact("mysql://u@db/w"), "mysql://u@db/w");
        assert_eq!(password("mysql://u:p%40ss@db/w").as_deref(), Some("p@ss"));
    }

    #[test]
    fn ssl_mode_is_read_and_taken_out_of_the_url() {
        let (url, tls) = ssl_mode("mysql://u:p@h/db?ssl-mode=REQUIRED&stmt_cache_size=8").unwrap();
        assert_eq!(url, "mysql://u:p@h/db?stmt_cache_size=8");
        let tls = tls.unwrap();
        assert!(tls.accept_invalid_certs() && tls.skip_domain_validation());
        let (url, tls) = ssl_mode("mysql://u:p@h/db?ssl-mode=VERIFY_IDENTITY").unwrap();
        assert_eq!(url, "mysql://u:p@h/db");
        assert!(!tls.unwrap().accept_invalid_certs());
        assert!(ssl_mode("mysql://u:p@h/db?ssl-mode=disabled")
            .unwrap()
            .1
            .is_none());
        assert!(ssl_mode("mysql://u:p@h/db?ssl-mode=SOMETIMES").is_err());
        assert_eq!(ssl_mode("mysql://u:p@h/db").unwrap().0, "mysql://u:p@h/db");
    }

    #[test]
    fn both_backends_have_every_migration() {
        assert_eq!(MIGRATIONS.len(), super::super::MIGRATIONS.len());
    }
}
