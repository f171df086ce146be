//! Request bodies read as flat JSON objects, without building a `serde_json::Value` tree.
//!
//! Every JSON body wafer accepts (the Wafer envelope and its `para`, the `/v1` bodies) is an
//! object whose members are looked up by name a few times. A `Value` tree costs an allocation
//! per key and per string and a map insert each; on `qcloud.cam.auth` that was ~13k of ~93k
//! instructions per request. [`Members`] keeps the members in a `Vec` in document order, with
//! names and strings borrowed from the body unless they contained escapes.
//!
//! The answers are the same as with a tree: a name given twice counts by its last value (as in
//! `serde_json::Value` and PHP's `json_decode`); numbers are the `serde_json::Number` a tree would
//! hold; arrays are read (so that what a tree refuses is refused) but not kept, since no field is
//! an array. Nesting is bounded by
//! serde_json's recursion limit (128), size by the body limit.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// A member's value.
#[derive(Debug)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    /// An array, skipped.
    Array,
    Object(Members<'a>),
}

impl Json<'_> {
    /// The value as a `u64`, if it is a number that is one (as `Value::as_u64`).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) => n.as_u64(),
            _ => None,
        }
    }
}

/// A JSON object's members, in document order, repeats included.
#[derive(Debug, Default)]
pub struct Members<'a>(Vec<(Cow<'a, str>, Json<'a>)>);

impl<'a> Members<'a> {
    /// A body that is one JSON object; `None` for anything else (not JSON, an array, a string…).
    pub fn parse(body: &'a [u8]) -> Option<Members<'a>> {
        match serde_json::from_slice::<Json<'a>>(body) {
            Ok(Json::Object(m)) => Some(m),
            _ => None,
        }
    }

    /// The value of `name` (its last one if repeated).
    pub fn get(&self, name: &str) -> Option<&Json<'a>> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Take the value of `name` out (its last one if repeated); the member stays, as null.
    pub fn take(&mut self, name: &str) -> Option<Json<'a>> {
        let at = self.0.iter().rposition(|(k, _)| k == name)?;
        Some(std::mem::replace(&mut self.0[at].1, Json::Null))
    }

    /// Each name once, at its first position, with its last value: the members a map would hold.
    pub fn unique(&self) -> Vec<(&str, &Json<'a>)> {
        let mut at: HashMap<&str, usize> = HashMap::new();
        let mut out: Vec<(&str, &Json<'a>)> = Vec::new();
        for (k, v) in &self.0 {
            match at.get(k.as_ref()) {
                Some(&i) => out[i].1 = v,
                None => {
                    at.insert(k, out.len());
                    out.push((k, v));
                }
            }
        }
        out
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Json<'de>, E> {
        // As serde_json's Value: a float that is not finite becomes null.
        Ok(Number::from_f64(n).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        // Read, not skipped: serde_json's skipping (`IgnoredAny`) checks neither the nesting
        // limit, nor UTF-8, nor numbers out of range, and a tree refuses all three.
        while seq.next_element::<Json<'de>>()?.is_some() {}
        Ok(Json::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4).min(16));
        while let Some(Name(k)) = map.next_key()? {
            members.push((k, map.next_value()?));
        }
        Ok(Json::Object(Members(members)))
    }
}

