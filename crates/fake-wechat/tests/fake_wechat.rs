//! The fake WeChat at its HTTP boundary: every upstream route, every control route, faults,
//! expiry and concurrency, driven with a plain HTTP client against `start("127.0.0.1:0")`.

use std::thread;
use std::time::{Duration, Instant};

use fake_wechat::MockHandle;
use serde_json::{json, Value};

struct Mock {
    handle: MockHandle,
}

/// An answer: HTTP status, Content-Type and body text.
struct Answer {
    status: u16,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> Answer {
    let resp = match result {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let content_type = resp.header("Content-Type").unwrap_or_default().to_owned();
    let text = resp.into_string().expect("body");
    Answer {
        status,
        content_type,
        text,
    }
}

impl Mock {
    fn start() -> Mock {
        Mock {
            handle: fake_wechat::start("127.0.0.1:0").expect("mock starts"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.base_url())
    }

    fn get_raw(&self, path: &str) -> Answer {
        answer(ureq::get(&self.url(path)).call())
    }

    fn post_raw(&self, path: &str, body: &str) -> Answer {
        answer(ureq::post(&self.url(path)).send_string(body))
    }

    /// GET expecting 200 JSON.
    fn get(&self, path: &str) -> Value {
        let a = self.get_raw(path);
        assert_eq!(a.status, 200, "GET {path}: {}", a.text);
        assert_eq!(a.content_type, "application/json; charset=utf-8");
        a.json()
    }

    /// POST JSON expecting 200 JSON.
    fn post(&self, path: &str, body: Value) -> Value {
        let a = answer(ureq::post(&self.url(path)).send_json(body));
        assert_eq!(a.status, 200, "POST {path}: {}", a.text);
        a.json()
    }

    fn fail(&self, spec: Value) {
        assert_eq!(self.post("/__mock__/fail", spec), json!({"ok": true}));
    }

    fn login(&self, appid: &str, code: &str) -> Value {
        self.get(&format!(
            "/sns/jscode2session?appid={appid}&secret=s3cret&js_code={code}&grant_type=authorization_code"
        ))
    }

    fn token(&self, appid: &str) -> String {
        let body = self.get(&format!(
            "/cgi-bin/token?grant_type=client_credential&appid={appid}&secret=s"
        ));
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    fn stable(&self, appid: &str, force: bool) -> Value {
        let body = json!({"grant_type": "client_credential", "appid": appid, "secret": "s", "force_refresh": force});
        self.post("/cgi-bin/stable_token", body)
    }

    fn status(&self, token: &str) -> Value {
        self.get(&format!("/__mock__/token_status?access_token={token}"))
    }

    fn ticket(&self, token: &str) -> Value {
        self.get(&format!(
            "/cgi-bin/ticket/getticket?access_token={token}&type=jsapi"
        ))
    }

    fn calls(&self) -> Value {
        self.get("/__mock__/calls")
    }
}

/// A token_status of a token minted moments ago with the default lifetime (`expires_in` is
/// whole seconds left, rounded down).
fn fresh(status: &Value) -> bool {
    status["valid"] == true && matches!(status["expires_in"].as_i64(), Some(7199..=7200))
}

fn errcode(body: &Value) -> i64 {
    body["errcode"]
        .as_i64()
        .unwrap_or_else(|| panic!("no errcode in {body}"))
}

#[test]
fn jscode2session_logs_any_code_in_deterministically() {
    let m = Mock::start();
    let first = m.login("wx1", "abc");
    let again = m.login("wx1", "abc");
    assert_eq!(first["openid"], again["openid"]);
    assert_eq!(first["openid"].as_str().unwrap().len(), 28);
    assert!(first["openid"].as_str().unwrap().starts_with('o'));
    assert_ne!(
        first["openid"],
        m.login("wx2", "abc")["openid"],
        "openid is per app"
    );
    assert_ne!(
        first["session_key"], again["session_key"],
        "session_key is random per call"
    );
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["session_key", "openid"], "no unionid, no expires_in");
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(first["session_key"].as_str().unwrap())
        .unwrap();
    assert_eq!(key.len(), 16);

    let union = m.login("wx1", "union-1");
    assert!(union["unionid"].as_str().unwrap().starts_with('u'));
    assert_eq!(
        union["unionid"],
        m.login("wx2", "union-1")["unionid"],
        "unionid spans apps"
    );
}

#[test]
fn jscode2session_errors() {
    let m = Mock::start();
    let cases = [
        ("appid=wx1&secret=s&js_code=bad1", 40029),
        ("appid=wx1&secret=s&js_code=used1", 40163),
        ("appid=wx1&secret=s&js_code=busy1", -1),
        ("appid=wx1&secret=s&js_code=risky1", 40226),
        ("appid=wx1&secret=s&js_code=limit1", 45011),
        ("appid=wx1&secret=bad&js_code=c", 40125),
        ("appid=bad&secret=s&js_code=c", 40013),
        ("secret=s&js_code=c", 41002),
        ("appid=&secret=s&js_code=c", 41002),
        ("appid=wx1&js_code=c", 41004),
        ("appid=wx1&secret=s", 41008),
        ("appid=wx1&secret=s&js_code=c&grant_type=password", 40002),
        ("", 41002),
        ("%zz=%&&&=", 41002),
    ];
    for (query, expected) in cases {
        let body = m.get(&format!("/sns/jscode2session?{query}"));
        assert_eq!(errcode(&body), expected, "{query}: {body}");
        assert!(body["errmsg"].is_string());
    }
    assert_eq!(
        m.get("/sns/jscode2session?secret=s&js_code=c"),
        json!({"errcode": 41002, "errmsg": "appid missing"})
    );
}

#[test]
fn session_keys_can_be_pinned_and_looked_up() {
    let m = Mock::start();
    let pinned = "tiihtNczf5v6AKRyjwEUhQ==";
    let ok = m.post(
        "/__mock__/session_key",
        json!({"js_code": "vector", "session_key": pinned}),
    );
    assert_eq!(ok, json!({"ok": true}));
    assert_eq!(
        m.login("wx4f4bc4dec97d474b", "vector")["session_key"],
        pinned
    );

    let handed = m.login("wx1", "plain")["session_key"].clone();
    assert_eq!(
        m.get("/__mock__/session_key?appid=wx1&js_code=plain")["session_key"],
        handed
    );
    assert_eq!(
        m.get("/__mock__/session_key?js_code=plain")["session_key"],
        handed
    );
    assert_eq!(
        m.get_raw("/__mock__/session_key?appid=wx2&js_code=plain")
            .status,
        404
    );
    assert_eq!(m.get_raw("/__mock__/session_key?appid=wx1").status, 400);
    assert_eq!(
        m.post_raw("/__mock__/session_key", "{\"js_code\":\"x\"}")
            .status,
        400
    );
    assert_eq!(m.post_raw("/__mock__/session_key", "nope").status, 400);
}

#[test]
fn access_tokens_supersede_with_a_grace_period() {
    let m = Mock::start();
    let first = m.token("wx1");
    let status = m.status(&first);
    assert_eq!(status["valid"], true);
    assert!(fresh(&status), "{status}");
    let second = m.token("wx1");
    assert_ne!(first, second);
    let old = m.status(&first);
    assert_eq!(old["valid"], true, "the previous token still works");
    assert!(old["expires_in"].as_i64().unwrap() <= 300, "{old}");
    assert!(fresh(&m.status(&second)));
    assert_eq!(
        m.status(&m.token("wx2"))["valid"],
        true,
        "other apps unaffected"
    );
    assert!(
        fresh(&m.status(&second)),
        "other apps' tokens do not supersede"
    );

    let cases = [
        ("appid=wx1&secret=s", 40002),
        ("grant_type=client_credential&secret=s", 41002),
        ("grant_type=client_credential&appid=wx1", 41004),
        ("grant_type=client_credential&appid=wx1&secret=bad", 40125),
        ("grant_type=client_credential&appid=bad&secret=s", 40013),
    ];
    for (query, expected) in cases {
        assert_eq!(
            errcode(&m.get(&format!("/cgi-bin/token?{query}"))),
            expected,
            "{query}"
        );
    }
    let unknown = m.status("nonsense");
    assert_eq!(unknown, json!({"valid": false, "expires_in": 0}));
}

#[test]
fn tokens_and_tickets_really_expire() {
    let m = Mock::start();
    let cfg = m.post("/__mock__/config", json!({"token_lifetime_secs": 1}));
    assert_eq!(cfg, json!({"ok": true, "token_lifetime_secs": 1}));
    let token = m.token("wx1");
    let ticket = m.ticket(&token);
    assert_eq!(ticket["expires_in"], 1);
    let ticket = ticket["ticket"].as_str().unwrap().to_owned();
    assert_eq!(m.status(&ticket)["valid"], true);
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(m.status(&token), json!({"valid": false, "expires_in": 0}));
    assert_eq!(m.status(&ticket)["valid"], false);
    assert_eq!(
        m.ticket(&token),
        json!({"errcode": 42001, "errmsg": "access_token expired"})
    );
    m.post("/__mock__/config", json!({}));
    assert_eq!(
        m.post("/__mock__/config", json!({}))["token_lifetime_secs"],
        1
    );
    assert_eq!(
        m.post_raw("/__mock__/config", r#"{"lifetime":5}"#).status,
        400
    );
    assert_eq!(
        m.post_raw("/__mock__/config", r#"{"token_lifetime_secs":-5}"#)
            .status,
        400
    );
    assert_eq!(m.post_raw("/__mock__/config", "").status, 400);
}

#[test]
fn stable_tokens_are_reused_until_forced() {
    let m = Mock::start();
    let first = m.stable("wx1", false);
    assert_eq!(first["expires_in"], 7200);
    let token = first["access_token"].as_str().unwrap().to_owned();
    assert_eq!(m.stable("wx1", false)["access_token"], token.as_str());
    let ordinary = m.token("wx1");
    assert!(fresh(&m.status(&token)), "/cgi-bin/token does not touch it");
    assert_eq!(m.stable("wx1", false)["access_token"], token.as_str());
    assert_eq!(m.status(&ordinary)["valid"], true);

    let forced = m.stable("wx1", true)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(forced, token);
    assert_eq!(
        m.status(&token)["valid"],
        false,
        "force invalidates at once"
    );
    assert_eq!(errcode(&m.ticket(&token)), 40001);
    assert_eq!(m.ticket(&forced)["errcode"], 0);
    assert_eq!(m.stable("wx1", false)["access_token"], forced.as_str());

    m.post("/__mock__/config", json!({"token_lifetime_secs": 1}));
    let short = m.stable("wx2", false)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    thread::sleep(Duration::from_millis(1100));
    let renewed = m.stable("wx2", false);
    assert_ne!(
        renewed["access_token"],
        short.as_str(),
        "expired stable token is replaced"
    );
    assert_eq!(renewed["expires_in"], 1);

    let cases = [
        ("not json", 47001),
        ("[1,2]", 47001),
        (r#"{"appid":"wx1","secret":"s"}"#, 40002),
        (r#"{"grant_type":"client_credential","secret":"s"}"#, 41002),
        (r#"{"grant_type":"client_credential","appid":"wx1"}"#, 41004),
        (
            r#"{"grant_type":"client_credential","appid":"wx1","secret":"badx"}"#,
            40125,
        ),
    ];
    for (body, expected) in cases {
        let a = m.post_raw("/cgi-bin/stable_token", body);
        assert_eq!(a.status, 200);
        assert_eq!(errcode(&a.json()), expected, "{body}");
    }
}

#[test]
fn jsapi_tickets_validate_the_access_token() {
    let m = Mock::start();
    let token = m.token("wx1");
    let body = m.ticket(&token);
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["errcode", "errmsg", "ticket", "expires_in"]);
    assert_eq!(body["errmsg"], "ok");
    assert_eq!(body["expires_in"], 7200);
    let stable = m.stable("wx1", false);
    let stable = stable["access_token"].as_str().unwrap();
    assert_eq!(
        m.ticket(stable)["errcode"],
        0,
        "stable tokens are MP tokens too"
    );

    assert_eq!(
        m.ticket("forged"),
        json!({"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"})
    );
    assert_eq!(
        errcode(&m.get("/cgi-bin/ticket/getticket?type=jsapi")),
        41001
    );
    assert_eq!(
        errcode(&m.get(&format!("/cgi-bin/ticket/getticket?access_token={token}"))),
        40097
    );
    let wecom = m.get("/cgi-bin/gettoken?corpid=ww1&corpsecret=s")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        errcode(&m.ticket(&wecom)),
        40001,
        "a WeCom token is not an MP token"
    );
}

#[test]
fn wecom_tokens_and_tickets() {
    let m = Mock::start();
    let first = m.get("/cgi-bin/gettoken?corpid=ww1&corpsecret=agent1");
    assert_eq!(first["errcode"], 0);
    assert_eq!(first["errmsg"], "ok");
    assert_eq!(first["expires_in"], 7200);
    let token = first["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        m.get("/cgi-bin/gettoken?corpid=ww1&corpsecret=agent1")["access_token"],
        token.as_str()
    );
    let other = m.get("/cgi-bin/gettoken?corpid=ww1&corpsecret=agent2")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(other, token, "tokens are per (corpid, corpsecret)");

    let corp = m.get(&format!("/cgi-bin/get_jsapi_ticket?access_token={token}"));
    assert_eq!(corp["errcode"], 0);
    assert_eq!(corp["expires_in"], 7200);
    let corp_again = m.get(&format!("/cgi-bin/get_jsapi_ticket?access_token={other}"));
    assert_eq!(
        corp["ticket"], corp_again["ticket"],
        "the corp ticket belongs to the corp"
    );

    let agent = m.get(&format!(
        "/cgi-bin/ticket/get?access_token={token}&type=agent_config"
    ));
    let agent2 = m.get(&format!(
        "/cgi-bin/ticket/get?access_token={other}&type=agent_config"
    ));
    assert_eq!(agent["errcode"], 0);
    assert_ne!(
        agent["ticket"], agent2["ticket"],
        "agent tickets are per application"
    );
    assert_ne!(agent["ticket"], corp["ticket"]);

    let cases = [
        ("/cgi-bin/gettoken?corpid=ww1&corpsecret=bad", 40001),
        ("/cgi-bin/gettoken?corpid=bad&corpsecret=s", 40013),
        ("/cgi-bin/gettoken?corpsecret=s", 41002),
        ("/cgi-bin/gettoken?corpid=ww1", 41004),
        ("/cgi-bin/get_jsapi_ticket?access_token=nope", 40001),
        ("/cgi-bin/get_jsapi_ticket", 41001),
        (
            "/cgi-bin/ticket/get?access_token=nope&type=agent_config",
            40001,
        ),
    ];
    for (path, expected) in cases {
        assert_eq!(errcode(&m.get(path)), expected, "{path}");
    }
    let mp = m.token("wx1");
    assert_eq!(
        errcode(&m.get(&format!("/cgi-bin/get_jsapi_ticket?access_token={mp}"))),
        40001
    );
    assert_eq!(
        errcode(&m.get(&format!(
            "/cgi-bin/ticket/get?access_token={token}&type=jsapi"
        ))),
        40097
    );
}

#[test]
fn component_authorisation_flow() {
    let m = Mock::start();
    let ticket = |t: &str| json!({"component_appid": "wxc", "component_appsecret": "s", "component_verify_ticket": t});
    let cases = [
        (ticket(""), 61006),
        (ticket("invalid-1"), 61006),
        (ticket("expired-1"), 61005),
        (
            json!({"component_appsecret": "s", "component_verify_ticket": "t"}),
            41002,
        ),
        (
            json!({"component_appid": "wxc", "component_verify_ticket": "t"}),
            41004,
        ),
        (
            json!({"component_appid": "wxc", "component_appsecret": "bad", "component_verify_ticket": "t"}),
            40125,
        ),
    ];
    for (body, expected) in cases {
        let answer = m.post("/cgi-bin/component/api_component_token", body.clone());
        assert_eq!(errcode(&answer), expected, "{body}");
    }
    let token = m.post(
        "/cgi-bin/component/api_component_token",
        ticket("ticket@@@1"),
    );
    assert_eq!(token["expires_in"], 7200);
    let ct = token["component_access_token"].as_str().unwrap().to_owned();
    let path = |p: &str| format!("/cgi-bin/component/{p}?component_access_token={ct}");

    let pre = m.post(
        &path("api_create_preauthcode"),
        json!({"component_appid": "wxc"}),
    );
    assert_eq!(pre["expires_in"], 1800);
    let pre = pre["pre_auth_code"].as_str().unwrap().to_owned();
    assert_eq!(
        errcode(&m.post(
            &path("api_create_preauthcode"),
            json!({"component_appid": "wxother"})
        )),
        40013
    );
    assert_eq!(
        errcode(&m.post(&path("api_create_preauthcode"), json!({}))),
        41002
    );
    assert_eq!(
        errcode(&m.post(
            "/cgi-bin/component/api_create_preauthcode?component_access_token=x",
            json!({"component_appid": "wxc"})
        )),
        40001
    );
    assert_eq!(
        errcode(&m.post(
            "/cgi-bin/component/api_create_preauthcode",
            json!({"component_appid": "wxc"})
        )),
        41001
    );

    // The merchant approves in WeChat's page.
    let approve = |pre: Option<&str>| {
        let mut body = json!({"component_appid": "wxc", "authorizer_appid": "wxa"});
        if let Some(pre) = pre {
            body["pre_auth_code"] = json!(pre);
        }
        m.post_raw("/__mock__/component/authorize", &body.to_string())
    };
    let auth = approve(Some(&pre)).json();
    assert_eq!(auth["expires_in"], 3600);
    let code = auth["auth_code"].as_str().unwrap().to_owned();
    assert_eq!(
        approve(Some(&pre)).status,
        400,
        "a pre-auth code is single-use"
    );
    assert_eq!(approve(Some("made-up")).status, 400);
    let spare = approve(None).json()["auth_code"]
        .as_str()
        .unwrap()
        .to_owned();

    let query = |code: &str| {
        m.post(
            &path("api_query_auth"),
            json!({"component_appid": "wxc", "authorization_code": code}),
        )
    };
    let info = query(&code);
    let info = &info["authorization_info"];
    assert_eq!(info["authorizer_appid"], "wxa");
    assert_eq!(info["expires_in"], 7200);
    assert_eq!(
        info["func_info"],
        json!([{"funcscope_category": {"id": 1}}, {"funcscope_category": {"id": 17}}])
    );
    assert_eq!(errcode(&query(&code)), 61010, "auth codes are single-use");
    assert_eq!(errcode(&query("made-up")), 40029);
    assert_eq!(
        errcode(&m.post(&path("api_query_auth"), json!({"component_appid": "wxc"}))),
        41008
    );
    let authorizer_token = info["authorizer_access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        m.ticket(&authorizer_token)["errcode"],
        0,
        "an authoriser token is an MP token"
    );

    let refresh0 = info["authorizer_refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let rotate = |refresh: &str| {
        m.post(
            &path("api_authorizer_token"),
            json!({"component_appid": "wxc", "authorizer_appid": "wxa", "authorizer_refresh_token": refresh}),
        )
    };
    let first = rotate(&refresh0);
    assert_eq!(first["expires_in"], 7200);
    let refresh1 = first["authorizer_refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(refresh1, refresh0, "refresh tokens rotate");
    assert!(first["authorizer_access_token"].is_string());
    assert!(
        rotate(&refresh0)["authorizer_access_token"].is_string(),
        "old refresh tokens still work"
    );
    assert_eq!(errcode(&rotate("made-up")), 61023);
    let wrong_authorizer = m.post(
        &path("api_authorizer_token"),
        json!({"component_appid": "wxc", "authorizer_appid": "wxb", "authorizer_refresh_token": refresh1}),
    );
    assert_eq!(errcode(&wrong_authorizer), 61023);

    let revoked = m.post(
        "/__mock__/component/revoke",
        json!({"component_appid": "wxc", "authorizer_appid": "wxa"}),
    );
    assert_eq!(revoked, json!({"ok": true}));
    assert_eq!(
        rotate(&refresh1),
        json!({"errcode": 61003, "errmsg": "component is not authorized by this account"})
    );
    assert_eq!(errcode(&rotate(&refresh0)), 61003);
    assert_eq!(m.status(&authorizer_token)["valid"], false);
    // Re-authorising after a revocation works again.
    let again = query(&spare);
    let refresh2 = again["authorization_info"]["authorizer_refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(rotate(&refresh2)["authorizer_access_token"].is_string());
    assert_eq!(
        m.status(&refresh2),
        json!({"valid": true, "expires_in": -1})
    );
    assert_eq!(m.post_raw("/__mock__/component/revoke", "{}").status, 400);
    assert_eq!(
        m.post_raw(
            "/__mock__/component/authorize",
            r#"{"component_appid":"wxc"}"#
        )
        .status,
        400
    );
}

#[test]
fn calls_are_counted_per_upstream_path_and_reset_clears_everything() {
    let m = Mock::start();
    assert_eq!(m.calls(), json!({}));
    m.login("wx1", "a");
    m.login("wx1", "bad");
    m.login("wx1", "b");
    let token = m.token("wx1");
    m.stable("wx1", false);
    m.get_raw("/nowhere");
    m.status(&token);
    assert_eq!(
        m.calls(),
        json!({"/cgi-bin/stable_token": 1, "/cgi-bin/token": 1, "/sns/jscode2session": 3})
    );

    m.post("/__mock__/config", json!({"token_lifetime_secs": 60}));
    m.post(
        "/__mock__/session_key",
        json!({"js_code": "p", "session_key": "tiihtNczf5v6AKRyjwEUhQ=="}),
    );
    m.fail(json!({"path": "/cgi-bin/token", "errcode": -1}));
    assert_eq!(m.post("/__mock__/reset", json!({})), json!({"ok": true}));
    assert_eq!(m.calls(), json!({}));
    assert_eq!(m.status(&token)["valid"], false, "tokens forgotten");
    assert_ne!(
        m.login("wx1", "p")["session_key"],
        "tiihtNczf5v6AKRyjwEUhQ==",
        "pins forgotten"
    );
    assert!(
        fresh(&m.status(&m.token("wx1"))),
        "fault and config forgotten"
    );
    assert_eq!(m.get_raw("/__mock__/session_key?js_code=a").status, 404);
}

#[test]
fn unknown_paths_and_methods_are_404() {
    let m = Mock::start();
    for a in [
        m.get_raw("/nowhere"),
        m.get_raw("/__mock__/reset"),
        m.post_raw("/__mock__/calls", "{}"),
    ] {
        assert_eq!(a.status, 404);
        assert_eq!(a.content_type, "application/json; charset=utf-8");
        assert_eq!(
            a.json(),
            json!({"errcode": -1, "errmsg": "mock: unknown path"})
        );
    }
}

#[test]
fn faults_errcode_status_body_and_queueing() {
    let m = Mock::start();
    let login = "/sns/jscode2session?appid=wx1&secret=s&js_code=c";
    m.fail(json!({"path": "/sns/jscode2session", "errcode": -1, "times": 2}));
    m.fail(json!({"path": "/sns/jscode2session?ignored=1", "status": 502}));
    m.fail(json!({"path": "/sns/jscode2session", "status": 503, "body": "{\"oops\":1}"}));
    m.fail(json!({"path": "/sns/jscode2session", "body": "<<garbage"}));
    m.fail(json!({"path": "/sns/jscode2session", "body": {"errcode": 0}}));

    for _ in 0..2 {
        assert_eq!(m.get(login), json!({"errcode": -1, "errmsg": "mock fault"}));
    }
    let gateway = m.get_raw(login);
    assert_eq!(gateway.status, 502);
    assert_eq!(gateway.text, "<html><body>502 Bad Gateway</body></html>");
    assert!(gateway.content_type.starts_with("text/html"));
    let custom = m.get_raw(login);
    assert_eq!((custom.status, custom.text.as_str()), (503, "{\"oops\":1}"));
    let garbage = m.get_raw(login);
    assert_eq!((garbage.status, garbage.text.as_str()), (200, "<<garbage"));
    assert_eq!(m.get_raw(login).text, "{\"errcode\":0}");
    assert!(m.get(login)["openid"].is_string(), "faults used up");
    assert_eq!(m.calls()["/sns/jscode2session"], 7, "faulted calls count");
    assert!(
        m.token("wx1").starts_with("mock_at_"),
        "faults are per path"
    );

    let rejected = [
        json!({"errcode": 1}),
        json!({"path": "/nowhere", "errcode": 1}),
        json!({"path": "/cgi-bin/token", "status": 42}),
        json!({"path": "/cgi-bin/token", "times": 0}),
        json!({"path": "/cgi-bin/token", "delay_ms": "soon"}),
        json!({"path": "/cgi-bin/token", "errorcode": 1}),
    ];
    for spec in rejected {
        let a = m.post_raw("/__mock__/fail", &spec.to_string());
        assert_eq!(a.status, 400, "{spec}");
        assert_eq!(errcode(&a.json()), 40097);
    }
    assert_eq!(m.post_raw("/__mock__/fail", "{").status, 400);
}

#[test]
fn delays_do_not_block_other_requests() {
    let m = Mock::start();
    m.fail(json!({"path": "/cgi-bin/token", "delay_ms": 1500, "times": 12}));
    m.fail(json!({"path": "/cgi-bin/gettoken", "delay_ms": 300, "errcode": 45009}));
    let base = m.handle.base_url();
    let started = Instant::now();
    // More delayed requests than there are workers.
    let slow: Vec<_> = (0..12)
        .map(|_| {
            let base = base.clone();
            thread::spawn(move || {
                answer(
                    ureq::get(&format!(
                        "{base}/cgi-bin/token?grant_type=client_credential&appid=wx1&secret=s"
                    ))
                    .call(),
                )
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(100));
    for n in 0..20 {
        assert!(m.login("wx1", &format!("fast{n}"))["openid"].is_string());
    }
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "fast calls waited: {:?}",
        started.elapsed()
    );
    for handle in slow {
        let a = handle.join().unwrap();
        assert_eq!(a.status, 200);
        assert!(
            a.json()["access_token"].is_string(),
            "delay-only answers normally"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let before = Instant::now();
    assert_eq!(
        errcode(&m.get("/cgi-bin/gettoken?corpid=ww1&corpsecret=s")),
        45009
    );
    assert!(before.elapsed() >= Duration::from_millis(300));
}

#[test]
fn many_concurrent_logins() {
    let m = Mock::start();
    let base = m.handle.base_url();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let base = base.clone();
            thread::spawn(move || {
                let agent = ureq::agent();
                for n in 0..100 {
                    let url =
                        format!("{base}/sns/jscode2session?appid=wx1&secret=s&js_code=t{t}n{n}");
                    let body: Value = agent.get(&url).call().unwrap().into_json().unwrap();
                    assert!(body["openid"].is_string());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(m.calls()["/sns/jscode2session"], 1600);
}

#[test]
fn shutdown_stops_serving_and_base_url_is_loopback() {
    let handle = fake_wechat::start("0.0.0.0:0").unwrap();
    let base = handle.base_url();
    assert_eq!(base, format!("http://127.0.0.1:{}", handle.addr.port()));
    assert!(ureq::get(&format!("{base}/__mock__/calls")).call().is_ok());
    let started = Instant::now();
    handle.shutdown();
    assert!(started.elapsed() < Duration::from_secs(2));
    let after = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build()
        .get(&format!("{base}/__mock__/calls"))
        .call();
    assert!(after.is_err(), "still serving after shutdown");
}

#[test]
fn token_checked_apis_echo_what_they_received() {
    let m = Mock::start();
    let token = m.token("wx1");
    let path = format!("/cgi-bin/message/custom/send?access_token={token}&x=%E4%BD%A0");
    let a = answer(
        ureq::post(&m.url(&path))
            .set("Content-Type", "application/json")
            .send_string(r#"{"touser":"o1","msgtype":"text"}"#),
    );
    assert_eq!(a.status, 200);
    assert_eq!(
        a.json(),
        json!({
            "errcode": 0,
            "errmsg": "ok",
            "owner": "wx1",
            "query": format!("access_token={token}&x=%E4%BD%A0"),
            "content_type": "application/json",
            "body": r#"{"touser":"o1","msgtype":"text"}"#,
        })
    );
    // Unknown, missing and revoked tokens are WeChat's 40001 / 41001.
    let send = |t: &str| {
        m.post(
            &format!("/cgi-bin/message/custom/send?access_token={t}"),
            json!({}),
        )
    };
    assert_eq!(errcode(&send("nope")), 40001);
    assert_eq!(
        errcode(&m.post("/cgi-bin/message/custom/send", json!({}))),
        41001
    );
    assert_eq!(
        m.post("/__mock__/revoke_token", json!({"access_token": token})),
        json!({"ok": true})
    );
    assert_eq!(errcode(&send(&token)), 40001);
    assert_eq!(m.status(&token)["valid"], false);
    assert_eq!(
        m.post_raw("/__mock__/revoke_token", r#"{"access_token":"nope"}"#)
            .status,
        400
    );
    // Expired: 42001.
    m.post("/__mock__/config", json!({"token_lifetime_secs": 1}));
    let short = m.token("wx2");
    assert_eq!(send(&short)["owner"], "wx2");
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(errcode(&send(&short)), 42001);
    let calls = m.calls();
    assert_eq!(calls["/cgi-bin/message/custom/send"], 6);
}

#[test]
fn wecom_send_answers_40014_for_an_unknown_token() {
    let m = Mock::start();
    let token = m.get("/cgi-bin/gettoken?corpid=ww1&corpsecret=agent1")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let sent = m.post(
        &format!("/cgi-bin/message/send?access_token={token}"),
        json!({"touser": "u1"}),
    );
    assert_eq!(sent["errcode"], 0);
    assert_eq!(sent["owner"], "ww1", "the corp, never the secret");
    assert_eq!(sent["body"], r#"{"touser":"u1"}"#);
    let mp = m.token("wx1");
    for t in ["nope", mp.as_str()] {
        let body = m.post(
            &format!("/cgi-bin/message/send?access_token={t}"),
            json!({}),
        );
        assert_eq!(errcode(&body), 40014, "{t}");
    }
}

#[test]
fn wxacode_is_png_bytes_and_its_errors_are_json() {
    let m = Mock::start();
    let token = m.token("wx1");
    let url = m.url(&format!("/wxa/getwxacodeunlimit?access_token={token}"));
    let resp = ureq::post(&url)
        .send_json(json!({"scene": "a=1"}))
        .expect("200");
    assert_eq!(resp.header("Content-Type"), Some("image/png"));
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).unwrap();
    assert_eq!(bytes, fake_wechat::wxacode_png("a=1"));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert_eq!(bytes.len(), 8 + 3 + 256);

    let a = answer(ureq::post(&url).send_json(json!({})));
    assert_eq!(a.content_type, "application/json; charset=utf-8");
    assert_eq!(errcode(&a.json()), 40169);
    let a = answer(
        ureq::post(&m.url("/wxa/getwxacodeunlimit?access_token=nope"))
            .send_json(json!({"scene": "a"})),
    );
    assert_eq!(errcode(&a.json()), 40001);
}

/// A `multipart/form-data` body with one file part named `media`.
fn multipart(boundary: &str, filename: &str, content_type: &str, data: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"{filename}\"\r\n\
         Content-Type: {content_type}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

#[test]
fn media_upload_reports_the_file_it_received() {
    use sha1::Digest;
    let m = Mock::start();
    let token = m.token("wx1");
    // 2 MiB of every byte value, with CRLFs and dashes that could pass for a boundary.
    let data: Vec<u8> = (0..2 << 20).map(|i| (i % 251) as u8).collect();
    let boundary = "----wafer-test-boundary";
    let body = multipart(boundary, "cat.png", "image/png", &data);
    let upload = |query: &str, body: &[u8]| {
        answer(
            ureq::post(&m.url(&format!("/cgi-bin/media/upload?{query}")))
                .set(
                    "Content-Type",
                    &format!("multipart/form-data; boundary={boundary}"),
                )
                .send_bytes(body),
        )
    };
    let got = upload(&format!("access_token={token}&type=image"), &body).json();
    assert_eq!(got["type"], "image");
    assert!(got["media_id"].as_str().unwrap().starts_with("mock_media_"));
    assert_eq!(got["received_bytes"], data.len());
    assert_eq!(got["content_type"], "image/png");
    assert_eq!(got["filename"], "cat.png");
    let sha1 = sha1::Sha1::digest(&data);
    let hex: String = sha1.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got["sha1"], hex);

    let cases = [
        (format!("access_token={token}"), body.clone(), 40004),
        (
            format!("access_token={token}&type=doc"),
            body.clone(),
            40004,
        ),
        (
            format!("access_token={token}&type=image"),
            b"no parts".to_vec(),
            41005,
        ),
        (
            "access_token=nope&type=image".to_string(),
            body.clone(),
            40001,
        ),
    ];
    for (query, body, expected) in cases {
        assert_eq!(errcode(&upload(&query, &body).json()), expected, "{query}");
    }
}

#[test]
fn authorizer_list_names_the_live_authorisations() {
    let m = Mock::start();
    let token = m.post(
        "/cgi-bin/component/api_component_token",
        json!({"component_appid": "wxc", "component_appsecret": "s", "component_verify_ticket": "t"}),
    );
    let ct = token["component_access_token"].as_str().unwrap().to_owned();
    let list_path =
        format!("/cgi-bin/component/api_get_authorizer_list?component_access_token={ct}");
    let list = || {
        m.post(
            &list_path,
            json!({"component_appid": "wxc", "offset": 0, "count": 100}),
        )
    };
    assert_eq!(list(), json!({"total_count": 0, "list": []}));
    for authorizer in ["wxb", "wxa"] {
        let code = m.post(
            "/__mock__/component/authorize",
            json!({"component_appid": "wxc", "authorizer_appid": authorizer}),
        )["auth_code"]
            .as_str()
            .unwrap()
            .to_owned();
        let auth = m.post(
            &format!("/cgi-bin/component/api_query_auth?component_access_token={ct}"),
            json!({"component_appid": "wxc", "authorization_code": code}),
        );
        assert_eq!(auth["authorization_info"]["authorizer_appid"], authorizer);
    }
    assert_eq!(
        list(),
        json!({"total_count": 2, "list": [{"authorizer_appid": "wxa"}, {"authorizer_appid": "wxb"}]})
    );
    m.post(
        "/__mock__/component/revoke",
        json!({"component_appid": "wxc", "authorizer_appid": "wxa"}),
    );
    assert_eq!(list()["total_count"], 1);
    let other = m.post(&list_path, json!({"component_appid": "wxother"}));
    assert_eq!(errcode(&other), 40013);
}

#[test]
fn phone_numbers_are_derived_from_the_code_and_watermarked_for_the_token() {
    let m = Mock::start();
    let token = m.token("wx1");
    let phone = |t: &str, code: &str| {
        m.post(
            &format!("/wxa/business/getuserphonenumber?access_token={t}"),
            json!({ "code": code }),
        )
    };
    let number = fake_wechat::phone_number_for("p1");
    assert_eq!(number.len(), 11);
    let a = phone(&token, "p1");
    assert_eq!(a["errcode"], 0, "{a}");
    assert_eq!(a["phone_info"]["purePhoneNumber"], number.as_str());
    assert_eq!(a["phone_info"]["phoneNumber"], number.as_str());
    assert_eq!(a["phone_info"]["countryCode"], "86");
    assert_eq!(a["phone_info"]["watermark"]["appid"], "wx1");
    assert_eq!(phone(&token, "p1")["phone_info"], a["phone_info"].clone());
    assert_ne!(fake_wechat::phone_number_for("p2"), number);
    assert_eq!(errcode(&phone(&token, "bad-1")), 40029);
    assert_eq!(
        phone(&token, "other-1")["phone_info"]["watermark"]["appid"],
        fake_wechat::FOREIGN_WATERMARK_APPID
    );
    assert_eq!(errcode(&phone("nope", "p1")), 40001);
}
