//! The Open Platform component at the HTTP boundary: tickets pushed by the fake WeChat, the
//! component token, the authorisation redirect and callback, authoriser tokens refreshed with a
//! rotated refresh token, revocation, restarts, and recovery after 61005.

use crate::harness::*;
use serde_json::{json, Value};
use wafer::config::ComponentDecl;
use wafer::secret::Secret;

pub const COMPONENT: &str = "wxcomponent00001";
pub const CTOKEN: &str = "component-token";
pub const CKEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const AUTHORIZER: &str = "wxauthorizer0001";

/// A server with the test component, reachable (as far as the links it hands out say) at
/// [`PUBLIC_URL`].
pub fn component_env() -> Env {
    Env::with(component_config)
}

/// The test component declared, with the public URL its pages need.
pub fn component_config(c: &mut wafer::config::Config) {
    c.server.public_url = PUBLIC_URL.into();
    c.components = vec![component()];
}

/// The test component, as declared.
fn component() -> ComponentDecl {
    ComponentDecl {
        appid: COMPONENT.into(),
        secret: Secret::new("component-secret"),
        token: Secret::new(CTOKEN),
        aes_key: Secret::new(CKEY),
        prev_aes_key: None,
        redirect_uri: None,
        forward_url: None,
    }
}

const PUBLIC_URL: &str = "https://wafer.example.com";

/// A URL under [`PUBLIC_URL`] as the test server's own.
fn local(env: &Env, url: &str) -> String {
    env.url(
        url.strip_prefix(PUBLIC_URL)
            .unwrap_or_else(|| panic!("{url}")),
    )
}

fn events_url(env: &Env) -> String {
    env.url(&format!("/wechat/component/{COMPONENT}/events"))
}

/// Push a fresh (or the given) verify ticket; returns the server's (status, body).
pub fn push_ticket(env: &Env, ticket: Option<&str>) -> (i64, String) {
    push_ticket_to(env, &events_url(env), ticket)
}

/// As [`push_ticket`], to the events URL `url` (another instance's).
pub fn push_ticket_to(env: &Env, url: &str, ticket: Option<&str>) -> (i64, String) {
    let mut body =
        json!({"url": url, "component_appid": COMPONENT, "token": CTOKEN, "aes_key": CKEY});
    if let Some(t) = ticket {
        body["ticket"] = json!(t);
    }
    let r = env.mock_post("/__mock__/component/push_ticket", body);
    (
        r["status"].as_i64().unwrap(),
        r["body"].as_str().unwrap().to_string(),
    )
}

/// Push an encrypted authorisation event with these inner fields.
pub fn push_event(env: &Env, info_type: &str, extra: &str) -> (i64, String) {
    let xml = format!(
        "<xml><AppId><![CDATA[{COMPONENT}]]></AppId><CreateTime>{}</CreateTime>\
         <InfoType><![CDATA[{info_type}]]></InfoType>{extra}</xml>",
        wafer::ids::now()
    );
    let r = env.mock_post(
        "/__mock__/push",
        json!({"url": events_url(env), "token": CTOKEN, "aes_key": CKEY,
               "receive_id": COMPONENT, "kind": "component", "xml": xml}),
    );
    (
        r["status"].as_i64().unwrap(),
        r["body"].as_str().unwrap().to_string(),
    )
}

pub fn component_token(env: &Env) -> (u16, Value) {
    env.v1(
        "GET",
        &format!("/v1/components/{COMPONENT}/access_token"),
        None,
        None,
    )
}

pub fn authorizer_token(env: &Env, authorizer: &str) -> (u16, Value) {
    env.v1(
        "GET",
        &format!("/v1/components/{COMPONENT}/authorizers/{authorizer}/access_token"),
        None,
        None,
    )
}

fn refresh_token(env: &Env, authorizer: &str) -> String {
    env.value(&format!(
        "SELECT refresh_token FROM authorizers
         WHERE component_appid = '{COMPONENT}' AND authorizer_appid = '{authorizer}'"
    ))
}

/// The authorisation page at `url`: (status, the WeChat link on it, or the page itself when
/// it carries none).
fn authorize_link(url: &str) -> (u16, String) {
    let (s, _, page) = get_page(url, &[]);
    match s {
        200 => (s, link_in(&page)),
        _ => (s, page),
    }
}

fn query_value(url: &str, key: &str) -> String {
    let q = url.split_once('?').unwrap().1;
    let q = q.split('#').next().unwrap();
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("{key} not in {url}"))
}

