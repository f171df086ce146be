//! `wafer import wafer` (CONTRACT §10) with the real binary, from a real MariaDB holding the
//! original Wafer's tables (its DDL as published, `cAppinfo` spelling), into a SQLite file that a
//! real server then serves.

use crate::cli::{run, wafer};
use crate::harness::{code, Env};
use crate::mysql::test_db;
use base64::Engine;
use mysql::prelude::Queryable;
use serde_json::{json, Value};

/// The original Wafer session server's tables, as its cAuth.sql creates them.
const WAFER_DDL: &str = r#"
CREATE TABLE `cAppinfo` (
  `appid` varchar(200) COLLATE utf8_unicode_ci NOT NULL,
  `secret` varchar(300) COLLATE utf8_unicode_ci NOT NULL,
  `login_duration` int(11) DEFAULT '30',
  `session_duration` int(11) DEFAULT '2592000',
  `qcloud_appid` varchar(300) COLLATE utf8_unicode_ci DEFAULT 'appid_qcloud',
  `ip` varchar(50) COLLATE utf8_unicode_ci DEFAULT '0.0.0.0',
  PRIMARY KEY (`appid`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8 COLLATE=utf8_unicode_ci;
CREATE TABLE `cSessionInfo` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `uuid` varchar(100) COLLATE utf8mb4_unicode_ci NOT NULL,
  `skey` varchar(100) COLLATE utf8mb4_unicode_ci NOT NULL,
  `create_time` datetime NOT NULL,
  `last_visit_time` datetime NOT NULL,
  `open_id` varchar(100) COLLATE utf8mb4_unicode_ci NOT NULL,
  `session_key` varchar(100) COLLATE utf8mb4_unicode_ci NOT NULL,
  `user_info` varchar(2048) COLLATE utf8mb4_unicode_ci NOT NULL,
  PRIMARY KEY (`id`),
  KEY `auth` (`uuid`,`skey`),
  KEY `weixin` (`open_id`,`session_key`)
) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
"#;

const APPID: &str = "wxfromwafer00001";

/// One original session: its ids, when it was created and last used (seconds ago), user_info.
struct Original {
    uuid: &'static str,
    skey: &'static str,
    open_id: &'static str,
    created_ago: i64,
    visited_ago: i64,
    user_info: String,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The original's rows: two live sessions, one idle past `session_duration` (4 h), and one live
/// whose user_info is not base64. The DATETIMEs are written as +08:00 wall-clock times (a
/// Wafer in China), which the import is told with `--tz`.
fn originals() -> Vec<Original> {
    vec![
        Original {
            uuid: "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a",
            skey: "1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b",
            open_id: "oAnn",
            created_ago: 2 * 86400,
            visited_ago: 3600,
            user_info: b64(r#"{"nickName":"Ann","city":"深圳"}"#),
        },
        Original {
            uuid: "2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c",
            skey: "3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d",
            open_id: "oBo",
            created_ago: 10 * 86400,
            visited_ago: 600,
            user_info: b64(r#"{"nickName":"Bo"}"#),
        },
        // Idle for 5 h, past the 4 h window. Read as UTC (the --tz ignored) it would look 3 h
        // in the future, and live.
        Original {
            uuid: "4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e",
            skey: "5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f",
            open_id: "oCy",
            created_ago: 86400,
            visited_ago: 5 * 3600,
            user_info: b64(r#"{"nickName":"Cy"}"#),
        },
        Original {
            uuid: "6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a",
            skey: "7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b",
            open_id: "oDi",
            created_ago: 3600,
            visited_ago: 60,
            user_info: "%% not base64 %%".into(),
        },
    ]
}

/// A MariaDB database holding the original Wafer's tables and rows; None without MySQL.
fn original_wafer(apps: &[&str]) -> Option<crate::mysql::TestDb> {
    let src = test_db()?;
    let mut c = src.conn();
    c.query_drop(WAFER_DDL).unwrap();
    for appid in apps {
        c.exec_drop(
            "INSERT INTO cAppinfo (appid, secret, login_duration, session_duration, qcloud_appid, ip)
             VALUES (?, 'wafer-secret', 30, 14400, '1250000000', '0.0.0.0')",
            (appid,),
        )
        .unwrap();
    }
    for o in originals() {
        c.exec_drop(
            "INSERT INTO cSessionInfo (uuid, skey, create_time, last_visit_time, open_id, session_key, user_info)
             VALUES (?, ?, CONVERT_TZ(UTC_TIMESTAMP() - INTERVAL ? SECOND, '+00:00', '+08:00'),
                     CONVERT_TZ(UTC_TIMESTAMP() - INTERVAL ? SECOND, '+00:00', '+08:00'), ?, ?, ?)",
            (o.uuid, o.skey, o.created_ago, o.visited_ago, o.open_id, b64("0123456789abcdef"), &o.user_info),
        )
        .unwrap();
    }
    Some(src)
}

fn password(url: &str) -> String {
    let userinfo = url
        .trim_start_matches("mysql://")
        .split('@')
        .next()
        .unwrap();
    userinfo.split(':').nth(1).unwrap().to_string()
}

#[test]
fn live_wafer_sessions_keep_authenticating_and_a_second_run_adds_nothing() {
    let Some(src) = original_wafer(&[APPID]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wafer.db");
    let import = || {
        run(wafer()
            .args([
                "import", "wafer", "--from", &src.url, "--tz", "+08:00", "--db",
            ])
            .arg(&db))
    };
    let (ok, out, err) = import();
    assert!(ok, "{out}{err}");
    assert!(
        !format!("{out}{err}").contains(&password(&src.url)),
        "{out}{err}"
    );
    assert!(out.contains(&format!("app {APPID}: added")), "{out}");
    assert!(out.contains("users: 4 imported, 0 skipped"), "{out}");
    assert!(out.contains("sessions: 3 imported, 1 expired"), "{out}");
    assert!(out.contains("(stored as null): 1"), "{out}");

    // What was stored: the app's clocks, each session's own, only a hash of the skey.
    let now = wafer::ids::now();
    {
        let sql = rusqlite::Connection::open(&db).unwrap();
        let (login_days, session_secs): (i64, i64) = sql
            .query_row(
                "SELECT login_days, session_secs FROM apps WHERE appid = ?1",
                [APPID],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((login_days, session_secs), (30, 14400));
        let ann = &originals()[0];
        let (created, last_visit, expires_at, idle): (i64, i64, i64, i64) = sql
            .query_row(
                "SELECT created, last_visit, expires_at, idle_secs FROM sessions WHERE user_id = ?1 AND skey_hash = ?2",
                rusqlite::params![ann.uuid, &wafer::ids::skey_hash(ann.skey)[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        // The +08:00 wall clock read as such: within a minute of the truth (not 8 h off).
        assert!(
            (now - ann.created_ago - created).abs() < 60,
            "created {created}, now {now}"
        );
        assert!(
            (now - ann.visited_ago - last_visit).abs() < 60,
            "last_visit {last_visit}, now {now}"
        );
        assert_eq!((expires_at, idle), (created + 30 * 86400, 14400));
        let clear: i64 = sql
            .query_row(
                "SELECT count(*) FROM sessions WHERE CAST(skey_hash AS TEXT) = ?1",
                [ann.skey],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(clear, 0);
    }

    // The real server on that file: the live pairs authenticate with their user_info.
    let env = Env::with(|c| {
        c.apps.clear();
        c.storage.path = db.to_string_lossy().into_owned();
    });
    let auth = |o: &Original| env.wafer("qcloud.cam.auth", json!({"id": o.uuid, "skey": o.skey}));
    let o = originals();
    let r = auth(&o[0]);
    assert_eq!(code(&r), (0, "AUTH_SUCCESS"), "{r}");
    assert_eq!(
        r["returnData"]["user_info"],
        json!({"nickName": "Ann", "city": "深圳"})
    );
    let r = env.wafer(
        "qcloud.cam.auth",
        json!({"id": o[1].uuid, "skey": o[1].skey, "appid": APPID}),
    );
    assert_eq!(code(&r), (0, "AUTH_SUCCESS"), "{r}");
    assert_eq!(r["returnData"]["user_info"], json!({"nickName": "Bo"}));
    assert_eq!(code(&auth(&o[2])), (60012, "AUTH_FAIL"));
    let r = auth(&o[3]);
    assert_eq!(code(&r), (0, "AUTH_SUCCESS"), "{r}");
    assert_eq!(r["returnData"]["user_info"], Value::Null);
    // A pair that never existed there does not either.
    let r = env.wafer(
        "qcloud.cam.auth",
        json!({"id": o[0].uuid, "skey": o[1].skey}),
    );
    assert_eq!(code(&r), (60012, "AUTH_FAIL"));
    let (users, sessions) = (env.count("users"), env.count("sessions"));

    // Again: nothing is added, and the skipped are counted.
    let (ok, out, err) = import();
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("app {APPID}: already registered")),
        "{out}"
    );
    assert!(out.contains("users: 0 imported, 4 skipped"), "{out}");
    assert!(out.contains("sessions: 0 imported"), "{out}");
    assert_eq!(
        (env.count("users"), env.count("sessions")),
        (users, sessions)
    );
}

#[test]
fn several_apps_need_appid_and_errors_hide_the_password() {
    let Some(src) = original_wafer(&["wxfirst000000001", "wxsecond00000001"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wafer.db");
    let import = |extra: &[&str], from: &str| {
        run(wafer()
            .args(["import", "wafer", "--from", from, "--tz", "+08:00"])
            .args(extra)
            .arg("--db")
            .arg(&db))
    };
    let (ok, out, err) = import(&[], &src.url);
    assert!(!ok, "{out}");
    assert!(
        err.contains("wxfirst000000001, wxsecond00000001") && err.contains("--appid"),
        "{err}"
    );
    // A wrong password: refused, naming the URL with the password hidden.
    let pass = password(&src.url);
    let wrong = src
        .url
        .replace(&format!(":{pass}@"), ":not-the-password-42@");
    let (ok, _, err) = import(&[], &wrong);
    assert!(!ok);
    assert!(err.contains(":***@") && err.contains(&src.name), "{err}");
    assert!(
        !err.contains("not-the-password-42") && !err.contains(&pass),
        "{err}"
    );

    // Into a sealed database (a key file): the app secret, session_key and user_info are
    // written sealed, as every writer of the store writes them.
    let key = crate::sealing::key_file(dir.path(), "wafer.key", 0x42);
    let (ok, out, err) = run(wafer()
        .env("WAFER_KEY_FILE", &key)
        .args(["import", "wafer", "--from", &src.url, "--tz", "+08:00"])
        .args(["--appid", "wxsecond00000001", "--db"])
        .arg(&db));
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("app wxsecond00000001: added") && out.contains("users: 4 imported"),
        "{out}"
    );
    let sql = rusqlite::Connection::open(&db).unwrap();
    let stored: Vec<String> = sql
        .prepare("SELECT secret FROM apps UNION ALL SELECT session_key FROM users UNION ALL SELECT user_info FROM users WHERE user_info IS NOT NULL")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored.len(), 1 + 4 + 3);
    for v in &stored {
        assert!(
            !v.contains("wafer-secret") && !v.contains("nickName") && v != &b64("0123456789abcdef"),
            "stored in clear: {v}"
        );
    }
}

#[test]
fn an_import_into_a_shared_mysql_database_authenticates_there() {
    let Some(src) = original_wafer(&[APPID]) else {
        return;
    };
    let target = test_db().unwrap();
    let (ok, out, err) = run(wafer().args([
        "import",
        "wafer",
        "--from",
        &src.url,
        "--tz",
        "+08:00",
        "--db",
        &target.url,
    ]));
    assert!(ok, "{out}{err}");
    assert!(out.contains("sessions: 3 imported, 1 expired"), "{out}");
    assert!(!format!("{out}{err}").contains(&password(&target.url)));
    let url = target.url.clone();
    let env = Env::with(|c| {
        c.apps.clear();
        c.storage.url = wafer::secret::Secret::new(url);
    });
    let o = &originals()[0];
    let r = env.wafer("qcloud.cam.auth", json!({"id": o.uuid, "skey": o.skey}));
    assert_eq!(code(&r), (0, "AUTH_SUCCESS"), "{r}");
}
