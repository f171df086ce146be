//! Access without a key (CONTRACT §8): the `Host` rule for the key-guarded routes, `/metrics`
//! behind the key, and the refusal to listen beyond loopback without one.

use crate::cli::{wafer, Served};
use crate::harness::{code, Env, APPID};
use serde_json::{json, Value};
use wafer::secret::Secret;

/// An envelope call sent with the given `Host` and headers; the parsed answer (always HTTP 200).
fn wafer_as(env: &Env, host: &str, extra: &[(&str, &str)], name: &str, para: Value) -> Value {
    let body = json!({"version": 1, "componentName": "MA", "interface": {"interfaceName": name, "para": para}});
    let mut headers = vec![("Host", host)];
    headers.extend_from_slice(extra);
    let (s, t) = env.request(
        "POST",
        &env.url("/mina_auth/"),
        &headers,
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(s, 200, "{t}");
    serde_json::from_str(&t).unwrap()
}

/// A `/v1` GET with the given `Host`: (status, body).
fn v1_as(env: &Env, host: &str, extra: &[(&str, &str)], path: &str) -> (u16, Value) {
    let mut headers = vec![("Host", host)];
    headers.extend_from_slice(extra);
    let (s, t) = env.request("GET", &env.url(path), &headers, None);
    (s, serde_json::from_str(&t).unwrap_or(Value::Null))
}

const LOOPBACK_HOSTS: &[&str] = &[
    "localhost",
    "LocalHost:5757",
    "127.0.0.1",
    "127.0.0.1:80",
    "127.8.9.10:1",
    "[::1]",
    "[::1]:5757",
];

const FOREIGN_HOSTS: &[&str] = &[
    "attacker.example",
    "attacker.example:5757",
    "localhost.attacker.example",
    "127.0.0.1.attacker.example",
    "0.0.0.0:5757",
    "192.168.1.2",
    "[::2]:5757",
    "[::1]x",
    "localhost:",
    "localhost:http",
    "127.0.0.1:5757:1",
];

#[test]
fn without_a_key_credentials_answer_only_a_loopback_host() {
    let env = Env::new();
    // The token through both dialects with that Host: (envelope answer, /v1 status and body).
    let token = |host: &str| {
        let path = format!("/v1/apps/{APPID}/access_token");
        let envelope = wafer_as(
            &env,
            host,
            &[],
            "qcloud.mimi.access_token",
            json!({"appid": APPID}),
        );
        (envelope, v1_as(&env, host, &[], &path))
    };
    for host in FOREIGN_HOSTS {
        let (r, (s, v)) = token(host);
        assert_eq!(code(&r), (60012, "AUTH_FAIL"), "Host {host}: {r}");
        assert_eq!(r["returnData"], "", "Host {host}");
        assert_eq!((s, v["error"].as_str()), (403, Some("forbidden")), "{host}");
    }
    // A rebinding page cannot replace an agent's secret either: the agent keeps its own (a
    // `bad` secret would make the fake WeCom refuse the token).
    let agent = |host: &str, name: &str, para: Value| {
        let mut p = json!({"corpid": "wwcorp1", "agentid": "1000002"});
        p.as_object_mut()
            .unwrap()
            .extend(para.as_object().unwrap().clone());
        wafer_as(&env, host, &[], name, p)
    };
    let init = |host: &str, secret: &str| {
        agent(
            host,
            "qcloud.work.initagent",
            json!({ "agentsecret": secret }),
        )
    };
    assert_eq!(code(&init("localhost", "agent-secret")).0, 0);
    assert_eq!(
        code(&init("attacker.example", "bad-attacker-secret")),
        (60012, "AUTH_FAIL")
    );
    let r = agent("localhost", "qcloud.work.access_token", json!({}));
    assert_eq!(code(&r).0, 0, "the agent's secret was replaced: {r}");
    // Every /v1 route is guarded, the session ones too (a careful user puts a key in front of
    // /v1 before exposing it); the Wafer session interfaces stay open to unmodified SDKs.
    let (s, _) = env.v1("GET", "/v1/nothing", None, None);
    assert_eq!(s, 404, "loopback Host: routed as before");
    let (s, _) = env.request(
        "POST",
        &env.url("/v1/sessions"),
        &[("Host", "attacker.example")],
        Some(json!({"appid": APPID, "code": "x"}).to_string().as_bytes()),
    );
    assert_eq!(s, 403);
    let r = wafer_as(
        &env,
        "attacker.example",
        &[],
        "qcloud.cam.id_skey",
        json!({"code": "rebound"}),
    );
    assert_eq!(code(&r).0, 0, "{r}");
    // Loopback names and addresses, with or without a port, are served.
    for host in LOOPBACK_HOSTS {
        let (r, (s, v)) = token(host);
        assert_eq!(code(&r).0, 0, "Host {host}: {r}");
        assert_eq!(s, 200, "Host {host}: {v}");
    }
}

#[test]
fn with_a_key_the_key_decides_and_metrics_need_it() {
    let env = Env::with(|c| c.server.api_key = Secret::new("k3y"));
    let bearer = [("Authorization", "Bearer k3y")];
    let r = wafer_as(
        &env,
        "wx.example.com",
        &bearer,
        "qcloud.mimi.access_token",
        json!({"appid": APPID}),
    );
    assert_eq!(code(&r).0, 0, "a keyed request from any Host: {r}");
    let (s, _) = v1_as(
        &env,
        "wx.example.com",
        &bearer,
        &format!("/v1/apps/{APPID}/access_token"),
    );
    assert_eq!(s, 200);
    let r = wafer_as(
        &env,
        "localhost",
        &[],
        "qcloud.mimi.access_token",
        json!({"appid": APPID}),
    );
    assert_eq!(code(&r), (60012, "AUTH_FAIL"), "a loopback Host is no key");
    for auth in [None, Some("Bearer nope"), Some("k3y")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        let (s, t) = env.request("GET", &env.url("/metrics"), &headers, None);
        assert_eq!(s, 401, "{auth:?}: {t}");
    }
    let (s, t) = env.request("GET", &env.url("/metrics"), &bearer, None);
    assert_eq!(s, 200);
    assert!(t.contains("wafer_requests_total"), "{t}");
    let (s, _) = env.request("GET", &env.url("/healthz"), &[], None);
    assert_eq!(s, 200, "healthz needs no key");
}

#[test]
fn metrics_stay_open_without_a_key() {
    let env = Env::new();
    let (s, _) = env.request(
        "GET",
        &env.url("/metrics"),
        &[("Host", "attacker.example")],
        None,
    );
    assert_eq!(s, 200);
}

/// Run a command that should exit at once: (exit ok, stderr), or a failed assertion if it is
/// still running after 20 s (it is killed first).
pub fn run_to_exit(c: &mut std::process::Command) -> (bool, String) {
    use std::io::Read;
    let mut child = c
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after 20 s: {c:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), err)
}

