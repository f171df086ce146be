//! Secrets at rest (CONTRACT §8, §11): the database files are readable by their owner only.

use crate::cli::{run, wafer};
use crate::harness::sqlite_only;
use crate::harness::Env;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The database and the -wal and -shm files beside it.
fn db_files(db: &Path) -> [std::path::PathBuf; 3] {
    let with = |suffix: &str| {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        std::path::PathBuf::from(s)
    };
    [db.to_path_buf(), with("-wal"), with("-shm")]
}

#[test]
fn the_database_files_are_created_owner_only() {
    sqlite_only!("the SQLite file's mode");
    let env = Env::new();
    env.login("files-0600");
    for f in db_files(&env.db_path()) {
        assert_eq!(mode(&f), 0o600, "{} while serving", f.display());
    }

    // The CLI creates its database the same way.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cli.db");
    let (ok, _, err) = run(wafer()
        .args(["app", "add", "--appid", "wxseal0000000001", "--secret", "s"])
        .arg("--db")
        .arg(&db));
    assert!(ok, "{err}");
    assert_eq!(mode(&db), 0o600, "created by the CLI");
}

#[test]
fn an_existing_world_readable_database_is_tightened_at_start() {
    sqlite_only!("the SQLite file's mode");
    let mut env = Env::new();
    env.login("files-0644");
    for f in db_files(&env.db_path()) {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    env.restart();
    env.login("files-0644-again");
    for f in db_files(&env.db_path()) {
        assert_eq!(mode(&f), 0o600, "{} after a restart", f.display());
    }
}

// ---- sealed values (CONTRACT §11) ----

use crate::component::{authorizer_token, component_token, push_event, push_ticket};
use crate::component::{CKEY, COMPONENT, CTOKEN};
use crate::harness::{code, APPID};
use serde_json::json;
use wafer::config::{ComponentDecl, Config};
use wafer::crypto::SealKey;
use wafer::secret::Secret;

const APP_SECRET: &str = "sealtest-app-secret-7f3a91";
const APP_TOKEN: &str = "sealtestcallbacktoken";
const APP_AES: &str = "SealTestEncodingAesKey0123456789abcdefghijk";
const NICK: &str = "NickSealedMarker";
const WORK_SECRET: &str = "sealtest-wecom-secret-51c2";
const COMPONENT_SECRET: &str = "sealtest-component-secret-9d0e";
const TICKET: &str = "ticket@@@sealtestverifyticket";
const AUTHORIZER: &str = "wxsealauthor0001";

/// A key file of 32 random bytes, 0600, in `dir`.
pub fn key_file(dir: &Path, name: &str, byte: u8) -> String {
    let p = dir.join(name);
    std::fs::write(&p, [byte; 32]).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.to_string_lossy().into_owned()
}

fn seal_config(c: &mut Config, key_file: Option<&str>) {
    c.storage.key_file = key_file.unwrap_or_default().to_string();
    c.apps[0].secret = Secret::new(APP_SECRET);
    c.apps[0].token = Some(Secret::new(APP_TOKEN));
    c.apps[0].aes_key = Some(Secret::new(APP_AES));
    c.components = vec![ComponentDecl {
        appid: COMPONENT.into(),
        secret: Secret::new(COMPONENT_SECRET),
        token: Secret::new(CTOKEN),
        aes_key: Secret::new(CKEY),
        prev_aes_key: None,
        redirect_uri: None,
        forward_url: None,
    }];
}

/// Log in with user data, fetch an app token, a WeCom token, a component token and an
/// authoriser's: every kind of secret gets stored. Returns (id, skey) of the session and the
/// plain values the database now holds that the test knows independently of wafer.
fn store_every_kind_of_secret(env: &Env) -> ((String, String), Vec<String>) {
    let login_code = "seal-user";
    let data = json!({"nickName": NICK, "watermark": {"appid": APPID, "timestamp": 1}});
    // "SealTestKey12345": a session_key pinned on the fake WeChat, so the client can encrypt.
    let session_key = "U2VhbFRlc3RLZXkxMjM0NQ==".to_string();
    env.mock_post(
        "/__mock__/session_key",
        json!({"js_code": login_code, "session_key": session_key}),
    );
    let iv = [7u8; 16];
    let enc =
        wafer::crypto::encrypt_user_data(&session_key, data.to_string().as_bytes(), Some(&iv))
            .unwrap();
    use base64::Engine;
    let iv = base64::engine::general_purpose::STANDARD.encode(iv);
    let r = env.wafer(
        "qcloud.cam.id_skey",
        json!({"code": login_code, "encrypt_data": enc, "iv": iv}),
    );
    assert_eq!(r["returnData"]["user_info"]["nickName"], NICK, "{r}");
    let session = (
        r["returnData"]["id"].as_str().unwrap().to_string(),
        r["returnData"]["skey"].as_str().unwrap().to_string(),
    );
    let r = env.wafer(
        "qcloud.cam.phone",
        json!({"id": session.0, "skey": session.1, "code": "seal-phone"}),
    );
    assert_eq!(code(&r), (0, "PHONE_SUCCESS"), "{r}");
    let phone = fake_wechat::phone_number_for("seal-phone");
    let (s, t) = env.v1("GET", &format!("/v1/apps/{APPID}/access_token"), None, None);
    assert_eq!(s, 200, "{t}");
    let app_token = t["access_token"].as_str().unwrap().to_string();
    let r = env.wafer(
        "qcloud.work.initagent",
        json!({"corpid": "wwsealcorp", "agentid": "1000002", "agentsecret": WORK_SECRET}),
    );
    assert_eq!(code(&r), (0, "INIT_AGENT_SUCCESS"));
    let r = env.wafer(
        "qcloud.work.access_token",
        json!({"corpid": "wwsealcorp", "agentid": "1000002"}),
    );
    let work_token = r["returnData"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(push_ticket(env, Some(TICKET)).0, 200);
    let (s, t) = component_token(env);
    assert_eq!(s, 200, "{t}");
    let component_token = t["access_token"].as_str().unwrap().to_string();
    let auth = env.mock_post(
        "/__mock__/component/authorize",
        json!({"component_appid": COMPONENT, "authorizer_appid": AUTHORIZER}),
    );
    let auth_code = auth["auth_code"].as_str().unwrap();
    let (s, body) = push_event(
        env,
        "authorized",
        &format!("<AuthorizerAppid>{AUTHORIZER}</AuthorizerAppid><AuthorizationCode>{auth_code}</AuthorizationCode><PreAuthCode>x</PreAuthCode>"),
    );
    assert_eq!((s, body.as_str()), (200, "success"));
    let (s, t) = authorizer_token(env, AUTHORIZER);
    assert_eq!(s, 200, "{t}");
    let authorizer_token = t["access_token"].as_str().unwrap().to_string();
    let known = [
        APP_SECRET,
        APP_TOKEN,
        APP_AES,
        &session_key,
        NICK,
        &phone,
        &app_token,
        WORK_SECRET,
        &work_token,
        COMPONENT_SECRET,
        CTOKEN,
        CKEY,
        TICKET,
        &component_token,
        &authorizer_token,
    ];
    (session, known.iter().map(|s| s.to_string()).collect())
}

/// Every value of every sealed column, in clear: opened with `key` (each must be sealed with
/// it), or as stored when there is none.
fn stored_plaintexts(env: &Env, key: Option<&SealKey>) -> Vec<String> {
    let mut out = Vec::new();
    for aad in wafer::store::SEALED {
        let (table, column) = aad.split_once('.').unwrap();
        for v in env.strings(&format!("SELECT {column} FROM {table}")) {
            out.push(match key {
                None => v,
                Some(k) => {
                    assert_eq!(wafer::crypto::sealed_key_id(&v), Some(k.id()), "{aad}: {v}");
                    String::from_utf8(k.open(aad, &v).unwrap()).unwrap()
                }
            });
        }
    }
    out
}

/// The database at rest, as a backup or a stolen disk would have it. A SQLite database: the
/// raw bytes of its file, its WAL and its shared-memory file. A MySQL database: every column of
/// every table, read with SELECT, and what `mysqldump` makes of it (when installed).
fn bytes_at_rest(env: &Env) -> Vec<u8> {
    let Some(mut c) = env.mysql_conn() else {
        return db_files(&env.db_path())
            .iter()
            .filter_map(|f| std::fs::read(f).ok())
            .flatten()
            .collect();
    };
    use mysql::prelude::Queryable;
    let columns: Vec<(String, String)> = c
        .query(
            "SELECT table_name, column_name FROM information_schema.columns
             WHERE table_schema = DATABASE() ORDER BY table_name, ordinal_position",
        )
        .unwrap();
    assert!(columns.len() > 40, "{columns:?}");
    let mut out = Vec::new();
    for (table, column) in &columns {
        let values: Vec<Option<Vec<u8>>> = c
            .query(format!("SELECT CAST(`{column}` AS BINARY) FROM `{table}`"))
            .unwrap();
        for v in values.into_iter().flatten() {
            out.extend_from_slice(&v);
            out.push(0);
        }
    }
    out.extend(mysqldump(env));
    out
}

/// `mysqldump` of the server's MySQL database (empty when the tool is not installed).
fn mysqldump(env: &Env) -> Vec<u8> {
    let opts = mysql::Opts::from_url(env.config.storage.url.expose()).unwrap();
    let dump = std::process::Command::new("mysqldump")
        .args(["--no-defaults", "--skip-comments", "-h"])
        .arg(opts.get_ip_or_hostname().to_string())
        .arg("-P")
        .arg(opts.get_tcp_port().to_string())
        .arg("-u")
        .arg(opts.get_user().unwrap_or_default())
        .arg(opts.get_db_name().unwrap())
        .env("MYSQL_PWD", opts.get_pass().unwrap_or_default())
        .output();
    match dump {
        Ok(d) => {
            assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
            assert!(
                String::from_utf8_lossy(&d.stdout).contains("INSERT INTO `users`"),
                "the dump holds the data"
            );
            d.stdout
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("mysqldump: {e}"),
    }
}

/// The values of `values` (8 bytes or longer) found in the database at rest.
fn found_at_rest(env: &Env, values: &[String]) -> Vec<String> {
    let bytes = bytes_at_rest(env);
    values
        .iter()
        .filter(|v| v.len() >= 8)
        .filter(|v| bytes.windows(v.len()).any(|w| w == v.as_bytes()))
        .cloned()
        .collect()
}

fn auth_ok(env: &Env, (id, skey): &(String, String)) -> serde_json::Value {
    let r = env.wafer("qcloud.cam.auth", json!({"id": id, "skey": skey}));
    assert_eq!(code(&r), (0, "AUTH_SUCCESS"), "{r}");
    r["returnData"]["user_info"].clone()
}

#[test]
fn with_a_key_file_the_database_files_reveal_no_secret() {
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "wafer.key", 0x5e);
    let env = Env::with(|c| seal_config(c, Some(&key)));
    let (session, known) = store_every_kind_of_secret(&env);
    let sealed_with = SealKey::new([0x5e; 32]);
    let stored = stored_plaintexts(&env, Some(&sealed_with));
    assert!(
        stored.len() >= known.len(),
        "{} sealed values",
        stored.len()
    );
    for k in &known {
        assert!(
            stored.iter().any(|s| s.contains(k.as_str())),
            "{k} is stored sealed"
        );
    }
    assert_eq!(found_at_rest(&env, &known), Vec::<String>::new());
    assert_eq!(found_at_rest(&env, &stored), Vec::<String>::new());
    assert_eq!(auth_ok(&env, &session)["nickName"], NICK);
}

#[test]
fn values_stored_in_clear_are_sealed_at_start_and_keep_working() {
    let keys = tempfile::tempdir().unwrap();
    let mut env = Env::with(|c| seal_config(c, None));
    let (session, known) = store_every_kind_of_secret(&env);
    // Without a key every secret is in the database at rest: the search below finds them.
    assert_eq!(found_at_rest(&env, &known), known);
    let stored = stored_plaintexts(&env, None);
    let (_, token) = env.v1("GET", &format!("/v1/apps/{APPID}/access_token"), None, None);
    let calls = env.calls("/cgi-bin/stable_token");

    env.config.storage.key_file = key_file(keys.path(), "wafer.key", 0x11);
    env.restart();
    stored_plaintexts(&env, Some(&SealKey::new([0x11; 32])));
    assert_eq!(found_at_rest(&env, &known), Vec::<String>::new());
    assert_eq!(found_at_rest(&env, &stored), Vec::<String>::new());
    // The same session, user data and hosted token, with no new upstream call.
    assert_eq!(auth_ok(&env, &session)["nickName"], NICK);
    let (_, again) = env.v1("GET", &format!("/v1/apps/{APPID}/access_token"), None, None);
    assert_eq!(again["access_token"], token["access_token"]);
    assert_eq!(env.calls("/cgi-bin/stable_token"), calls);
}

#[test]
fn a_sealed_database_refuses_no_key_a_wrong_key_and_a_loose_key_file() {
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "wafer.key", 0x22);
    let mut env = Env::with(|c| seal_config(c, Some(&key)));
    env.login("refusals");
    env.server.take().unwrap().shutdown();
    let id = SealKey::new([0x22; 32]).id().to_string();
    let wrong = key_file(keys.path(), "other.key", 0x23);
    let loose = key_file(keys.path(), "loose.key", 0x22);
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (key_file, says) in [
        (
            "",
            format!("the database is sealed (key id {id}): set storage.key_file"),
        ),
        (
            wrong.as_str(),
            format!("but the database is sealed with key id {id}: wrong key file"),
        ),
        (
            loose.as_str(),
            format!("storage.key_file {loose}: readable by others (mode 644)"),
        ),
    ] {
        let mut config = env.config.clone();
        config.storage.key_file = key_file.to_string();
        let e = wafer::http::start(config, false).err().expect("refused");
        assert!(e.contains(&says), "{key_file:?}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    // The data commands refuse the same way, with one line; with the key they work.
    let db = env.db_arg();
    let (ok, _, err) = run(wafer().args(["app", "list"]).arg("--db").arg(&db));
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("wafer: database ") && err.contains("set storage.key_file"),
        "{err}"
    );
    let (ok, out, err) = run(wafer()
        .args(["app", "list"])
        .arg("--db")
        .arg(&db)
        .env("WAFER_KEY_FILE", &key));
    assert!(ok, "{err}");
    assert!(out.contains(APPID), "{out}");
}

/// `qcloud.cam.auth` from another thread, as a client would.
fn check_over_http(url: &str, (id, skey): &(String, String)) -> Result<(), String> {
    let body = json!({"version": 1, "componentName": "MA", "interface": {"interfaceName": "qcloud.cam.auth", "para": {"id": id, "skey": skey}}});
    let text = ureq::post(url)
        .send_string(&body.to_string())
        .map_err(|e| e.to_string())?
        .into_string()
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    (v["returnCode"] == 0 && v["returnData"]["user_info"]["nickName"] == NICK)
        .then_some(())
        .ok_or(text)
}

/// A thread checking `session` on `url` every 5 ms until `stop`: how many checks passed, or
/// the first answer that did not.
fn checking(
    url: String,
    session: &(String, String),
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Result<usize, String>> {
    let (stop, session) = (stop.clone(), session.clone());
    std::thread::spawn(move || {
        let mut checks = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            check_over_http(&url, &session)?;
            checks += 1;
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(checks)
    })
}

/// `wafer key rotate` from the key file `old` to `new` on the env's database, asserted to
/// succeed.
fn rotate(env: &Env, old: &str, new: &str) {
    let (ok, out, err) = run(wafer()
        .args(["key", "rotate", "--new-key-file", new, "--db"])
        .arg(env.db_arg())
        .env("WAFER_KEY_FILE", old));
    assert!(ok, "{err}");
    assert!(out.contains("now set storage.key_file"), "{out}");
}

#[test]
fn a_rotation_runs_while_serving_and_the_new_key_takes_over() {
    let keys = tempfile::tempdir().unwrap();
    let old = key_file(keys.path(), "old.key", 0x31);
    let new = key_file(keys.path(), "new.key", 0x32);
    let mut env = Env::with(|c| seal_config(c, Some(&old)));
    let (session, known) = store_every_kind_of_secret(&env);

    // Session checks keep passing on the serving wafer while the CLI re-seals beside it.
    let url = env.url("/mina_auth/");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = checking(url, &session, &stop);
    rotate(&env, &old, &new);
    // A login after the rotation is sealed with the new key too.
    let (_, _, _) = env.login("after-rotation");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let checks = checker.join().unwrap().unwrap();
    assert!(checks > 0);
    let new_key = SealKey::new([0x32; 32]);
    stored_plaintexts(&env, Some(&new_key));
    assert_eq!(found_at_rest(&env, &known), Vec::<String>::new());

    // A restart before the config changes still works: the database records where the new
    // key is, and a process that can read it follows the rotation.
    env.restart();
    assert_eq!(auth_ok(&env, &session)["nickName"], NICK);
    // The operator moves the new key into the configured place; the old key is then wrong.
    let old_copy = key_file(keys.path(), "old-copy.key", 0x31);
    std::fs::rename(&new, &old).unwrap();
    env.restart();
    assert_eq!(auth_ok(&env, &session)["nickName"], NICK);
    env.server.take().unwrap().shutdown();
    let mut config = env.config.clone();
    config.storage.key_file = old_copy;
    let e = wafer::http::start(config, false).err().expect("refused");
    assert!(e.contains("wrong key file"), "{e}");
}

// ---- several instances on one shared MySQL database (CONTRACT §10, §11) ----

/// Start a server on each config at the same moment: each one's start-up.
fn start_at_once(configs: Vec<Config>) -> Vec<Result<wafer::http::Handle, String>> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(configs.len()));
    let threads: Vec<_> = configs
        .into_iter()
        .map(|c| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                wafer::http::start(c, false)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A shared MySQL database holding every kind of secret in clear, its server stopped: the
/// `Env`, the session and the plain values (`None` without a MySQL server).
fn clear_shared_database() -> Option<(Env, (String, String), Vec<String>)> {
    let mut env = Env::with_mysql(|c| seal_config(c, None))?;
    let (session, known) = store_every_kind_of_secret(&env);
    env.server.take().unwrap().shutdown();
    Some((env, session, known))
}

#[test]
fn instances_starting_at_once_with_a_key_seal_a_shared_database_once() {
    let Some((mut env, session, known)) = clear_shared_database() else {
        return;
    };
    let stored = stored_plaintexts(&env, None);
    let keys = tempfile::tempdir().unwrap();
    env.config.storage.key_file = key_file(keys.path(), "wafer.key", 0x41);
    let handles: Vec<_> = start_at_once(vec![env.config.clone(); 3])
        .into_iter()
        .map(|s| s.expect("every instance starts"))
        .collect();
    // Every value sealed once, under the key: opened, it is the value stored in clear before
    // (not another sealed value), and the database at rest holds none of them.
    let opened = stored_plaintexts(&env, Some(&SealKey::new([0x41; 32])));
    assert_eq!(sorted(opened), sorted(stored));
    assert_eq!(found_at_rest(&env, &known), Vec::<String>::new());
    for h in handles {
        check_over_http(&format!("http://{}/mina_auth/", h.addr()), &session).unwrap();
        h.shutdown();
    }
}

#[test]
fn of_two_instances_starting_at_once_with_different_keys_one_seals_and_the_other_refuses() {
    let Some((env, session, known)) = clear_shared_database() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let bytes = [0x51u8, 0x52];
    let configs = bytes
        .iter()
        .map(|b| {
            let mut c = env.config.clone();
            c.storage.key_file = key_file(keys.path(), &format!("{b:x}.key"), *b);
            c
        })
        .collect();
    let mut started = start_at_once(configs);
    assert_eq!(
        started.iter().filter(|s| s.is_ok()).count(),
        1,
        "exactly one starts: {:?}",
        started.iter().map(|s| s.as_ref().err()).collect::<Vec<_>>()
    );
    let won = started.iter().position(Result::is_ok).unwrap();
    let winner = started.remove(won).unwrap();
    let e = started.remove(0).err().unwrap();
    assert!(e.contains("wrong key file") && !e.contains('\n'), "{e}");
    // The database is sealed with the winner's key, and says so.
    let key = SealKey::new([bytes[won]; 32]);
    stored_plaintexts(&env, Some(&key));
    assert_eq!(
        env.strings("SELECT value FROM meta WHERE name = 'seal_key_id'"),
        vec![key.id().to_string()]
    );
    assert_eq!(found_at_rest(&env, &known), Vec::<String>::new());
    check_over_http(&format!("http://{}/mina_auth/", winner.addr()), &session).unwrap();
    winner.shutdown();
}

/// An envelope call on `url` (the `/mina_auth/` of any instance), asserted to succeed.
fn envelope_at(env: &Env, url: &str, name: &str, para: serde_json::Value) -> serde_json::Value {
    let body = json!({"version": 1, "componentName": "MA", "interface": {"interfaceName": name, "para": para}});
    let (s, t) = env.request("POST", url, &[], Some(body.to_string().as_bytes()));
    assert_eq!(s, 200, "{t}");
    let r: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(r["returnCode"], 0, "{name} on {url}: {r}");
    r
}

/// Log in through `url`: the session's (id, skey).
fn login_at(env: &Env, url: &str, login_code: &str) -> (String, String) {
    let r = envelope_at(env, url, "qcloud.cam.id_skey", json!({"code": login_code}));
    let d = &r["returnData"];
    (
        d["id"].as_str().unwrap().into(),
        d["skey"].as_str().unwrap().into(),
    )
}

#[test]
fn a_rotation_on_a_shared_database_is_followed_by_every_instance() {
    let keys = tempfile::tempdir().unwrap();
    let old = key_file(keys.path(), "old.key", 0x61);
    let new = key_file(keys.path(), "new.key", 0x62);
    let Some(env) = Env::with_mysql(|c| seal_config(c, Some(&old))) else {
        return;
    };
    let (session, known) = store_every_kind_of_secret(&env);
    let other = env.another();
    let urls = [
        env.url("/mina_auth/"),
        format!("http://{}/mina_auth/", other.addr()),
    ];
    // Session checks keep passing on both instances while the CLI re-seals beside them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checkers: Vec<_> = urls
        .iter()
        .map(|url| checking(url.clone(), &session, &stop))
        .collect();
    rotate(&env, &old, &new);
    // Each instance writes under the new key from then on, and opens what the other wrote.
    let on_first = login_at(&env, &urls[0], "rotated-on-first");
    let on_other = login_at(&env, &urls[1], "rotated-on-other");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in checkers {
        assert!(c.join().unwrap().unwrap() > 0);
    }
    let new_key = SealKey::new([0x62; 32]);
    stored_plaintexts(&env, Some(&new_key));
    assert_eq!(found_at_rest(&env, &known), Vec::<String>::new());
    for (url, (id, skey)) in [(&urls[1], &on_first), (&urls[0], &on_other)] {
        envelope_at(
            &env,
            url,
            "qcloud.cam.auth",
            json!({"id": id, "skey": skey}),
        );
    }
    other.shutdown();
}

/// `wafer db copy ARGS…` with `WAFER_KEY_FILE` set to `key` (unset when empty).
fn db_copy(key: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = wafer();
    cmd.args(["db", "copy"])
        .args(args)
        .env_remove("WAFER_KEY_FILE");
    if !key.is_empty() {
        cmd.env("WAFER_KEY_FILE", key);
    }
    run(&mut cmd)
}

#[test]
fn a_sealed_file_is_copied_onto_mysql_and_back_sealed_as_it_is() {
    let Some(target) = crate::mysql::test_db() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "wafer.key", 0x71);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("single.db").to_string_lossy().into_owned();
    let single = Env::with(|c| {
        seal_config(c, Some(&key));
        c.storage.path = file.clone();
    });
    let (session, known) = store_every_kind_of_secret(&single);
    let (_, token) = single.v1("GET", &format!("/v1/apps/{APPID}/access_token"), None, None);
    drop(single);

    // Without the key the sealed source does not open.
    let (ok, _, err) = db_copy("", &["--from", &file, "--to", &target.url]);
    assert!(!ok && err.contains("set storage.key_file"), "{err}");
    // With it, every row is copied as stored: sealed under the same key, which the target
    // now records.
    let (ok, out, err) = db_copy(&key, &["--from", &file, "--to", &target.url]);
    assert!(ok, "{err}");
    assert!(out.contains("sessions: 1 copied"), "{out}");
    let url = target.url.clone();
    let shared = Env::with(|c| {
        seal_config(c, Some(&key));
        c.storage.url = Secret::new(url);
    });
    let sealed_with = SealKey::new([0x71; 32]);
    stored_plaintexts(&shared, Some(&sealed_with));
    assert_eq!(found_at_rest(&shared, &known), Vec::<String>::new());
    assert_eq!(
        shared.strings("SELECT value FROM meta WHERE name = 'seal_key_id'"),
        vec![sealed_with.id().to_string()]
    );
    // The session, its user data and the hosted token work on MySQL, with no upstream call.
    assert_eq!(auth_ok(&shared, &session)["nickName"], NICK);
    let (_, again) = shared.v1("GET", &format!("/v1/apps/{APPID}/access_token"), None, None);
    assert_eq!(again["access_token"], token["access_token"]);
    assert_eq!(shared.calls("/cgi-bin/stable_token"), 0);
    let mut keyless = shared.config.clone();
    drop(shared);
    keyless.storage.key_file.clear();
    let e = wafer::http::start(keyless, false).err().expect("refused");
    assert!(e.contains("the database is sealed"), "{e}");

    // And back into a new file, sealed the same way.
    let back = dir.path().join("back.db").to_string_lossy().into_owned();
    let (ok, out, err) = db_copy(&key, &["--from", &target.url, "--to", &back]);
    assert!(ok, "{err}");
    assert!(out.contains("sessions: 1 copied"), "{out}");
    let again = Env::with(|c| {
        seal_config(c, Some(&key));
        c.storage.path = back.clone();
    });
    stored_plaintexts(&again, Some(&sealed_with));
    assert_eq!(found_at_rest(&again, &known), Vec::<String>::new());
    assert_eq!(auth_ok(&again, &session)["nickName"], NICK);
}

#[test]
fn a_copy_into_a_sealed_database_leaves_nothing_in_clear() {
    let Some(target) = crate::mysql::test_db() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "wafer.key", 0x72);
    // A shared database already sealed with the key (its server stopped), and a single box
    // in clear.
    let url = target.url.clone();
    let mut shared = Env::with(|c| {
        seal_config(c, Some(&key));
        c.storage.url = Secret::new(url);
    });
    shared.server.take().unwrap().shutdown();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("single.db").to_string_lossy().into_owned();
    let single = Env::with(|c| {
        seal_config(c, None);
        c.storage.path = file.clone();
    });
    let (session, known) = store_every_kind_of_secret(&single);
    drop(single);
    // Merged with the key: what came in clear is sealed in the target before the copy ends,
    // not at the next start of a server.
    let (ok, _, err) = db_copy(&key, &["--from", &file, "--to", &target.url, "--merge"]);
    assert!(ok, "{err}");
    stored_plaintexts(&shared, Some(&SealKey::new([0x72; 32])));
    assert_eq!(found_at_rest(&shared, &known), Vec::<String>::new());
    shared.server = Some(wafer::http::start(shared.config.clone(), false).unwrap());
    assert_eq!(auth_ok(&shared, &session)["nickName"], NICK);
}
