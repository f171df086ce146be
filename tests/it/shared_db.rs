//! The shared MySQL-compatible database (CONTRACT §10): start-up errors, and (on a real
//! MariaDB, `mysql::test_db`) several `wafer serve` instances behaving as one server.

use crate::callbacks::MP_KEY;
use crate::cli::{run, wafer};
use crate::harness::{Env, APPID};
use serde_json::{json, Value};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const STABLE: &str = "/cgi-bin/stable_token";

/// `wafer serve` on `url`: (exited with success, stderr).
fn serve_on(url: &str) -> (bool, String) {
    let (ok, _, err) = run(wafer()
        .arg("serve")
        .env("WAFER_DATABASE_URL", url)
        .env("WAFER_LISTEN", "127.0.0.1:0"));
    (ok, err)
}

#[test]
fn an_unreachable_database_or_a_bad_url_stops_the_start_naming_storage_url_without_the_password() {
    // Nothing listens on port 1 of loopback.
    for url in [
        "mysql://wafer:s3cret-pw@127.0.0.1:1/wafer",
        "mysql://wafer:s3cret-pw@127.0.0.1:notaport/wafer",
        "mysql://wafer:s3cret-pw@127.0.0.1:1/",
        "postgres://wafer:s3cret-pw@127.0.0.1/wafer",
    ] {
        let (ok, err) = serve_on(url);
        assert!(!ok, "{url}: started");
        assert!(err.contains("storage.url"), "{url}: {err}");
        assert!(
            !err.contains("s3cret-pw"),
            "{url}: the password is printed: {err}"
        );
    }
}

#[test]
fn wrong_credentials_stop_the_start_naming_storage_url_without_the_password() {
    let Some(db) = crate::mysql::test_db() else {
        return;
    };
    // The test database's URL with another password.
    let (head, tail) = db.url.split_once('@').unwrap();
    let user = head.rsplit_once(':').unwrap().0;
    let url = format!("{user}:not-the-pw-9f3@{tail}");
    let (ok, err) = serve_on(&url);
    assert!(!ok);
    assert!(err.contains("storage.url"), "{err}");
    assert!(err.contains("Access denied"), "{err}");
    assert!(
        !err.contains("not-the-pw-9f3"),
        "the password is printed: {err}"
    );
}

/// Three instances on one fresh MySQL database: the `Env` (instance 0) and two more.
struct Cluster {
    env: Env,
    others: Vec<wafer::http::Handle>,
}

impl Cluster {
    fn start(adjust: impl FnOnce(&mut wafer::config::Config)) -> Option<Cluster> {
        let env = Env::with_mysql(adjust)?;
        let others = (0..2).map(|_| env.another()).collect();
        Some(Cluster { env, others })
    }

    /// `path` on instance `i` (0, 1 or 2).
    fn url(&self, i: usize, path: &str) -> String {
        match i {
            0 => self.env.url(path),
            _ => format!("http://{}{path}", self.others[i - 1].addr()),
        }
    }

    fn post(&self, i: usize, path: &str, body: &str) -> (u16, String) {
        self.env
            .request("POST", &self.url(i, path), &[], Some(body.as_bytes()))
    }

    fn check(&self, i: usize, id: &str, skey: &str) -> i64 {
        let body = json!({"version": 1, "componentName": "MA",
            "interface": {"interfaceName": "qcloud.cam.auth", "para": {"id": id, "skey": skey}}});
        let (s, t) = self.post(i, "/mina_auth/", &body.to_string());
        assert_eq!(s, 200, "{t}");
        serde_json::from_str::<Value>(&t).unwrap()["returnCode"]
            .as_i64()
            .unwrap()
    }