#[test]
fn a_full_component_life_survives_restarts() {
    let mut env = component_env();

    // No ticket yet: a clear refusal, and nothing asked of WeChat.
    let (s, v) = component_token(&env);
    assert_eq!((s, v["error"].as_str()), (429, Some("refused")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("ticket"), "{v}");
    assert_eq!(env.calls("/cgi-bin/component/api_component_token"), 0);

    // WeChat pushes the ticket; the component token follows from it.
    assert_eq!(push_ticket(&env, None), (200, "success".into()));
    let (s, ct) = component_token(&env);
    assert_eq!(s, 200, "{ct}");
    assert!(ct["access_token"].as_str().unwrap().starts_with("mock_ct_"));

    // The ticket and the token survive a restart: no new upstream call.
    env.restart();
    let (s, again) = component_token(&env);
    assert_eq!((s, &again["access_token"]), (200, &ct["access_token"]));
    assert_eq!(env.calls("/cgi-bin/component/api_component_token"), 1);

    // The authorisation page links to WeChat with a pre-auth code and our own callback.
    let (s, location) = authorize_link(&env.url(&format!(
        "/wechat/component/{COMPONENT}/authorize?auth_type=3"
    )));
    assert_eq!(s, 200, "{location}");
    assert!(
        location.starts_with("https://mp.weixin.qq.com/cgi-bin/componentloginpage?"),
        "{location}"
    );
    assert_eq!(query_value(&location, "component_appid"), COMPONENT);
    assert_eq!(query_value(&location, "auth_type"), "3");
    let redirect = query_value(&location, "redirect_uri");
    assert_eq!(
        redirect,
        format!("{PUBLIC_URL}/wechat/component/{COMPONENT}/callback")
    );
    let redirect = local(&env, &redirect);
    let (_, mobile) = authorize_link(&env.url(&format!(
        "/wechat/component/{COMPONENT}/authorize?mobile=1&biz_appid={AUTHORIZER}"
    )));
    assert!(
        mobile.starts_with(
            "https://open.weixin.qq.com/wxaopen/safe/bindcomponent?action=bindcomponent&no_scan=1&"
        ) && mobile.ends_with("#wechat_redirect")
            && query_value(&mobile, "biz_appid") == AUTHORIZER,
        "{mobile}"
    );

    // The merchant authorises on WeChat's page (the fake WeChat spends the pre-auth code) and
    // is sent back to the callback with an auth code.
    let pre_auth_code = query_value(&location, "pre_auth_code");
    let auth = env.mock_post(
        "/__mock__/component/authorize",
        json!({"component_appid": COMPONENT, "authorizer_appid": AUTHORIZER, "pre_auth_code": pre_auth_code}),
    );
    let code = auth["auth_code"].as_str().unwrap();
    let (s, page) = env.request(
        "GET",
        &format!("{redirect}?auth_code={code}&expires_in=3600"),
        &[],
        None,
    );
    assert_eq!(s, 200, "{page}");
    assert!(page.contains(AUTHORIZER), "{page}");

    // The same code also arrives as an `authorized` event: acknowledged, nothing broken.
    let (s, body) = push_event(
        &env,
        "authorized",
        &format!("<AuthorizerAppid>{AUTHORIZER}</AuthorizerAppid><AuthorizationCode>{code}</AuthorizationCode>"),
    );
    assert_eq!((s, body.as_str()), (200, "success"));

    let (s, list) = env.v1(
        "GET",
        &format!("/v1/components/{COMPONENT}/authorizers"),
        None,
        None,
    );
    assert_eq!(s, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["authorizer_appid"], AUTHORIZER);
    assert!(list[0]["authorized_at"].as_i64().unwrap() > 0);
    assert!(list[0]["func_info"].is_array());

    // The authoriser token from query_auth was seeded: served without another call.
    let (s, at) = authorizer_token(&env, AUTHORIZER);
    assert_eq!(s, 200, "{at}");
    assert_eq!(env.calls("/cgi-bin/component/api_authorizer_token"), 0);
    let first = at["access_token"].as_str().unwrap().to_string();
    let first_refresh = refresh_token(&env, AUTHORIZER);

    // Restart in the middle: the same token, still no call.
    env.restart();
    let (s, at) = authorizer_token(&env, AUTHORIZER);
    assert_eq!(
        (s, at["access_token"].as_str()),
        (200, Some(first.as_str()))
    );
    assert_eq!(env.calls("/cgi-bin/component/api_authorizer_token"), 0);

    // Expire it (move its clock) and restart: it is refreshed with the stored refresh token,
    // and the rotated refresh token is stored.
    let key = format!("component/{COMPONENT}/authorizer/{AUTHORIZER}/access_token");
    env.exec(&format!(
        "UPDATE credentials SET expires_at = {} WHERE `key` = '{key}'",
        wafer::ids::now() - 1
    ));
    env.restart();
    let (s, at) = authorizer_token(&env, AUTHORIZER);
    assert_eq!(s, 200, "{at}");
    let second = at["access_token"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    assert_eq!(env.calls("/cgi-bin/component/api_authorizer_token"), 1);
    let rotated = refresh_token(&env, AUTHORIZER);
    assert_ne!(
        rotated, first_refresh,
        "the rotated refresh token is stored"
    );
    assert!(
        env.mock_get(&format!("/__mock__/token_status?access_token={second}"))["valid"] == true
    );

    // The merchant revokes: WeChat says `unauthorized`; the token is gone and not refetched.
    env.mock_post(
        "/__mock__/component/revoke",
        json!({"component_appid": COMPONENT, "authorizer_appid": AUTHORIZER}),
    );
    let (s, body) = push_event(
        &env,
        "unauthorized",
        &format!("<AuthorizerAppid>{AUTHORIZER}</AuthorizerAppid>"),
    );
    assert_eq!((s, body.as_str()), (200, "success"));
    let (s, v) = authorizer_token(&env, AUTHORIZER);
    assert_eq!(s, 404, "{v}");
    let (_, list) = env.v1(
        "GET",
        &format!("/v1/components/{COMPONENT}/authorizers"),
        None,
        None,
    );
    assert_eq!(list, json!([]));
    let left =
        env.scalar("SELECT count(*) FROM credentials WHERE `key` LIKE 'component/%/authorizer/%'");
    assert_eq!(left, 0);
    assert_eq!(env.calls("/cgi-bin/component/api_authorizer_token"), 1);
    env.restart();
    assert_eq!(authorizer_token(&env, AUTHORIZER).0, 404);
}

#[test]
fn an_authorized_event_alone_stores_the_authoriser() {
    let env = component_env();
    push_ticket(&env, None);
    let auth = env.mock_post(
        "/__mock__/component/authorize",
        json!({"component_appid": COMPONENT, "authorizer_appid": "wxviaevent000001"}),
    );
    let code = auth["auth_code"].as_str().unwrap();
    let (s, body) = push_event(
        &env,
        "authorized",
        &format!("<AuthorizerAppid>wxviaevent000001</AuthorizerAppid><AuthorizationCode>{code}</AuthorizationCode><PreAuthCode>x</PreAuthCode>"),
    );
    assert_eq!((s, body.as_str()), (200, "success"));
    let (s, v) = authorizer_token(&env, "wxviaevent000001");
    assert_eq!(s, 200, "{v}");
    assert_eq!(env.calls("/cgi-bin/component/api_query_auth"), 1);
    // A code WeChat refuses for an unknown authoriser is worth a retry from WeChat.
    let (s, _) = push_event(
        &env,
        "authorized",
        "<AuthorizerAppid>wxnobody00000001</AuthorizerAppid><AuthorizationCode>queryauthcode@@@nope</AuthorizationCode>",
    );
    assert_eq!(s, 503);
}

#[test]
fn a_new_ticket_recovers_from_61005() {
    let env = component_env();
    assert_eq!(
        push_ticket(&env, Some("expired-ticket")),
        (200, "success".into())
    );
    let (s, v) = component_token(&env);
    assert_eq!((s, v["errcode"].as_i64()), (502, Some(61005)), "{v}");
    // The callback routes say so in words rather than failing obscurely.
    let (s, _) = authorize_link(&env.url(&format!("/wechat/component/{COMPONENT}/authorize")));
    assert_eq!(s, 502);
    push_ticket(&env, None);
    let (s, v) = component_token(&env);
    assert_eq!(s, 200, "{v}");
    let (s, _) = authorize_link(&env.url(&format!("/wechat/component/{COMPONENT}/authorize")));
    assert_eq!(s, 200);
}

#[test]
fn a_configured_redirect_uri_is_used_and_unknown_components_are_404() {
    let env = Env::with(|c| {
        c.components = vec![ComponentDecl {
            appid: COMPONENT.into(),
            secret: Secret::new("component-secret"),
            token: Secret::new(CTOKEN),
            aes_key: Secret::new(CKEY),
            prev_aes_key: None,
            redirect_uri: Some("https://platform.example/wx/done".into()),
            forward_url: None,
        }]
    });
    push_ticket(&env, None);
    let (s, location) =
        authorize_link(&env.url(&format!("/wechat/component/{COMPONENT}/authorize")));
    assert_eq!(s, 200, "{location}");
    assert_eq!(
        query_value(&location, "redirect_uri"),
        "https://platform.example/wx/done"
    );
    for path in [
        "/v1/components/wxnosuchcomponent/access_token".to_string(),
        "/v1/components/wxnosuchcomponent/authorizers".to_string(),
        format!("/v1/components/{COMPONENT}/authorizers/wxnobody/access_token"),
    ] {
        assert_eq!(env.v1("GET", &path, None, None).0, 404, "{path}");
    }
    assert_eq!(
        authorize_link(&env.url("/wechat/component/wxnosuchcomponent/authorize")).0,
        404
    );
}

/// Authorise `authorizer` through the browser flow; returns the callback page's status.
pub fn authorise(env: &Env, authorizer: &str) -> u16 {
    let (s, location) =
        authorize_link(&env.url(&format!("/wechat/component/{COMPONENT}/authorize")));
    assert_eq!(s, 200, "{location}");
    let auth = env.mock_post(
        "/__mock__/component/authorize",
        json!({"component_appid": COMPONENT, "authorizer_appid": authorizer,
               "pre_auth_code": query_value(&location, "pre_auth_code")}),
    );
    let code = auth["auth_code"].as_str().unwrap();
    let redirect = local(env, &query_value(&location, "redirect_uri"));
    env.request(
        "GET",
        &format!("{redirect}?auth_code={code}&expires_in=3600"),
        &[],
        None,
    )
    .0
}

#[test]
fn busy_dependent_steps_are_retried() {
    let env = component_env();
    push_ticket(&env, None);
    env.fail(
        json!({"path": "/cgi-bin/component/api_create_preauthcode", "errcode": -1, "times": 2}),
    );
    env.fail(json!({"path": "/cgi-bin/component/api_query_auth", "errcode": -1, "times": 1}));
    assert_eq!(authorise(&env, AUTHORIZER), 200);
    assert_eq!(env.calls("/cgi-bin/component/api_create_preauthcode"), 3);
    assert_eq!(env.calls("/cgi-bin/component/api_query_auth"), 2);
    assert_eq!(authorizer_token(&env, AUTHORIZER).0, 200);
}

#[test]
fn authoriser_tokens_are_renewed_ahead_of_expiry_with_a_rotated_refresh_token() {
    let env = component_env();
    env.mock_post("/__mock__/config", json!({"token_lifetime_secs": 6}));
    push_ticket(&env, None);
    assert_eq!(authorise(&env, AUTHORIZER), 200);
    let first_refresh = refresh_token(&env, AUTHORIZER);
    let (_, at) = authorizer_token(&env, AUTHORIZER);
    let first = at["access_token"].as_str().unwrap().to_string();
    // Six-second tokens are renewed in the background about two seconds before they expire.
    let started = std::time::Instant::now();
    while env.calls("/cgi-bin/component/api_authorizer_token") == 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "never renewed"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (s, at) = authorizer_token(&env, AUTHORIZER);
    assert_eq!(s, 200, "{at}");
    let second = at["access_token"].as_str().unwrap();
    assert_ne!(second, first);
    assert!(
        env.mock_get(&format!("/__mock__/token_status?access_token={second}"))["valid"] == true
    );
    assert_ne!(refresh_token(&env, AUTHORIZER), first_refresh);
}

#[test]
fn component_add_and_list_never_print_secrets() {
    use crate::cli::{run, wafer};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let db = db.to_str().unwrap();
    let add = |key: &str| {
        run(wafer().args([
            "component",
            "add",
            "--appid",
            COMPONENT,
            "--secret",
            "very-secret-value",
            "--token",
            "very-secret-token",
            "--aes-key",
            key,
            "--redirect-uri",
            "https://platform.example/cb",
            "--forward-url",
            "http://127.0.0.1:9/component-events",
            "--db",
            db,
        ]))
    };
    let (ok, _, err) = add("too-short");
    assert!(!ok && err.contains("--aes-key"), "{err}");
    let (ok, out, err) = add(CKEY);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("/wechat/component/{COMPONENT}/events")),
        "{out}"
    );
    let (ok, out, err) = run(wafer().args(["component", "list", "--db", db]));
    assert!(ok, "{err}");
    assert!(out.contains(COMPONENT) && out.contains("none yet"), "{out}");
    assert!(out.contains("https://platform.example/cb"), "{out}");
    for secret in ["very-secret-value", "very-secret-token", CKEY] {
        assert!(!out.contains(secret), "{out}");
    }
    let forward: String = rusqlite::Connection::open(db)
        .unwrap()
        .query_row("SELECT forward_url FROM components", [], |r| r.get(0))
        .unwrap();
    assert_eq!(forward, "http://127.0.0.1:9/component-events");
}