/// A member name, borrowed when it had no escapes (serde's own `Cow<str>` always copies).
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s)))
            }
        }
        d.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// What a `Value` tree says about one member, in the terms the accessors use.
    fn same(j: Option<&Json>, v: Option<&Value>) -> bool {
        match (j, v) {
            (None, None) => true,
            (Some(Json::Null), Some(Value::Null)) => true,
            (Some(Json::Bool(a)), Some(Value::Bool(b))) => a == b,
            (Some(Json::Number(a)), Some(Value::Number(b))) => a == b,
            (Some(Json::Str(a)), Some(Value::String(b))) => a == b,
            (Some(Json::Array), Some(Value::Array(_))) => true,
            (Some(Json::Object(a)), Some(Value::Object(b))) => {
                let a = a.unique();
                a.len() == b.len()
                    && a.iter()
                        .zip(b.iter())
                        .all(|((ak, av), (bk, bv))| ak == bk && same(Some(av), Some(bv)))
            }
            _ => false,
        }
    }

    #[test]
    fn members_answer_as_a_value_tree_does() {
        let bodies: &[&str] = &[
            r#"{"id":"a","skey":"b","n":5,"neg":-3,"f":1.5,"big":18446744073709551615,"t":true,"z":null}"#,
            r#"{"s":"a\/b\u00e9\n","k\"q":1,"arr":[1,[2,{"x":3}],"s"],"o":{"x":1,"y":{"z":[]},"x":2}}"#,
            r#"{"dup":1,"dup":"two","other":0,"dup":{"a":1}}"#,
            r#"{"interface":{"interfaceName":"qcloud.cam.auth","para":{"id":"x","skey":"y"}},"version":1}"#,
            r#"{}"#,
            r#" { "sp" : [ ] , "e" : "" } "#,
        ];
        for body in bodies {
            let m = Members::parse(body.as_bytes()).unwrap_or_else(|| panic!("{body}"));
            let Value::Object(v) = serde_json::from_str::<Value>(body).unwrap() else {
                panic!()
            };
            assert!(
                same(Some(&Json::Object(m)), Some(&Value::Object(v.clone()))),
                "{body}"
            );
            let m = Members::parse(body.as_bytes()).unwrap();
            for name in ["id", "dup", "s", "k\"q", "o", "nope", "big", "f", "e"] {
                assert!(same(m.get(name), v.get(name)), "{body} {name}");
            }
        }
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let m = Members::parse(br#"{"plain":"abc","esc":"a\/b"}"#).unwrap();
        assert!(matches!(
            m.get("plain"),
            Some(Json::Str(Cow::Borrowed("abc")))
        ));
        assert!(matches!(m.get("esc"), Some(Json::Str(Cow::Owned(s))) if s == "a/b"));
    }

    #[test]
    fn anything_but_one_object_is_refused() {
        for body in [
            &b""[..],
            b"{nope",
            b"[1,2]",
            b"\"x\"",
            b"3",
            b"null",
            b"{} {}",
            b"{\"a\":1,}",
            b"{\"a\":\"\xff\"}",
        ] {
            assert!(Members::parse(body).is_none(), "{body:?}");
            assert!(
                !matches!(serde_json::from_slice::<Value>(body), Ok(Value::Object(_))),
                "{body:?}"
            );
        }
        // Inside arrays too (serde_json's skipping checks none of these; found in review).
        for body in [
            r#"{"x":[1e400]}"#,
            r#"{"x":["\ud800"]}"#,
            r#"{"x":[[1,{"a":1e999}]]}"#,
        ] {
            assert!(Members::parse(body.as_bytes()).is_none(), "{body}");
            assert!(serde_json::from_str::<Value>(body).is_err(), "{body}");
        }
        assert!(Members::parse(b"{\"x\":[\"\xff\"]}").is_none());
        for (open, close) in [("{\"a\":", "}"), ("[", "]")] {
            let deep = format!("{{\"d\":{}1{}}}", open.repeat(200), close.repeat(200));
            assert!(Members::parse(deep.as_bytes()).is_none(), "{deep}");
            assert!(serde_json::from_str::<Value>(&deep).is_err());
        }
    }

    #[test]
    fn take_removes_the_last_of_a_repeated_name() {
        let mut m = Members::parse(br#"{"a":1,"a":"x"}"#).unwrap();
        assert!(matches!(m.take("a"), Some(Json::Str(s)) if s == "x"));
        assert!(matches!(m.get("a"), Some(Json::Null)));
        assert!(m.take("b").is_none());
    }
}