    /// The app's access token as instance `i` serves it (`force`: renewed first); 200 asserted.
    fn token(&self, i: usize, force: bool) -> String {
        let q = if force { "?force=true" } else { "" };
        let url = self.url(i, &format!("/v1/apps/{APPID}/access_token{q}"));
        let (s, t) = self.env.request("GET", &url, &[], None);
        assert_eq!(s, 200, "{t}");
        serde_json::from_str::<Value>(&t).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn stop(mut self) {
        for h in self.others.drain(..) {
            h.shutdown();
        }
    }
}

#[test]
fn a_session_made_on_one_instance_is_checked_and_revoked_on_the_others() {
    let Some(c) = Cluster::start(|_| {}) else {
        return;
    };
    let (id, skey, _) = c.env.login("shared-ann");
    for i in 0..3 {
        assert_eq!(c.check(i, &id, &skey), 0, "instance {i}");
    }
    let revoke = json!({"id": id, "skey": skey}).to_string();
    assert_eq!(c.post(2, "/v1/sessions/revoke", &revoke).0, 204);
    // At once, everywhere: no instance holds a session in memory.
    for i in 0..3 {
        assert_eq!(
            c.check(i, &id, &skey),
            60012,
            "instance {i} after the revocation"
        );
    }
    c.stop();
}

#[test]
fn cold_token_reads_across_three_instances_are_one_upstream_call() {
    let Some(c) = Cluster::start(|c| c.server.workers = 16) else {
        return;
    };
    c.env
        .fail(json!({"path": STABLE, "delay_ms": 300, "times": 5}));
    let c = Arc::new(c);
    let gate = Arc::new(Barrier::new(200));
    let readers: Vec<_> = (0..200)
        .map(|n| {
            let (c, gate) = (c.clone(), gate.clone());
            std::thread::spawn(move || {
                gate.wait();
                c.token(n % 3, false)
            })
        })
        .collect();
    let tokens: Vec<String> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(tokens.iter().all(|t| *t == tokens[0]), "one token for all");
    assert_eq!(
        c.env.calls(STABLE),
        1,
        "upstream calls for 200 cold reads on 3 instances"
    );
    Arc::try_unwrap(c).ok().unwrap().stop();
}

#[test]
fn a_callback_replayed_to_another_instance_is_not_applied_again() {
    let (hook, seen) = crate::callbacks::forward_target("<xml>reply</xml>", Duration::ZERO);
    let Some(c) = Cluster::start(|c| crate::callbacks::mp_config(c, Some(hook), Some(MP_KEY)))
    else {
        return;
    };
    let (path, body) = crate::callbacks::mp_push(
        &crate::callbacks::text_message("shared once"),
        wafer::ids::now(),
        "n1",
    );
    let (s, first) = c.post(0, &path, &body);
    assert_eq!(s, 200);
    assert_ne!(
        first, "success",
        "the business reply is relayed the first time"
    );
    for i in [1, 2] {
        assert_eq!(
            c.post(i, &path, &body),
            (200, "success".into()),
            "instance {i}"
        );
    }
    let forwarded = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m["Content"] == "shared once")
        .count();
    assert_eq!(forwarded, 1, "forwarded more than once");
    c.stop();
}

#[test]
fn an_instance_killed_mid_refresh_holds_the_others_up_only_for_its_lease() {
    let Some(c) = Cluster::start(|c| {
        c.wechat.lease_secs = 2;
        c.wechat.timeout_ms = 20_000;
    }) else {
        return;
    };
    // A real `wafer serve` on the same database, with the same lease.
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("wafer.toml");
    std::fs::write(
        &toml,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nurl = \"{}\"\n\
             [wechat]\napi_base = \"{base}\"\nwork_api_base = \"{base}\"\n\
             timeout_ms = 20000\nlease_secs = 2\n",
            c.env.mysql.as_ref().unwrap().url,
            base = c.env.mock.base_url()
        ),
    )
    .unwrap();
    let mut cmd = wafer();
    cmd.args(["serve", "--config", toml.to_str().unwrap()]);
    let doomed = crate::cli::Served::start(cmd);
    // Its fetch hangs on WeChat (holding the lease) when it is killed.
    c.env
        .fail(json!({"path": STABLE, "delay_ms": 15_000, "times": 1}));
    let url = format!("http://{}/v1/apps/{APPID}/access_token", doomed.addr);
    std::thread::spawn(move || {
        // Never answered: the instance dies first.
        let _ = ureq::get(&url).call();
    });
    wait_until(
        Duration::from_secs(10),
        "the doomed instance never asked WeChat",
        || c.env.calls(STABLE) > 0,
    );
    doomed.signal("-9");
    let started = Instant::now();
    let (s, v) = c
        .env
        .v1("GET", &format!("/v1/apps/{APPID}/access_token"), None, None);
    let took = started.elapsed();
    eprintln!("shared_db: a read after the lease holder was killed took {took:?}");
    assert_eq!(s, 200, "{v}");
    assert!(
        took < Duration::from_secs(6),
        "took {took:?} with a 2 s lease"
    );
    assert_eq!(
        c.env.calls(STABLE),
        2,
        "the dead instance's call and the taker's"
    );
    c.stop();
}

