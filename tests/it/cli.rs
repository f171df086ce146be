//! The real binary: data commands, config errors, `serve` on port 0 and SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub fn wafer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wafer"));
    for k in [
        "WAFER_CONFIG",
        "WAFER_DB",
        "WAFER_LISTEN",
        "WAFER_API_KEY",
        "WAFER_WORKERS",
        "WAFER_KEY_FILE",
        "WAFER_DATABASE_URL",
    ] {
        c.env_remove(k);
    }
    c
}

/// Run to completion; (exit ok, stdout, stderr).
pub fn run(c: &mut Command) -> (bool, String, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `wafer serve` child, and the address it printed.
pub struct Served {
    pub child: Child,
    pub addr: String,
}

impl Served {
    pub fn start(mut cmd: Command) -> Served {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            if let Some(rest) = line.strip_prefix("wafer listening on http://") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Served { child, addr }
    }

    pub fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn app_commands() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cli.db");
    let db = db.to_str().unwrap();
    let (ok, out, err) = run(wafer().args([
        "app",
        "add",
        "--appid",
        "wxcli00000000001",
        "--secret",
        "s3cr3t",
        "--db",
        db,
    ]));
    assert!(ok, "{err}");
    assert!(out.contains("app_id 1"), "{out}");
    let (ok, _, _) = run(wafer()
        .args([
            "app",
            "add",
            "--appid",
            "wxcli00000000002",
            "--secret",
            "x",
            "--kind",
            "official",
        ])
        .env("WAFER_DB", db));
    assert!(ok);
    let (ok, out, _) = run(wafer().args(["app", "list", "--db", db]));
    assert!(ok);
    assert!(
        out.contains("wxcli00000000001") && out.contains("official"),
        "{out}"
    );
    let (ok, out, _) = run(wafer().args(["app", "show", "wxcli00000000001", "--db", db]));
    assert!(ok && out.contains("login_days:   30"), "{out}");
    assert!(!out.contains("s3cr3t"), "secrets are never shown");
    let (ok, _, _) = run(wafer().args(["app", "remove", "wxcli00000000002", "--db", db]));
    assert!(ok);
    for args in [
        vec!["app", "remove", "wxcli00000000002"],
        vec!["app", "add", "--appid", "x"],
        vec![
            "app", "add", "--appid", "x", "--secret", "y", "--kind", "game",
        ],
        vec![
            "app",
            "add",
            "--appid",
            "x",
            "--secret",
            "y",
            "--login-days",
            "soon",
        ],
        vec!["app", "list", "--bogus", "1"],
        vec!["frobnicate"],
    ] {
        let (ok, _, err) = run(wafer().args(&args).args(["--db", db]));
        assert!(!ok, "{args:?} should fail");
        assert_eq!(
            err.trim().lines().next().map(|l| l.starts_with("wafer: ")),
            Some(true),
            "{args:?}: {err}"
        );
    }
    let (ok, out, _) = run(wafer().args(["session", "purge", "--db", db]));
    assert!(ok && out.contains("0 expired"), "{out}");
}

#[test]
fn bad_config_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[server]\nworkers = 0\n", "server.workers"),
        ("[server]\nlisten = \"x\"\n", "server.listen"),
        ("[wechat]\napi_base = \"ftp://x\"\n", "wechat.api_base"),
        ("[server]\nlisen = \"127.0.0.1:1\"\n", "lisen"),
    ] {
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, text).unwrap();
        let (ok, _, err) = run(wafer().args(["serve", "--config", p.to_str().unwrap()]));
        assert!(!ok);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(key), "{text:?}: {err}");
    }
}

