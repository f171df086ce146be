//! What WeChat pushes to wafer (its callbacks), as domain logic over parsed inputs: the plain server-URL signature,
//! safe-mode verify-then-decrypt of a POST body's `<Encrypt>`, WeCom's
//! encrypted `echostr`, sealing a passive reply, reading WeChat's flat XML (or a mini program's
//! JSON data format) into a JSON object, and
//! relaying a verified message to the account's `forward_url`.
//!
//! Everything here is pure except [`forward`], which goes through the WeChat client (the only
//! owner of an HTTP client), and [`claim`], the seen-request memory in the database that makes
//! a callback apply at most once. The order of checks is the point: nothing from a request is trusted,
//! parsed as a message or stored until its signature has been checked in constant time and, in
//! safe mode, it has decrypted under the account's key with the account's own receive id. Which
//! of the two a POST gets is the account's choice (an EncodingAESKey means safe mode only), never
//! the request's: the plain signature does not cover the body.

use crate::core::error::Error;
use crate::crypto::{ct_eq, sha1_sorted, CryptoError, MsgCrypt};
use crate::store::Db;
use crate::wechat::WeChat;
use quick_xml::events::Event;
use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;

/// How long a business endpoint gets to answer. WeChat waits 5 s for a callback's answer and
/// retries three times; answering `success` in time beats a late reply.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

/// XML nested deeper than this is not something WeChat sends.
const MAX_DEPTH: usize = 16;

/// Why a callback was refused. Every variant is answered 401 and nothing is stored; the variant
/// goes to the log only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// The signature (plain `signature` or safe-mode `msg_signature`) does not match.
    Signature,
    /// A required query parameter or XML field is missing, or the XML is malformed.
    Malformed(&'static str),
    /// The message did not decrypt under the account's keys (or named another receive id).
    Crypto(CryptoError),
    /// The `timestamp` is missing, not a number, or further than the window from now.
    Stale,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Signature => f.write_str("bad signature"),
            Rejected::Malformed(what) => write!(f, "malformed: {what}"),
            Rejected::Crypto(e) => write!(f, "decryption: {e}"),
            Rejected::Stale => f.write_str("timestamp outside the window"),
        }
    }
}

/// A verified (and, in safe mode, decrypted) message.
#[derive(Debug, Clone)]
pub struct Message {
    /// The plaintext as WeChat sent it (XML, or JSON for mini programs set to the JSON format).
    pub xml: String,
    /// Its fields as a JSON object (what is forwarded).
    pub fields: Map<String, Value>,
}

impl Message {
    /// A top-level text field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }
}

/// The plain server-URL signature: sha1 over the sorted token, timestamp and nonce.
pub fn plain_signature_ok(token: &str, timestamp: &str, nonce: &str, signature: &str) -> bool {
    ct_eq(
        sha1_sorted(&[token, timestamp, nonce]).as_bytes(),
        signature.as_bytes(),
    )
}

/// A plain-mode POST: check the signature, then read the body.
pub fn open_plain(
    token: &str,
    signature: &str,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
) -> Result<Message, Rejected> {
    if !plain_signature_ok(token, timestamp, nonce, signature) {
        return Err(Rejected::Signature);
    }
    let text = std::str::from_utf8(body).map_err(|_| Rejected::Malformed("body is not UTF-8"))?;
    Ok(Message {
        xml: text.to_string(),
        fields: parse_body(text)?,
    })
}

/// A message body: WeChat's XML, or the JSON a mini program configured for the JSON data
/// format sends (a flat object).
pub fn parse_body(text: &str) -> Result<Map<String, Value>, Rejected> {
    if text.trim_start().starts_with('{') {
        match serde_json::from_str(text) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(Rejected::Malformed("body is not a JSON object")),
        }
    } else {
        parse_xml(text)
    }
}