/// A TCP relay to the MySQL server that a test can cut (every connection dropped, new ones
/// closed at once) and mend.
struct Relay {
    addr: std::net::SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    /// Bumped by each cut: relays of an older epoch end.
    epoch: Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    fn to(target: String) -> Relay {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let (c, e) = (cut.clone(), epoch.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let mine = e.load(Ordering::SeqCst);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let e = e.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        from.set_read_timeout(Some(Duration::from_millis(100)))
                            .unwrap();
                        let mut buf = [0u8; 16384];
                        while e.load(Ordering::SeqCst) == mine {
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(err)
                                    if matches!(
                                        err.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { addr, cut, epoch }
    }

    fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.cut.store(true, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn mend(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_database_gone_at_run_time_fails_requests_quickly_and_is_recovered_from() {
    let Some(db) = crate::mysql::test_db() else {
        return;
    };
    // mysql://USER:PASS@HOST:PORT/DB through the relay.
    let (head, tail) = db.url.split_once('@').unwrap();
    let (server, path) = tail.split_once('/').unwrap();
    let relay = Relay::to(server.to_string());
    let url = format!("{head}@{}/{path}", relay.addr);
    let env = Env::with(|c| {
        c.storage.url = wafer::secret::Secret::new(url);
    });
    let (id, skey, _) = env.login("through-the-relay");
    let check = || {
        let started = Instant::now();
        let r = env.wafer("qcloud.cam.auth", json!({"id": id, "skey": skey}));
        (r["returnCode"].as_i64().unwrap(), started.elapsed())
    };
    assert_eq!(check().0, 0);

    relay.cut();
    let (code, took) = check();
    eprintln!("shared_db: a check with the database cut answered {code} in {took:?}");
    assert_eq!(code, 1001, "DB_ERR while the database is gone");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let started = Instant::now();
    let (s, t) = env.request("GET", &env.url("/healthz"), &[], None);
    assert_eq!(s, 503, "{t}");
    assert!(started.elapsed() < Duration::from_secs(3));

    relay.mend();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _) = check();
        if code == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "not recovered 10 s after the database came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (s, _) = env.request("GET", &env.url("/healthz"), &[], None);
    assert_eq!(s, 200);
    drop(env);
    drop(db);
}

/// `wafer db copy ARGS…`: (success, stdout, stderr).
fn db_copy(args: &[&str]) -> (bool, String, String) {
    run(wafer().args(["db", "copy"]).args(args))
}

#[test]
fn db_copy_moves_a_single_box_onto_mysql_and_back() {
    let Some(target) = crate::mysql::test_db() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("single.db").to_string_lossy().into_owned();
    let single = Env::with(|c| c.storage.path = file.clone());
    let (id, skey, _) = single.login("moving-ann");
    let (s, v) = single.v1("GET", &format!("/v1/apps/{APPID}/access_token"), None, None);
    assert_eq!(s, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_string();
    let app_id = single.app_id(APPID);
    drop(single);

    let (ok, out, err) = db_copy(&["--from", &file, "--to", &target.url]);
    assert!(ok, "{err}");
    assert!(out.contains("sessions: 1 copied, 0 kept"), "{out}");
    assert!(
        !out.contains(target.url.split('@').next().unwrap()),
        "{out}"
    );
    // Into a database that holds data: refused without --merge; with it, everything is kept.
    let (ok, _, err) = db_copy(&["--from", &file, "--to", &target.url]);
    assert!(!ok && err.contains("--merge"), "{err}");
    assert!(
        !err.contains(target.url.split('@').next().unwrap()),
        "{err}"
    );
    let (ok, out, err) = db_copy(&["--from", &file, "--to", &target.url, "--merge"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("users: 0 copied, 1 kept") && out.contains("sessions: 0 copied, 1 kept"),
        "{out}"
    );

    // A server on MySQL: the session authenticates, the token is served as stored, the app
    // keeps its numeric id.
    let url = target.url.clone();
    let shared = Env::with(|c| {
        c.apps.clear();
        c.storage.url = wafer::secret::Secret::new(url);
    });
    let r = shared.wafer("qcloud.cam.auth", json!({"id": id, "skey": skey}));
    assert_eq!(r["returnCode"], 0, "{r}");
    let (s, v) = shared.v1("GET", &format!("/v1/apps/{APPID}/access_token"), None, None);
    assert_eq!((s, v["access_token"].as_str()), (200, Some(token.as_str())));
    assert_eq!(shared.calls(STABLE), 0, "the token came along");
    assert_eq!(shared.app_id(APPID), app_id);
    drop(shared);

    // And back into a new file.
    let back = dir.path().join("back.db").to_string_lossy().into_owned();
    let (ok, out, err) = db_copy(&["--from", &target.url, "--to", &back]);
    assert!(ok, "{err}");
    assert!(out.contains("sessions: 1 copied"), "{out}");
    let again = Env::with(|c| {
        c.apps.clear();
        c.storage.path = back.clone();
    });
    let r = again.wafer("qcloud.cam.auth", json!({"id": id, "skey": skey}));
    assert_eq!(r["returnCode"], 0, "{r}");
    assert_eq!(again.app_id(APPID), app_id);
}

#[test]
fn a_token_renewed_on_one_instance_is_served_by_the_others_about_a_second_later() {
    let Some(c) = Cluster::start(|_| {}) else {
        return;
    };
    let old = c.token(1, false);
    assert_eq!(c.token(2, false), old);
    // A forced renewal on instance 0 replaces the token at WeChat (the old one stops working).
    let new = c.token(0, true);
    assert_ne!(new, old);
    let started = Instant::now();
    for i in [1, 2] {
        wait_until(
            Duration::from_secs(3).saturating_sub(started.elapsed()),
            &format!("instance {i} still serves the replaced token"),
            || c.token(i, false) == new,
        );
    }
    eprintln!(
        "shared_db: the other instances served the renewed token after {:?}",
        started.elapsed()
    );
    assert_eq!(c.env.calls(STABLE), 2, "the first fetch and the forced one");
    c.stop();
}

/// Session checks and token reads per second on SQLite and on MySQL, in the same run: eight
/// clients for two seconds each. A measurement, not a check: run it with `--ignored`.
#[test]
#[ignore]
fn figures_sqlite_vs_mysql() {
    let rate = |env: &Arc<Env>, path: &'static str, body: Option<String>| -> f64 {
        let until = Instant::now() + Duration::from_secs(2);
        let done: usize = (0..8)
            .map(|_| {
                let (env, body) = (env.clone(), body.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while Instant::now() < until {
                        let method = if body.is_some() { "POST" } else { "GET" };
                        let (s, _) = env.request(
                            method,
                            &env.url(path),
                            &[],
                            body.as_deref().map(str::as_bytes),
                        );
                        assert_eq!(s, 200);
                        n += 1;
                    }
                    n
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        done as f64 / 2.0
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.db").to_string_lossy().into_owned();
    let envs = [
        ("sqlite", Env::with(|c| c.storage.path = file.clone())),
        (
            "mysql",
            Env::with_mysql(|_| {}).expect("WAFER_TEST_MYSQL_URL"),
        ),
    ];
    for (name, env) in envs {
        let env = Arc::new(env);
        let (id, skey, _) = env.login("figures");
        let check = json!({"version": 1, "componentName": "MA",
            "interface": {"interfaceName": "qcloud.cam.auth", "para": {"id": id, "skey": skey}}})
        .to_string();
        let checks = rate(&env, "/mina_auth/", Some(check));
        let tokens = rate(&env, "/v1/apps/wxtestapp0000001/access_token", None);
        eprintln!("figures {name}: {checks:.0} session checks/s, {tokens:.0} token reads/s");
    }
}

#[test]
fn when_the_refresher_instance_dies_another_renews_ahead_of_expiry() {
    let Some(env) = Env::with_mysql(|c| c.wechat.lease_secs = 2) else {
        return;
    };
    // Instance 0 is the refresher: it claims the lease on its first pass.
    wait_until(Duration::from_secs(5), "no refresher elected", || {
        env.scalar("SELECT count(*) FROM leases WHERE name = 'refresher'") > 0
    });
    let other = env.another();
    // A token that lives 12 s, read on instance 0 only; then instance 0 dies (its lease stays
    // until it runs out, as a killed process's would).
    env.mock_post("/__mock__/config", json!({"token_lifetime_secs": 12}));
    let (s, v) = env.v1("GET", &format!("/v1/apps/{APPID}/access_token"), None, None);
    assert_eq!(s, 200, "{v}");
    let fetched = Instant::now();
    let mut env = env;
    env.server.take().unwrap().shutdown();
    // The other instance, which never served it, renews it before it expires.
    wait_until(
        Duration::from_secs(11).saturating_sub(fetched.elapsed()),
        "not renewed ahead of expiry",
        || env.calls(STABLE) >= 2,
    );
    eprintln!(
        "shared_db: the surviving instance renewed the token {:?} after the fetch (12 s life)",
        fetched.elapsed()
    );
    // (Nobody asked the survivor for it: the call was its refresher's.)
    let url = format!("http://{}/v1/apps/{APPID}/access_token", other.addr());
    let (s, t) = env.request("GET", &url, &[], None);
    assert_eq!(s, 200, "{t}");
    other.shutdown();
}

#[test]
fn ssl_mode_required_never_falls_back_to_plain_tcp() {
    let Some(db) = crate::mysql::test_db() else {
        return;
    };
    let url = format!("{}?ssl-mode=REQUIRED", db.url);
    let (ok, out, err) = run(wafer().args(["app", "list", "--db", &url]));
    // The test server (.ci/mariadb.sh) has no certificate: the connection is refused rather
    // than made in clear. A server with TLS answers over it.
    if !ok {
        assert!(err.contains("storage.url"), "{err}");
        assert!(err.contains("secure connection"), "{err}");
        assert!(!err.contains(&db.url), "{err}");
    } else {
        assert!(out.is_empty() || out.contains("app"), "{out}");
    }
}

#[test]
fn a_verify_ticket_pushed_to_one_instance_is_used_by_another() {
    use crate::component::{push_ticket_to, COMPONENT};
    let Some(c) = Cluster::start(crate::component::component_config) else {
        return;
    };
    let events = format!("/wechat/component/{COMPONENT}/events");
    assert_eq!(
        push_ticket_to(&c.env, &c.url(1, &events), None),
        (200, "success".into())
    );
    let url = c.url(2, &format!("/v1/components/{COMPONENT}/access_token"));
    let (s, t) = c.env.request("GET", &url, &[], None);
    assert_eq!(s, 200, "{t}");
    assert_eq!(c.env.calls("/cgi-bin/component/api_component_token"), 1);
    c.stop();
}

/// Poll `done` every 20 ms until it holds; fail with `what` when it still does not after `limit`.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
