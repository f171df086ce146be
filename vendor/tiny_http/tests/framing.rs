//! Strict framing (wafer's fix): what a proxy in front could read differently is refused, a
//! refusal closes the connection (nothing pipelined after it is served), and request heads are
//! capped. Each case is a raw exchange with a real server on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// A server answering every request `200` with its path, after reading its body.
fn server() -> SocketAddr {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    std::thread::spawn(move || {
        while let Ok(mut rq) = server.recv() {
            let mut body = Vec::new();
            let _ = rq.as_reader().read_to_end(&mut body);
            let text = format!("{} {}", rq.url(), body.len());
            let _ = rq.respond(tiny_http::Response::from_string(text));
        }
    });
    addr
}

/// Sends `bytes` and reads until the server closes: the statuses of every answer, and the text.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> (Vec<u16>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let statuses = text
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|r| r.get(..3)?.parse().ok())
        .collect();
    (statuses, text)
}

const NEXT: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

#[test]
fn ambiguous_framing_is_refused_and_ends_the_connection() {
    let addr = server();
    let cases: &[(&str, &str, u16)] = &[
        ("two different lengths", "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde", 400),
        ("a length with a sign", "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
        ("a length list", "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
        ("a negative length", "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        ("chunked and a length", "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
        ("a length and chunked", "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
        ("chunked in HTTP/1.0", "POST /a HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
        ("gzip, chunked", "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501),
        ("chunked twice", "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501),
        ("identity", "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501),
        ("xchunked", "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
        ("a folded header", "POST /a HTTP/1.1\r\nHost: a\r\nX-A: b\r\n Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc", 400),
        ("a space before the colon", "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc", 400),
        ("a bare LF", "POST /a HTTP/1.1\r\nHost: a\nContent-Length: 3\r\n\r\nabc", 400),
        ("a bare CR", "POST /a HTTP/1.1\r\nHost: a\rContent-Length: 3\r\n\r\nabc", 400),
        ("HTTP/2.0", "GET /a HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        ("an unknown expectation", "POST /a HTTP/1.1\r\nHost: a\r\nExpect: magic\r\nContent-Length: 3\r\n\r\nabc", 417),
    ];
    for (what, head, want) in cases {
        let (statuses, text) = exchange(addr, format!("{head}{NEXT}").as_bytes());
        assert_eq!(statuses, [*want], "{what}: {text}");
        assert!(
            !text.contains("/smuggled"),
            "{}: served what followed: {}",
            what,
            text
        );
        assert!(text.contains("Connection: close"), "{}: {}", what, text);
    }
}

#[test]
fn clear_framing_is_served_pipelined() {
    let addr = server();
    let cases: &[(&str, &str, &str)] = &[
        ("a length", "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", "/a 3"),
        ("the same length twice", "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", "/a 3"),
        ("chunked", "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "/a 3"),
        ("Chunked", "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "/a 3"),
        ("no body", "GET /a HTTP/1.1\r\nHost: a\r\n\r\n", "/a 0"),
    ];
    for (what, head, body) in cases {
        let (statuses, text) = exchange(addr, format!("{head}{NEXT}").as_bytes());
        assert_eq!(statuses, [200, 200], "{what}: {text}");
        assert!(text.contains(body), "{}: {}", what, text);
        assert!(text.contains("/smuggled 0"), "{}: {}", what, text);
    }
}

#[test]
fn request_heads_are_capped() {
    let addr = server();
    let line = |target_len: usize| format!("GET /{} HTTP/1.1\r\n", "a".repeat(target_len));
    // The request line is "GET /" + target + " HTTP/1.1": 14 bytes beside the target.
    let (ok, text) = exchange(
        addr,
        format!("{}Host: a\r\n\r\n{NEXT}", line(8192 - 14)).as_bytes(),
    );
    assert_eq!(ok, [200, 200], "{text}");
    let (long, text) = exchange(
        addr,
        format!("{}Host: a\r\n\r\n{NEXT}", line(8192 - 13)).as_bytes(),
    );
    assert_eq!(long, [414], "{text}");
    assert!(!text.contains("/smuggled"), "{}", text);
    // Headers: 16 KiB of header lines, CRLFs included, and one byte more.
    let pad = |n: usize| format!("X-Pad: {}\r\n", "p".repeat(n - 9));
    let head = |total: usize| format!("GET /h HTTP/1.1\r\nHost: a\r\n{}\r\n", pad(total - 9));
    let (ok, text) = exchange(addr, format!("{}{NEXT}", head(16 * 1024)).as_bytes());
    assert_eq!(ok, [200, 200], "{text}");
    let (big, text) = exchange(addr, format!("{}{NEXT}", head(16 * 1024 + 1)).as_bytes());
    assert_eq!(big, [431], "{text}");
    // A head that never ends is cut off at the cap, not buffered for ever.
    let endless = format!("GET /h HTTP/1.1\r\nX-Pad: {}", "p".repeat(1 << 20));
    let (big, text) = exchange(addr, endless.as_bytes());
    assert_eq!(big, [431], "{text}");
}

/// `Limits::on_refusal` (wafer's fix): the application hears the status of every request the
/// connection's thread refuses itself, which `recv()` never hands out.
#[test]
fn every_refusal_is_reported() {
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut limits = tiny_http::Limits::default();
    limits.max_buffered_body = Some(16);
    let sink = heard.clone();
    limits.on_refusal = Some(tiny_http::OnRefusal::new(move |status| {
        sink.lock().unwrap().push(status)
    }));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server =
        Arc::new(tiny_http::Server::from_listener_with_limits(listener, None, limits).unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    std::thread::spawn(move || {
        while let Ok(rq) = server.recv() {
            let _ = rq.respond(tiny_http::Response::from_string("ok"));
        }
    });
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
    let cases: &[(&[u8], u16)] = &[
        (
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\n\r\n",
            413,
        ),
        (long.as_bytes(), 414),
        (
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\n",
            400,
        ),
        (b"GET /a HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (
            b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            200,
        ),
    ];
    for (bytes, status) in cases {
        assert_eq!(exchange(addr, bytes).0, vec![*status]);
    }
    assert_eq!(*heard.lock().unwrap(), vec![413, 414, 400, 505]);
}
