//! WeChat-facing callbacks at the HTTP boundary: URL verification (official accounts with the
//! plain signature, WeCom with WeCom's published example), safe-mode messages decrypted and
//! relayed to a `forward_url` whose reply goes back encrypted, a slow business endpoint still
//! answered in time, and every kind of forgery refused with 401 and nothing stored.

use crate::component::{component_env, stored_ticket, CKEY, COMPONENT, CTOKEN};
use crate::harness::*;
use base64::Engine;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wafer::config::{Config, WorkAgentDecl};
use wafer::crypto::{sha1_sorted, MsgCrypt};
use wafer::secret::Secret;

const MP_TOKEN: &str = "mp-callback-token";
pub const MP_KEY: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";

// WeCom's published example (its encryption-scheme page), also pinned in crates/wafer-crypto.
const WECOM_TOKEN: &str = "QDG6eK";
const WECOM_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const WECOM_CORPID: &str = "wx5823bf96d3bd56c7";
const WECOM_AGENT: &str = "1000002";

/// A business endpoint on loopback: records every body it is sent, waits `delay`, answers
/// `reply`. Returns its URL and the bodies seen.
pub fn forward_target(reply: &'static str, delay: Duration) -> (String, Arc<Mutex<Vec<Value>>>) {
    forward_target_failing(reply, delay, 0)
}

/// As [`forward_target`], but the first `failures` requests are answered 500.
fn forward_target_failing(
    reply: &'static str,
    delay: Duration,
    failures: usize,
) -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let record = record.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let nth = {
                    let mut seen = record.lock().unwrap();
                    seen.push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                    seen.len()
                };
                std::thread::sleep(delay);
                let status = if nth <= failures {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            });
        }
    });
    (url, seen)
}

fn mp_env(forward_url: Option<String>) -> Env {
    mp_env_keyed(forward_url, Some(MP_KEY))
}

/// An app in plain mode: a callback token and no EncodingAESKey.
fn plain_mp_env(forward_url: Option<String>) -> Env {
    mp_env_keyed(forward_url, None)
}

fn mp_env_keyed(forward_url: Option<String>, aes_key: Option<&str>) -> Env {
    Env::with(|c| mp_config(c, forward_url, aes_key))
}

/// The test app as an official account with callback keys, and the WeCom agent.
pub fn mp_config(c: &mut Config, forward_url: Option<String>, aes_key: Option<&str>) {
    c.apps[0].token = Some(Secret::new(MP_TOKEN));
    c.apps[0].aes_key = aes_key.map(Secret::new);
    c.apps[0].forward_url = forward_url;
    c.work_agents = vec![wecom_agent(WECOM_KEY, None)];
}

/// The WeCom agent the callback tests use, with its EncodingAESKey (and a declared previous one).
fn wecom_agent(aes_key: &str, prev_aes_key: Option<&str>) -> WorkAgentDecl {
    WorkAgentDecl {
        corpid: WECOM_CORPID.into(),
        agentid: WECOM_AGENT.into(),
        secret: Secret::new("agent-secret"),
        remark: String::new(),
        token: Some(Secret::new(WECOM_TOKEN)),
        aes_key: Some(Secret::new(aes_key)),
        prev_aes_key: prev_aes_key.map(Secret::new),
        forward_url: None,
    }
}

/// A text message; its `MsgId` follows from the content, so the same content is the same
/// message (as WeChat's retries are) and different contents are different messages.
pub fn text_message(content: &str) -> String {
    let msg_id = content.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!(
        "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>\
         <FromUserName><![CDATA[oUser1]]></FromUserName><CreateTime>1700000000</CreateTime>\
         <MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>\
         <MsgId>{msg_id}</MsgId></xml>"
    )
}

/// Deliver a message through the fake WeChat's push; returns (status, body).
fn push(env: &Env, spec: Value) -> (i64, String) {
    let r = env.mock_post("/__mock__/push", spec);
    (
        r["status"].as_i64().unwrap(),
        r["body"].as_str().unwrap().to_string(),
    )
}

fn mp_url(env: &Env) -> String {
    env.url(&format!("/wechat/mp/{APPID}"))
}