#[test]
fn a_rotated_component_key_keeps_the_previous_one_and_a_new_secret_drops_the_token() {
    let mut env = component_env();
    push_ticket(&env, None);
    let (_, first) = component_token(&env);
    const NEW_KEY: &str = "GFEDCBA9876543210zyxwvutsrqponmlkjihgfedcba";
    env.config.components[0].aes_key = Secret::new(NEW_KEY);
    env.config.components[0].secret = Secret::new("rotated-secret");
    env.restart();
    // Tickets encrypted with either key are accepted while WeChat switches over.
    for key in [CKEY, NEW_KEY] {
        let r = env.mock_post(
            "/__mock__/component/push_ticket",
            json!({"url": events_url(&env), "component_appid": COMPONENT, "token": CTOKEN, "aes_key": key}),
        );
        assert_eq!(r["body"], "success", "{key}");
    }
    let (s, second) = component_token(&env);
    assert_eq!(s, 200, "{second}");
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(env.calls("/cgi-bin/component/api_component_token"), 2);
}

/// A component event built in the test (so it can be replayed byte for byte): (path, body).
fn sealed_event(info_type: &str, extra: &str, create_time: i64, nonce: &str) -> (String, String) {
    let xml = format!(
        "<xml><AppId><![CDATA[{COMPONENT}]]></AppId><CreateTime>{create_time}</CreateTime>\
         <InfoType><![CDATA[{info_type}]]></InfoType>{extra}</xml>"
    );
    crate::callbacks::sealed_push(
        &format!("/wechat/component/{COMPONENT}/events"),
        (CTOKEN, CKEY, COMPONENT),
        "AppId",
        &xml,
        wafer::ids::now(),
        nonce,
    )
}

