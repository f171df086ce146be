//! `Limits::max_buffered_body` (wafer's fix): the connection's own thread reads a body whole,
//! bounded in size and time, before `recv()` hands the request out, and writes the answer
//! itself, so the thread that answers never waits on a client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_millis(1500);
const MAX_BODY: usize = 8192;

/// A server with buffered bodies and ONE responding thread, which answers `PATH LEN BODY` (or
/// 64 MiB of `x` for `/big`, the same text after 2 s for `/slow`) and reports each request's
/// `respond` time.
fn server() -> (SocketAddr, mpsc::Receiver<Duration>) {
    server_with(|_| {})
}

/// `server()` with its limits changed by `change`.
fn server_with(
    change: impl FnOnce(&mut tiny_http::Limits),
) -> (SocketAddr, mpsc::Receiver<Duration>) {
    let mut limits = tiny_http::Limits::default();
    limits.io_timeout = Some(IO_TIMEOUT);
    limits.max_buffered_body = Some(MAX_BODY);
    change(&mut limits);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server =
        Arc::new(tiny_http::Server::from_listener_with_limits(listener, None, limits).unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(mut rq) = server.recv() {
            let started = Instant::now();
            let mut body = Vec::new();
            rq.as_reader().read_to_end(&mut body).unwrap();
            assert_eq!(rq.body_length(), Some(body.len()));
            if rq.url() == "/slow" {
                std::thread::sleep(Duration::from_secs(2));
            }
            let answer = if rq.url() == "/big" {
                vec![b'x'; 64 << 20]
            } else {
                format!(
                    "{} {} {}",
                    rq.url(),
                    body.len(),
                    String::from_utf8_lossy(&body)
                )
                .into_bytes()
            };
            let _ = rq.respond(tiny_http::Response::from_data(answer));
            let _ = tx.send(started.elapsed());
        }
    });
    (addr, rx)
}

