//! The `/mina/*` dialect (CONTRACT §4), a Django-era variant: JSON or form bodies, the app picked
//! by its numeric `app_id`, answers `{"ok":"success","msg":..,"data":..}` or
//! `{"ok":"fail","msg":REASON}`, always HTTP 200. A renderer over the same session core.

use super::envelope::EnvelopeError;
use super::{form_decode, Context, Incoming, Reply};
use crate::core::error::Error;
use crate::core::session::{self, Encrypted};
use serde_json::{json, Map, Value};

/// The body as a flat map of fields: a JSON object, or a form (by Content-Type, or when the body
/// is not JSON but looks like `k=v&…`, as some old clients send forms without the header).
fn fields(rq: &Incoming) -> Result<Map<String, Value>, &'static str> {
    let declared_form = rq.header("Content-Type").is_some_and(|c| {
        c.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    if !declared_form {
        match serde_json::from_slice::<Value>(&rq.body) {
            Ok(Value::Object(m)) => return Ok(m),
            Ok(_) => return Err("REQUEST_IS_NOT_JSON"),
            Err(_) if !rq.body.contains(&b'=') => return Err("REQUEST_IS_NOT_JSON"),
            Err(_) => {}
        }
    }
    let text = std::str::from_utf8(&rq.body).map_err(|_| "PARA_ERR")?;
    Ok(form_decode(text)
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect())
}

fn str_field<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// `app_id` as a number or a string of digits.
fn app_id(m: &Map<String, Value>) -> Option<i64> {
    match m.get("app_id")? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn fail(msg: &str) -> Reply {
    Reply::json(200, &json!({"ok": "fail", "msg": msg}))
}

pub fn fail_from(e: Error) -> Reply {
    fail(EnvelopeError::from(e).1)
}

fn success(msg: &str, data: Value) -> Reply {
    Reply::json(200, &json!({"ok": "success", "msg": msg, "data": data}))
}

pub fn login(w: &mut Context, rq: &Incoming) -> Reply {
    let m = match fields(rq) {
        Ok(m) => m,
        Err(reason) => return fail(reason),
    };
    let (Some(code), Some(app_id)) = (str_field(&m, "code"), app_id(&m)) else {
        return fail("PARA_ERR");
    };
    let encrypted = str_field(&m, "encrypt_data").map(|data| Encrypted {
        data,
        iv: str_field(&m, "iv"),
    });
    let now = crate::ids::now();
    let result = session::resolve_app_by_id(&w.db, app_id)
        .and_then(|app| session::login(&mut w.db, &w.shared.wechat, &app, code, encrypted, now));
    match result {
        Ok(l) => success(
            if l.is_new_user {
                "NEW_SESSION_SUCCESS"
            } else {
                "UPDATE_SESSION_SUCCESS"
            },
            json!({"uuid": l.id, "skey": l.skey, "user_info": l.user_info, "duration": l.duration}),
        ),
        Err(e) => fail_from(e),
    }
}

pub fn auth(w: &mut Context, rq: &Incoming) -> Reply {
    let m = match fields(rq) {
        Ok(m) => m,
        Err(reason) => return fail(reason),
    };
    let (Some(uuid), Some(skey), Some(app_id)) =
        (str_field(&m, "uuid"), str_field(&m, "skey"), app_id(&m))
    else {
        return fail("PARA_ERR");
    };
    let now = crate::ids::now();
    let result = session::resolve_app_by_id(&w.db, app_id)
        .and_then(|app| session::check(&w.db, uuid, skey, Some(&app), now));
    match result {
        Ok(s) => {
            let mut data = json!({"user_info": s.user_info()});
            if let Some(phone) = s.phone_info() {
                data["phone_info"] = phone;
            }
            success("AUTH_SUCCESS", data)
        }
        Err(e) => fail_from(e),
    }
}
