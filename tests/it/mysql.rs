//! The MySQL switch: tests that need a real MySQL-compatible server ask [`test_db`] for a fresh
//! database of their own on the server `WAFER_TEST_MYSQL_URL` names (`.ci/mariadb.sh` starts a
//! private MariaDB and sets it; README, "Running the MySQL tests"). Without that variable such a
//! test returns early and the binary prints one line saying so, so `cargo test` on a machine
//! without MariaDB still passes the SQLite suite; with `WAFER_REQUIRE_MYSQL=1` (CI) a skip is a
//! failure, so CI can never go green without the MySQL suite.

use mysql::prelude::Queryable;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};

pub const URL_VAR: &str = "WAFER_TEST_MYSQL_URL";
pub const REQUIRE_VAR: &str = "WAFER_REQUIRE_MYSQL";

/// One test's own database, dropped with the value.
pub struct TestDb {
    /// `mysql://USER:PASS@HOST:PORT/NAME` (with the server URL's query, if any).
    pub url: String,
    pub name: String,
    server: mysql::Opts,
}

impl TestDb {
    /// A connection to this database.
    pub fn conn(&self) -> mysql::Conn {
        mysql::Conn::new(
            mysql::OptsBuilder::from_opts(self.server.clone()).db_name(Some(&self.name)),
        )
        .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Best effort: the server is private and thrown away at the end of the run anyway.
        if let Ok(mut c) = mysql::Conn::new(self.server.clone()) {
            let _ = c.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}

/// A fresh, empty database for the calling test, or `None` when no MySQL server is configured
/// (the caller returns early). Panics when the server is required but not configured, or
/// configured but not answering.
pub fn test_db() -> Option<TestDb> {
    let Some(base) = std::env::var(URL_VAR).ok().filter(|v| !v.is_empty()) else {
        if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") {
            panic!("{REQUIRE_VAR}=1 but {URL_VAR} is not set: the MySQL suite cannot be skipped");
        }
        static SKIPPED: std::sync::Once = std::sync::Once::new();
        // Straight to the process's stderr: the test harness captures eprintln! of a passing test.
        SKIPPED.call_once(|| {
            let _ = writeln!(
                std::io::stderr(),
                "MySQL suite skipped: set {URL_VAR} (see README) to run it"
            );
        });
        return None;
    };
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "wafer_t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let server = mysql::Opts::from_url(&base)
        .unwrap_or_else(|e| panic!("{URL_VAR} is not a mysql:// URL: {e}"));
    let mut c = mysql::Conn::new(server.clone())
        .unwrap_or_else(|e| panic!("{URL_VAR}: cannot connect: {e}"));
    c.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
        .unwrap();
    c.query_drop(format!(
        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    ))
    .unwrap();
    Some(TestDb {
        url: with_db(&base, &name),
        name,
        server,
    })
}

/// The server URL `base` (`mysql://USER:PASS@HOST:PORT/[DB][?QUERY]`) with `db` as its database.
fn with_db(base: &str, db: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let rest = head.strip_prefix("mysql://").unwrap_or(head);
    let authority = rest.split('/').next().unwrap_or(rest);
    match query {
        Some(q) => format!("mysql://{authority}/{db}?{q}"),
        None => format!("mysql://{authority}/{db}"),
    }
}

#[test]
fn each_test_gets_its_own_database_and_drop_removes_it() {
    let Some(a) = test_db() else { return };
    let b = test_db().unwrap();
    assert_ne!(a.name, b.name);
    a.conn()
        .query_drop("CREATE TABLE t (x INT); INSERT INTO t VALUES (7)")
        .unwrap();
    // The URL handed out names the test's database and works on its own.
    let mut by_url = mysql::Conn::new(mysql::Opts::from_url(&a.url).unwrap()).unwrap();
    assert_eq!(
        by_url.query_first::<i64, _>("SELECT x FROM t").unwrap(),
        Some(7)
    );
    let in_b: Option<i64> = b
        .conn()
        .query_first(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE()",
        )
        .unwrap();
    assert_eq!(in_b, Some(0));
    let name = a.name.clone();
    drop(by_url);
    drop(a);
    let left: Option<i64> = b
        .conn()
        .exec_first(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?",
            (name,),
        )
        .unwrap();
    assert_eq!(left, Some(0));
}

#[test]
fn with_db_replaces_the_path_and_keeps_the_query() {
    for (base, want) in [
        (
            "mysql://u:p@127.0.0.1:3306/",
            "mysql://u:p@127.0.0.1:3306/x",
        ),
        ("mysql://u:p@h:1", "mysql://u:p@h:1/x"),
        (
            "mysql://u:p@h:1/old?ssl-mode=REQUIRED",
            "mysql://u:p@h:1/x?ssl-mode=REQUIRED",
        ),
    ] {
        assert_eq!(with_db(base, "x"), want);
    }
}