/// A safe-mode POST: take `<Encrypt>` from the envelope, check `msg_signature` over it, decrypt
/// (current key, then the previous one) with the receive-id check, and read the inner XML.
pub fn open_encrypted(
    crypt: &MsgCrypt,
    msg_signature: &str,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
) -> Result<Message, Rejected> {
    let envelope =
        std::str::from_utf8(body).map_err(|_| Rejected::Malformed("body is not UTF-8"))?;
    let fields = parse_body(envelope)?;
    let encrypt = fields
        .get("Encrypt")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(Rejected::Malformed("no <Encrypt> in the body"))?;
    if !crypt.verify(msg_signature, timestamp, nonce, encrypt) {
        return Err(Rejected::Signature);
    }
    let xml = crypt.decrypt(encrypt).map_err(Rejected::Crypto)?;
    let fields = parse_body(&xml)?;
    Ok(Message { xml, fields })
}

/// WeCom's URL verification: `msg_signature` over (token, timestamp, nonce, echostr), and the
/// answer is the decrypted echostr.
pub fn wecom_echo(
    crypt: &MsgCrypt,
    msg_signature: &str,
    timestamp: &str,
    nonce: &str,
    echostr: &str,
) -> Result<String, Rejected> {
    // base64 never contains a space: a space here is a `+` that a client failed to escape in
    // the query string and our form decoding turned into a space.
    let echostr = echostr.replace(' ', "+");
    if !crypt.verify(msg_signature, timestamp, nonce, &echostr) {
        return Err(Rejected::Signature);
    }
    crypt.decrypt(&echostr).map_err(Rejected::Crypto)
}

/// Encrypt and sign a passive reply for safe mode. The caller passes 16 random bytes.
pub fn seal(
    crypt: &MsgCrypt,
    reply: &str,
    random16: &[u8; 16],
    timestamp: &str,
    nonce: &str,
) -> String {
    crypt.encrypted_reply_xml(reply, random16, timestamp, nonce)
}

/// The request's `timestamp` as unix seconds, if it is within `window` seconds of `now`.
/// Checked on every callback: a captured request cannot be replayed after the window, and the
/// seen-request memory ([`claim`]) need only remember one that long.
pub fn fresh_timestamp(timestamp: &str, now: i64, window: i64) -> Result<i64, Rejected> {
    match timestamp.parse::<i64>() {
        Ok(ts) if ts.checked_sub(now).is_some_and(|d| d.abs() <= window) => Ok(ts),
        _ => Err(Rejected::Stale),
    }
}

/// What identifies a verified callback for the seen-request memory, each with the time until
/// which it is remembered:
/// - the request itself, `account` + the signature that was verified + timestamp + nonce, until
///   `timestamp + window` (after that the window refuses it anyway);
/// - the message, which WeChat's retries repeat with a new nonce and timestamp: its `MsgId`,
///   else `FromUserName` + `CreateTime` (WeChat's advice for events), else (a component's
///   events) the whole decrypted message, which a retry repeats byte for byte; until
///   `now + window`.
///
/// Only verified values go in: an unverified query parameter could otherwise make a replay look
/// new. What is stored is a SHA-256 of each key ([`seen_key`]), so the table holds no openid,
/// message id or ticket.
pub fn seen_keys(
    account: &str,
    (signature, timestamp, nonce): (&str, i64, &str),
    message: &Message,
    now: i64,
    window: i64,
) -> Vec<(String, i64)> {
    let request = format!("req {account} {signature} {timestamp} {nonce}");
    // A mini program's JSON data format sends `MsgId` and `CreateTime` as numbers.
    let f = |k| match message.fields.get(k) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let id = match (f("MsgId"), f("FromUserName"), f("CreateTime")) {
        (Some(id), _, _) => format!("id {id}"),
        (None, Some(from), Some(at)) => format!("from {from} {at}"),
        _ => format!("body {}", message.xml),
    };
    vec![
        (seen_key(&request), timestamp.saturating_add(window)),
        (
            seen_key(&format!("msg {account} {id}")),
            now.saturating_add(window),
        ),
    ]
}

/// The stored form of a seen-request key: hex SHA-256.
fn seen_key(readable: &str) -> String {
    use sha2::{Digest, Sha256};
    crate::crypto::hex(&Sha256::digest(readable.as_bytes()))
}