#[test]
fn official_account_url_verification() {
    let env = mp_env(None);
    let ts = wafer::ids::now().to_string();
    let sig = sha1_sorted(&[MP_TOKEN, &ts, "nonce1"]);
    let q = |sig: &str| {
        format!("?signature={sig}&timestamp={ts}&nonce=nonce1&echostr=5838479218127813673")
    };
    let (s, body) = env.request("GET", &format!("{}{}", mp_url(&env), q(&sig)), &[], None);
    assert_eq!((s, body.as_str()), (200, "5838479218127813673"));
    for url in [
        format!(
            "{}{}",
            mp_url(&env),
            q("0000000000000000000000000000000000000000")
        ),
        format!("{}?timestamp={ts}&nonce=nonce1&echostr=x", mp_url(&env)),
        format!("{}{}", env.url("/wechat/mp/wxunknownapp0001"), q(&sig)),
    ] {
        let (s, body) = env.request("GET", &url, &[], None);
        assert_eq!(s, 401, "{url}: {body}");
        assert!(!body.contains("5838479218127813673"));
    }
}

#[test]
fn wecom_url_verification_with_the_published_example() {
    // WeCom's published echostr, signed again with a current timestamp: the example's own
    // (2014) timestamp is outside the window now, and refused.
    let env = mp_env(None);
    let raw =
        "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";
    let echostr = "P9nAzCzyDtyTWESHep1vC5X9xho%2FqYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp%2B4RPcs8TgAE7OaBO%2BFZXvnaqQ%3D%3D";
    let url = |sig: &str, ts: &str, nonce: &str| {
        env.url(&format!(
            "/wechat/work/{WECOM_CORPID}/{WECOM_AGENT}?msg_signature={sig}&timestamp={ts}&nonce={nonce}&echostr={echostr}"
        ))
    };
    let published = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3";
    let (s, _) = env.request("GET", &url(published, "1409659589", "263014780"), &[], None);
    assert_eq!(s, 401, "the published example's timestamp is years old");
    let ts = wafer::ids::now().to_string();
    let good = sha1_sorted(&[WECOM_TOKEN, &ts, "263014780", raw]);
    let (s, body) = env.request("GET", &url(&good, &ts, "263014780"), &[], None);
    assert_eq!((s, body.as_str()), (200, "1616140317555161061"));
    let (s, _) = env.request("GET", &url(&good, &ts, "263014781"), &[], None);
    assert_eq!(s, 401);
    let other = env.url(&format!(
        "/wechat/work/{WECOM_CORPID}/9999?msg_signature={good}&timestamp={ts}&nonce=263014780&echostr={echostr}"
    ));
    assert_eq!(env.request("GET", &other, &[], None).0, 401);
}

#[test]
fn plain_and_safe_messages_without_forwarding_answer_success() {
    let plain_env = plain_mp_env(None);
    let plain = push(
        &plain_env,
        json!({"url": mp_url(&plain_env), "token": MP_TOKEN, "xml": text_message("hi"), "plain": true}),
    );
    assert_eq!(plain, (200, "success".into()));
    let env = mp_env(None);
    let safe = push(
        &env,
        json!({"url": mp_url(&env), "token": MP_TOKEN, "aes_key": MP_KEY, "receive_id": APPID, "xml": text_message("hi")}),
    );
    assert_eq!(safe, (200, "success".into()));
    let work = push(
        &env,
        json!({"url": env.url(&format!("/wechat/work/{WECOM_CORPID}/{WECOM_AGENT}")),
               "token": WECOM_TOKEN, "aes_key": WECOM_KEY, "receive_id": WECOM_CORPID, "xml": text_message("hi")}),
    );
    assert_eq!(work, (200, "success".into()));
}