fn live(env: &Env, authorizer: &str) -> bool {
    authorizer_token(env, authorizer).0 == 200
}

#[test]
fn a_replayed_or_older_unauthorized_does_not_revoke_a_newer_authorisation() {
    let mut env = component_env();
    push_ticket(&env, None);
    assert_eq!(authorise(&env, AUTHORIZER), 200);
    let who = format!("<AuthorizerAppid>{AUTHORIZER}</AuthorizerAppid>");
    let post = |env: &Env, (path, body): &(String, String)| {
        env.request("POST", &env.url(path), &[], Some(body.as_bytes()))
    };

    // The merchant revokes; the push is captured on the way.
    let captured = sealed_event("unauthorized", &who, wafer::ids::now(), "cap1");
    assert_eq!(post(&env, &captured), (200, "success".into()));
    assert!(!live(&env, AUTHORIZER));
    // The merchant authorises again; the captured push is replayed (also after a restart).
    assert_eq!(authorise(&env, AUTHORIZER), 200);
    assert_eq!(post(&env, &captured), (200, "success".into()));
    assert!(
        live(&env, AUTHORIZER),
        "a replayed unauthorized revoked the new authorisation"
    );
    env.restart();
    assert_eq!(post(&env, &captured), (200, "success".into()));
    assert!(live(&env, AUTHORIZER), "replayed after a restart");

    // An `unauthorized` created before the latest authorisation (a late delivery) changes
    // nothing; one of the same second is applied.
    // (The authorisation is moved a minute back, so that these events' CreateTime differs from
    // the captured one's: WeChat's retries of one event share it, and are deduplicated by it.)
    let authorised_at = wafer::ids::now() - 60;
    env.exec(&format!(
        "UPDATE authorizers SET authorized_at = {authorised_at} WHERE authorizer_appid = '{AUTHORIZER}'"
    ));
    let older = sealed_event("unauthorized", &who, authorised_at - 1, "old1");
    assert_eq!(post(&env, &older), (200, "success".into()));
    assert!(live(&env, AUTHORIZER), "an older unauthorized was applied");
    let same = sealed_event("unauthorized", &who, authorised_at, "same1");
    assert_eq!(post(&env, &same), (200, "success".into()));
    assert!(
        !live(&env, AUTHORIZER),
        "an unauthorized of the same second is applied"
    );

    // A ticket older than the stored one does not replace it.
    let (_, _) = push_ticket(&env, Some("ticket@@@newest"));
    let stale = sealed_event(
        "component_verify_ticket",
        "<ComponentVerifyTicket>ticket@@@stale</ComponentVerifyTicket>",
        wafer::ids::now() - 120,
        "t1",
    );
    assert_eq!(post(&env, &stale), (200, "success".into()));
    assert_eq!(stored_ticket(&env).as_deref(), Some("ticket@@@newest"));
}

