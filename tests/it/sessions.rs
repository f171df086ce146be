//! The session server end to end: the Wafer protocol, `/mina`, `/v1` sessions, every defined
//! error code, expiry by both clocks, upstream faults.

use crate::harness::*;
use serde_json::{json, Value};

/// Encrypt `data` the way a mini program's encryptedData is made, with this user's session key.
fn encrypt_for(env: &Env, appid: &str, code: &str, data: &Value) -> (String, String) {
    use base64::Engine;
    let key = env.session_key(appid, code);
    let iv = [7u8; 16];
    let enc =
        wafer::crypto::encrypt_user_data(&key, data.to_string().as_bytes(), Some(&iv)).unwrap();
    (enc, base64::engine::general_purpose::STANDARD.encode(iv))
}

#[test]
fn login_answers_the_wafer_shape_byte_for_byte() {
    let env = Env::new();
    let (status, text) = env.post_raw(
        "/mina_auth/",
        br#"{"version":1,"componentName":"MA","interface":{"interfaceName":"qcloud.cam.id_skey","para":{"code":"alice"}}}"#,
    );
    assert_eq!(status, 200);
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(keys(&r), ENVELOPE_KEYS);
    assert_eq!(code(&r), (0, "NEW_SESSION_SUCCESS"));
    assert_eq!(r["version"], 1);
    assert_eq!(r["componentName"], "MA");
    let d = &r["returnData"];
    assert_eq!(keys(d), ["id", "skey", "user_info", "duration", "openid"]);
    for k in ["id", "skey"] {
        let s = d[k].as_str().unwrap();
        assert!(wafer::ids::is_hex32(s), "{k} = {s}");
    }
    assert!(d["user_info"].is_null());
    assert_eq!(d["duration"], 2_592_000);
    assert!(text.starts_with(
        r#"{"returnCode":0,"returnMessage":"NEW_SESSION_SUCCESS","returnData":{"id":""#
    ));
    // The skey is stored only as a hash.
    let skey = d["skey"].as_str().unwrap();
    let stored: Vec<u8> = env.value("SELECT skey_hash FROM sessions");
    assert_eq!(stored, wafer::ids::skey_hash(skey).to_vec());
    let dump: String = env.value(
        "SELECT group_concat(concat(users.id, sessions.user_id))
         FROM sessions JOIN users ON users.id = sessions.user_id",
    );
    assert!(!dump.contains(skey));
}

#[test]
fn the_three_paths_answer_the_protocol() {
    let env = Env::new();
    for path in ["/mina_auth/", "/mina_auth", "/"] {
        let (s, t) = env.post_raw(
            path,
            br#"{"interface":{"interfaceName":"qcloud.cam.id_skey","para":{"code":"x"}}}"#,
        );
        assert_eq!(s, 200);
        assert!(t.contains("\"returnCode\":0"), "{path}: {t}");
    }
}

#[test]
fn lifecycle_second_device_auth_and_user_info() {
    let env = Env::new();
    let (id1, skey1, _) = env.login("bob");
    let (id2, skey2, r2) = env.login("bob");
    assert_eq!(code(&r2), (0, "UPDATE_SESSION_SUCCESS"));
    assert_eq!(id1, id2, "id is stable per (app, openid)");
    assert_ne!(skey1, skey2, "every login issues a new skey");
    for skey in [&skey1, &skey2] {
        let r = env.wafer("qcloud.cam.auth", json!({"id": id1, "skey": skey}));
        assert_eq!(code(&r), (0, "AUTH_SUCCESS"));
        assert_eq!(keys(&r["returnData"]), ["user_info"]);
        assert!(r["returnData"]["user_info"].is_null());
    }
    // Another user is another id; a skey does not work with someone else's id.
    let (id3, skey3, _) = env.login("carol");
    assert_ne!(id3, id1);
    let r = env.wafer("qcloud.cam.auth", json!({"id": id1, "skey": skey3}));
    assert_eq!(
        r,
        json!({"returnCode":60012,"returnMessage":"AUTH_FAIL","returnData":"","version":1,"componentName":"MA"})
    );

    // userinfo stores the decrypted data; auth and the next login return it as an object.
    let profile = json!({"nickName": "Bob", "watermark": {"appid": APPID, "timestamp": 1}});
    let (enc, iv) = encrypt_for(&env, APPID, "bob", &profile);
    let r = env.wafer(
        "qcloud.cam.userinfo",
        json!({"id": id1, "skey": skey2, "encrypt_data": enc, "iv": iv}),
    );
    assert_eq!(code(&r), (0, "UPDATE_USERINFO_SUCCESS"));
    assert_eq!(keys(&r["returnData"]), ["id", "skey", "appid", "user_info"]);
    assert_eq!(r["returnData"]["appid"], APPID);
    assert_eq!(r["returnData"]["user_info"]["nickName"], "Bob");
    let r = env.wafer("qcloud.cam.auth", json!({"id": id1, "skey": skey1}));
    assert_eq!(r["returnData"]["user_info"]["nickName"], "Bob");
}