#[test]
fn serve_and_dev_refuse_a_non_loopback_listen_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("open.db");
    let (ok, err) = run_to_exit(
        wafer()
            .args(["serve"])
            .env("WAFER_LISTEN", "0.0.0.0:0")
            .env("WAFER_DB", &db)
            .current_dir(dir.path()),
    );
    assert!(!ok, "serve started on 0.0.0.0 without a key");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("server.api_key"), "{err}");
    let (ok, err) = run_to_exit(
        wafer()
            .args(["dev", "--listen", "0.0.0.0:0", "--db"])
            .arg(dir.path().join("dev.db"))
            .current_dir(dir.path()),
    );
    assert!(!ok, "dev started on 0.0.0.0 without a key");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("server.api_key"), "{err}");
    // With a key, serve starts there (and is asked on loopback only).
    let mut cmd = wafer();
    cmd.args(["serve"])
        .env("WAFER_LISTEN", "0.0.0.0:0")
        .env("WAFER_API_KEY", "k3y")
        .env("WAFER_DB", &db)
        .current_dir(dir.path());
    let served = Served::start(cmd);
    let port = served.addr.rsplit(':').next().unwrap();
    let r = ureq::get(&format!("http://127.0.0.1:{port}/healthz")).call();
    assert_eq!(r.map(|r| r.status()).ok(), Some(200));
}

#[test]
fn dev_honours_wafer_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = wafer();
    cmd.args(["dev", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("dev.db"))
        .env("WAFER_API_KEY", "dev-k3y")
        .current_dir(dir.path());
    let served = Served::start(cmd);
    let url = format!(
        "http://{}/v1/apps/{}/access_token",
        served.addr,
        wafer::cli::DEV_APPID
    );
    let status = |auth: Option<&str>| {
        let mut rq = ureq::get(&url);
        if let Some(a) = auth {
            rq = rq.set("Authorization", a);
        }
        match rq.call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r.status(),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(status(None), 401, "dev ignored WAFER_API_KEY");
    assert_eq!(status(Some("Bearer dev-k3y")), 200);
}
