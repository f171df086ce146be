//! The test harness: `Env` owns a temp dir, a fake WeChat and a running server, and offers one
//! small helper per dialect. Nothing here is mocked but WeChat, which is our own fake on loopback.
//!
//! The backend switch: with `WAFER_TEST_BACKEND=mysql` (and `WAFER_TEST_MYSQL_URL`, see
//! `mysql.rs`) every `Env` runs its server on a fresh database of that MySQL-compatible server
//! instead of a SQLite file, so the whole suite runs on MySQL. Tests that look inside the
//! SQLite file itself (its modes, its raw SQL) start with
//! [`sqlite_only!`] and are skipped there, each with its reason.

use serde_json::{json, Value};
use std::path::PathBuf;
use wafer::config::{AppDecl, Config};

pub const APPID: &str = "wxtestapp0000001";
pub const SECRET: &str = "test-secret";

pub struct Env {
    /// Holds the database file; removed when the test ends.
    pub _dir: tempfile::TempDir,
    /// The test's own MySQL database under the switch (dropped after the server stops).
    pub mysql: Option<crate::mysql::TestDb>,
    pub mock: fake_wechat::MockHandle,
    pub server: Option<wafer::http::Handle>,
    pub config: Config,
    agent: ureq::Agent,
}

pub fn app(appid: &str) -> AppDecl {
    AppDecl::new(appid, SECRET)
}

impl Env {
    /// A server with one mini-program app (`APPID`).
    pub fn new() -> Env {
        Env::with(|_| {})
    }

    /// A server whose config the caller adjusts first (apps, timeouts, api key).
    pub fn with(adjust: impl FnOnce(&mut Config)) -> Env {
        let mysql = on_mysql().then(|| {
            crate::mysql::test_db()
                .unwrap_or_else(|| panic!("{BACKEND_VAR}=mysql needs {}", crate::mysql::URL_VAR))
        });
        Env::on(mysql, adjust)
    }

    /// A server on a fresh MySQL database whatever the switch says (tests of several
    /// instances on one database); `None` when no MySQL server is configured.
    pub fn with_mysql(adjust: impl FnOnce(&mut Config)) -> Option<Env> {
        crate::mysql::test_db().map(|db| Env::on(Some(db), adjust))
    }

    /// Another `wafer serve` on this one's database and config (a new port): stop it with
    /// `shutdown` before the `Env` goes.
    pub fn another(&self) -> wafer::http::Handle {
        wafer::http::start(self.config.clone(), false).unwrap()
    }

    fn on(mysql: Option<crate::mysql::TestDb>, adjust: impl FnOnce(&mut Config)) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mock = fake_wechat::start("127.0.0.1:0").unwrap();
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".into();
        config.server.workers = 4;
        config.storage.path = dir.path().join("wafer.db").to_string_lossy().into_owned();
        config.wechat.api_base = mock.base_url();
        config.wechat.work_api_base = mock.base_url();
        config.wechat.timeout_ms = 1500;
        config.apps = vec![app(APPID)];
        if let Some(db) = &mysql {
            config.storage.url = wafer::secret::Secret::new(db.url.clone());
        }
        let own_file = config.storage.path.clone();
        adjust(&mut config);
        // A test that names a SQLite file of its own (one it prepared) runs on that file.
        let mysql = if config.storage.path == own_file {
            mysql
        } else {
            config.storage.url = wafer::secret::Secret::default();
            None
        };
        let server = Some(wafer::http::start(config.clone(), false).unwrap());
        let agent = ureq::AgentBuilder::new()
            .timeout(std::time::Duration::from_secs(20))
            .build();
        Env {
            _dir: dir,
            mysql,
            mock,
            server,
            config,
            agent,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        PathBuf::from(&self.config.storage.path)
    }

    /// What the CLI's `--db` takes for this server's database: its file, or its MySQL URL.
    pub fn db_arg(&self) -> String {
        let url = self.config.storage.url.expose();
        if url.is_empty() {
            self.config.storage.path.clone()
        } else {
            url.to_string()
        }
    }

    /// A connection to the server's database when that is MySQL (the switch's, or a URL the
    /// test configured).
    pub fn mysql_conn(&self) -> Option<mysql::Conn> {
        let url = self.config.storage.url.expose();
        (!url.is_empty()).then(|| mysql::Conn::new(mysql::Opts::from_url(url).unwrap()).unwrap())
    }