#[test]
fn a_safe_mode_message_is_relayed_and_the_reply_encrypted() {
    let reply = "<xml><ToUserName><![CDATA[oUser1]]></ToUserName><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[pong]]></Content></xml>";
    let (url, seen) = forward_target(reply, Duration::ZERO);
    let env = mp_env(Some(url));
    let ts = wafer::ids::now().to_string();
    let (s, body) = push(
        &env,
        json!({"url": mp_url(&env), "token": MP_TOKEN, "aes_key": MP_KEY, "receive_id": APPID,
               "xml": text_message("ping"), "timestamp": ts, "nonce": "n42"}),
    );
    assert_eq!(s, 200, "{body}");
    // The business endpoint got the decrypted message as JSON.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["Content"], "ping");
    assert_eq!(seen[0]["MsgType"], "text");
    assert_eq!(seen[0]["FromUserName"], "oUser1");
    // WeChat gets the reply encrypted and signed for this app.
    let envelope = wafer::core::push::parse_xml(&body).unwrap();
    let encrypt = envelope["Encrypt"].as_str().unwrap();
    assert_eq!(envelope["TimeStamp"], ts.as_str());
    assert_eq!(envelope["Nonce"], "n42");
    let c = MsgCrypt::new(MP_TOKEN, MP_KEY, None, APPID).unwrap();
    assert!(c.verify(
        envelope["MsgSignature"].as_str().unwrap(),
        &ts,
        "n42",
        encrypt
    ));
    assert_eq!(c.decrypt(encrypt).unwrap(), reply);
    // Plain mode (an app without an EncodingAESKey): the reply goes back as it came.
    let (url, _) = forward_target(reply, Duration::ZERO);
    let env = plain_mp_env(Some(url));
    let (s, body) = push(
        &env,
        json!({"url": mp_url(&env), "token": MP_TOKEN, "xml": text_message("ping"), "plain": true}),
    );
    assert_eq!((s, body.as_str()), (200, reply));
}

#[test]
fn a_slow_business_endpoint_still_gets_wechat_an_answer_in_time() {
    let (url, seen) = forward_target("<xml>late</xml>", Duration::from_secs(8));
    let env = mp_env(Some(url));
    let started = Instant::now();
    let (s, body) = push(
        &env,
        json!({"url": mp_url(&env), "token": MP_TOKEN, "aes_key": MP_KEY, "receive_id": APPID, "xml": text_message("slow")}),
    );
    let took = started.elapsed();
    assert_eq!((s, body.as_str()), (200, "success"));
    assert!(took < Duration::from_millis(4500), "took {took:?}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    // A dead endpoint is the same.
    let env = mp_env(Some("http://127.0.0.1:9/hook".into()));
    let (s, body) = push(
        &env,
        json!({"url": mp_url(&env), "token": MP_TOKEN, "aes_key": MP_KEY, "receive_id": APPID, "xml": text_message("dead")}),
    );
    assert_eq!((s, body.as_str()), (200, "success"));
}

/// AES-256-CBC of an already padded frame, with the account's key (IV = the key's first half).
fn raw_encrypt(encoding_key: &str, padded: &[u8]) -> String {
    use aes::cipher::{block_padding::NoPadding, BlockEncryptMut, KeyIvInit};
    // An EncodingAESKey's last character usually has trailing bits set; WeChat ignores them.
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    let key = lenient.decode(format!("{encoding_key}=")).unwrap();
    let ct = cbc::Encryptor::<aes::Aes256>::new_from_slices(&key, &key[..16])
        .unwrap()
        .encrypt_padded_vec_mut::<NoPadding>(padded);
    base64::engine::general_purpose::STANDARD.encode(ct)
}

/// random(16) ‖ u32 BE length ‖ msg ‖ receive_id, and the pad length PKCS#7 to 32 would add.
fn frame(msg: &str, receive_id: &str) -> (Vec<u8>, usize) {
    let mut f = vec![7u8; 16];
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg.as_bytes());
    f.extend_from_slice(receive_id.as_bytes());
    let pad = 32 - f.len() % 32;
    (f, pad)
}

