//! Stale state and bounds: credentials dropped with their app's secret, configured durations and
//! upstream lifetimes kept in range.

use crate::access::run_to_exit;
use crate::cli::{run, wafer};
use crate::harness::{code, Env, APPID};
use serde_json::{json, Value};
use wafer::secret::Secret;

/// The stored credential rows of `APPID` (its token and tickets).
fn app_credential_rows(env: &Env) -> i64 {
    env.scalar(&format!(
        "SELECT count(*) FROM credentials WHERE `key` LIKE 'app/{APPID}/%'"
    ))
}

fn read_token(env: &Env, appid: &str) -> Value {
    let (s, v) = env.v1("GET", &format!("/v1/apps/{appid}/access_token"), None, None);
    assert_eq!(s, 200, "{v}");
    v
}

const STABLE: &str = "/cgi-bin/stable_token";

#[test]
fn an_app_whose_secret_changes_or_that_is_removed_loses_its_stored_credentials() {
    let mut env = Env::with(|c| c.apps.clear());
    let db = env.db_arg();
    let add = |secret: &str| {
        let (ok, _, err) = run(wafer().args([
            "app", "add", "--appid", APPID, "--secret", secret, "--db", &db,
        ]));
        assert!(ok, "{err}");
    };
    add("first-secret");
    read_token(&env, APPID);
    assert_eq!((env.calls(STABLE), app_credential_rows(&env)), (1, 1));
    add("first-secret");
    assert_eq!(
        app_credential_rows(&env),
        1,
        "an unchanged secret keeps the token"
    );
    add("second-secret");
    assert_eq!(
        app_credential_rows(&env),
        0,
        "the token fetched with the old secret is still stored"
    );
    // The next server to read it fetches a new one, with the new secret.
    env.restart();
    read_token(&env, APPID);
    assert_eq!(env.calls(STABLE), 2);
    add("bad-third-secret");
    env.restart();
    let (s, v) = env.v1("GET", &format!("/v1/apps/{APPID}/access_token"), None, None);
    assert_eq!((s, v["errcode"].as_i64()), (502, Some(40125)), "{v}");
    add("second-secret");
    env.restart();
    read_token(&env, APPID);
    assert_eq!(app_credential_rows(&env), 1);
    let (ok, _, err) = run(wafer().args(["app", "remove", APPID, "--db", &db]));
    assert!(ok, "{err}");
    assert_eq!(
        app_credential_rows(&env),
        0,
        "a removed app's token is still stored"
    );
}

#[test]
fn a_secret_changed_in_the_config_drops_the_apps_credentials() {
    let mut env = Env::new();
    read_token(&env, APPID);
    env.restart();
    read_token(&env, APPID);
    assert_eq!(env.calls(STABLE), 1, "the same secret keeps the token");
    env.config.apps[0].secret = Secret::new("rotated-secret");
    env.restart();
    assert_eq!(app_credential_rows(&env), 0);
    read_token(&env, APPID);
    assert_eq!(env.calls(STABLE), 2, "the old secret's token was served");
}

#[test]
fn upstream_lifetimes_are_bounded() {
    let env = Env::new();
    env.fail(json!({"path": STABLE, "times": 1,
        "body": {"access_token": "token-for-ever", "expires_in": i64::MAX}}));
    let now = wafer::ids::now();
    let v = read_token(&env, APPID);
    assert_eq!(v["access_token"], "token-for-ever", "{v}");
    let exp = v["expires_at"].as_i64().unwrap();
    assert!(
        exp > now && exp <= now + 2 * 86400 + 5,
        "expires_at {exp}, now {now}"
    );
    // Cached: the second read makes no upstream call.
    let again = read_token(&env, APPID);
    assert_eq!(again["access_token"], v["access_token"]);
    assert_eq!(env.calls(STABLE), 1);
}

#[test]
fn out_of_range_durations_are_refused_naming_the_flag_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let db = db.to_str().unwrap();
    for (flag, value) in [
        ("--login-days", "106751991167302"),
        ("--login-days", "3651"),
        ("--session-secs", "9223372036854775807"),
        ("--session-secs", "315360001"),
    ] {
        let (ok, _, err) = run(wafer().args([
            "app", "add", "--appid", "wxa", "--secret", "s", flag, value, "--db", db,
        ]));
        assert!(!ok, "{flag} {value} was accepted");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(flag), "{err}");
    }
    for (text, key) in [
        ("login_days = 106751991167302", "app.login_days"),
        ("session_secs = 315360001", "app.session_secs"),
    ] {
        let p = dir.path().join("w.toml");
        std::fs::write(
            &p,
            format!("[[app]]\nappid = \"wxa\"\nsecret = \"s\"\n{text}\n"),
        )
        .unwrap();
        let (ok, err) = run_to_exit(
            wafer()
                .args(["serve", "--config", p.to_str().unwrap()])
                .env("WAFER_LISTEN", "127.0.0.1:0")
                .env("WAFER_DB", db),
        );
        assert!(!ok, "{text} was accepted");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(key), "{err}");
    }
    // Longest allowed: ten years either way.
    let (ok, _, err) = run(wafer().args([
        "app",
        "add",
        "--appid",
        "wxa",
        "--secret",
        "s",
        "--login-days",
        "3650",
        "--session-secs",
        "315360000",
        "--db",
        db,
    ]));
    assert!(ok, "{err}");
}

#[test]
fn a_huge_lifetime_stored_before_the_bounds_still_logs_in() {
    let env = Env::new();
    env.exec("UPDATE apps SET login_days = 106751991167302, session_secs = 9223372036854775807");
    // The server caches nothing about the app's lifetimes: the next login reads them.
    let (id, skey, r) = env.login("overflow");
    let duration = r["returnData"]["duration"].as_i64().unwrap();
    assert!(duration > 0, "duration {duration}");
    let r = env.wafer("qcloud.cam.auth", json!({"id": id, "skey": skey}));
    assert_eq!(code(&r).0, 0, "{r}");
}