/// A callback claimed in the seen-request memory while it is handled. Unless
/// [`Claim::handled`] is called, dropping it forgets the keys again, so WeChat's retry of a
/// message that could not be handled (a forward without a 2xx, a database failure) gets another
/// try.
pub struct Claim<'a> {
    db: &'a Db,
    keys: Vec<(String, i64)>,
    handled: bool,
}

/// Claim a verified callback: `None` when any of its keys is remembered (a replay, or a retry
/// of a message already handled), which is answered `success` and not applied or forwarded
/// again. Kept in the database, so a restart forgets nothing.
pub fn claim(db: &Db, keys: Vec<(String, i64)>, now: i64) -> Result<Option<Claim<'_>>, Error> {
    // Built only for a successful claim: dropping an unhandled `Claim` forgets its keys.
    Ok(db.claim_callback(&keys, now)?.then(|| Claim {
        db,
        keys,
        handled: false,
    }))
}

impl Claim<'_> {
    /// The callback was handled: remember it until its keys expire.
    pub fn handled(mut self) {
        self.handled = true;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.handled {
            if let Err(e) = self.db.release_callback(&self.keys) {
                log::error!("callback: forgetting an unhandled callback: {e}");
            }
        }
    }
}

/// What a business endpoint made of a relayed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarded {
    /// It answered 2xx with a passive reply for WeChat.
    Reply(String),
    /// It answered 2xx with nothing to say (empty or `success`).
    Nothing,
    /// No 2xx within [`FORWARD_TIMEOUT`]: not handled.
    Failed,
}

/// Relay a verified message to a business endpoint as a JSON object of its fields, within
/// [`FORWARD_TIMEOUT`].
pub fn forward(wechat: &WeChat, url: &str, message: &Message) -> Forwarded {
    match wechat.post_json_to(url, &Value::Object(message.fields.clone()), FORWARD_TIMEOUT) {
        Ok(f) if (200..300).contains(&f.status) => match f.body.trim() {
            "" | "success" => Forwarded::Nothing,
            reply => Forwarded::Reply(reply.to_string()),
        },
        Ok(_) | Err(_) => Forwarded::Failed,
    }
}