/// The verify ticket the component has stored.
pub fn stored_ticket(env: &Env) -> Option<String> {
    env.value(&format!(
        "SELECT verify_ticket FROM components WHERE appid = '{COMPONENT}'"
    ))
}

/// A GET that does not follow redirects, with extra headers: (status, Content-Type, body).
fn get_page(url: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let mut rq = agent.get(url);
    for (k, v) in headers {
        rq = rq.set(k, v);
    }
    let r = match rq.call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let ct = r.header("Content-Type").unwrap_or("").to_string();
    (r.status(), ct, r.into_string().unwrap_or_default())
}

/// The WeChat link on an authorisation page: its `<a href>`, HTML entities undone.
fn link_in(page: &str) -> String {
    let start = page
        .find("href=\"")
        .unwrap_or_else(|| panic!("no link in {page}"))
        + 6;
    let end = start + page[start..].find('"').unwrap();
    page[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[test]
fn the_authorize_page_reuses_one_pre_auth_code_and_never_takes_the_host() {
    let env = std::sync::Arc::new(component_env());
    push_ticket(&env, None);
    let url = env.url(&format!(
        "/wechat/component/{COMPONENT}/authorize?auth_type=3"
    ));
    let pages: Vec<_> = (0..50)
        .map(|i| {
            let (env, url) = (env.clone(), url.clone());
            std::thread::spawn(move || {
                let _ = &env;
                let host = if i % 2 == 0 {
                    "evil.example"
                } else {
                    "wafer.example.com"
                };
                get_page(&url, &[("Host", host), ("X-Forwarded-Proto", "https")])
            })
        })
        .map(|t| t.join().unwrap())
        .collect();
    let links: Vec<String> = pages
        .iter()
        .map(|(s, ct, page)| {
            assert_eq!(*s, 200, "{page}");
            assert!(ct.starts_with("text/html"), "{ct}");
            assert!(page.contains("<script"), "{page}");
            assert!(!page.contains("evil"), "{page}");
            link_in(page)
        })
        .collect();
    assert_eq!(
        env.calls("/cgi-bin/component/api_create_preauthcode"),
        1,
        "50 page views, one pre-auth code"
    );
    assert!(links.iter().all(|l| l == &links[0]));
    assert!(
        links[0].starts_with("https://mp.weixin.qq.com/cgi-bin/componentloginpage?"),
        "{}",
        links[0]
    );
    assert_eq!(
        query_value(&links[0], "redirect_uri"),
        format!("{PUBLIC_URL}/wechat/component/{COMPONENT}/callback")
    );

    // An authorisation that used it (the `authorized` event names it) consumes it.
    let code = query_value(&links[0], "pre_auth_code");
    let (s, _) = authorise_by_event(&env, Some(&code));
    assert_eq!(s, 200);
    let (_, _, page) = get_page(&url, &[]);
    assert_ne!(query_value(&link_in(&page), "pre_auth_code"), code);
    assert_eq!(env.calls("/cgi-bin/component/api_create_preauthcode"), 2);
    // So does its coming expiry.
    env.exec(&format!(
        "UPDATE components SET pre_auth_expires_at = {}",
        wafer::ids::now() + 30
    ));
    get_page(&url, &[]);
    assert_eq!(env.calls("/cgi-bin/component/api_create_preauthcode"), 3);
}

#[test]
fn without_a_configured_url_the_authorize_page_refuses_rather_than_trust_the_host() {
    let env = Env::with(|c| c.components = vec![component()]);
    push_ticket(&env, None);
    let (s, _, page) = get_page(
        &env.url(&format!("/wechat/component/{COMPONENT}/authorize")),
        &[("Host", "evil.example")],
    );
    assert_eq!(s, 500, "{page}");
    assert!(
        page.contains("server.public_url") && !page.contains("evil"),
        "{page}"
    );
    assert_eq!(env.calls("/cgi-bin/component/api_create_preauthcode"), 0);
}

#[test]
fn junk_callbacks_make_at_most_60_query_auth_calls_a_minute() {
    let env = component_env();
    push_ticket(&env, None);
    // The bound holds over any 60 s (not per clock minute), so the burst may start anywhere.
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..70 {
        let (s, _, _) = get_page(
            &env.url(&format!(
                "/wechat/component/{COMPONENT}/callback?auth_code=junk{i}&expires_in=3600"
            )),
            &[],
        );
        *statuses.entry(s).or_insert(0) += 1;
    }
    let calls = env.calls("/cgi-bin/component/api_query_auth");
    assert!(
        calls <= 60,
        "{calls} api_query_auth calls; statuses {statuses:?}"
    );
    assert_eq!(statuses.get(&429), Some(&10), "{statuses:?}");
    // Events are WeChat's own (signed): not counted, not refused.
    let (s, body) = authorise_by_event(&env, None);
    assert_eq!((s, body.as_str()), (200, "success"));
    assert!(live(&env, AUTHORIZER));
}

#[test]
fn the_authorize_page_escapes_what_it_prints() {
    let env = component_env();
    push_ticket(&env, None);
    let (s, _, page) = get_page(
        &env.url(&format!(
            "/wechat/component/{COMPONENT}/authorize?mobile=1&biz_appid=%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E"
        )),
        &[],
    );
    assert_eq!(s, 200, "{page}");
    assert!(!page.contains("<script>alert"), "{page}");
    let link = link_in(&page);
    assert!(link.ends_with("#wechat_redirect"), "{link}");
    assert_eq!(
        query_value(&link, "biz_appid"),
        "\"><script>alert(1)</script>"
    );
    // The href is escaped for HTML: its `&` appear as `&amp;`.
    assert!(page.contains("&amp;pre_auth_code="), "{page}");
}

/// The merchant authorises [`AUTHORIZER`] on WeChat's page (with this pre-auth code, if any) and
/// WeChat pushes the `authorized` event, naming the code; returns the server's answer to it.
fn authorise_by_event(env: &Env, pre_auth_code: Option<&str>) -> (i64, String) {
    let mut spec = json!({"component_appid": COMPONENT, "authorizer_appid": AUTHORIZER});
    let mut named = String::new();
    if let Some(code) = pre_auth_code {
        spec["pre_auth_code"] = json!(code);
        named = format!("<PreAuthCode>{code}</PreAuthCode>");
    }
    let auth = env.mock_post("/__mock__/component/authorize", spec);
    push_event(
        env,
        "authorized",
        &format!(
            "<AuthorizerAppid>{AUTHORIZER}</AuthorizerAppid><AuthorizationCode>{}</AuthorizationCode>{named}",
            auth["auth_code"].as_str().unwrap()
        ),
    )
}

#[test]
fn a_quota_blocked_component_token_is_not_reported_as_a_missing_ticket() {
    let env = component_env();
    push_ticket(&env, None);
    env.fail(json!({"path": "/cgi-bin/component/api_component_token", "errcode": 45009}));
    let url = env.url(&format!("/wechat/component/{COMPONENT}/authorize"));
    // The first page meets WeChat's 45009; the next one the stored quota block.
    let (s, _, page) = get_page(&url, &[]);
    assert_eq!(s, 502, "{page}");
    assert!(page.contains("45009"), "{page}");
    let (s, _, page) = get_page(&url, &[]);
    assert!(!page.contains("verify ticket"), "{page}");
    assert!(page.contains("quota") && s == 503, "{s} {page}");
    assert_eq!(env.calls("/cgi-bin/component/api_component_token"), 1);
    // The /v1 route says why too.
    let (s, v) = component_token(&env);
    assert_eq!((s, v["error"].as_str()), (429, Some("refused")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("45009"), "{v}");
}

const INFO_PATH: &str = "/cgi-bin/component/api_get_authorizer_info";

fn authorizer_view(env: &Env, authorizer: &str) -> (u16, Value) {
    env.v1(
        "GET",
        &format!("/v1/components/{COMPONENT}/authorizers/{authorizer}"),
        None,
        None,
    )
}

#[test]
fn authoriser_info_is_fetched_when_an_account_authorises_and_served() {
    let env = component_env();
    push_ticket(&env, None);
    assert_eq!(authorise(&env, AUTHORIZER), 200);
    assert_eq!(env.calls(INFO_PATH), 1);
    let (s, v) = authorizer_view(&env, AUTHORIZER);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        keys(&v),
        ["authorizer_appid", "authorized_at", "func_info", "info"]
    );
    assert_eq!(v["authorizer_appid"], AUTHORIZER);
    assert!(v["authorized_at"].as_i64().unwrap() > 0, "{v}");
    assert_eq!(
        v["func_info"],
        json!([{"funcscope_category": {"id": 1}}, {"funcscope_category": {"id": 17}}])
    );
    assert_eq!(v["info"]["nick_name"], format!("Mock {AUTHORIZER}"), "{v}");
    assert!(v["info"]["user_name"].as_str().unwrap().starts_with("gh_"));
    // Served from what is stored.
    assert_eq!(authorizer_view(&env, AUTHORIZER).1, v);
    assert_eq!(env.calls(INFO_PATH), 1);

    // `updateauthorized` fetches it again.
    let auth = env.mock_post(
        "/__mock__/component/authorize",
        json!({"component_appid": COMPONENT, "authorizer_appid": AUTHORIZER}),
    );
    let (s, body) = push_event(
        &env,
        "updateauthorized",
        &format!(
            "<AuthorizerAppid>{AUTHORIZER}</AuthorizerAppid><AuthorizationCode>{}</AuthorizationCode>",
            auth["auth_code"].as_str().unwrap()
        ),
    );
    assert_eq!((s, body.as_str()), (200, "success"));
    assert_eq!(env.calls(INFO_PATH), 2);

    // Unknown and revoked authorisers are 404, without asking WeChat.
    assert_eq!(authorizer_view(&env, "wxnobody00000001").0, 404);
    let (s, _) = push_event(
        &env,
        "unauthorized",
        &format!("<AuthorizerAppid>{AUTHORIZER}</AuthorizerAppid>"),
    );
    assert_eq!(s, 200);
    assert_eq!(authorizer_view(&env, AUTHORIZER).0, 404);
    assert_eq!(env.calls(INFO_PATH), 2);
}

#[test]
fn a_failed_info_fetch_never_fails_the_authorisation_and_a_later_read_fills_it_in() {
    let env = component_env();
    push_ticket(&env, None);
    // WeChat refuses the profile at the authorisation and at the first read.
    env.fail(json!({"path": INFO_PATH, "errcode": 61003, "times": 2}));
    assert_eq!(authorise(&env, AUTHORIZER), 200);
    assert_eq!(authorizer_token(&env, AUTHORIZER).0, 200);
    let (s, v) = authorizer_view(&env, AUTHORIZER);
    assert_eq!((s, &v["info"]), (200, &Value::Null), "{v}");
    assert_eq!(v["authorizer_appid"], AUTHORIZER);
    let (s, v) = authorizer_view(&env, AUTHORIZER);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["info"]["nick_name"], format!("Mock {AUTHORIZER}"), "{v}");
    assert_eq!(env.calls(INFO_PATH), 3);

    // An authoriser stored before profiles were fetched: the next read fills it in.
    env.exec("UPDATE authorizers SET info = NULL");
    let (s, v) = authorizer_view(&env, AUTHORIZER);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["info"]["nick_name"], format!("Mock {AUTHORIZER}"), "{v}");
    assert_eq!(env.calls(INFO_PATH), 4);
}