#[test]
fn login_with_encrypted_data_and_decrypt() {
    let env = Env::new();
    // The session_key is known to the fake WeChat before login, so the client can encrypt.
    let key = "tiihtNczf5v6AKRyjwEUhQ==";
    env.mock_post(
        "/__mock__/session_key",
        json!({"js_code": "dana", "session_key": key}),
    );
    let data = json!({"nickName": "Dana", "watermark": {"appid": APPID, "timestamp": 1}});
    let enc = wafer::crypto::encrypt_user_data(key, data.to_string().as_bytes(), Some(&[7u8; 16]))
        .unwrap();
    let iv = "BwcHBwcHBwcHBwcHBwcHBw==";
    let r = env.wafer(
        "qcloud.cam.id_skey",
        json!({"code": "dana", "encrypt_data": enc, "iv": iv}),
    );
    assert_eq!(code(&r), (0, "NEW_SESSION_SUCCESS"));
    assert_eq!(r["returnData"]["user_info"]["nickName"], "Dana");
    let (id, skey) = (
        r["returnData"]["id"].clone(),
        r["returnData"]["skey"].clone(),
    );

    let run = json!({"stepInfoList": [{"timestamp": 1, "step": 100}], "watermark": {"appid": APPID, "timestamp": 2}});
    let (enc, iv) = encrypt_for(&env, APPID, "dana", &run);
    let r = env.wafer(
        "qcloud.cam.decrypt",
        json!({"id": id, "skey": skey, "encrypt_data": enc, "iv": iv}),
    );
    assert_eq!(code(&r), (0, "DECRYPT_SUCCESS"));
    assert_eq!(r["returnData"], run);

    // Legacy scheme: no iv, IV = key, no watermark.
    let key = env.session_key(APPID, "dana");
    let legacy = wafer::crypto::encrypt_user_data(&key, br#"{"nickName":"Old"}"#, None).unwrap();
    let r = env.wafer(
        "qcloud.cam.decrypt",
        json!({"id": id, "skey": skey, "encrypt_data": legacy}),
    );
    assert_eq!(code(&r), (0, "DECRYPT_SUCCESS"));
    assert_eq!(r["returnData"]["nickName"], "Old");
}

#[test]
fn decryption_failures_are_60021_and_write_nothing() {
    let env = Env::new();
    let (id, skey, _) = env.login("erin");
    let key = env.session_key(APPID, "erin");
    let good_iv = "AAAAAAAAAAAAAAAAAAAAAA==";
    let wrong_mark = wafer::crypto::encrypt_user_data(
        &key,
        json!({"watermark": {"appid": "wxsomeoneelse0001"}})
            .to_string()
            .as_bytes(),
        Some(&[0u8; 16]),
    )
    .unwrap();
    let other_key = wafer::crypto::encrypt_user_data(
        "AAAAAAAAAAAAAAAAAAAAAA==",
        json!({"watermark": {"appid": APPID}})
            .to_string()
            .as_bytes(),
        Some(&[0u8; 16]),
    )
    .unwrap();
    let not_json = wafer::crypto::encrypt_user_data(&key, b"not json", Some(&[0u8; 16])).unwrap();
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("bad base64", "!!!not base64!!!".into(), Some(good_iv)),
        ("bad iv", other_key.clone(), Some("short")),
        ("wrong key", other_key, Some(good_iv)),
        ("truncated", wrong_mark[..20].to_string(), Some(good_iv)),
        ("not a block multiple", "AAAA".into(), Some(good_iv)),
        ("wrong watermark", wrong_mark, Some(good_iv)),
        ("plaintext not JSON", not_json, Some(good_iv)),
    ];
    let before = (env.count("sessions"), env.count("users"));
    for (what, enc, iv) in cases {
        let mut para = json!({"id": id, "skey": skey, "encrypt_data": enc});
        if let Some(iv) = iv {
            para["iv"] = json!(iv);
        }
        let r = env.wafer("qcloud.cam.decrypt", para.clone());
        assert_eq!(code(&r), (60021, "DECRYPT_FAIL"), "{what}");
        assert_eq!(r["returnData"], "", "{what}");
        // A login carrying the same bad data fails the same way and stores nothing.
        para["code"] = json!("frank");
        let r = env.wafer("qcloud.cam.id_skey", para);
        assert_eq!(code(&r), (60021, "DECRYPT_FAIL"), "login with {what}");
    }
    assert_eq!((env.count("sessions"), env.count("users")), before);
}

