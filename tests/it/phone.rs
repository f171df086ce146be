//! Phone numbers (`getPhoneNumber` → `code` → `/wxa/business/getuserphonenumber`): through
//! `/v1/sessions/phone_number` and the envelope's `qcloud.cam.phone`, stored on the user and
//! answered by later checks; WeChat's refusals, a foreign watermark, a stale token and an
//! unreachable WeChat.

use crate::harness::*;
use serde_json::{json, Value};

const PHONE_PATH: &str = "/wxa/business/getuserphonenumber";

/// The `phone_info` wafer answers for a code the fake WeChat accepts.
fn expected(code: &str) -> Value {
    let number = fake_wechat::phone_number_for(code);
    json!({"phoneNumber": number, "purePhoneNumber": number, "countryCode": "86"})
}

fn v1_phone(env: &Env, id: &str, skey: &str, code: &str) -> (u16, Value) {
    env.v1(
        "POST",
        "/v1/sessions/phone_number",
        Some(json!({"id": id, "skey": skey, "code": code})),
        None,
    )
}

fn v1_check(env: &Env, id: &str, skey: &str) -> Value {
    let (s, v) = env.v1(
        "POST",
        "/v1/sessions/check",
        Some(json!({"id": id, "skey": skey})),
        None,
    );
    assert_eq!(s, 200, "{v}");
    v
}

#[test]
fn a_phone_number_through_v1_is_stored_and_answered_by_later_checks() {
    let env = Env::new();
    let (id, skey, _) = env.login("phone-v1-user");
    // Not known yet: the checks say nothing of it.
    assert_eq!(v1_check(&env, &id, &skey).get("phone_info"), None);

    let (s, v) = v1_phone(&env, &id, &skey, "phone-1");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"phone_info": expected("phone-1")}));
    assert_eq!(env.calls(PHONE_PATH), 1);

    // Every later check answers it, in each dialect.
    assert_eq!(
        v1_check(&env, &id, &skey)["phone_info"],
        expected("phone-1")
    );
    let r = env.wafer("qcloud.cam.auth", json!({"id": id, "skey": skey}));
    assert_eq!(code(&r), (0, "AUTH_SUCCESS"), "{r}");
    assert_eq!(r["returnData"]["phone_info"], expected("phone-1"));
    let app_id = env.app_id(APPID);
    let body = json!({"uuid": id, "skey": skey, "app_id": app_id}).to_string();
    let (_, t) = env.post_raw("/mina/auth", body.as_bytes());
    let r: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(r["data"]["phone_info"], expected("phone-1"), "{r}");

    // A wrong session asks nothing of WeChat.
    let (s, v) = v1_phone(&env, &id, &"0".repeat(32), "phone-2");
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("invalid_session")),
        "{v}"
    );
    // A code WeChat refuses: 400 with its errcode; the stored number stays.
    let (s, v) = v1_phone(&env, &id, &skey, "bad-code");
    assert_eq!(
        (s, v["error"].as_str(), v["errcode"].as_i64()),
        (400, Some("invalid_code"), Some(40029)),
        "{v}"
    );
    // A number watermarked for another app is not believed.
    let (s, v) = v1_phone(&env, &id, &skey, "other-app");
    assert_eq!((s, v["error"].as_str()), (502, Some("wechat_error")), "{v}");
    // Another WeChat errcode: 502 with it.
    env.fail(json!({"path": PHONE_PATH, "errcode": 40013, "times": 1}));
    let (s, v) = v1_phone(&env, &id, &skey, "phone-3");
    assert_eq!((s, v["errcode"].as_i64()), (502, Some(40013)), "{v}");
    // WeChat unreachable (an HTML error page): 502 as every upstream failure.
    env.fail(json!({"path": PHONE_PATH, "status": 502, "times": 1}));
    let (s, v) = v1_phone(&env, &id, &skey, "phone-3");
    assert_eq!(
        (s, v["error"].as_str()),
        (502, Some("wechat_unavailable")),
        "{v}"
    );
    assert_eq!(
        v1_check(&env, &id, &skey)["phone_info"],
        expected("phone-1")
    );
    // A missing code is the caller's mistake.
    let (s, _) = env.v1(
        "POST",
        "/v1/sessions/phone_number",
        Some(json!({"id": id, "skey": skey})),
        None,
    );
    assert_eq!(s, 400);
}

#[test]
fn a_phone_number_through_the_envelope_with_the_wafer_codes() {
    let env = Env::new();
    let (id, skey, _) = env.login("phone-envelope-user");
    let phone = |code: &str| {
        env.wafer(
            "qcloud.cam.phone",
            json!({"id": id, "skey": skey, "code": code}),
        )
    };
    let r = phone("phone-e1");
    assert_eq!(code(&r), (0, "PHONE_SUCCESS"), "{r}");
    assert_eq!(keys(&r), ENVELOPE_KEYS);
    assert_eq!(r["returnData"], json!({"phone_info": expected("phone-e1")}));
    let r = env.wafer("qcloud.cam.auth", json!({"id": id, "skey": skey}));
    assert_eq!(r["returnData"]["phone_info"], expected("phone-e1"), "{r}");

    for (code_, fault, want) in [
        ("bad-e", None, (40029, "WEIXIN_CODE_ERR")),
        ("other-e", None, (1007, "WEIXIN_RETURN_ERR")),
        (
            "phone-e2",
            Some(json!({"path": PHONE_PATH, "errcode": 40013, "times": 1})),
            (1007, "WEIXIN_RETURN_ERR"),
        ),
        (
            "phone-e2",
            Some(json!({"path": PHONE_PATH, "status": 502, "times": 1})),
            (1005, "WEIXIN_NET_ERR"),
        ),
    ] {
        if let Some(f) = fault {
            env.fail(f);
        }
        let r = phone(code_);
        assert_eq!(code(&r), want, "{code_}: {r}");
        assert_eq!(r["returnData"], "", "{r}");
    }
    let r = env.wafer(
        "qcloud.cam.phone",
        json!({"id": id, "skey": "f".repeat(32), "code": "phone-e3"}),
    );
    assert_eq!(code(&r), (60012, "AUTH_FAIL"));
    let r = env.wafer("qcloud.cam.phone", json!({"id": id, "skey": skey}));
    assert_eq!(code(&r), (1003, "PARA_ERR"));
    // Only the first call and the faulted ones reached WeChat.
    assert_eq!(env.calls(PHONE_PATH), 5);
}

#[test]
fn a_token_revoked_upstream_is_renewed_once_for_a_phone_number() {
    let env = Env::new();
    let (id, skey, _) = env.login("phone-stale-user");
    let (s, t) = env.v1("GET", &format!("/v1/apps/{APPID}/access_token"), None, None);
    assert_eq!(s, 200, "{t}");
    env.mock_post(
        "/__mock__/revoke_token",
        json!({"access_token": t["access_token"]}),
    );
    let (s, v) = v1_phone(&env, &id, &skey, "phone-s1");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["phone_info"], expected("phone-s1"));
    // The refused call and its retry with the renewed token.
    assert_eq!(env.calls(PHONE_PATH), 2);
}