#[test]
fn authorisation_events_are_relayed_once_to_the_forward_url() {
    let (url, seen) = crate::callbacks::forward_target("success", std::time::Duration::ZERO);
    let env = Env::with(|c| {
        c.server.public_url = PUBLIC_URL.into();
        c.components = vec![ComponentDecl {
            forward_url: Some(url),
            ..component()
        }];
    });
    let relayed = || seen.lock().unwrap().clone();
    // The ticket is the platform's own business: not relayed.
    push_ticket(&env, None);
    assert_eq!(relayed(), Vec::<Value>::new());

    assert_eq!(authorise_by_event(&env, None), (200, "success".into()));
    let who = format!("<AuthorizerAppid>{AUTHORIZER}</AuthorizerAppid>");
    let revoked = sealed_event("unauthorized", &who, wafer::ids::now(), "rev1");
    let post = |(path, body): &(String, String)| {
        env.request("POST", &env.url(path), &[], Some(body.as_bytes()))
    };
    assert_eq!(post(&revoked), (200, "success".into()));
    // A replay of the same push is neither applied nor relayed again.
    assert_eq!(post(&revoked), (200, "success".into()));

    let events = relayed();
    let kinds: Vec<_> = events.iter().map(|e| e["InfoType"].clone()).collect();
    assert_eq!(
        kinds,
        [json!("authorized"), json!("unauthorized")],
        "{events:?}"
    );
    for e in &events {
        assert_eq!(e["AuthorizerAppid"], AUTHORIZER, "{e}");
        assert_eq!(e["AppId"], COMPONENT, "{e}");
    }
    assert!(events[0]["AuthorizationCode"].is_string(), "{}", events[0]);
}