/// Sends `bytes` and reads until the server closes (at most 5 s): the whole text.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn slow_bodies_do_not_hold_the_responder_and_get_408() {
    let (addr, _) = server();
    // Three bodies arriving a byte every 200 ms: each read makes progress, only the whole-body
    // deadline ends them.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n")
                    .unwrap();
                let started = Instant::now();
                let mut reader = s.try_clone().unwrap();
                let trickle = std::thread::spawn(move || {
                    for _ in 0..40 {
                        if s.write_all(b"x").is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                });
                reader
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut out = Vec::new();
                let _ = reader.read_to_end(&mut out);
                let after = started.elapsed();
                let _ = trickle.join();
                (String::from_utf8_lossy(&out).into_owned(), after)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile the one responding thread answers at once.
    for i in 0..5 {
        let started = Instant::now();
        let text = exchange(
            addr,
            format!("POST /fast HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{i}!").as_bytes(),
        );
        assert!(text.ends_with(&format!("/fast 2 {}!", i)), "{}", text);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for h in slow {
        let (text, after) = h.join().unwrap();
        assert!(text.starts_with("HTTP/1.1 408"), "{}", text);
        assert!(after < IO_TIMEOUT + Duration::from_secs(1), "{:?}", after);
    }
}

#[test]
fn bodies_are_read_whole_however_framed() {
    let (addr, _) = server();
    let cases: &[(&str, &str, &str)] = &[
        ("a length", "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", "/a 5 hello"),
        ("no body", "GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "/a 0 "),
        ("chunked, extensions, trailers", "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\nX-T: 1\r\n\r\n", "/a 5 hello"),
        ("chunked, upper-case hex", "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n", "/a 10 0123456789"),
        ("exactly the limit", &format!("POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: {MAX_BODY}\r\nConnection: close\r\n\r\n{}", "b".repeat(MAX_BODY)), "/a 8192 bbb"),
    ];
    for (what, rq, want) in cases {
        let text = exchange(addr, rq.as_bytes());
        assert!(text.starts_with("HTTP/1.1 200"), "{}: {}", what, text);
        assert!(text.contains(want), "{}: {}", what, text);
    }
    // Pipelined: both answered, in order.
    let text = exchange(
        addr,
        b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n1POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nConnection: close\r\n\r\n2",
    );
    let (one, two) = (
        text.find("/one 1 1").unwrap(),
        text.find("/two 1 2").unwrap(),
    );
    assert!(one < two, "{}", text);
}

#[test]
fn oversized_or_malformed_bodies_are_refused() {
    let (addr, _) = server();
    let chunked = |size_line: &str| {
        format!("POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{size_line}\r\nhello\r\n0\r\n\r\n")
    };
    let cases: Vec<(&str, String, u16)> = vec![
        ("a declared length over the limit, body unsent", format!("POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1), 413),
        ("a huge declared length", "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999\r\n\r\n".into(), 413),
        ("chunks over the limit", format!("POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n{}\r\n1\r\nx\r\n0\r\n\r\n", "c".repeat(0x2000)), 413),
        ("a signed chunk size", chunked("+5"), 400),
        ("a 0x chunk size", chunked("0x5"), 400),
        ("a spaced chunk size", chunked(" 5"), 400),
        ("an empty chunk size", chunked(""), 400),
        ("a chunk longer than its size", chunked("4"), 400),
    ];
    for (what, rq, want) in cases {
        let text = exchange(
            addr,
            format!("{rq}GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
        );
        assert!(
            text.starts_with(&format!("HTTP/1.1 {}", want)),
            "{}: {}",
            what,
            text
        );
        assert!(!text.contains("/smuggled"), "{}: {}", what, text);
    }
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let (addr, _) = server();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 25];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"abc").unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(
        rest.starts_with("HTTP/1.1 200") && rest.ends_with("/e 3 abc"),
        "{}",
        rest
    );
    // Too large: refused without asking for the body.
    let text = exchange(
        addr,
        format!(
            "POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        )
        .as_bytes(),
    );
    assert!(text.starts_with("HTTP/1.1 413"), "{}", text);
}

#[test]
fn the_responder_never_waits_on_a_client_that_does_not_read() {
    let (addr, responded) = server();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let took = responded.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(took < Duration::from_secs(1), "{:?}", took);
    // The connection's thread gives up on it once a write has made no progress for the io
    // timeout, and closes it. Loopback socket buffers grow to tens of MiB while the answer
    // is written, so that moment comes some seconds later.
    std::thread::sleep(IO_TIMEOUT * 4);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = Vec::new();
    let r = s.read_to_end(&mut sink);
    assert!(sink.len() < 64 << 20, "the whole answer arrived: {:?}", r);
}

/// An answer the socket takes whole is written by whoever answers; one it does not is finished
/// by a thread of its own, and past `Limits::max_answers_behind` of those the connection is cut.
#[test]
fn answers_written_behind_are_bounded() {
    let (addr, responded) = server_with(|l| {
        l.max_answers_behind = 1;
        l.io_timeout = Some(Duration::from_secs(10));
    });
    let mut first = TcpStream::connect(addr).unwrap();
    first
        .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(responded.recv_timeout(Duration::from_secs(10)).unwrap() < Duration::from_secs(1));
    let mut second = TcpStream::connect(addr).unwrap();
    second
        .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert!(responded.recv_timeout(Duration::from_secs(10)).unwrap() < Duration::from_secs(1));
    // The one place was taken by the first answer: the second connection is cut short.
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut cut = Vec::new();
    let _ = second.read_to_end(&mut cut);
    assert!(cut.len() < 64 << 20, "the second answer arrived whole");
    // The first arrives whole (chunked), read as slowly as the client likes (within the io
    // timeout).
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut whole = Vec::new();
    first.read_to_end(&mut whole).unwrap();
    let xs = whole.iter().filter(|&&b| b == b'x').count();
    assert_eq!(xs, 64 << 20);
    assert!(whole.starts_with(b"HTTP/1.1 200") && whole.ends_with(b"\r\n0\r\n\r\n"));
}

/// The connection waits for the next request while an answer is made; an answer that takes
/// longer to make than the io timeout still arrives, and the connection is still usable.
#[test]
fn an_answer_slower_than_the_io_timeout_arrives_and_the_connection_goes_on() {
    let (addr, _) = server();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{}", head);
    let mut body = [0; 8];
    s.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"/slow 0 ");
    s.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.starts_with("HTTP/1.1 200") && rest.ends_with("/next 0 "),
        "{}",
        rest
    );
}

/// A client that sends its request and closes its side (as HTTP/1.0 clients may) still gets
/// the answer, made after it closed.
#[test]
fn a_client_that_closes_its_side_still_gets_its_answer() {
    let (addr, _) = server();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let all = String::from_utf8_lossy(&all);
    assert!(
        all.starts_with("HTTP/1.1 200") && all.ends_with("/slow 0 "),
        "{}",
        all
    );
}

#[test]
fn an_oversized_body_sent_in_full_still_gets_its_413() {
    // Most clients write the whole body before they read: the server must read (and drop) it
    // after answering, else closing with unread input resets the connection, and the reset
    // discards the answer before the client reads it.
    let (addr, _) = server();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 300000\r\n\r\n")
        .unwrap();
    for _ in 0..30 {
        s.write_all(&[b'b'; 10_000]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(
        r.is_ok() && text.starts_with("HTTP/1.1 413"),
        "{:?} {}",
        r,
        text
    );
}

/// `Limits::body_limit` (wafer's fix): one route takes larger bodies than the rest.
#[test]
fn a_route_may_take_a_larger_body_than_the_rest() {
    let mut limits = tiny_http::Limits::default();
    limits.io_timeout = Some(IO_TIMEOUT);
    limits.max_buffered_body = Some(MAX_BODY);
    limits.body_limit = Some(tiny_http::BodyLimit::new(|method, target| {
        match (method, target.starts_with("/upload/")) {
            (tiny_http::Method::Post, true) => 8 * MAX_BODY,
            _ => MAX_BODY,
        }
    }));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server =
        Arc::new(tiny_http::Server::from_listener_with_limits(listener, None, limits).unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    std::thread::spawn(move || {
        while let Ok(mut rq) = server.recv() {
            let mut body = Vec::new();
            rq.as_reader().read_to_end(&mut body).unwrap();
            let answer = format!("{} {}", rq.url(), body.len());
            let _ = rq.respond(tiny_http::Response::from_string(answer));
        }
    });
    let post = |method: &str, target: &str, len: usize| {
        let mut request = format!(
            "{method} {target} HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        request.resize(request.len() + len, b'x');
        exchange(addr, &request)
    };
    let big = 4 * MAX_BODY;
    let cases = [
        ("POST", "/upload/a?x=1", big, format!("/upload/a?x=1 {big}")),
        (
            "POST",
            "/upload/a",
            8 * MAX_BODY,
            format!("/upload/a {}", 8 * MAX_BODY),
        ),
        (
            "POST",
            "/upload/a",
            8 * MAX_BODY + 1,
            "HTTP/1.1 413".to_string(),
        ),
        ("PUT", "/upload/a", big, "HTTP/1.1 413".to_string()),
        ("POST", "/other", big, "HTTP/1.1 413".to_string()),
        ("POST", "/other", MAX_BODY, format!("/other {MAX_BODY}")),
    ];
    for (method, target, len, expected) in cases {
        let text = post(method, target, len);
        let ok = if expected.starts_with("HTTP/") {
            text.starts_with(&expected)
        } else {
            text.ends_with(&expected)
        };
        assert!(
            ok,
            "{method} {target} {len}: {}",
            &text[..text.len().min(200)]
        );
    }
}

/// Reads an answer's head (up to the empty line), at most 5 s.
fn read_head(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut head, mut byte) = (Vec::new(), [0; 1]);
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// `Limits::body_budget` and `large_body_budget` (wafer's fix): the bytes of bodies held at
/// once, across connections, are bounded; past the budget a request is answered 503 with
/// `Retry-After: 1` before its body is read, and an answered request gives its bytes back.
#[test]
fn bodies_past_the_server_wide_budget_are_refused_unread() {
    let mut limits = tiny_http::Limits::default();
    limits.io_timeout = Some(Duration::from_secs(5));
    limits.max_buffered_body = Some(MAX_BODY);
    limits.body_limit = Some(tiny_http::BodyLimit::new(|_, target| {
        match target.starts_with("/upload/") {
            true => 4 * MAX_BODY,
            false => MAX_BODY,
        }
    }));
    limits.body_budget = Some(36_000);
    limits.large_body_budget = Some(4 * MAX_BODY);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server =
        Arc::new(tiny_http::Server::from_listener_with_limits(listener, None, limits).unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    std::thread::spawn(move || {
        while let Ok(mut rq) = server.recv() {
            let mut body = Vec::new();
            rq.as_reader().read_to_end(&mut body).unwrap();
            let answer = format!("{} {}", rq.url(), body.len());
            let _ = rq.respond(tiny_http::Response::from_string(answer));
        }
    });
    let head = |target: &str, len: usize| {
        format!("POST {target} HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    let refused =
        |text: &str| text.starts_with("HTTP/1.1 503") && text.contains("Retry-After: 1\r\n");

    // A large body of 30,000 bytes, 10 of them sent: its 30,000 are held from the start.
    let mut large = TcpStream::connect(addr).unwrap();
    large
        .write_all(head("/upload/a", 30_000).as_bytes())
        .unwrap();
    large.write_all(&[b'x'; 10]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Another large one would take the large bodies past 32,768: refused, its body unsent.
    let mut second = TcpStream::connect(addr).unwrap();
    second
        .write_all(head("/upload/b", 5000).as_bytes())
        .unwrap();
    let text = read_head(&mut second);
    assert!(refused(&text), "{}", text);
    // An ordinary body still fits the total (36,000 of 36,000).
    let mut small = head("/small", 6000).into_bytes();
    small.resize(small.len() + 6000, b'y');
    assert!(exchange(addr, &small).ends_with("/small 6000"));
    // A chunked one is refused at the chunk that would go past the total, not before.
    let chunked = "POST /small HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(chunked.as_bytes()).unwrap();
    for _ in 0..2 {
        s.write_all(format!("{:x}\r\n{}\r\n", 2500, "z".repeat(2500)).as_bytes())
            .unwrap();
    }
    s.write_all(format!("{:x}\r\n", 2500).as_bytes()).unwrap();
    let text = read_head(&mut s);
    assert!(refused(&text), "{}", text);
    // The large body completes and is answered: its bytes are free again.
    large.write_all(&[b'x'; 30_000 - 10]).unwrap();
    let mut answer = String::new();
    large
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = large.read_to_string(&mut answer);
    assert!(answer.ends_with("/upload/a 30000"), "{}", answer);
    let mut again = head("/upload/b", 30_000).into_bytes();
    again.resize(again.len() + 30_000, b'x');
    let text = exchange(addr, &again);
    assert!(text.ends_with("/upload/b 30000"), "{}", text);
}

/// A body's share of the budget is given back before its answer reaches the client, so that a
/// client that sends the next body the moment it has the answer finds the room it left.
#[test]
fn a_body_is_given_back_before_its_answer_reaches_the_client() {
    let (addr, _) = server_with(|l| l.body_budget = Some(MAX_BODY));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut post =
        format!("POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: {MAX_BODY}\r\n\r\n").into_bytes();
    post.resize(post.len() + MAX_BODY, b'b');
    let expected = format!("/a {MAX_BODY} {}", "b".repeat(MAX_BODY));
    for i in 0..300 {
        s.write_all(&post).unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "request {}: {}", i, head);
        let mut body = vec![0; expected.len()];
        s.read_exact(&mut body).unwrap();
    }
}

/// `Request::take_body` (wafer's fix): the body is moved out of the request rather than copied
/// (so an application holds it once, not twice), and its bytes stay counted in the server's
/// budget until the request is answered, not until the body is taken.
#[test]
fn a_taken_body_keeps_its_share_of_the_budget_until_answered() {
    let mut limits = tiny_http::Limits::default();
    limits.io_timeout = Some(Duration::from_secs(5));
    limits.max_buffered_body = Some(MAX_BODY);
    limits.body_budget = Some(MAX_BODY + 1000);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server =
        Arc::new(tiny_http::Server::from_listener_with_limits(listener, None, limits).unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    let (tx, taken) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(mut rq) = server.recv() {
            // The first three bytes read, the rest taken.
            let mut start = [0; 3];
            rq.as_reader().read_exact(&mut start).unwrap();
            let body = rq.take_body();
            let mut after = Vec::new();
            rq.as_reader().read_to_end(&mut after).unwrap();
            let again = rq.take_body();
            let _ = tx.send((rq, start, body, after, again));
        }
    });
    let head = |len: usize| {
        format!("POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    let post = |len: usize| {
        let mut bytes = head(len).into_bytes();
        bytes.extend((0..len).map(|i| b'a' + (i % 26) as u8));
        bytes
    };
    let mut first = TcpStream::connect(addr).unwrap();
    first.write_all(&post(MAX_BODY)).unwrap();
    let (rq, start, body, after, again) = taken.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(&start, b"abc");
    let body = body.expect("a buffered body can be taken");
    assert_eq!(body.len(), MAX_BODY - 3);
    assert_eq!(&body[..3], b"def", "the bytes not read yet");
    assert!(
        after.is_empty(),
        "the reader is empty once the body is taken"
    );
    assert_eq!(again, Some(Vec::new()), "a body is taken once");
    // Taken but not answered: its bytes are still held, so a second body does not fit.
    let mut second = TcpStream::connect(addr).unwrap();
    second.write_all(head(2000).as_bytes()).unwrap();
    let text = read_head(&mut second);
    assert!(text.starts_with("HTTP/1.1 503"), "{}", text);
    // Answered: its bytes are free again, while the taken body lives on in the caller.
    rq.respond(tiny_http::Response::from_string("ok")).unwrap();
    let mut answer = String::new();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = first.read_to_string(&mut answer);
    assert!(answer.ends_with("ok"), "{}", answer);
    let mut third = TcpStream::connect(addr).unwrap();
    third.write_all(&post(2000)).unwrap();
    let (_, _, body, ..) = taken.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(body.map(|b| b.len()), Some(2000 - 3));
}

/// A keep-alive connection idle for the io timeout after its answer was written is closed then,
/// not a second io timeout later (the idle wait that timed out while the answer was being made
/// starts again from the answer's end, not from the timeout).
#[test]
fn an_idle_connection_is_closed_one_io_timeout_after_its_answer() {
    let (addr, _) = server();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{}", head);
    let mut body = [0; 5];
    s.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"/a 0 ");
    let answered = Instant::now();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let idle = answered.elapsed();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(
        idle < IO_TIMEOUT + Duration::from_millis(700),
        "closed {:?} after the answer, io timeout {:?}",
        idle,
        IO_TIMEOUT
    );
}
