//! Overload (issue 11, items 5 and 10), against the real binary: a burst of logins on a slow
//! WeChat, and another process holding SQLite's write lock. In both, session checks and
//! `/healthz` keep answering at once, and what cannot be done now is refused quickly rather than
//! queued. Bounded in count and time; loopback only.

use crate::harness::*;
use crate::robustness::{
    add_app, agent, envelope, post_envelope, serve_captured, start_login_clients,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A session on the served app: (id, skey).
fn session(addr: &str, code: &str) -> (String, String) {
    let body = envelope("qcloud.cam.id_skey", json!({ "code": code }));
    let (s, v) = post_envelope(&agent(), addr, &body, None).unwrap();
    assert_eq!((s, &v["returnCode"]), (200, &json!(0)), "{v}");
    let d = &v["returnData"];
    (
        d["id"].as_str().unwrap().to_string(),
        d["skey"].as_str().unwrap().to_string(),
    )
}

/// One timed `qcloud.cam.auth`, asserted to succeed.
fn timed_check(agent: &ureq::Agent, addr: &str, id: &str, skey: &str) -> Duration {
    let started = Instant::now();
    let body = envelope("qcloud.cam.auth", json!({"id": id, "skey": skey}));
    let (s, v) = post_envelope(agent, addr, &body, None).unwrap();
    assert_eq!((s, &v["returnCode"]), (200, &json!(0)), "{v}");
    started.elapsed()
}

/// (median, 99th percentile, slowest) of some latencies.
fn spread(mut d: Vec<Duration>) -> (Duration, Duration, Duration) {
    d.sort();
    let at = |q: f64| d[((d.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), d[d.len() - 1])
}

fn fault(mock: &fake_wechat::MockHandle, fault: Value) {
    let r = agent()
        .post(&format!("{}/__mock__/fail", mock.base_url()))
        .send_string(&fault.to_string())
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn metric(addr: &str, name: &str) -> u64 {
    let text = agent()
        .get(&format!("http://{addr}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn a_login_burst_on_a_slow_wechat_leaves_session_checks_fast() {
    // 400 connections log in twice each at once while WeChat takes half a second per login:
    // more than the upstream pool (4 workers: 256 at once) takes. Past it a login must be
    // refused at once (1005), not run on a worker, so that the session checks beside the burst
    // still find a free worker. (Before: the overflow waited on WeChat on the workers, and checks
    // queued behind it for seconds.)
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("burst.db");
    let mock = fake_wechat::start("127.0.0.1:0").unwrap();
    add_app(&db, APPID, SECRET);
    let served = serve_captured(&db, &mock, &[]);
    let addr = served.addr.clone();
    let (id, skey) = session(&addr, "checker");
    fault(
        &mock,
        json!({"path": "/sns/jscode2session", "delay_ms": 500, "times": 100_000}),
    );

    let n = 400;
    let burst = start_login_clients(&addr, n, 2, "burst");
    std::thread::sleep(Duration::from_millis(200));
    let checker = agent();
    let mut checks = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        checks.push(timed_check(&checker, &addr, &id, &skey));
    }
    let logins: Vec<_> = burst.into_iter().flat_map(|b| b.join().unwrap()).collect();

    let (median, p99, slowest) = spread(checks.clone());
    let refused = logins
        .iter()
        .filter(|(a, _)| matches!(a, Ok((200, 1005))))
        .count();
    let done = logins
        .iter()
        .filter(|(a, _)| matches!(a, Ok((200, 0))))
        .count();
    let slowest_login = logins.iter().map(|(_, t)| *t).max().unwrap();
    eprintln!(
        "overload: {} checks beside {} logins on a 500 ms WeChat: median {median:?}, p99 {p99:?}, \
         slowest {slowest:?}; logins: {done} done, {refused} refused at once, slowest {slowest_login:?}",
        checks.len(),
        logins.len()
    );
    for (a, took) in &logins {
        assert!(
            matches!(a, Ok((200, 0 | 1005))),
            "a login answered {a:?} after {took:?}"
        );
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a check took {slowest:?} (median {median:?})"
    );
    assert!(
        median < Duration::from_millis(250),
        "checks took {median:?} at the median"
    );
    assert!(checks.len() >= 20, "only {} checks", checks.len());
    assert!(refused > 0, "no login was refused");
    assert!(done >= 16, "only {done} logins done");
    assert!(
        slowest_login < Duration::from_secs(10),
        "a login took {slowest_login:?}"
    );
    assert!(metric(&addr, "wafer_lane_full_total") > 0);
}
/// `GET /healthz`: (status, body, how long it took).
fn healthz(agent: &ureq::Agent, addr: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, r) = match agent.get(&format!("http://{addr}/healthz")).call() {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(s, r)) => (s, r),
        Err(e) => panic!("/healthz: {e}"),
    };
    let body = serde_json::from_str(&r.into_string().unwrap()).unwrap();
    (status, body, started.elapsed())
}

#[test]
fn another_process_holding_the_write_lock_stalls_nothing_but_writes() {
    // Another process takes SQLite's write lock and keeps it for 7 s. Session checks (whose
    // sliding write is due) answer at once, skipping the slide; `/healthz` says within a second
    // that the database cannot write; logins fail with 1006 within the busy timeout (5 s), all
    // at about the same time rather than one after another. (Before: logins failed 5 s apart
    // behind the in-process write turn, checks waited behind them, `/healthz` said ok.)
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("locked.db");
    let mock = fake_wechat::start("127.0.0.1:0").unwrap();
    add_app(&db, APPID, SECRET);
    let served = serve_captured(&db, &mock, &[]);
    let addr = served.addr.clone();
    let client = agent();
    let (id, skey) = session(&addr, "checker");
    let revoked: Vec<_> = (0..4)
        .map(|i| session(&addr, &format!("revoked-{i}")))
        .collect();
    let (s, v, _) = healthz(&client, &addr);
    assert_eq!((s, v), (200, json!({"status": "ok"})));
    let outside = rusqlite::Connection::open(&db).unwrap();
    outside.busy_timeout(Duration::from_secs(5)).unwrap();
    // The checker's last visit two minutes ago: every check now wants to slide it.
    outside
        .execute("UPDATE sessions SET last_visit = last_visit - 120", [])
        .unwrap();

    outside.execute_batch("BEGIN IMMEDIATE").unwrap();
    let locked_at = Instant::now();
    let logins: Vec<_> = (0..6)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let body = envelope("qcloud.cam.id_skey", json!({"code": format!("locked-{i}")}));
                let (s, v) = post_envelope(&agent(), &addr, &body, None).unwrap();
                assert_eq!(s, 200);
                (v["returnCode"].as_i64().unwrap(), started.elapsed())
            })
        })
        .collect();
    // As many revocations as workers: writes on the workers, which must not hold them for the
    // whole busy timeout either (checks and /healthz would queue behind them).
    let revokes: Vec<_> = revoked
        .into_iter()
        .map(|(id, skey)| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let r = agent()
                    .post(&format!("http://{addr}/v1/sessions/revoke"))
                    .send_string(&json!({"id": id, "skey": skey}).to_string());
                let status = match r {
                    Ok(r) => r.status(),
                    Err(ureq::Error::Status(s, _)) => s,
                    Err(e) => panic!("revoke: {e}"),
                };
                (status, started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut checks = Vec::new();
    let mut health = Vec::new();
    while locked_at.elapsed() < Duration::from_secs(4) {
        checks.push(timed_check(&client, &addr, &id, &skey));
        let (s, v, took) = healthz(&client, &addr);
        assert_eq!(s, 503, "/healthz during the lock: {v}");
        assert_eq!(v["status"], "degraded", "{v}");
        let reason = v["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("database cannot write"), "{v}");
        health.push(took);
    }
    let logins: Vec<_> = logins.into_iter().map(|l| l.join().unwrap()).collect();
    let revokes: Vec<_> = revokes.into_iter().map(|r| r.join().unwrap()).collect();
    let held = locked_at.elapsed();
    let (c_median, _, c_slowest) = spread(checks.clone());
    let (_, _, h_slowest) = spread(health.clone());
    eprintln!(
        "overload: during an outside write lock: {} checks, median {c_median:?}, slowest \
         {c_slowest:?}; {} /healthz 503, slowest {h_slowest:?}; logins {logins:?}; revokes \
         {revokes:?}",
        checks.len(),
        health.len()
    );
    assert!(
        held < Duration::from_secs(7),
        "the logins were answered only after {held:?}"
    );
    outside.execute_batch("COMMIT").unwrap();
    assert!(
        c_slowest < Duration::from_secs(1),
        "a check took {c_slowest:?}"
    );
    assert!(
        h_slowest < Duration::from_secs(1),
        "/healthz took {h_slowest:?}"
    );
    for (status, took) in &revokes {
        assert_eq!(*status, 500, "a revocation during the lock");
        assert!(
            *took < Duration::from_secs(2),
            "a revocation failed after {took:?}"
        );
    }
    for (code, took) in &logins {
        assert_eq!(*code, 1006, "a login during the lock");
        assert!(
            *took < Duration::from_secs(6),
            "a login failed after {took:?}"
        );
    }
    // The lock gone, everything works again, the slide included.
    let (s, v, _) = healthz(&client, &addr);
    assert_eq!((s, v), (200, json!({"status": "ok"})));
    session(&addr, "after");
    timed_check(&client, &addr, &id, &skey);
    // Slides are written behind, about every second.
    let last_visit = || -> i64 {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row(
                "SELECT last_visit FROM sessions WHERE user_id = ?1",
                [&id],
                |r| r.get(0),
            )
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while last_visit() < wafer::ids::now() - 5 {
        assert!(Instant::now() < deadline, "the slide was not written");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_flood_of_healthz_commits_at_most_one_write_a_second() {
    sqlite_only!("counts commits with SQLite's data_version");
    // `/healthz` needs no key: each call that commits a write is a write transaction (and WAL
    // growth) anyone can ask for. After each of 200 calls, another connection's
    // `PRAGMA data_version` says whether anything was committed during that call.
    let env = Env::new();
    let client = agent();
    let addr = env.server.as_ref().unwrap().addr().to_string();
    let started = Instant::now();
    let committed = env.commits_during(0..200, |_| {
        let (s, v, _) = healthz(&client, &addr);
        assert_eq!((s, v), (200, json!({"status": "ok"})));
    });
    let took = started.elapsed();
    eprintln!("overload: 200 /healthz in {took:?} committed during {committed} calls");
    assert!(
        committed as u64 <= took.as_secs() + 2,
        "200 /healthz in {took:?} committed during {committed} calls"
    );
}