#[test]
fn envelope_errors_in_contract_order() {
    let env = Env::new();
    let cases: &[(&str, &[u8], i64, &str)] = &[
        ("not JSON", b"{nope", 1009, "REQUEST_IS_NOT_JSON"),
        ("empty body", b"", 1009, "REQUEST_IS_NOT_JSON"),
        // JSON that is not an object is 1002, as the original PHP server answers.
        ("JSON array", b"[1,2]", 1002, "NO_INTERFACENAME_PARA"),
        ("JSON string", b"\"x\"", 1002, "NO_INTERFACENAME_PARA"),
        ("JSON number", b" 7 ", 1002, "NO_INTERFACENAME_PARA"),
        ("JSON null", b"null", 1002, "NO_INTERFACENAME_PARA"),
        ("JSON then junk", b"[1] x", 1009, "REQUEST_IS_NOT_JSON"),
        ("no interface", b"{}", 1002, "NO_INTERFACENAME_PARA"),
        ("interface not object", br#"{"interface":3}"#, 1002, "NO_INTERFACENAME_PARA"),
        ("no interfaceName", br#"{"interface":{"para":{}}}"#, 1002, "NO_INTERFACENAME_PARA"),
        ("interfaceName number", br#"{"interface":{"interfaceName":5,"para":{}}}"#, 1002, "NO_INTERFACENAME_PARA"),
        ("no para", br#"{"interface":{"interfaceName":"qcloud.cam.auth"}}"#, 1011, "NO_PARA"),
        ("para not object", br#"{"interface":{"interfaceName":"qcloud.cam.auth","para":"x"}}"#, 1011, "NO_PARA"),
        ("unknown name", br#"{"interface":{"interfaceName":"qcloud.cam.nope","para":{}}}"#, 1010, "INTERFACENAME_PARA_ERR"),
        ("no para, unknown name", br#"{"interface":{"interfaceName":"qcloud.cam.nope"}}"#, 1011, "NO_PARA"),
        ("missing code", br#"{"interface":{"interfaceName":"qcloud.cam.id_skey","para":{}}}"#, 1003, "PARA_ERR"),
        ("code number", br#"{"interface":{"interfaceName":"qcloud.cam.id_skey","para":{"code":5}}}"#, 1003, "PARA_ERR"),
        ("iv number", br#"{"interface":{"interfaceName":"qcloud.cam.id_skey","para":{"code":"a","encrypt_data":"x","iv":1}}}"#, 1003, "PARA_ERR"),
        ("missing skey", br#"{"interface":{"interfaceName":"qcloud.cam.auth","para":{"id":"a"}}}"#, 1003, "PARA_ERR"),
        ("id object", br#"{"interface":{"interfaceName":"qcloud.cam.auth","para":{"id":{},"skey":"a"}}}"#, 1003, "PARA_ERR"),
        ("decrypt without data", br#"{"interface":{"interfaceName":"qcloud.cam.decrypt","para":{"id":"a","skey":"b"}}}"#, 1003, "PARA_ERR"),
        ("userinfo without iv", br#"{"interface":{"interfaceName":"qcloud.cam.userinfo","para":{"id":"a","skey":"b","encrypt_data":"c"}}}"#, 1003, "PARA_ERR"),
        ("appid number", br#"{"interface":{"interfaceName":"qcloud.cam.id_skey","para":{"code":"a","appid":1}}}"#, 1003, "PARA_ERR"),
        ("unknown appid", br#"{"interface":{"interfaceName":"qcloud.cam.id_skey","para":{"code":"a","appid":"wxnope"}}}"#, 1012, "NO_APPID"),
        ("malformed id", br#"{"interface":{"interfaceName":"qcloud.cam.auth","para":{"id":"a","skey":"b"}}}"#, 60012, "AUTH_FAIL"),
        ("unknown session", br#"{"interface":{"interfaceName":"qcloud.cam.auth","para":{"id":"0123456789abcdef0123456789abcdef","skey":"0123456789abcdef0123456789abcdef"}}}"#, 60012, "AUTH_FAIL"),
    ];
    for (what, body, want_code, want_msg) in cases {
        let (status, text) = env.post_raw("/mina_auth/", body);
        assert_eq!(status, 200, "{what}");
        let r: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(keys(&r), ENVELOPE_KEYS, "{what}");
        assert_eq!(code(&r), (*want_code, *want_msg), "{what}");
        assert_eq!(r["returnData"], "", "{what}");
    }
    assert_eq!(env.count("sessions"), 0);
}

#[test]
fn oversized_bodies_are_refused_and_the_server_goes_on() {
    let env = Env::with(|c| c.server.max_body_bytes = 4096);
    let big = vec![b'x'; 100_000];
    let (status, text) = env.post_raw("/mina_auth/", &big);
    assert_eq!(status, 413, "{text}");
    let (status, _) = env.post_raw("/v1/sessions", &big);
    assert_eq!(status, 413);
    env.login("after-big-body");
}

#[test]
fn appid_picks_the_app_and_the_fallback_needs_exactly_one() {
    let env = Env::with(|c| c.apps.push(app("wxsecondapp00002")));
    let r = env.wafer("qcloud.cam.id_skey", json!({"code": "gina"}));
    assert_eq!(code(&r), (1012, "NO_APPID"), "two apps and no appid");
    let r = env.wafer(
        "qcloud.cam.id_skey",
        json!({"code": "gina", "appid": "wxsecondapp00002"}),
    );
    assert_eq!(code(&r), (0, "NEW_SESSION_SUCCESS"));
    let (id, skey) = (
        r["returnData"]["id"].clone(),
        r["returnData"]["skey"].clone(),
    );
    let r = env.wafer(
        "qcloud.cam.id_skey",
        json!({"code": "gina", "appid": APPID}),
    );
    assert_eq!(
        code(&r),
        (0, "NEW_SESSION_SUCCESS"),
        "the same user in another app is another user"
    );
    assert_ne!(r["returnData"]["id"], id);
    let r = env.wafer(
        "qcloud.cam.auth",
        json!({"id": id, "skey": skey, "appid": "wxsecondapp00002"}),
    );
    assert_eq!(code(&r), (0, "AUTH_SUCCESS"));
    let r = env.wafer(
        "qcloud.cam.auth",
        json!({"id": id, "skey": skey, "appid": APPID}),
    );
    assert_eq!(code(&r), (60012, "AUTH_FAIL"), "a session of another app");
    let r = env.wafer(
        "qcloud.cam.auth",
        json!({"id": id, "skey": skey, "appid": "wxnosuchapp00003"}),
    );
    assert_eq!(
        code(&r),
        (1012, "NO_APPID"),
        "a valid session, an unknown app"
    );
    let r = env.wafer("qcloud.cam.auth", json!({"id": id, "skey": skey}));
    assert_eq!(code(&r), (1012, "NO_APPID"));
    // An official account does not count for the single-app fallback.
    let env = Env::with(|c| {
        let mut oa = app("wxofficial000001");
        oa.kind = "official".into();
        c.apps.push(oa);
    });
    env.login("hank");
}

#[test]
fn expiry_by_both_clocks_and_sliding() {
    let env = Env::with(|c| c.apps[0].session_secs = 2);
    let (id, skey, r) = env.login("ivy");
    assert_eq!(r["returnData"]["duration"], 2);
    let auth = || code(&env.wafer("qcloud.cam.auth", json!({"id": id, "skey": skey}))).0;
    assert_eq!(auth(), 0);
    // Sliding: each success within the window extends it.
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(1200));
        assert_eq!(auth(), 0);
    }
    std::thread::sleep(std::time::Duration::from_millis(3200));
    assert_eq!(auth(), 60012, "idle past session_secs");

    // Absolute: move the session's creation back past login_days, however recent the last visit.
    let env = Env::new();
    let (id, skey, _) = env.login("jack");
    let auth = || code(&env.wafer("qcloud.cam.auth", json!({"id": id, "skey": skey}))).0;
    assert_eq!(auth(), 0);
    env.exec(&format!(
        "UPDATE sessions SET expires_at = {}",
        wafer::ids::now() - 1
    ));
    assert_eq!(auth(), 60012, "past login_days");
}

#[test]
fn slides_are_written_behind_together_and_never_undo_a_revocation() {
    sqlite_only!("counts commits with SQLite's data_version; on MySQL slides are written at once");
    // A hundred sessions last seen two minutes ago, each checked once: every check slides its
    // session. The slides are held in memory and written together (about every second), not a
    // commit per check; they reach the file within about two seconds; a session revoked while
    // its slide is pending stays revoked; shutdown writes what is pending. (Before: each check
    // committed its own slide, 100 commits for 100 checks.)
    let mut env = Env::new();
    let n = 100;
    let sessions: Vec<(String, String)> = (0..n)
        .map(|i| {
            let (id, skey, _) = env.login(&format!("behind-{i}"));
            (id, skey)
        })
        .collect();
    let (revoked_id, revoked_skey, _) = env.login("behind-revoked");
    env.exec("UPDATE sessions SET last_visit = last_visit - 120");
    let seen_before = env.scalar("SELECT max(last_visit) FROM sessions");
    let auth = |id: &str, skey: &str| {
        code(&env.wafer("qcloud.cam.auth", json!({"id": id, "skey": skey}))).0
    };
    let started = std::time::Instant::now();
    let committed = env.commits_during(&sessions, |(id, skey)| assert_eq!(auth(id, skey), 0));
    let took = started.elapsed();
    eprintln!("sessions: {n} sliding checks in {took:?} committed during {committed} of them");
    assert!(
        committed as u64 <= took.as_secs() + 2,
        "{n} sliding checks in {took:?} committed during {committed} of them"
    );

    // A session checked (its slide pending), then revoked at once: the flush does not bring it
    // back.
    assert_eq!(auth(&revoked_id, &revoked_skey), 0);
    let (s, _) = env.v1(
        "POST",
        "/v1/sessions/revoke",
        Some(json!({"id": revoked_id, "skey": revoked_skey})),
        None,
    );
    assert_eq!(s, 204);

    // Every slide reaches the file within about two seconds.
    let stale = || {
        env.scalar(&format!(
            "SELECT count(*) FROM sessions WHERE last_visit <= {seen_before}"
        ))
    };
    let deadline = started + std::time::Duration::from_millis(2500);
    while stale() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} slides not written after {:?}",
            stale(),
            started.elapsed()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(
        env.scalar(&format!(
            "SELECT count(*) FROM sessions WHERE user_id = '{revoked_id}'"
        )),
        0,
        "the revoked session came back"
    );
    assert_eq!(auth(&revoked_id, &revoked_skey), 60012);

    // A slide still pending when the server stops is written by the shutdown.
    let (id, skey) = &sessions[0];
    env.exec(&format!(
        "UPDATE sessions SET last_visit = last_visit - 120 WHERE user_id = '{id}'"
    ));
    let moved_back = env.scalar(&format!(
        "SELECT last_visit FROM sessions WHERE user_id = '{id}'"
    ));
    assert_eq!(auth(id, skey), 0);
    env.server.take().unwrap().shutdown();
    let after = env.scalar(&format!(
        "SELECT last_visit FROM sessions WHERE user_id = '{id}'"
    ));
    assert!(
        after > moved_back,
        "the pending slide was lost at shutdown: last_visit {after}, {moved_back} before"
    );
}

#[test]
fn sessions_per_user_are_capped() {
    let env = Env::new();
    let first = env.login("kim");
    for _ in 0..wafer::store::MAX_SESSIONS_PER_USER {
        env.login("kim");
    }
    let r = env.wafer("qcloud.cam.auth", json!({"id": first.0, "skey": first.1}));
    assert_eq!(code(&r).0, 60012, "the oldest device was evicted");
    assert_eq!(env.count("sessions"), wafer::store::MAX_SESSIONS_PER_USER);
}

#[test]
fn upstream_faults_map_to_their_codes_and_free_the_worker() {
    let env = Env::with(|c| c.wechat.timeout_ms = 300);
    let path = "/sns/jscode2session";
    let cases = [
        (
            "HTTP 502 with HTML",
            json!({"path": path, "status": 502}),
            1005,
            "WEIXIN_NET_ERR",
        ),
        (
            "200 with HTML",
            json!({"path": path, "body": "<html>oops</html>"}),
            1005,
            "WEIXIN_NET_ERR",
        ),
        (
            "slow past the timeout",
            json!({"path": path, "delay_ms": 1500}),
            1005,
            "WEIXIN_NET_ERR",
        ),
        (
            "busy",
            json!({"path": path, "errcode": -1}),
            40029,
            "WEIXIN_CODE_ERR",
        ),
        (
            "rate limited",
            json!({"path": path, "errcode": 45011}),
            40029,
            "WEIXIN_CODE_ERR",
        ),
    ];
    for (what, fault, want, msg) in cases {
        env.fail(fault);
        let started = std::time::Instant::now();
        let r = env.wafer("qcloud.cam.id_skey", json!({"code": "lee"}));
        assert_eq!(code(&r), (want, msg), "{what}");
        assert!(
            started.elapsed() < std::time::Duration::from_millis(1200),
            "{what} took {:?}",
            started.elapsed()
        );
    }
    for (c, want) in [("bad-code", 40029), ("used-code", 40029)] {
        assert_eq!(
            code(&env.wafer("qcloud.cam.id_skey", json!({"code": c}))).0,
            want
        );
    }
    assert_eq!(env.count("sessions"), 0, "no fault wrote anything");
    env.login("lee");

    // WeChat not listening at all.
    let env = Env::with(|c| {
        c.wechat.api_base = "http://127.0.0.1:9".into();
    });
    assert_eq!(
        code(&env.wafer("qcloud.cam.id_skey", json!({"code": "x"}))),
        (1005, "WEIXIN_NET_ERR")
    );
}

#[test]
fn mina_dialect() {
    let env = Env::new();
    let app_id = env.app_id(APPID);
    let (s, t) = env.request(
        "POST",
        &env.url("/mina/login"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(format!("code=mina-user&app_id={app_id}").as_bytes()),
    );
    assert_eq!(s, 200);
    let r: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(keys(&r), ["ok", "msg", "data"]);
    assert_eq!(r["ok"], "success");
    assert_eq!(keys(&r["data"]), ["uuid", "skey", "user_info", "duration"]);
    let (uuid, skey) = (r["data"]["uuid"].clone(), r["data"]["skey"].clone());
    let body = json!({"uuid": uuid, "skey": skey, "app_id": app_id}).to_string();
    let (_, t) = env.post_raw("/mina/auth", body.as_bytes());
    let r: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(
        (r["ok"].as_str(), r["data"]["user_info"].is_null()),
        (Some("success"), true),
        "{r}"
    );
    // A form without its Content-Type still works.
    let (_, t) = env.post_raw(
        "/mina/auth",
        format!(
            "uuid={}&skey={}&app_id={app_id}",
            uuid.as_str().unwrap(),
            skey.as_str().unwrap()
        )
        .as_bytes(),
    );
    assert!(t.contains("\"ok\":\"success\""), "{t}");
    for (body, msg) in [
        (
            json!({"uuid": uuid, "skey": skey, "app_id": app_id + 1}).to_string(),
            "NO_APPID",
        ),
        (
            json!({"uuid": uuid, "skey": "0".repeat(32), "app_id": app_id}).to_string(),
            "AUTH_FAIL",
        ),
        (json!({"uuid": uuid}).to_string(), "PARA_ERR"),
        ("{not json".to_string(), "REQUEST_IS_NOT_JSON"),
    ] {
        let (s, t) = env.post_raw("/mina/auth", body.as_bytes());
        assert_eq!(s, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&t).unwrap(),
            json!({"ok": "fail", "msg": msg})
        );
    }
    let (_, t) = env.post_raw(
        "/mina/login",
        json!({"code": "bad-1", "app_id": app_id})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(
        serde_json::from_str::<Value>(&t).unwrap(),
        json!({"ok": "fail", "msg": "WEIXIN_CODE_ERR"})
    );
}

#[test]
fn v1_sessions() {
    let env = Env::new();
    let (s, r) = env.v1(
        "POST",
        "/v1/sessions",
        Some(json!({"appid": APPID, "code": "union-mo"})),
        None,
    );
    assert_eq!(s, 201, "{r}");
    assert_eq!(
        keys(&r),
        ["id", "skey", "openid", "unionid", "user_info", "expires_at"]
    );
    assert!(r["expires_at"].as_i64().unwrap() > wafer::ids::now());
    let creds = json!({"id": r["id"], "skey": r["skey"]});
    let (s, c) = env.v1("POST", "/v1/sessions/check", Some(creds.clone()), None);
    assert_eq!(s, 200);
    assert_eq!(c["appid"], APPID);
    assert_eq!(c["openid"], r["openid"]);
    assert_eq!(c["unionid"], r["unionid"]);
    assert!(c.get("session_key").is_none());

    let data = json!({"phoneNumber": "13800000000", "watermark": {"appid": APPID, "timestamp": 1}});
    let (enc, iv) = encrypt_for(&env, APPID, "union-mo", &data);
    let (s, d) = env.v1(
        "POST",
        "/v1/sessions/decrypt",
        Some(json!({"id": r["id"], "skey": r["skey"], "encrypted_data": enc, "iv": iv})),
        None,
    );
    assert_eq!((s, &d["data"]), (200, &data));

    let (s, _) = env.v1("POST", "/v1/sessions/revoke", Some(creds.clone()), None);
    assert_eq!(s, 204);
    let (s, e) = env.v1("POST", "/v1/sessions/check", Some(creds), None);
    assert_eq!((s, e["error"].as_str()), (401, Some("invalid_session")));

    for (body, status, error) in [
        (json!({"code": "x"}), 400, "bad_request"),
        (json!({"appid": APPID, "code": 5}), 400, "bad_request"),
        (json!({"appid": "wxnope", "code": "x"}), 404, "unknown_app"),
        (
            json!({"appid": APPID, "code": "bad-x"}),
            400,
            "invalid_code",
        ),
    ] {
        let (s, e) = env.v1("POST", "/v1/sessions", Some(body.clone()), None);
        assert_eq!((s, e["error"].as_str()), (status, Some(error)), "{body}");
    }
    let (s, e) = env.v1(
        "POST",
        "/v1/sessions",
        Some(json!({"appid": APPID, "code": "bad-x"})),
        None,
    );
    assert_eq!((s, e["errcode"].as_i64()), (400, Some(40029)));
    let (s, t) = env.post_raw("/v1/sessions/check", b"[]");
    assert_eq!(s, 400, "{t}");
    let (s, _) = env.v1("GET", "/v1/nothing", None, None);
    assert_eq!(s, 404);
}

#[test]
fn api_key_guards_v1_but_not_the_session_protocol() {
    let env = Env::with(|c| c.server.api_key = wafer::secret::Secret::new("k3y"));
    let body = json!({"appid": APPID, "code": "nina"});
    let (s, e) = env.v1("POST", "/v1/sessions", Some(body.clone()), None);
    assert_eq!((s, e["error"].as_str()), (401, Some("unauthorized")));
    let (s, _) = env.v1("POST", "/v1/sessions", Some(body.clone()), Some("wrong"));
    assert_eq!(s, 401);
    let (s, _) = env.v1("POST", "/v1/sessions", Some(body), Some("k3y"));
    assert_eq!(s, 201);
    env.login("nina");
}

#[test]
fn healthz_and_metrics() {
    let env = Env::new();
    env.login("olga");
    let (s, t) = env.request("GET", &env.url("/healthz"), &[], None);
    assert_eq!((s, t.as_str()), (200, r#"{"status":"ok"}"#));
    let (s, t) = env.request("GET", &env.url("/metrics"), &[], None);
    assert_eq!(s, 200);
    assert!(
        t.contains("wafer_requests_total{route=\"/mina_auth/\",status=\"200\"} 1"),
        "{t}"
    );
    assert!(
        t.contains("wafer_upstream_calls_total{endpoint=\"/sns/jscode2session\",errcode=\"0\"} 1"),
        "{t}"
    );
    assert!(t.contains("wafer_live_sessions 1"), "{t}");
}

#[test]
fn wechats_published_vector_end_to_end() {
    // WeChat's WXBizDataCrypt demo: app wx4f4bc4dec97d474b, session_key tiihtNczf5v6AKRyjwEUhQ==.
    let env = Env::with(|c| c.apps = vec![app("wx4f4bc4dec97d474b")]);
    env.mock_post(
        "/__mock__/session_key",
        json!({"js_code": "demo", "session_key": "tiihtNczf5v6AKRyjwEUhQ=="}),
    );
    let r = env.wafer(
        "qcloud.cam.id_skey",
        json!({"code": "demo", "encrypt_data": DEMO_ENCRYPTED, "iv": "r7BXXKkLb8qrSNn05n0qiA=="}),
    );
    assert_eq!(code(&r), (0, "NEW_SESSION_SUCCESS"), "{r}");
    let u = &r["returnData"]["user_info"];
    assert_eq!(
        (u["nickName"].as_str(), u["city"].as_str()),
        (Some("Band"), Some("Guangzhou")),
        "{u}"
    );
    assert_eq!(
        u["watermark"],
        json!({"timestamp": 1477314187, "appid": "wx4f4bc4dec97d474b"})
    );
}

const DEMO_ENCRYPTED: &str = "CiyLU1Aw2KjvrjMdj8YKliAjtP4gsMZMQmRzooG2xrDcvSnxIMXFufNstNGTyaGS9uT5geRa0W4oTOb1WT7fJlAC+oNPdbB+3hVbJSRgv+4lGOETKUQz6OYStslQ142dNCuabNPGBzlooOmB231qMM85d2/fV6ChevvXvQP8Hkue1poOFtnEtpyxVLW1zAo6/1Xx1COxFvrc2d7UL/lmHInNlxuacJXwu0fjpXfz/YqYzBIBzD6WUfTIF9GRHpOn/Hz7saL8xz+W//FRAUid1OksQaQx4CMs8LOddcQhULW4ucetDf96JcR3g0gfRK4PC7E/r7Z6xNrXd2UIeorGj5Ef7b1pJAYB6Y5anaHqZ9J6nKEBvB4DnNLIVWSgARns/8wR2SiRS7MNACwTyrGvt9ts8p12PKFdlqYTopNHR1Vf7XjfhQlVsAJdNiKdYmYVoKlaRv85IfVunYzO0IKXsyl7JCUjCpoG20f0a04COwfneQAGGwd5oa+T8yO5hzuyDb/XcxxmK01EpqOyuxINew==";

#[test]
fn expired_sessions_are_purged_by_hand_and_at_start_up() {
    let mut env = Env::new();
    let (id, live, _) = env.login("pam");
    env.login("quinn");
    env.login("rosa");
    // Users are stored in login order: quinn's session is past the absolute clock, rosa's idle
    // past the sliding one, pam's live.
    let user = |n: i64| -> String {
        env.value(&format!(
            "SELECT user_id FROM sessions ORDER BY seq LIMIT 1 OFFSET {n}"
        ))
    };
    env.exec(&format!(
        "UPDATE sessions SET expires_at = {} WHERE user_id = '{}'",
        wafer::ids::now() - 1,
        user(1)
    ));
    env.exec(&format!(
        "UPDATE sessions SET last_visit = last_visit - idle_secs - {} WHERE user_id = '{}'",
        wafer::store::SLIDE_GRACE_SECS + 10,
        user(2)
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wafer"))
        .args(["session", "purge", "--db", &env.db_arg()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "2 expired session(s) deleted"
    );
    assert_eq!(env.count("sessions"), 1);
    let r = env.wafer("qcloud.cam.auth", json!({"id": id, "skey": live}));
    assert_eq!(code(&r).0, 0, "the live session survives");

    // The server's own purger runs at start-up.
    env.exec(&format!(
        "UPDATE sessions SET expires_at = {}",
        wafer::ids::now() - 1
    ));
    env.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while env.count("sessions") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the start-up purge did not run"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn the_mina_routes_answer_with_a_trailing_slash_too() {
    let env = Env::new();
    let app_id = env.app_id(APPID);
    let (s, t) = env.post_raw(
        "/mina/login/",
        json!({"code": "mina-slash", "app_id": app_id})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(s, 200, "{t}");
    let r: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(r["ok"], "success", "{r}");
    let body = json!({"uuid": r["data"]["uuid"], "skey": r["data"]["skey"], "app_id": app_id});
    let (s, t) = env.post_raw("/mina/auth/", body.to_string().as_bytes());
    assert_eq!(s, 200, "{t}");
    assert_eq!(
        serde_json::from_str::<Value>(&t).unwrap()["ok"],
        "success",
        "{t}"
    );
}

/// The raw answer to an envelope call (the text, to compare two answers byte for byte).
fn envelope_text(env: &Env, name: &str, para: &Value) -> String {
    let body = json!({"version": 1, "componentName": "MA",
                      "interface": {"interfaceName": name, "para": para}});
    let (status, text) = env.post_raw("/mina_auth/", body.to_string().as_bytes());
    assert_eq!(status, 200, "{text}");
    text
}

#[test]
fn auth_carrying_encrypt_data_is_the_decrypt_call() {
    let env = Env::new();
    let (id, skey, _) = env.login("seed-decrypt");
    let (with_iv, iv) = encrypt_for(
        &env,
        APPID,
        "seed-decrypt",
        &json!({"nickName": "Band", "watermark": {"appid": APPID, "timestamp": 1}}),
    );
    let key = env.session_key(APPID, "seed-decrypt");
    let legacy = wafer::crypto::encrypt_user_data(&key, br#"{"nickName":"Old"}"#, None).unwrap();
    let cases = [
        json!({"id": id, "skey": skey, "encrypt_data": with_iv, "iv": iv}),
        json!({"id": id, "skey": skey, "encrypt_data": legacy}),
        json!({"id": id, "skey": skey, "encrypt_data": legacy, "iv": null}),
        json!({"id": id, "skey": skey, "encrypt_data": "bm90IGRhdGE=", "iv": iv}),
        json!({"id": id, "skey": "0".repeat(32), "encrypt_data": with_iv, "iv": iv}),
    ];
    for para in &cases {
        let decrypt = envelope_text(&env, "qcloud.cam.decrypt", para);
        assert_eq!(
            envelope_text(&env, "qcloud.cam.auth", para),
            decrypt,
            "{para}"
        );
    }
    let r: Value =
        serde_json::from_str(&envelope_text(&env, "qcloud.cam.auth", &cases[0])).unwrap();
    assert_eq!(code(&r), (0, "DECRYPT_SUCCESS"), "{r}");
    assert_eq!(r["returnData"]["nickName"], "Band");
    // Without data (or with it empty) it is the session check it always was.
    for para in [
        json!({"id": id, "skey": skey}),
        json!({"id": id, "skey": skey, "encrypt_data": ""}),
    ] {
        let r = env.wafer("qcloud.cam.auth", para);
        assert_eq!(code(&r), (0, "AUTH_SUCCESS"), "{r}");
    }
}
