//! Routes that exist only under `wafer dev`: `POST /dev/encrypted_data {id, skey, data}` encrypts
//! `data` with that session's key (adding the watermark), so the decrypt path can be tried end to
//! end without a phone. Never enabled by `wafer serve`.

use super::v1::Body;
use super::{Context, Incoming, Reply};
use crate::core::error::Error;
use crate::core::session;
use serde_json::{json, Value};

pub fn encrypted_data(w: &mut Context, rq: &Incoming) -> Result<Reply, Error> {
    let b = Body::parse(rq)?;
    let now = crate::ids::now();
    let s = session::check(&w.db, b.str("id")?, b.str("skey")?, None, now)?;
    // `data` is re-encrypted whole (arrays included), so it is read as a tree.
    let mut data = match serde_json::from_slice::<Value>(&rq.body) {
        Ok(Value::Object(mut m)) => match m.remove("data") {
            Some(Value::Object(d)) => Value::Object(d),
            _ => return Err(Error::BadRequest("data must be a JSON object".into())),
        },
        _ => return Err(Error::BadRequest("the body must be a JSON object".into())),
    };
    if data.get("watermark").is_none() {
        data["watermark"] = json!({"appid": s.row.appid, "timestamp": now});
    }
    let iv = crate::ids::random_bytes::<16>()?;
    let encrypt_data = crate::crypto::encrypt_user_data(
        s.row.session_key.expose(),
        data.to_string().as_bytes(),
        Some(&iv),
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    use base64::Engine;
    let iv = base64::engine::general_purpose::STANDARD.encode(iv);
    Ok(Reply::json(
        200,
        &json!({"encrypt_data": encrypt_data, "iv": iv}),
    ))
}