    /// One number from a query in the SQL both backends speak (a count, say).
    pub fn scalar(&self, sql: &str) -> i64 {
        if let Some(mut c) = self.mysql_conn() {
            use mysql::prelude::Queryable;
            return c.query_first(sql).unwrap().unwrap();
        }
        self.sql().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// One value of the first row of a query (text or bytes), in the SQL both backends speak.
    pub fn value<T: rusqlite::types::FromSql + mysql::prelude::FromValue>(&self, sql: &str) -> T {
        if let Some(mut c) = self.mysql_conn() {
            use mysql::prelude::Queryable;
            return c.query_first(sql).unwrap().unwrap();
        }
        self.sql().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// The first column of every row of a query, as text (NULLs left out), in the SQL both
    /// backends speak.
    pub fn strings(&self, sql: &str) -> Vec<String> {
        if let Some(mut c) = self.mysql_conn() {
            use mysql::prelude::Queryable;
            let rows: Vec<Option<String>> = c.query(sql).unwrap();
            return rows.into_iter().flatten().collect();
        }
        let c = self.sql();
        let mut stmt = c.prepare(sql).unwrap();
        let rows = stmt
            .query_map([], |r| r.get::<_, Option<String>>(0))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows.into_iter().flatten().collect()
    }

    /// A statement in the SQL both backends speak (a test moving a clock).
    pub fn exec(&self, sql: &str) {
        if let Some(mut c) = self.mysql_conn() {
            use mysql::prelude::Queryable;
            return c.query_drop(sql).unwrap();
        }
        self.sql().execute_batch(sql).unwrap();
    }

    /// Stop the server and start it again on the same database (a new port).
    pub fn restart(&mut self) {
        self.server.take().unwrap().shutdown();
        self.server = Some(wafer::http::start(self.config.clone(), false).unwrap());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.server.as_ref().unwrap().addr(), path)
    }

    /// Any request; returns (status, body text). Never fails on a 4xx/5xx.
    pub fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> (u16, String) {
        let mut rq = self.agent.request(method, url);
        for (k, v) in headers {
            rq = rq.set(k, v);
        }
        let res = match body {
            Some(b) => rq.send_bytes(b),
            None => rq.call(),
        };
        match res {
            Ok(r) | Err(ureq::Error::Status(_, r)) => {
                let status = r.status();
                (status, r.into_string().unwrap_or_default())
            }
            Err(e) => panic!("{method} {url}: {e}"),
        }
    }

    pub fn post_raw(&self, path: &str, body: &[u8]) -> (u16, String) {
        self.request("POST", &self.url(path), &[], Some(body))
    }

    /// A Wafer envelope call on `/mina_auth/`; asserts HTTP 200 and returns the parsed answer.
    pub fn wafer(&self, name: &str, para: Value) -> Value {
        let body = json!({"version": 1, "componentName": "MA", "interface": {"interfaceName": name, "para": para}});
        let (status, text) = self.post_raw("/mina_auth/", body.to_string().as_bytes());
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// `/v1` call with an optional bearer key; returns (status, parsed body or Null).
    pub fn v1(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let body = body.map(|b| b.to_string().into_bytes());
        let (status, text) = self.request(method, &self.url(path), &headers, body.as_deref());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn mock_post(&self, path: &str, body: Value) -> Value {
        let (s, t) = self.request(
            "POST",
            &format!("{}{path}", self.mock.base_url()),
            &[],
            Some(body.to_string().as_bytes()),
        );
        assert_eq!(s, 200, "{t}");
        serde_json::from_str(&t).unwrap()
    }

    pub fn mock_get(&self, path: &str) -> Value {
        let (s, t) = self.request("GET", &format!("{}{path}", self.mock.base_url()), &[], None);
        assert_eq!(s, 200, "{t}");
        serde_json::from_str(&t).unwrap()
    }

    /// Upstream calls the fake WeChat has seen on `path`.
    pub fn calls(&self, path: &str) -> i64 {
        self.mock_get("/__mock__/calls")
            .get(path)
            .and_then(Value::as_i64)
            .unwrap_or(0)
    }

    /// Inject a fault on the fake WeChat.
    pub fn fail(&self, fault: Value) {
        self.mock_post("/__mock__/fail", fault);
    }

    /// `qcloud.cam.auth` on one session, one call after another for `d`, each asserted to
    /// succeed: (how many, the slowest).
    pub fn checks_for(
        &self,
        id: &str,
        skey: &str,
        d: std::time::Duration,
    ) -> (usize, std::time::Duration) {
        let until = std::time::Instant::now() + d;
        let (mut checks, mut slowest) = (0, std::time::Duration::ZERO);
        while std::time::Instant::now() < until {
            let started = std::time::Instant::now();
            let r = self.wafer("qcloud.cam.auth", json!({"id": id, "skey": skey}));
            assert_eq!(code(&r), (0, "AUTH_SUCCESS"));
            slowest = slowest.max(started.elapsed());
            checks += 1;
        }
        (checks, slowest)
    }

    /// Log in through the Wafer protocol; returns (id, skey, whole answer).
    pub fn login(&self, code: &str) -> (String, String, Value) {
        let r = self.wafer("qcloud.cam.id_skey", json!({"code": code}));
        assert_eq!(r["returnCode"], 0, "{r}");
        let d = &r["returnData"];
        (
            d["id"].as_str().unwrap().into(),
            d["skey"].as_str().unwrap().into(),
            r,
        )
    }

    /// The session_key the fake WeChat handed out for a code.
    pub fn session_key(&self, appid: &str, code: &str) -> String {
        self.mock_get(&format!(
            "/__mock__/session_key?appid={appid}&js_code={code}"
        ))["session_key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Raw SQL on the server's own database file, for the tests that move a clock or count rows
    /// (SQLite only: such a test starts with `sqlite_only!`).
    pub fn sql(&self) -> rusqlite::Connection {
        assert!(
            self.config.storage.url.expose().is_empty(),
            "raw SQLite SQL in a test run on MySQL: start the test with sqlite_only!"
        );
        let c = rusqlite::Connection::open(self.db_path()).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        c
    }

    /// Run `call` on each item; during how many calls something was committed to the database
    /// (another connection's `PRAGMA data_version` changed; SQLite only).
    pub fn commits_during<I: IntoIterator>(
        &self,
        items: I,
        mut call: impl FnMut(I::Item),
    ) -> usize {
        let outside = self.sql();
        let version = || -> i64 {
            outside
                .query_row("PRAGMA data_version", [], |r| r.get(0))
                .unwrap()
        };
        let (mut last, mut committed) = (version(), 0);
        for item in items {
            call(item);
            let now = version();
            committed += usize::from(now != last);
            last = now;
        }
        committed
    }

    /// The numeric `app_id` of the `/mina` dialect for `appid`.
    pub fn app_id(&self, appid: &str) -> i64 {
        self.scalar(&format!("SELECT id FROM apps WHERE appid = '{appid}'"))
    }

    pub fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT count(*) FROM {table}"))
    }
}

/// The variable that switches the suite's backend: `mysql`, or unset for SQLite.
pub const BACKEND_VAR: &str = "WAFER_TEST_BACKEND";

/// Does this run put every `Env` on MySQL?
pub fn on_mysql() -> bool {
    std::env::var(BACKEND_VAR).is_ok_and(|v| v == "mysql")
}

/// `sqlite_only!("why")`: return from the test when the suite runs on MySQL, saying why.
macro_rules! sqlite_only {
    ($why:expr) => {
        if $crate::harness::on_mysql() {
            eprintln!("SQLite only ({}): skipped on MySQL", $why);
            return;
        }
    };
}
pub(crate) use sqlite_only;

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

/// The keys of every Wafer answer, in the order clients depend on.
pub const ENVELOPE_KEYS: [&str; 5] = [
    "returnCode",
    "returnMessage",
    "returnData",
    "version",
    "componentName",
];

/// The envelope's (returnCode, returnMessage).
pub fn code(r: &Value) -> (i64, &str) {
    (
        r["returnCode"].as_i64().unwrap(),
        r["returnMessage"].as_str().unwrap(),
    )
}

/// The keys of a JSON object in order, from the raw text (serde_json here preserves order).
pub fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}
