//! The benchmark's smoke version: the harness's own load generator for about a second against an
//! in-process server and fake WeChat. It asserts only that figures come out, never how good they
//! are (`bench/run.sh` is the real thing; see BENCHMARKS.md).

#[path = "../examples/bench/loadgen.rs"]
#[allow(dead_code)]
mod loadgen;

use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn the_load_generator_produces_figures() {
    let dir = tempfile::tempdir().unwrap();
    let mock = fake_wechat::start("127.0.0.1:0").unwrap();
    let mut config = wafer::config::Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.workers = 4;
    config.storage.path = dir.path().join("b.db").to_string_lossy().into_owned();
    config.wechat.api_base = mock.base_url();
    config.wechat.work_api_base = mock.base_url();
    config.apps = vec![wafer::config::AppDecl::new("wxbenchsmoke0001", "s")];
    let server = wafer::http::start(config, false).unwrap();
    let addr = server.addr();

    let login = |c: usize, s: u64| {
        let body = format!(
            r#"{{"version":1,"componentName":"MA","interface":{{"interfaceName":"qcloud.cam.id_skey","para":{{"code":"smoke-{c}-{s}"}}}}}}"#
        );
        loadgen::request("POST", "/mina_auth/", body.as_bytes())
    };
    let ok = |s: u16, b: &[u8]| s == 200 && b.starts_with(b"{\"returnCode\":0,");
    let logins = loadgen::run(
        addr,
        2,
        Duration::ZERO,
        Duration::from_millis(300),
        Arc::new(login),
        Arc::new(ok),
    );
    assert!(logins.requests > 0 && logins.errors == 0, "logins");

    // One session to check, from one more login.
    let v: Value = ureq::post(&format!("http://{addr}/mina_auth/"))
        .send_bytes(login(9, 9).split(|&b| b == b'\n').next_back().unwrap())
        .unwrap()
        .into_json()
        .unwrap();
    let (id, skey) = (
        v["returnData"]["id"].as_str().unwrap().to_string(),
        v["returnData"]["skey"].as_str().unwrap().to_string(),
    );
    let check = loadgen::request(
        "POST",
        "/v1/sessions/check",
        format!(r#"{{"id":"{id}","skey":"{skey}"}}"#).as_bytes(),
    );
    let r = loadgen::run(
        addr,
        4,
        Duration::from_millis(100),
        Duration::from_millis(800),
        Arc::new(move |_, _| check.clone()),
        Arc::new(|s, _| s == 200),
    );
    assert_eq!(r.errors, 0);
    assert!(r.requests > 0);
    assert!(r.rps() > 0.0);
    for q in [0.5, 0.99, 0.999] {
        assert!(r.quantile_ms(q).is_finite() && r.quantile_ms(q) >= 0.0);
    }
    eprintln!(
        "smoke: session check {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
        r.rps(),
        r.quantile_ms(0.5),
        r.quantile_ms(0.99)
    );

    // The gateway scenario: a token-checked call relayed to the fake WeChat, a success only
    // with WeChat's `"errcode":0,` in the answer (the bench's `Want::WechatOk`), spread over two
    // addresses of the same server as the bench spreads over instances.
    let send = loadgen::request(
        "POST",
        "/v1/apps/wxbenchsmoke0001/wechat/cgi-bin/message/custom/send",
        br#"{"touser":"o1","msgtype":"text","text":{"content":"smoke"}}"#,
    );
    let g = loadgen::run_spread(
        &[addr, addr],
        2,
        Duration::ZERO,
        Duration::from_millis(300),
        Arc::new(move |_, _| send.clone()),
        Arc::new(|s, b| s == 200 && b.windows(12).any(|w| w == b"\"errcode\":0,")),
    );
    assert!(
        g.requests > 0 && g.errors == 0,
        "gateway: {} errors",
        g.errors
    );
    server.shutdown();
}
