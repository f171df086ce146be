//! The WeChat API gateway (CONTRACT §9) at the HTTP boundary: calls relayed to the fake WeChat
//! with the hosted token (JSON, PNG bytes, a multipart upload), a stale token renewed once for
//! any number of callers, WeCom's own stale set, strict paths, credential paths, body limits, the
//! in-flight budget, bounded metrics labels, the api key, and a hung WeChat that holds up no
//! session check.

use crate::component::{authorise, component_env, push_ticket, COMPONENT};
use crate::harness::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const SEND: &str = "/cgi-bin/message/custom/send";
const STABLE: &str = "/cgi-bin/stable_token";

/// A gateway answer: status, the headers that matter, the body bytes.
struct Got {
    status: u16,
    content_type: Option<String>,
    retried: Option<String>,
    body: Vec<u8>,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// `method path` on the server with these headers and body.
fn call(env: &Env, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Got {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build();
    let mut rq = agent.request(method, &env.url(path));
    for (k, v) in headers {
        rq = rq.set(k, v);
    }
    let res = if body.is_empty() {
        rq.call()
    } else {
        rq.send_bytes(body)
    };
    let resp = match res {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let header = |name| resp.header(name).map(str::to_string);
    let (status, content_type, retried) = (
        resp.status(),
        header("Content-Type"),
        header("Wafer-Retried"),
    );
    let mut bytes = Vec::new();
    resp.into_reader().read_to_end(&mut bytes).unwrap();
    Got {
        status,
        content_type,
        retried,
        body: bytes,
    }
}

/// A JSON POST through the app's gateway route.
fn app_post(env: &Env, path: &str, body: Value) -> Got {
    call(
        env,
        "POST",
        &format!("/v1/apps/{APPID}/wechat/{path}"),
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// Bytes sent as they are (no URL normalisation by a client library): (status, whole answer).
fn raw(env: &Env, request: &[u8]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(env.server.as_ref().unwrap().addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    (status, text)
}

const BOUNDARY: &str = "----wafer-gateway-test";

/// A multipart body whose `media` part is `data`, of type `part_type`.
fn multipart(part_type: &str, data: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"cat.png\"\r\n\
         Content-Type: {part_type}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// A [`multipart`] body through the app's `media/upload`.
fn upload(env: &Env, body: &[u8]) -> Got {
    call(
        env,
        "POST",
        &format!("/v1/apps/{APPID}/wechat/cgi-bin/media/upload?type=image"),
        &[(
            "Content-Type",
            &format!("multipart/form-data; boundary={BOUNDARY}"),
        )],
        body,
    )
}

fn app_token(env: &Env) -> String {
    let (s, v) = env.v1("GET", &format!("/v1/apps/{APPID}/access_token"), None, None);
    assert_eq!(s, 200, "{v}");
    v["access_token"].as_str().unwrap().to_string()
}

fn metrics(env: &Env) -> String {
    env.request("GET", &env.url("/metrics"), &[], None).1
}

/// Every upstream call the fake WeChat has seen, by path.
fn all_calls(env: &Env) -> Value {
    env.mock_get("/__mock__/calls")
}

#[test]
fn a_json_call_is_relayed_with_the_hosted_token_and_the_callers_dropped() {
    let env = Env::new();
    let token = app_token(&env);
    let body = r#"{"touser":"o1","msgtype":"text","text":{"content":"你好"}}"#;
    let got = call(
        &env,
        "POST",
        &format!("/v1/apps/{APPID}/wechat/cgi-bin/message/custom/send?access_token=evil&x=%E4%BD%A0&component_access_token=evil2"),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(got.status, 200);
    assert_eq!(
        got.content_type.as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(got.retried, None);
    assert_eq!(
        got.json(),
        json!({
            "errcode": 0,
            "errmsg": "ok",
            "owner": APPID,
            "query": format!("x=%E4%BD%A0&access_token={token}"),
            "content_type": "application/json",
            "body": body,
        })
    );
    // Any method; no body, no Content-Type.
    let got = call(
        &env,
        "GET",
        &format!("/v1/apps/{APPID}/wechat/cgi-bin/message/custom/send"),
        &[],
        b"",
    );
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["query"], format!("access_token={token}"));
    assert_eq!(got.json()["content_type"], Value::Null);
    assert_eq!(env.calls(SEND), 2);
    assert_eq!(env.calls(STABLE), 1, "the hosted token, fetched once");
    let m = metrics(&env);
    assert!(
        m.contains(
            r#"wafer_gateway_calls_total{target="app",api="cgi-bin/message",errcode="0"} 2"#
        ),
        "{m}"
    );
    // WeChat's own errors come back as they are, with their status.
    let got = call(
        &env,
        "POST",
        "/v1/apps/nosuchapp/wechat/cgi-bin/message/custom/send",
        &[],
        b"{}",
    );
    assert_eq!(got.status, 404, "an unknown app");
    assert_eq!(got.json()["error"], "unknown_app");
}

#[test]
fn binary_answers_are_relayed_byte_for_byte() {
    let env = Env::new();
    let got = app_post(&env, "wxa/getwxacodeunlimit", json!({"scene": "a=1"}));
    assert_eq!(got.status, 200);
    assert_eq!(got.content_type.as_deref(), Some("image/png"));
    assert_eq!(got.body, fake_wechat::wxacode_png("a=1"));
    // Its errors are JSON, relayed as such.
    let got = app_post(&env, "wxa/getwxacodeunlimit", json!({}));
    assert_eq!(got.json()["errcode"], 40169);
    let m = metrics(&env);
    assert!(
        m.contains(r#"wafer_gateway_calls_total{target="app",api="wxa/getwxacodeunlimit",errcode="40169"} 1"#),
        "{m}"
    );
}

#[test]
fn a_2_mib_multipart_upload_arrives_intact() {
    use sha1::Digest;
    let env = Env::new();
    // Larger than server.max_body_bytes (64 KiB): the gateway's routes take more.
    let data: Vec<u8> = (0..2 << 20).map(|i| (i * 7 % 256) as u8).collect();
    let got = upload(&env, &multipart("image/png", &data));
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let v = got.json();
    assert_eq!(v["type"], "image");
    assert_eq!(v["received_bytes"], data.len());
    assert_eq!(v["filename"], "cat.png");
    assert_eq!(v["content_type"], "image/png");
    assert_eq!(v["sha1"], wafer::crypto::hex(&sha1::Sha1::digest(&data)));
}

#[test]
fn a_revoked_token_is_renewed_once_and_the_call_retried() {
    let env = Env::new();
    let token = app_token(&env);
    env.mock_post("/__mock__/revoke_token", json!({"access_token": token}));
    let got = app_post(&env, "cgi-bin/message/custom/send", json!({"touser": "o1"}));
    assert_eq!(got.status, 200);
    assert_eq!(got.retried.as_deref(), Some("1"));
    let v = got.json();
    assert_eq!(v["errcode"], 0, "{v}");
    let renewed = app_token(&env);
    assert_ne!(renewed, token);
    assert_eq!(v["query"], format!("access_token={renewed}"));
    assert_eq!(env.calls(STABLE), 2, "one renewal");
    assert_eq!(env.calls(SEND), 2, "one retry");
    // The next call goes straight through.
    let got = app_post(&env, "cgi-bin/message/custom/send", json!({}));
    assert_eq!((got.status, got.retried), (200, None));
    assert_eq!(env.calls(STABLE), 2);
}

#[test]
fn twenty_callers_on_a_revoked_token_cause_one_renewal() {
    let env = Env::new();
    let token = app_token(&env);
    env.mock_post("/__mock__/revoke_token", json!({"access_token": token}));
    let barrier = std::sync::Barrier::new(20);
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..20)
            .map(|i| {
                let (env, barrier) = (&env, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    app_post(env, "cgi-bin/message/custom/send", json!({"n": i}))
                })
            })
            .collect();
        for c in calls {
            let got = c.join().unwrap();
            assert_eq!(got.status, 200);
            assert_eq!(got.json()["errcode"], 0, "{}", got.json());
        }
    });
    assert_eq!(env.calls(STABLE), 2, "one renewal for twenty callers");
    assert!(env.calls(SEND) <= 40, "at most one retry each");
}

/// A server with WeCom agent wwcorp/1000002.
fn wecom_env() -> Env {
    let env = Env::new();
    let r = env.wafer(
        "qcloud.work.initagent",
        json!({"corpid": "wwcorp", "agentid": "1000002", "agentsecret": "agent-secret"}),
    );
    assert_eq!(code(&r), (0, "INIT_AGENT_SUCCESS"));
    env
}

fn wecom_send(env: &Env) -> Got {
    call(
        env,
        "POST",
        "/v1/work/wwcorp/1000002/wechat/cgi-bin/message/send",
        &[("Content-Type", "application/json")],
        br#"{"touser":"u1"}"#,
    )
}

#[test]
fn wecom_renews_on_its_stale_errcodes_but_not_on_40001() {
    let env = wecom_env();
    let got = wecom_send(&env);
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["owner"], "wwcorp");
    assert_eq!(env.calls("/cgi-bin/gettoken"), 1);
    // 40001 on WeCom is a wrong secret: a new token would not help, so no retry.
    env.fail(json!({"path": "/cgi-bin/message/send", "errcode": 40001}));
    let got = wecom_send(&env);
    assert_eq!(got.json()["errcode"], 40001);
    assert_eq!(got.retried, None);
    assert_eq!(env.calls("/cgi-bin/gettoken"), 1);
    assert_eq!(env.calls("/cgi-bin/message/send"), 2);
    // 42001 and 40014 are stale tokens there: renewed once, retried once. (A fresh server each:
    // a second renewal within 30 s would be refused, as a forced refresh.)
    for errcode in [42001, 40014] {
        let env = wecom_env();
        env.fail(json!({"path": "/cgi-bin/message/send", "errcode": errcode}));
        let got = wecom_send(&env);
        assert_eq!(got.json()["errcode"], 0, "{errcode}");
        assert_eq!(got.retried.as_deref(), Some("1"), "{errcode}");
        assert_eq!(env.calls("/cgi-bin/gettoken"), 2, "{errcode}");
        assert_eq!(env.calls("/cgi-bin/message/send"), 2, "{errcode}");
    }
}

#[test]
fn a_refused_renewal_returns_wechats_first_answer() {
    let env = Env::new();
    app_token(&env);
    // Stale twice in a row: renewed once, then the second 40001 is the answer.
    env.fail(json!({"path": SEND, "errcode": 40001, "times": 2}));
    let got = app_post(&env, "cgi-bin/message/custom/send", json!({}));
    assert_eq!(got.json()["errcode"], 40001);
    assert_eq!(got.retried.as_deref(), Some("1"));
    assert_eq!(env.calls(STABLE), 2);
    // Within 30 s of that renewal another is refused (a forced refresh): WeChat's answer stands,
    // not retried.
    env.fail(json!({"path": SEND, "errcode": 42001}));
    let got = app_post(&env, "cgi-bin/message/custom/send", json!({}));
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["errcode"], 42001);
    assert_eq!(got.retried, None);
    assert_eq!(env.calls(STABLE), 2);
}

#[test]
fn component_and_authorizer_targets() {
    let env = component_env();
    assert_eq!(push_ticket(&env, None).0, 200);
    assert_eq!(authorise(&env, "wxauthorizer0009"), 200);
    let got = call(
        &env,
        "POST",
        &format!("/v1/components/{COMPONENT}/wechat/cgi-bin/component/api_get_authorizer_list?component_access_token=evil"),
        &[("Content-Type", "application/json")],
        json!({"component_appid": COMPONENT, "offset": 0, "count": 100})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(got.status, 200);
    assert_eq!(
        got.json(),
        json!({"total_count": 1, "list": [{"authorizer_appid": "wxauthorizer0009"}]})
    );
    let got = call(
        &env,
        "POST",
        &format!("/v1/components/{COMPONENT}/authorizers/wxauthorizer0009/wechat/cgi-bin/message/custom/send"),
        &[("Content-Type", "application/json")],
        b"{}",
    );
    assert_eq!(got.status, 200);
    let v = got.json();
    assert_eq!(v["owner"], "wxauthorizer0009", "{v}");
    let (_, t) = env.v1(
        "GET",
        &format!("/v1/components/{COMPONENT}/authorizers/wxauthorizer0009/access_token"),
        None,
        None,
    );
    assert_eq!(
        v["query"],
        format!("access_token={}", t["access_token"].as_str().unwrap())
    );
    let m = metrics(&env);
    for target in ["component", "authorizer"] {
        assert!(m.contains(&format!("target=\"{target}\"")), "{m}");
    }
}

#[test]
fn bad_paths_are_400_with_no_upstream_call() {
    let env = Env::new();
    for path in [
        "cgi-bin/./token",
        "cgi-bin/../token",
        "cgi-bin/%2e%2e/token",
        "cgi-bin/%2E/token",
        "%2e%2e/%2e%2e/etc/passwd",
        "cgi-bin//token",
        "cgi-bin%2F%2Ftoken",
        "cgi-bin/message/custom/send/",
        "cgi-bin/message%3Fx",
        "cgi-bin/message%20x",
        "%40evil.example/x",
        "%ff",
    ] {
        let request = format!(
            "POST /v1/apps/{APPID}/wechat/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let (status, text) = raw(&env, request.as_bytes());
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains(r#""error":"bad_path""#), "{path}: {text}");
    }
    assert_eq!(all_calls(&env), json!({}), "nothing reached WeChat");
}

#[test]
fn credential_paths_are_403_with_no_upstream_call() {
    let env = wecom_env();
    let routes = [
        format!("/v1/apps/{APPID}/wechat/"),
        "/v1/work/wwcorp/1000002/wechat/".to_string(),
        "/v1/components/wxc/wechat/".to_string(),
        "/v1/components/wxc/authorizers/wxa/wechat/".to_string(),
    ];
    for route in &routes {
        for path in [
            "cgi-bin/token",
            "cgi-bin/stable_token",
            "CGI-BIN/Token",
            "cgi-bin/gettoken",
            "cgi-bin/ticket/getticket",
            "cgi-bin/get_jsapi_ticket",
            "cgi-bin/ticket/get",
            "cgi-bin/component/api_component_token",
            "cgi-bin/component/api_authorizer_token",
            "cgi-bin/component/api_query_auth",
            "cgi-bin/clear_quota",
            "cgi-bin%2Ftoken",
        ] {
            let got = call(
                &env,
                "POST",
                &format!("{route}{path}?grant_type=client_credential"),
                &[],
                b"{}",
            );
            assert_eq!(got.status, 403, "{route}{path}");
            assert_eq!(got.json()["error"], "credential_path", "{route}{path}");
        }
    }
    assert_eq!(all_calls(&env), json!({}), "nothing reached WeChat");
}

#[test]
fn over_limit_bodies_get_413_and_over_limit_answers_502() {
    // Relaying 10 MiB takes a debug build 0.7-1.3 s on two busy cores, close to the harness's
    // 1.5 s WeChat timeout: this test is about sizes, so WeChat gets all the time it needs.
    let env = Env::with(|c| c.wechat.timeout_ms = 15_000);
    // 10 MiB + 1, refused on its Content-Length before a byte of it is read.
    let head = format!(
        "POST /v1/apps/{APPID}/wechat/cgi-bin/media/upload?type=image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        (10 << 20) + 1
    );
    assert_eq!(raw(&env, head.as_bytes()).0, 413);
    // Exactly 10 MiB is read and relayed.
    let file = (10 << 20) - multipart("text/plain", b"").len();
    let body = multipart("text/plain", &vec![b'x'; file]);
    assert_eq!(body.len(), 10 << 20);
    let got = upload(&env, &body);
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.json()["received_bytes"], file);
    // Other routes keep server.max_body_bytes.
    let head =
        "POST /v1/sessions/check HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 70000\r\n\r\n";
    assert_eq!(raw(&env, head.as_bytes()).0, 413);

    let small = Env::with(|c| {
        c.gateway.max_body_bytes = 4096;
        c.gateway.max_inflight_bytes = 4096;
    });
    let got = app_post(
        &small,
        "cgi-bin/message/custom/send",
        json!({"x": "y".repeat(5000)}),
    );
    assert_eq!(got.status, 413);
    small.fail(json!({"path": SEND, "status": 200, "body": "z".repeat(5000)}));
    let got = app_post(&small, "cgi-bin/message/custom/send", json!({}));
    assert_eq!(got.status, 502);
    assert_eq!(got.json()["error"], "upstream_too_large");
    assert_eq!(small.calls(SEND), 1, "the 413 reached nobody");
}

#[test]
fn bodies_in_flight_are_bounded() {
    let env = Env::with(|c| {
        c.gateway.max_body_bytes = 4096;
        c.gateway.max_inflight_bytes = 4096;
    });
    app_token(&env);
    env.fail(json!({"path": SEND, "delay_ms": 1000}));
    std::thread::scope(|s| {
        let first = s.spawn(|| {
            app_post(
                &env,
                "cgi-bin/message/custom/send",
                json!({"a": "x".repeat(3000)}),
            )
        });
        let until = Instant::now() + Duration::from_secs(5);
        while env.calls(SEND) == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let second = app_post(
            &env,
            "cgi-bin/message/custom/send",
            json!({"b": "x".repeat(2000)}),
        );
        assert_eq!(
            second.status,
            503,
            "{}",
            String::from_utf8_lossy(&second.body)
        );
        assert_eq!(second.json()["error"], "busy");
        assert_eq!(first.join().unwrap().status, 200);
    });
    assert_eq!(env.calls(SEND), 1, "the refused call reached nobody");
    let got = app_post(
        &env,
        "cgi-bin/message/custom/send",
        json!({"b": "x".repeat(2000)}),
    );
    assert_eq!(got.status, 200, "the budget is given back");
}

#[test]
fn metrics_labels_stay_bounded() {
    let env = Env::new();
    for n in 0..3 {
        let got = app_post(&env, &format!("cgi-bin/zz-{n}-9f3a/x{n}"), json!({}));
        assert_eq!(got.status, 404, "the fake's own 404, relayed");
    }
    let m = metrics(&env);
    assert!(
        m.contains(r#"wafer_gateway_calls_total{target="app",api="other",errcode="-1"} 3"#),
        "{m}"
    );
    assert!(!m.contains("9f3a"), "{m}");
}

#[test]
fn the_api_key_rule_of_v1() {
    let env = Env::with(|c| c.server.api_key = wafer::secret::Secret::new("k3y"));
    let path = format!("/v1/apps/{APPID}/wechat/cgi-bin/message/custom/send");
    assert_eq!(call(&env, "POST", &path, &[], b"{}").status, 401);
    assert_eq!(
        call(
            &env,
            "POST",
            &path,
            &[("Authorization", "Bearer nope")],
            b"{}"
        )
        .status,
        401
    );
    assert_eq!(
        call(
            &env,
            "POST",
            &path,
            &[("Authorization", "Bearer k3y")],
            b"{}"
        )
        .status,
        200
    );
    assert_eq!(env.calls(SEND), 1);
    // Without a key: loopback Hosts only.
    let open = Env::new();
    let got = call(&open, "POST", &path, &[("Host", "attacker.example")], b"{}");
    assert_eq!(got.status, 403);
    assert_eq!(open.calls(SEND), 0);
}

#[test]
fn a_hung_wechat_holds_up_no_session_check() {
    let env = Env::new();
    app_token(&env);
    let (id, skey, _) = env.login("code-gw-1");
    // Twelve calls (three times the workers) on an API that answers after the upstream timeout.
    env.fail(json!({"path": SEND, "delay_ms": 3000, "times": 12}));
    std::thread::scope(|s| {
        let hung: Vec<_> = (0..12)
            .map(|_| s.spawn(|| app_post(&env, "cgi-bin/message/custom/send", json!({}))))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let (checks, slowest) = env.checks_for(&id, &skey, Duration::from_millis(1200));
        assert!(checks > 10, "{checks} checks");
        assert!(
            slowest < Duration::from_millis(500),
            "slowest check {slowest:?}"
        );
        for h in hung {
            let got = h.join().unwrap();
            assert_eq!(got.status, 502);
            assert_eq!(got.json()["error"], "upstream_unreachable");
        }
    });
}