/// Read WeChat's XML (`<xml><Field>text</Field>…</xml>`, text or CDATA) into a JSON object of the
/// root's children. Leaf elements become strings; an element with children becomes an object; a
/// name repeated under one parent becomes an array. Entities beyond XML's own five are not
/// expanded (quick-xml never fetches or defines any), so a hostile body cannot blow up.
pub fn parse_xml(xml: &str) -> Result<Map<String, Value>, Rejected> {
    const BAD: Rejected = Rejected::Malformed("body is not WeChat's XML");
    struct Frame {
        name: String,
        children: Map<String, Value>,
        text: String,
    }
    fn insert(map: &mut Map<String, Value>, name: String, value: Value) {
        match map.get_mut(&name) {
            None => {
                map.insert(name, value);
            }
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
        }
    }
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Map<String, Value>> = None;
    loop {
        match reader.read_event().map_err(|_| BAD)? {
            Event::Start(e) => {
                if root.is_some() || stack.len() >= MAX_DEPTH {
                    return Err(BAD);
                }
                let name = String::from_utf8(e.name().as_ref().to_vec()).map_err(|_| BAD)?;
                stack.push(Frame {
                    name,
                    children: Map::new(),
                    text: String::new(),
                });
            }
            Event::Empty(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).map_err(|_| BAD)?;
                match stack.last_mut() {
                    Some(top) => insert(&mut top.children, name, Value::String(String::new())),
                    None if root.is_none() => root = Some(Map::new()),
                    None => return Err(BAD),
                }
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|_| BAD)?;
                match stack.last_mut() {
                    Some(top) => top.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err(BAD),
                }
            }
            Event::CData(c) => {
                let text = std::str::from_utf8(c.as_ref()).map_err(|_| BAD)?;
                stack.last_mut().ok_or(BAD)?.text.push_str(text);
            }
            Event::End(_) => {
                let frame = stack.pop().ok_or(BAD)?;
                let value = if frame.children.is_empty() {
                    Value::String(frame.text.trim().to_string())
                } else {
                    Value::Object(frame.children)
                };
                match stack.last_mut() {
                    Some(parent) => insert(&mut parent.children, frame.name, value),
                    None => {
                        root = Some(match value {
                            Value::Object(m) => m,
                            _ => Map::new(),
                        })
                    }
                }
            }
            Event::Eof => break,
            // Declarations, comments, processing instructions: nothing to keep.
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::DocType(_) => return Err(BAD),
        }
    }
    if !stack.is_empty() {
        return Err(BAD);
    }
    root.ok_or(BAD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOKEN: &str = "QDG6eK";
    const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const CORPID: &str = "wx5823bf96d3bd56c7";

    #[test]
    fn xml_to_json() {
        let cases = [
            (
                "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><CreateTime>1348831860</CreateTime>\
                 <Content><![CDATA[a < b & ]]]]><![CDATA[>]]></Content></xml>",
                json!({"ToUserName": "gh_1", "CreateTime": "1348831860", "Content": "a < b & ]]>"}),
            ),
            (
                "<?xml version=\"1.0\"?>\n<xml>\n  <A>x &amp; y</A>\n  <B/>\n  <C><D>1</D><D>2</D></C>\n</xml>",
                json!({"A": "x & y", "B": "", "C": {"D": ["1", "2"]}}),
            ),
        ];
        for (xml, want) in cases {
            assert_eq!(Value::Object(parse_xml(xml).unwrap()), want, "{xml}");
        }
        assert_eq!(
            Value::Object(parse_body(r#"{"MsgType":"event","Event":"x"}"#).unwrap()),
            json!({"MsgType": "event", "Event": "x"})
        );
        assert!(parse_body("[1]").is_err());
        for bad in [
            "",
            "not xml",
            "<xml><a></xml>",
            "<xml></xml><xml></xml>",
            "<xml><a>1</a>",
            "<!DOCTYPE x [<!ENTITY e \"boom\">]><xml><a>&e;</a></xml>",
        ] {
            assert!(parse_xml(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_timestamp_window() {
        for (ts, ok) in [
            ("1000", true),
            ("700", true),
            ("1300", true),
            ("699", false),
            ("1301", false),
            ("", false),
            ("12x", false),
            ("-9223372036854775808", false),
            ("99999999999999999999", false),
        ] {
            assert_eq!(fresh_timestamp(ts, 1000, 300).is_ok(), ok, "{ts}");
        }
    }

    #[test]
    fn what_makes_a_callback_the_same() {
        let msg = |xml: &str| Message {
            xml: xml.to_string(),
            fields: parse_xml(xml).unwrap(),
        };
        let keys = |m: &Message| seen_keys("mp/wx1", ("sig", 1000, "n"), m, 1010, 300);
        let text = msg(
            "<xml><FromUserName>o1</FromUserName><CreateTime>5</CreateTime><MsgId>42</MsgId></xml>",
        );
        assert_eq!(
            keys(&text),
            [
                (seen_key("req mp/wx1 sig 1000 n"), 1300),
                (seen_key("msg mp/wx1 id 42"), 1310)
            ]
        );
        assert_eq!(keys(&text)[0].0.len(), 64, "stored as a digest");
        let event = msg("<xml><FromUserName>o1</FromUserName><CreateTime>5</CreateTime><Event>subscribe</Event></xml>");
        assert_eq!(keys(&event)[1].0, seen_key("msg mp/wx1 from o1 5"));
        // A component's event: the whole message, so two tickets of one second differ.
        let ticket = |t: &str| {
            let xml = format!(
                "<xml><CreateTime>5</CreateTime><ComponentVerifyTicket>{t}</ComponentVerifyTicket></xml>"
            );
            keys(&msg(&xml))[1].0.clone()
        };
        assert_ne!(ticket("t@@@one"), ticket("t@@@two"));
        assert_eq!(ticket("t@@@one"), ticket("t@@@one"));
        // A mini program's JSON data format sends numbers: the same keys as its XML.
        let json = |text: &str| Message {
            xml: text.to_string(),
            fields: parse_body(text).unwrap(),
        };
        let retried = json(r#"{"FromUserName":"o1","CreateTime":5,"MsgId":42,"Content":"a"}"#);
        assert_eq!(keys(&retried)[1], keys(&text)[1]);
        let event = json(r#"{"FromUserName":"o1","CreateTime":5,"Event":"x"}"#);
        assert_eq!(keys(&event)[1].0, seen_key("msg mp/wx1 from o1 5"));
    }

    #[test]
    fn plain_signatures() {
        let sig = sha1_sorted(&["tok", "123", "n"]);
        assert!(plain_signature_ok("tok", "123", "n", &sig));
        assert!(!plain_signature_ok("tok", "124", "n", &sig));
        assert!(!plain_signature_ok("tok", "123", "n", ""));
        let body = b"<xml><MsgType>text</MsgType></xml>";
        let m = open_plain("tok", &sig, "123", "n", body).unwrap();
        assert_eq!(m.field("MsgType"), Some("text"));
        assert_eq!(
            open_plain("tok", "0", "123", "n", body).unwrap_err(),
            Rejected::Signature
        );
    }

    #[test]
    fn wecom_published_echostr() {
        // WeCom's published example (the encryption-scheme page), also pinned in wafer-crypto.
        let c = MsgCrypt::new(TOKEN, KEY, None, CORPID).unwrap();
        let echostr =
            "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";
        let sig = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3";
        assert_eq!(
            wecom_echo(&c, sig, "1409659589", "263014780", echostr).unwrap(),
            "1616140317555161061"
        );
        // The same with `+` decoded to a space by a careless client.
        assert_eq!(
            wecom_echo(
                &c,
                sig,
                "1409659589",
                "263014780",
                &echostr.replace('+', " ")
            )
            .unwrap(),
            "1616140317555161061"
        );
        assert_eq!(
            wecom_echo(&c, sig, "1409659590", "263014780", echostr).unwrap_err(),
            Rejected::Signature
        );
        let other = MsgCrypt::new(TOKEN, KEY, None, "wxsomeoneelse").unwrap();
        assert_eq!(
            wecom_echo(&other, sig, "1409659589", "263014780", echostr).unwrap_err(),
            Rejected::Crypto(CryptoError::ReceiveIdMismatch)
        );
    }

    #[test]
    fn encrypted_round_trip_and_refusals() {
        let c = MsgCrypt::new(TOKEN, KEY, None, CORPID).unwrap();
        let inner = "<xml><MsgType><![CDATA[text]]></MsgType><Content>hi</Content></xml>";
        let sealed = seal(&c, inner, &[7; 16], "1409659589", "n1");
        let env = parse_xml(&sealed).unwrap();
        let encrypt = env["Encrypt"].as_str().unwrap();
        let sig = env["MsgSignature"].as_str().unwrap();
        let body = format!(
            "<xml><ToUserName>{CORPID}</ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        );
        let m = open_encrypted(&c, sig, "1409659589", "n1", body.as_bytes()).unwrap();
        assert_eq!(m.xml, inner);
        assert_eq!(m.field("Content"), Some("hi"));
        assert_eq!(
            open_encrypted(&c, sig, "1409659589", "n2", body.as_bytes()).unwrap_err(),
            Rejected::Signature
        );
        assert!(matches!(
            open_encrypted(
                &c,
                sig,
                "1409659589",
                "n1",
                b"<xml><ToUserName>x</ToUserName></xml>"
            ),
            Err(Rejected::Malformed(_))
        ));
        // A truncated ciphertext, correctly signed, still does not open.
        let short = &encrypt[..encrypt.len() - 24];
        let sig = c.signature("1", "n", short);
        let body = format!("<xml><Encrypt>{short}</Encrypt></xml>");
        assert!(matches!(
            open_encrypted(&c, &sig, "1", "n", body.as_bytes()),
            Err(Rejected::Crypto(_))
        ));
    }
}