#[test]
fn forgeries_are_refused_with_401_and_nothing_stored() {
    let (url, seen) = forward_target("<xml>should not be asked</xml>", Duration::ZERO);
    let env = mp_env(Some(url));
    let c = MsgCrypt::new(MP_TOKEN, MP_KEY, None, APPID).unwrap();
    // A correctly signed POST of an arbitrary Encrypt value.
    let ts = wafer::ids::now().to_string();
    let post_signed = |path: &str, encrypt: &str| {
        let sig = c.signature(&ts, "n", encrypt);
        let url = env.url(&format!(
            "{path}?timestamp={ts}&nonce=n&encrypt_type=aes&msg_signature={sig}"
        ));
        let body = format!(
            "<xml><ToUserName>gh_x</ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        );
        env.request("POST", &url, &[], Some(body.as_bytes()))
    };
    let mp_path = format!("/wechat/mp/{APPID}");
    let good = c.encrypt(&text_message("x"), &[1; 16]);

    // Each (name, status) of one forgery.
    let mut cases: Vec<(&str, i64)> = Vec::new();
    let wrong_token = push(
        &env,
        json!({"url": mp_url(&env), "token": "not-the-token", "aes_key": MP_KEY, "receive_id": APPID, "xml": text_message("x")}),
    );
    cases.push(("bad signature", wrong_token.0));
    let wrong_rid = push(
        &env,
        json!({"url": mp_url(&env), "token": MP_TOKEN, "aes_key": MP_KEY, "receive_id": "wxsomeoneelse001", "xml": text_message("x")}),
    );
    cases.push(("wrong receive id", wrong_rid.0));
    let wrong_key = push(
        &env,
        json!({"url": mp_url(&env), "token": MP_TOKEN, "aes_key": CKEY, "receive_id": APPID, "xml": text_message("x")}),
    );
    cases.push(("wrong key", wrong_key.0));
    let plain_bad = push(
        &env,
        json!({"url": mp_url(&env), "token": "not-the-token", "xml": text_message("x"), "plain": true}),
    );
    cases.push(("plain bad signature", plain_bad.0));
    let unknown = push(
        &env,
        json!({"url": env.url("/wechat/mp/wxunknownapp0001"), "token": MP_TOKEN, "aes_key": MP_KEY, "receive_id": "wxunknownapp0001", "xml": text_message("x")}),
    );
    cases.push(("unknown app", unknown.0));
    let unknown_agent = push(
        &env,
        json!({"url": env.url(&format!("/wechat/work/{WECOM_CORPID}/42")), "token": WECOM_TOKEN, "aes_key": WECOM_KEY, "receive_id": WECOM_CORPID, "xml": text_message("x")}),
    );
    cases.push(("unknown WeCom agent", unknown_agent.0));
    cases.push((
        "truncated by 4 characters",
        post_signed(&mp_path, &good[..good.len() - 4]).0 as i64,
    ));
    cases.push((
        "truncated by a block",
        post_signed(&mp_path, &{
            let raw = base64::engine::general_purpose::STANDARD
                .decode(&good)
                .unwrap();
            base64::engine::general_purpose::STANDARD.encode(&raw[..raw.len() - 16])
        })
        .0 as i64,
    ));
    let (mut f, pad) = frame(&text_message("x"), APPID);
    let mut over = f.clone();
    over.extend(std::iter::repeat_n((pad + 32) as u8, pad));
    cases.push((
        "re-padded beyond 32",
        post_signed(&mp_path, &raw_encrypt(MP_KEY, &over)).0 as i64,
    ));
    let (mut f2, mut pad2) = (f.clone(), pad);
    if pad2 < 2 {
        f2.push(b' ');
        pad2 = 32 - f2.len() % 32;
    }
    f2.extend(std::iter::repeat_n(0u8, pad2 - 1));
    f2.push(pad2 as u8);
    cases.push((
        "re-padded inconsistently",
        post_signed(&mp_path, &raw_encrypt(MP_KEY, &f2)).0 as i64,
    ));
    // AES's own 16-byte padding instead of WeChat's 32.
    let pad16 = 16 - f.len() % 16;
    f.extend(std::iter::repeat_n(pad16 as u8, pad16));
    if f.len() % 32 != 0 {
        cases.push((
            "padded to 16-byte blocks",
            post_signed(&mp_path, &raw_encrypt(MP_KEY, &f)).0 as i64,
        ));
    }
    cases.push(("not base64", post_signed(&mp_path, "!!!!").0 as i64));
    let (s, _) = env.request(
        "POST",
        &env.url(&format!(
            "{mp_path}?timestamp={ts}&nonce=n&encrypt_type=aes&msg_signature=x"
        )),
        &[],
        Some(b"<xml><Encrypt>abc</Encrypt></xml>"),
    );
    cases.push(("missing signature", s as i64));

    for (name, status) in &cases {
        assert_eq!(*status, 401, "{name}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "a refused message was forwarded"
    );
    // The server is still up and a genuine message still goes through.
    assert_eq!(env.request("GET", &env.url("/healthz"), &[], None).0, 200);
    let ok = push(
        &env,
        json!({"url": mp_url(&env), "token": MP_TOKEN, "aes_key": MP_KEY, "receive_id": APPID, "xml": text_message("x")}),
    );
    assert_eq!(ok.0, 200);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn forged_component_events_store_nothing() {
    let env = component_env();
    let events = env.url(&format!("/wechat/component/{COMPONENT}/events"));
    let ticket_xml = format!(
        "<xml><AppId>{COMPONENT}</AppId><InfoType>component_verify_ticket</InfoType>\
         <ComponentVerifyTicket>ticket@@@forged</ComponentVerifyTicket></xml>"
    );
    for (name, spec) in [
        (
            "bad signature",
            json!({"url": events, "token": "nope", "aes_key": CKEY, "receive_id": COMPONENT, "kind": "component", "xml": ticket_xml}),
        ),
        (
            "wrong receive id",
            json!({"url": events, "token": CTOKEN, "aes_key": CKEY, "receive_id": "wxothercomponent", "kind": "component", "xml": ticket_xml}),
        ),
        (
            "wrong key",
            json!({"url": events, "token": CTOKEN, "aes_key": MP_KEY, "receive_id": COMPONENT, "kind": "component", "xml": ticket_xml}),
        ),
        (
            "plain",
            json!({"url": events, "token": CTOKEN, "xml": ticket_xml, "plain": true}),
        ),
        (
            "unknown component",
            json!({"url": env.url("/wechat/component/wxnosuchcomponent/events"), "token": CTOKEN, "aes_key": CKEY, "receive_id": "wxnosuchcomponent", "kind": "component", "xml": ticket_xml}),
        ),
    ] {
        assert_eq!(push(&env, spec).0, 401, "{name}");
    }
    assert_eq!(stored_ticket(&env), None);
    assert_eq!(env.count("authorizers"), 0);
    // An `unauthorized` forgery revokes nothing either.
    let revoke = format!(
        "<xml><AppId>{COMPONENT}</AppId><InfoType>unauthorized</InfoType><AuthorizerAppid>wxa</AuthorizerAppid></xml>"
    );
    assert_eq!(
        push(
            &env,
            json!({"url": events, "token": "nope", "aes_key": CKEY, "receive_id": COMPONENT, "kind": "component", "xml": revoke})
        )
        .0,
        401
    );
    assert_eq!(env.request("GET", &env.url("/healthz"), &[], None).0, 200);
}

#[test]
fn the_previous_aes_key_still_opens_messages_after_a_rotation() {
    let mut env = mp_env(None);
    const NEW_KEY: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
    env.config.apps[0].aes_key = Some(Secret::new(NEW_KEY));
    env.restart();
    for key in [NEW_KEY, MP_KEY] {
        let r = push(
            &env,
            json!({"url": mp_url(&env), "token": MP_TOKEN, "aes_key": key, "receive_id": APPID, "xml": text_message("x")}),
        );
        assert_eq!(r, (200, "success".into()), "{key}");
    }
    let r = push(
        &env,
        json!({"url": mp_url(&env), "token": MP_TOKEN, "aes_key": CKEY, "receive_id": APPID, "xml": text_message("x")}),
    );
    assert_eq!(r.0, 401);
}

#[test]
fn a_declared_previous_aes_key_opens_messages_from_the_first_start() {
    // `prev_aes_key` in [[app]] and [[work_agent]] is applied as declared, on a fresh database
    // (no rotation seen by this server) and again when it changes on a restart.
    const NEW_KEY: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
    const OLDER_KEY: &str = "abcdefghijklmnopqrstuvwxyzABCDEFG0123456789";
    let open = |env: &Env, key: &str| {
        let mp = push(
            env,
            json!({"url": mp_url(env), "token": MP_TOKEN, "aes_key": key, "receive_id": APPID, "xml": text_message("x")}),
        );
        let work = push(
            env,
            json!({"url": env.url(&format!("/wechat/work/{WECOM_CORPID}/{WECOM_AGENT}")),
                   "token": WECOM_TOKEN, "aes_key": key, "receive_id": WECOM_CORPID, "xml": text_message("x")}),
        );
        (mp.0, work.0)
    };
    let mut env = Env::with(|c| {
        c.apps[0].token = Some(Secret::new(MP_TOKEN));
        c.apps[0].aes_key = Some(Secret::new(NEW_KEY));
        c.apps[0].prev_aes_key = Some(Secret::new(MP_KEY));
        c.work_agents = vec![wecom_agent(NEW_KEY, Some(MP_KEY))];
    });
    assert_eq!(open(&env, NEW_KEY), (200, 200));
    assert_eq!(open(&env, MP_KEY), (200, 200), "the declared previous key");
    assert_eq!(open(&env, OLDER_KEY), (401, 401));

    env.config.apps[0].prev_aes_key = Some(Secret::new(OLDER_KEY));
    env.config.work_agents[0].prev_aes_key = Some(Secret::new(OLDER_KEY));
    env.restart();
    assert_eq!(
        open(&env, OLDER_KEY),
        (200, 200),
        "a changed declaration is applied"
    );
    assert_eq!(
        open(&env, MP_KEY),
        (401, 401),
        "and replaces the one before"
    );
    assert_eq!(open(&env, NEW_KEY), (200, 200));
}

#[test]
fn callbacks_waiting_on_a_slow_business_endpoint_do_not_hold_up_checks() {
    // Eight messages forwarded at once to an endpoint that never answers in time, twice the
    // worker count: session checks go on while WeChat gets `success` at the 3 s budget.
    let (url, seen) = forward_target("<xml>late</xml>", Duration::from_secs(8));
    let env = Arc::new(mp_env(Some(url)));
    let (id, skey, _) = env.login("checker");
    let n = 8;
    let pushes: Vec<_> = (0..n)
        .map(|i| {
            let env = env.clone();
            std::thread::spawn(move || {
                push(
                    &env,
                    json!({"url": mp_url(&env), "token": MP_TOKEN, "aes_key": MP_KEY, "receive_id": APPID, "xml": text_message(&format!("m{i}"))}),
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (checks, slowest) = env.checks_for(&id, &skey, Duration::from_millis(1500));
    for p in pushes {
        assert_eq!(p.join().unwrap(), (200, "success".to_string()));
    }
    assert_eq!(seen.lock().unwrap().len(), n);
    assert!(checks >= 10, "only {checks} checks");
    assert!(
        slowest < Duration::from_millis(750),
        "a check took {slowest:?}"
    );
}

#[test]
fn a_malformed_declared_encoding_key_is_refused_at_start_up() {
    // A previous key that could never decrypt would make every safe-mode message fail, the
    // current key's included: refused with a clear line instead (found in review).
    let env = mp_env(None);
    let mut bad_prev = env.config.clone();
    bad_prev.apps[0].prev_aes_key = Some(Secret::new("oops-not-a-key"));
    let mut bad_agent = env.config.clone();
    bad_agent.work_agents = vec![wecom_agent("short", None)];
    for (config, what) in [(bad_prev, "app.aes_key"), (bad_agent, "work_agent.aes_key")] {
        match wafer::http::start(config, false) {
            Ok(_) => panic!("{what}: started"),
            Err(e) => assert!(e.contains(what) && e.contains("43 characters"), "{e}"),
        }
    }
}

#[test]
fn an_account_with_an_aes_key_refuses_plain_and_downgraded_posts() {
    // A captured safe-mode URL with `encrypt_type` and `msg_signature` dropped still carries a
    // valid plain `signature`, which does not cover the body: a forged plain body must not be
    // forwarded, nor its reply sent back in clear.
    let (url, seen) = forward_target(
        "<xml><Content>business secret</Content></xml>",
        Duration::ZERO,
    );
    let env = mp_env(Some(url));
    let ts = wafer::ids::now().to_string();
    let sig = sha1_sorted(&[MP_TOKEN, &ts, "n1"]);
    let forged = text_message("forged");
    for query in [
        format!("?signature={sig}&timestamp={ts}&nonce=n1"),
        format!("?signature={sig}&timestamp={ts}&nonce=n1&encrypt_type=raw"),
        format!("?signature={sig}&timestamp={ts}&nonce=n1&encrypt_type=aes"),
    ] {
        let (s, body) = env.request(
            "POST",
            &format!("{}{query}", mp_url(&env)),
            &[],
            Some(forged.as_bytes()),
        );
        assert_eq!(s, 401, "{query}: {body}");
        assert!(!body.contains("business secret"), "{query}: {body}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "a forged plain body was forwarded"
    );

    // Compatible mode: plaintext fields beside a genuine `Encrypt`, no `encrypt_type`. Only the
    // decrypted message counts.
    let c = MsgCrypt::new(MP_TOKEN, MP_KEY, None, APPID).unwrap();
    let encrypt = c.encrypt(&text_message("genuine"), &[3; 16]);
    let msg_sig = c.signature(&ts, "n2", &encrypt);
    let body = format!(
        "<xml><ToUserName>{APPID}</ToUserName><Content>forged</Content>\
         <Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    );
    let (s, reply) = env.request(
        "POST",
        &format!(
            "{}?timestamp={ts}&nonce=n2&msg_signature={msg_sig}",
            mp_url(&env)
        ),
        &[],
        Some(body.as_bytes()),
    );
    assert_eq!(s, 200, "{reply}");
    assert!(
        !reply.contains("business secret"),
        "the reply went back in clear: {reply}"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["Content"], "genuine");

    // WeCom is always encrypted: a plain POST signed the plain way is refused there too.
    let (s, _) = env.request(
        "POST",
        &env.url(&format!(
            "/wechat/work/{WECOM_CORPID}/{WECOM_AGENT}?signature={}&timestamp={ts}&nonce=n1",
            sha1_sorted(&[WECOM_TOKEN, &ts, "n1"])
        )),
        &[],
        Some(forged.as_bytes()),
    );
    assert_eq!(s, 401);
}

/// A safe-mode push built here rather than by the fake WeChat, so that a captured one can be
/// sent again byte for byte: (path with its signed query, body). `to` is the envelope's
/// addressee element (`ToUserName`, or `AppId` for component events).
pub fn sealed_push(
    path: &str,
    (token, key, receive_id): (&str, &str, &str),
    to: &str,
    xml: &str,
    timestamp: i64,
    nonce: &str,
) -> (String, String) {
    let c = MsgCrypt::new(token, key, None, receive_id).unwrap();
    let encrypt = c.encrypt(xml, &wafer::ids::random_bytes::<16>().unwrap());
    let ts = timestamp.to_string();
    let query = format!(
        "?signature={}&timestamp={ts}&nonce={nonce}&encrypt_type=aes&msg_signature={}",
        sha1_sorted(&[token, &ts, nonce]),
        c.signature(&ts, nonce, &encrypt)
    );
    let body =
        format!("<xml><{to}>{receive_id}</{to}><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>");
    (format!("{path}{query}"), body)
}

/// [`sealed_push`] of a [`text_message`] (or other XML) to the test app: (path, body).
pub fn mp_push(xml: &str, timestamp: i64, nonce: &str) -> (String, String) {
    sealed_push(
        &format!("/wechat/mp/{APPID}"),
        (MP_TOKEN, MP_KEY, APPID),
        "ToUserName",
        xml,
        timestamp,
        nonce,
    )
}

fn post(env: &Env, path_and_query: &str, body: &str) -> (u16, String) {
    env.request("POST", &env.url(path_and_query), &[], Some(body.as_bytes()))
}

#[test]
fn a_timestamp_outside_the_window_is_refused() {
    let (url, seen) = forward_target("<xml>reply</xml>", Duration::ZERO);
    let env = mp_env(Some(url));
    let now = wafer::ids::now();
    for (offset, want) in [(-1000, 401), (1000, 401), (-301, 401), (-240, 200)] {
        let (path, body) = mp_push(&text_message(&format!("at {offset}")), now + offset, "n1");
        assert_eq!(post(&env, &path, &body).0, want, "timestamp now{offset:+}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["Content"], "at -240");
    // Plain mode and the URL verification are windowed too.
    let plain = plain_mp_env(None);
    let old = (now - 1000).to_string();
    let sig = sha1_sorted(&[MP_TOKEN, &old, "n"]);
    let q = format!("?signature={sig}&timestamp={old}&nonce=n");
    let (s, _) = plain.request(
        "POST",
        &format!("{}{q}", mp_url(&plain)),
        &[],
        Some(text_message("x").as_bytes()),
    );
    assert_eq!(s, 401);
    let (s, body) = plain.request(
        "GET",
        &format!("{}{q}&echostr=e1", mp_url(&plain)),
        &[],
        None,
    );
    assert_eq!((s, body.contains("e1")), (401, false));
}

#[test]
fn a_message_is_forwarded_once_across_replays_retries_and_a_restart() {
    let (url, seen) = forward_target("<xml>reply</xml>", Duration::ZERO);
    let mut env = mp_env(Some(url));
    let now = wafer::ids::now();
    let forwarded = |content: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|m| m["Content"] == content)
            .count()
    };

    // A captured request sent again: answered `success`, not forwarded again.
    let (path, body) = mp_push(&text_message("once"), now, "n1");
    let (s, first) = post(&env, &path, &body);
    assert_eq!(s, 200, "{first}");
    assert_ne!(
        first, "success",
        "the business reply is relayed the first time"
    );
    assert_eq!(post(&env, &path, &body), (200, "success".into()));
    // WeChat's own retries: same message (MsgId), new nonce and timestamp.
    for (i, ts) in [now + 1, now + 2].into_iter().enumerate() {
        let (path, body) = mp_push(&text_message("once"), ts, &format!("retry{i}"));
        assert_eq!(
            post(&env, &path, &body),
            (200, "success".into()),
            "retry {i}"
        );
    }
    // An event has no MsgId: FromUserName + CreateTime identify it.
    let event = "<xml><ToUserName>gh_1</ToUserName><FromUserName>oUser2</FromUserName>\
                 <CreateTime>1700000100</CreateTime><MsgType>event</MsgType><Event>subscribe</Event>\
                 <Content>event</Content></xml>";
    for nonce in ["e1", "e2"] {
        let (path, body) = mp_push(event, now, nonce);
        assert_eq!(post(&env, &path, &body).0, 200, "{nonce}");
    }
    // The memory is in the database: a restart forgets nothing.
    env.restart();
    assert_eq!(post(&env, &path, &body), (200, "success".into()));
    let (path2, body2) = mp_push(&text_message("once"), now + 3, "after-restart");
    assert_eq!(post(&env, &path2, &body2), (200, "success".into()));
    assert_eq!(
        forwarded("once"),
        1,
        "a message was forwarded more than once"
    );
    assert_eq!(
        forwarded("event"),
        1,
        "an event was forwarded more than once"
    );
    let rows: i64 = env.count("callback_seen");
    assert!(rows >= 2, "{rows} rows remembered");
    // Remembered as digests: no openid (`FromUserName`) or message id in the table.
    let readable = env.scalar(
        "SELECT count(*) FROM callback_seen WHERE `key` LIKE '%oUser%' OR `key` LIKE '%mp/%'",
    );
    assert_eq!(
        readable, 0,
        "callback_seen keys hold message fields in clear"
    );
}

#[test]
fn a_forward_that_failed_is_tried_again_on_wechats_retry() {
    let (url, seen) = forward_target_failing("<xml>reply</xml>", Duration::ZERO, 1);
    let env = mp_env(Some(url));
    let now = wafer::ids::now();
    let (path, body) = mp_push(&text_message("flaky"), now, "f1");
    assert_eq!(post(&env, &path, &body), (200, "success".into()));
    let (path, body) = mp_push(&text_message("flaky"), now + 1, "f2");
    let (s, reply) = post(&env, &path, &body);
    assert_eq!(s, 200);
    assert_ne!(
        reply, "success",
        "the retry reached the endpoint and its reply came back"
    );
    let (path, body) = mp_push(&text_message("flaky"), now + 2, "f3");
    assert_eq!(post(&env, &path, &body), (200, "success".into()));
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "failed once, delivered once, then no more"
    );
}
