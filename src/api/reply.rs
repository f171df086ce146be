//! A response before it is written (`Reply`), the JSON object writer the hot replies use
//! (`JsonWriter`), and the replies every dialect shares (404, 401, 405). Writing it to the
//! socket is `http`'s job.

use serde_json::{json, Value};

/// A response before it is written.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

pub const JSON: &str = "application/json; charset=utf-8";

impl Reply {
    pub fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status,
            content_type: JSON,
            body: v.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }
    pub fn text(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }
    pub fn no_content() -> Reply {
        Reply {
            status: 204,
            content_type: JSON,
            body: Vec::new(),
            headers: Vec::new(),
        }
    }
    /// The `/v1` error shape: `{"error":CODE,"message":STR,"errcode"?:N}`.
    pub fn error(status: u16, code: &str, message: &str, errcode: Option<i64>) -> Reply {
        let mut v = json!({"error": code, "message": message});
        if let Some(c) = errcode {
            v["errcode"] = json!(c);
        }
        Reply::json(status, &v)
    }
}

/// A JSON object written straight into its bytes, for the replies on the hot paths (a session
/// check, a token read): no `Value` tree to build, walk and free. Keys come out in call order.
pub struct JsonWriter(Vec<u8>);

impl JsonWriter {
    pub fn new() -> JsonWriter {
        let mut b = Vec::with_capacity(256);
        b.push(b'{');
        JsonWriter(b)
    }

    fn key(&mut self, k: &str) {
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        self.string(k);
        self.0.push(b':');
    }

    fn string(&mut self, s: &str) {
        // Writing into a Vec cannot fail, and a &str always serialises.
        let _ = serde_json::to_writer(&mut self.0, s);
    }

    pub fn str(mut self, k: &str, v: &str) -> JsonWriter {
        self.key(k);
        self.string(v);
        self
    }

    pub fn opt_str(self, k: &str, v: Option<&str>) -> JsonWriter {
        match v {
            Some(v) => self.str(k, v),
            None => self,
        }
    }

    pub fn int(mut self, k: &str, v: i64) -> JsonWriter {
        use std::io::Write;
        self.key(k);
        let _ = write!(self.0, "{v}");
        self
    }

    /// `json` must already be one valid JSON value (e.g. [`crate::core::session::Session::user_info_json`]).
    pub fn raw(mut self, k: &str, json: &[u8]) -> JsonWriter {
        self.key(k);
        self.0.extend_from_slice(json);
        self
    }

    /// [`JsonWriter::raw`] when there is a value; nothing otherwise.
    pub fn opt_raw(self, k: &str, json: Option<&str>) -> JsonWriter {
        match json {
            Some(json) => self.raw(k, json.as_bytes()),
            None => self,
        }
    }

    pub fn value(mut self, k: &str, v: &Value) -> JsonWriter {
        self.key(k);
        // A Value always serialises, and writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.0, v);
        self
    }

    pub fn into_bytes(mut self) -> Vec<u8> {
        self.0.push(b'}');
        self.0
    }

    pub fn reply(self, status: u16) -> Reply {
        Reply::text(status, JSON, self.into_bytes())
    }
}

impl Default for JsonWriter {
    fn default() -> JsonWriter {
        JsonWriter::new()
    }
}

pub fn not_found() -> Reply {
    Reply::error(404, "not_found", "no such route", None)
}

/// The `/v1` shape of [`Refused::NoKey`] (and of `/metrics` without its key).
pub fn unauthorized() -> Reply {
    Reply::error(401, "unauthorized", "missing or wrong api key", None)
}

pub fn method_not_allowed() -> Reply {
    Reply::error(
        405,
        "method_not_allowed",
        "method not allowed on this route",
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_writer_writes_the_same_json_as_a_value() {
        let tricky = "q\"uote\\ 中文 \u{1} </script>";
        let v: Value = serde_json::from_slice(
            &JsonWriter::new()
                .str("a", tricky)
                .opt_str("none", None)
                .opt_str("some", Some("x"))
                .int("n", -42)
                .raw("raw", br#"{"k":[1,2]}"#)
                .value("v", &json!({"z": 1, "a": [true]}))
                .into_bytes(),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"a": tricky, "some": "x", "n": -42, "raw": {"k": [1, 2]}, "v": {"z": 1, "a": [true]}})
        );
        assert_eq!(
            JsonWriter::new()
                .int("returnCode", 0)
                .str("m", "OK")
                .into_bytes(),
            br#"{"returnCode":0,"m":"OK"}"#
        );
        assert_eq!(JsonWriter::new().into_bytes(), b"{}");
    }
}