#[test]
fn serve_then_sigterm_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let mut cmd = wafer();
    cmd.args(["serve"])
        .env("WAFER_LISTEN", "127.0.0.1:0")
        .env("WAFER_DB", &db)
        .current_dir(dir.path());
    let mut served = Served::start(cmd);
    let body = ureq::get(&format!("http://{}/healthz", served.addr))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert_eq!(body, r#"{"status":"ok"}"#);
    served.signal("-TERM");
    let status = served.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// SIGTERM at the first moment a client can know the server is up (its listening line) still
/// shuts it down cleanly: the handler is in place before the server starts listening.
#[test]
fn sigterm_right_after_the_listening_line_exits_zero() {
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = wafer();
        cmd.args(["serve"])
            .env("WAFER_LISTEN", "127.0.0.1:0")
            .env("WAFER_DB", dir.path().join("s.db"))
            .current_dir(dir.path());
        let mut served = Served::start(cmd);
        served.signal("-TERM");
        let status = served.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
}

fn post(url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    match ureq::post(url).send_json(body) {
        Ok(r) | Err(ureq::Error::Status(_, r)) => {
            (r.status(), r.into_json().unwrap_or(serde_json::Value::Null))
        }
        Err(e) => panic!("{url}: {e}"),
    }
}

#[test]
fn dev_runs_everything_with_its_own_fake_wechat() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = wafer();
    cmd.args([
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--db",
        dir.path().join("dev.db").to_str().unwrap(),
    ]);
    let served = Served::start(cmd);
    let base = format!("http://{}", served.addr);
    let envelope = |name: &str, para: serde_json::Value| serde_json::json!({"version": 1, "componentName": "MA", "interface": {"interfaceName": name, "para": para}});
    let (_, r) = post(
        &format!("{base}/mina_auth/"),
        envelope(
            "qcloud.cam.id_skey",
            serde_json::json!({"code": "demo-user-1"}),
        ),
    );
    assert_eq!(r["returnCode"], 0, "{r}");
    let (id, skey) = (
        r["returnData"]["id"].clone(),
        r["returnData"]["skey"].clone(),
    );
    let (s, e) = post(
        &format!("{base}/dev/encrypted_data"),
        serde_json::json!({"id": id, "skey": skey, "data": {"nickName": "Band"}}),
    );
    assert_eq!(s, 200, "{e}");
    let para = serde_json::json!({"id": id, "skey": skey, "encrypt_data": e["encrypt_data"], "iv": e["iv"]});
    let (_, r) = post(
        &format!("{base}/mina_auth/"),
        envelope("qcloud.cam.decrypt", para),
    );
    assert_eq!(r["returnMessage"], "DECRYPT_SUCCESS", "{r}");
    assert_eq!(r["returnData"]["nickName"], "Band");
    assert_eq!(r["returnData"]["watermark"]["appid"], wafer::cli::DEV_APPID);
    let t: serde_json::Value = ureq::get(&format!(
        "{base}/v1/apps/{}/access_token",
        wafer::cli::DEV_APPID
    ))
    .call()
    .unwrap()
    .into_json()
    .unwrap();
    assert!(
        t["access_token"].as_str().is_some_and(|t| !t.is_empty()),
        "{t}"
    );
}

#[test]
fn serve_has_no_dev_routes_and_token_get_uses_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let db_s = db.to_str().unwrap();
    let mock = fake_wechat::start("127.0.0.1:0").unwrap();
    assert!(
        run(wafer().args([
            "app",
            "add",
            "--appid",
            "wxtok0000000001",
            "--secret",
            "s",
            "--db",
            db_s
        ]))
        .0
    );
    let mut cmd = wafer();
    cmd.args(["serve"])
        .env("WAFER_LISTEN", "127.0.0.1:0")
        .env("WAFER_DB", &db)
        .env("WAFER_WECHAT_API_BASE", mock.base_url())
        .current_dir(dir.path());
    let served = Served::start(cmd);
    let (s, _) = post(
        &format!("http://{}/dev/encrypted_data", served.addr),
        serde_json::json!({}),
    );
    assert_eq!(s, 404);
    let t: serde_json::Value = ureq::get(&format!(
        "http://{}/v1/apps/wxtok0000000001/access_token",
        served.addr
    ))
    .call()
    .unwrap()
    .into_json()
    .unwrap();
    // The CLI reads the stored, still-valid token: same value, no new upstream call.
    let calls = || -> i64 {
        let c: serde_json::Value = ureq::get(&format!("{}/__mock__/calls", mock.base_url()))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        c["/cgi-bin/stable_token"].as_i64().unwrap_or(0)
    };
    assert_eq!(calls(), 1);
    let (ok, out, err) = run(wafer()
        .args(["token", "get", "wxtok0000000001", "--db", db_s])
        .env("WAFER_WECHAT_API_BASE", mock.base_url()));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), t["access_token"].as_str().unwrap());
    assert_eq!(calls(), 1);
    let (ok, _, err) = run(wafer().args(["token", "get", "wxnope", "--db", db_s]));
    assert!(!ok && err.contains("no app wxnope"), "{err}");
}

#[test]
fn work_commands() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.db");
    let db = db.to_str().unwrap();
    let (ok, _, err) = run(wafer().args([
        "work",
        "add",
        "--corpid",
        "wwc",
        "--agentid",
        "1000002",
        "--secret",
        "hush",
        "--remark",
        "HR",
        "--db",
        db,
    ]));
    assert!(ok, "{err}");
    let (ok, out, _) = run(wafer().args(["work", "list", "--db", db]));
    assert!(
        ok && out.contains("1000002") && out.contains("HR") && !out.contains("hush"),
        "{out}"
    );
    assert!(
        run(wafer().args([
            "work",
            "remove",
            "--corpid",
            "wwc",
            "--agentid",
            "1000002",
            "--db",
            db
        ]))
        .0
    );
    let (ok, _, err) = run(wafer().args([
        "work",
        "remove",
        "--corpid",
        "wwc",
        "--agentid",
        "1000002",
        "--db",
        db,
    ]));
    assert!(!ok && err.starts_with("wafer: no WeCom agent"), "{err}");
}
