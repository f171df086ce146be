//! The answer path of `Limits::max_buffered_body` (wafer's fix, change 9): answers written by
//! whoever answers, the rest behind. Pinned here: answers on one connection never interleave nor
//! go out of order (pipelining, an answer behind, 100-continue, a refusal after an answer in
//! flight), and a client that resets mid-answer frees everything it held.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A server with buffered bodies, `workers` responding threads and `max_behind` places, which
/// answers `/big/N` with N bytes of `x` and anything else with `URL BODYLEN`.
fn server(workers: usize, max_behind: usize) -> (SocketAddr, tiny_http::AnswersInFlight) {
    let mut limits = tiny_http::Limits::default();
    limits.io_timeout = Some(Duration::from_secs(3));
    limits.max_buffered_body = Some(8192);
    limits.max_answers_behind = max_behind;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server =
        Arc::new(tiny_http::Server::from_listener_with_limits(listener, None, limits).unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    let answers = server.answers_in_flight();
    for _ in 0..workers {
        let server = server.clone();
        std::thread::spawn(move || {
            while let Ok(mut rq) = server.recv() {
                let mut body = Vec::new();
                rq.as_reader().read_to_end(&mut body).unwrap();
                let answer = match rq.url().strip_prefix("/big/") {
                    Some(n) => vec![b'x'; n.parse().unwrap()],
                    None => format!("{} {}", rq.url(), body.len()).into_bytes(),
                };
                let _ = rq.respond(tiny_http::Response::from_data(answer));
            }
        });
    }
    (addr, answers)
}

/// One answer read off `s`: its status line and body (by `Content-Length`).
fn answer(s: &mut TcpStream) -> (String, Vec<u8>) {
    let (mut head, mut byte) = (Vec::new(), [0; 1]);
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "{:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.lines().next().unwrap().to_owned();
    if head.contains("Transfer-Encoding: chunked") {
        let mut body = Vec::new();
        loop {
            let size = usize::from_str_radix(&line(s), 16).unwrap();
            let start = body.len();
            body.resize(start + size, 0);
            s.read_exact(&mut body[start..]).unwrap();
            assert_eq!(line(s), "");
            if size == 0 {
                return (status, body);
            }
        }
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |n| n.parse().unwrap());
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    (status, body)
}

/// One CRLF-terminated line off `s`.
fn line(s: &mut TcpStream) -> String {
    let (mut line, mut byte) = (Vec::new(), [0; 1]);
    while !line.ends_with(b"\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1);
        line.push(byte[0]);
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

const BIG: usize = 8 << 20;

/// Pipelined requests whose first answer is far more than the socket takes (so the rest is
/// written behind, while the client reads nothing yet), answered by four threads: every answer
/// arrives whole and in order, and a malformed request after them is refused only after them.
#[test]
fn pipelined_answers_stay_in_order_behind_a_large_one() {
    let (addr, answers) = server(4, 8);
    for round in 0..3 {
        let mut s = connect(addr);
        let mut all = format!("GET /big/{BIG} HTTP/1.1\r\nHost: a\r\n\r\n");
        for i in 0..20 {
            all += &format!("POST /p{i} HTTP/1.1\r\nHost: a\r\nContent-Length: {i}\r\n\r\n");
            all += &"b".repeat(i);
        }
        all += &format!("GET /big/{} HTTP/1.1\r\nHost: a\r\n\r\n", BIG + 1);
        all += "GET /last HTTP/1.1\r\nHost: a\r\n\r\nNOT A REQUEST\r\n\r\n";
        s.write_all(all.as_bytes()).unwrap();
        // Let the answers pile up before reading any.
        std::thread::sleep(Duration::from_millis(300));
        let (status, body) = answer(&mut s);
        assert_eq!(status, "HTTP/1.1 200 OK", "round {round}");
        assert!(body.len() == BIG && body.iter().all(|&b| b == b'x'));
        for i in 0..20 {
            let (status, body) = answer(&mut s);
            assert_eq!(status, "HTTP/1.1 200 OK");
            assert_eq!(String::from_utf8(body).unwrap(), format!("/p{i} {i}"));
        }
        let (_, body) = answer(&mut s);
        assert!(body.len() == BIG + 1 && body.iter().all(|&b| b == b'x'));
        assert_eq!(answer(&mut s).1, b"/last 0");
        assert_eq!(answer(&mut s).0, "HTTP/1.1 400 Bad Request");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }
    assert!(answers.wait(Duration::from_secs(5)));
}

/// `Expect: 100-continue` after a request whose answer is still being written behind: the
/// `100 Continue` comes after that answer, whole, never inside it.
#[test]
fn a_continue_waits_for_the_answer_behind() {
    let (addr, _) = server(2, 8);
    let mut s = connect(addr);
    s.write_all(
        format!(
            "GET /big/{BIG} HTTP/1.1\r\nHost: a\r\n\r\n\
             POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (_, body) = answer(&mut s);
    assert!(body.len() == BIG && body.iter().all(|&b| b == b'x'));
    assert_eq!(answer(&mut s).0, "HTTP/1.1 100 Continue");
    s.write_all(b"abc").unwrap();
    assert_eq!(answer(&mut s).1, b"/c 3");
}

/// Sets `SO_LINGER` to zero and closes: the kernel resets the connection.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// A client that resets its connection mid-answer (written behind) or before its answer is
/// made: the answer is counted done at once, its place behind is given back (the one place
/// serves the next large answer whole), and the server goes on.
#[test]
fn a_reset_mid_answer_frees_its_place_and_its_count() {
    let (addr, answers) = server(1, 1);
    for _ in 0..3 {
        let mut s = connect(addr);
        s.write_all(format!("GET /big/{BIG} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        let mut some = [0; 4096];
        s.read_exact(&mut some).unwrap();
        reset(s);
        let started = Instant::now();
        assert!(
            answers.wait(Duration::from_secs(2)),
            "an answer still in flight"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // Reset before the answer is made (a pipelined large answer queued behind a small one).
    let mut s = connect(addr);
    s.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(answer(&mut s).1, b"/a 0");
    reset(s);
    assert!(answers.wait(Duration::from_secs(2)));
    // The one place behind is free: a large answer is written whole.
    let mut s = connect(addr);
    s.write_all(
        format!("GET /big/{BIG} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (_, body) = answer(&mut s);
    assert_eq!(body.len(), BIG);
    assert!(answers.wait(Duration::from_secs(2)));
}

/// An HTTP/1.0 client (or `Connection: close`) that sends a CRLF after its body, as some do:
/// its answer arrives whole before the connection ends.
#[test]
fn a_last_answer_arrives_though_the_client_sent_more() {
    let (addr, _) = server(1, 8);
    for _ in 0..20 {
        let mut s = connect(addr);
        s.write_all(b"POST /old HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut all = Vec::new();
        let r = s.read_to_end(&mut all);
        let all = String::from_utf8_lossy(&all);
        assert!(all.ends_with("/old 2"), "{:?} {}", r, all);
    }
}

/// A server dropped while its connections keep handing out requests: every request handed out
/// is answered (500 when nobody took it), so the count of answers in flight drains and no
/// connection thread waits for ever on a request left in the queue.
#[test]
fn a_server_dropped_under_load_leaves_no_answer_in_flight() {
    use std::sync::atomic::{AtomicBool, Ordering};
    for round in 0..40 {
        let mut limits = tiny_http::Limits::default();
        limits.io_timeout = Some(Duration::from_secs(30));
        limits.max_buffered_body = Some(8192);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server =
            Arc::new(tiny_http::Server::from_listener_with_limits(listener, None, limits).unwrap());
        let addr = server.server_addr().to_ip().unwrap();
        let answers = server.answers_in_flight();
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (server, stop) = (server.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(Some(rq)) = server.recv_timeout(Duration::from_millis(1)) {
                        let _ = rq.respond(tiny_http::Response::from_data(b"ok".to_vec()));
                    }
                }
            })
        };
        drop(server);
        // Connected before the server may go (a loaded machine may start the threads late).
        let clients: Vec<_> = (0..8)
            .map(|_| (connect(addr), stop.clone()))
            .map(|(mut s, stop)| {
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    while !stop.load(Ordering::SeqCst) {
                        if s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").is_err() {
                            break;
                        }
                        let mut buf = [0; 256];
                        match s.read(&mut buf) {
                            Ok(n) if n > 0 => {}
                            _ => break,
                        }
                    }
                    // Keep the connection open: only the server may end it.
                    std::thread::sleep(Duration::from_millis(100));
                    s
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20 + round % 7));
        // The last handle on the server goes with the worker.
        stop.store(true, Ordering::SeqCst);
        worker.join().unwrap();
        let kept: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        assert!(
            answers.wait(Duration::from_secs(3)),
            "round {}: an answer is still in flight after the server was dropped",
            round
        );
        drop(kept);
    }
}

/// A body that fails (or, with `panics`, panics) after `n` bytes.
struct Failing {
    n: usize,
    panics: bool,
}

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.n == 0 {
            assert!(!self.panics, "the source panicked");
            return Err(std::io::Error::other("the source failed"));
        }
        let n = self.n.min(buf.len());
        buf[..n].fill(b'y');
        self.n -= n;
        Ok(n)
    }
}

/// An answer whose body fails midway (a file or an upstream that breaks), or whose maker
/// panics, cannot be finished: the connection is cut there, rather than the client taking it
/// for whole (chunked: the last chunk was written after the failure) or the next answer for the
/// rest of its body.
#[test]
fn an_answer_that_fails_midway_ends_its_connection() {
    let mut limits = tiny_http::Limits::default();
    limits.io_timeout = Some(Duration::from_secs(3));
    limits.max_buffered_body = Some(8192);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server =
        Arc::new(tiny_http::Server::from_listener_with_limits(listener, None, limits).unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    let answers = server.answers_in_flight();
    // More than one piece (64 KiB) of the body goes out before it fails.
    const SENT: usize = 200_000;
    std::thread::spawn(move || {
        while let Ok(rq) = server.recv() {
            let (length, panics) = match rq.url() {
                "/sized" => (Some(SENT + 5000), false),
                "/chunked" => (None, false),
                "/panics" => (Some(SENT + 5000), true),
                _ => {
                    let _ = rq.respond(tiny_http::Response::from_data(b"next".to_vec()));
                    continue;
                }
            };
            let body = Failing { n: SENT, panics };
            // `Content-Length` whatever the size, unless the length is unknown.
            let failing = tiny_http::Response::new(200.into(), vec![], body, length, None)
                .with_chunked_threshold(usize::MAX);
            let responded =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rq.respond(failing)));
            assert!(!matches!(responded, Ok(Ok(()))));
        }
    });
    for target in ["/sized", "/chunked", "/panics"] {
        let mut s = connect(addr);
        s.write_all(
            format!(
                "GET {target} HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let mut all = Vec::new();
        // The cut may come as a reset.
        let _ = s.read_to_end(&mut all);
        let all = String::from_utf8_lossy(&all);
        assert!(
            all.starts_with("HTTP/1.1 200"),
            "{}: {:?}",
            target,
            &all[..all.len().min(200)]
        );
        assert!(
            !all.contains("next") && !all.ends_with("\r\n0\r\n\r\n"),
            "{}: the broken answer looks whole, or the next one follows it: {:?}",
            target,
            &all[all.len().saturating_sub(120)..]
        );
    }
    assert!(answers.wait(Duration::from_secs(2)));
}

/// A client that stops reading midway through a large answer (and keeps its connection open)
/// holds the thread writing behind only for the io timeout: then the count drains and the one
/// place behind serves another client's large answer whole.
#[test]
fn a_client_that_stops_reading_midway_is_cut_after_the_io_timeout() {
    let (addr, answers) = server(1, 1);
    // A small receive buffer, fixed before connecting (no autotuning): once it is full the
    // socket takes nothing more. With autotuning the kernel keeps opening the window a little
    // while the client reads nothing, each write makes some progress, and the io timeout (per
    // write) starts again: under load that went past 8 s (the answer's own deadline, at the
    // default least rate, is minutes for 8 MiB).
    let mut stalled = {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        socket.connect(&addr.into()).unwrap();
        let s: TcpStream = socket.into();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    stalled
        .write_all(format!("GET /big/{BIG} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .unwrap();
    let mut some = [0; 4096];
    stalled.read_exact(&mut some).unwrap();
    let started = Instant::now();
    assert!(answers.wait(Duration::from_secs(8)), "still writing behind");
    // The io timeout is 3 s; the writes before it made progress as the socket drained.
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    let mut s = connect(addr);
    s.write_all(format!("GET /big/{BIG} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(answer(&mut s).1.len(), BIG);
    drop(stalled);
}

/// A client that takes an answer written behind only a trickle at a time (each write moves a
/// little, so no single write waits out the io timeout) is cut once the answer has had the io
/// timeout plus its size at `Limits::min_answer_rate`.
#[test]
fn a_client_that_reads_a_trickle_is_cut_at_the_least_rate() {
    let mut limits = tiny_http::Limits::default();
    limits.io_timeout = Some(Duration::from_secs(2));
    limits.max_buffered_body = Some(8192);
    limits.min_answer_rate = 32 << 20;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server =
        Arc::new(tiny_http::Server::from_listener_with_limits(listener, None, limits).unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    let answers = server.answers_in_flight();
    std::thread::spawn(move || {
        while let Ok(rq) = server.recv() {
            let _ = rq.respond(tiny_http::Response::from_data(vec![b'x'; 64 << 20]));
        }
    });
    // A fixed receive buffer, so the socket holds only what the client takes.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(256 * 1024).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    // 128 KiB every 50 ms, ~2.5 MB/s: enough that the writes behind keep moving (the kernel
    // wakes a writer once half its send buffer is free, well within the io timeout), too little
    // for the answer's deadline of 2 s + 2 s; the whole answer would take ~25 s. (The server's
    // send buffer, a few MiB, is never behind; the client may read on through it after the cut,
    // so what is measured is the thread writing behind letting go.)
    let started = Instant::now();
    let reader = std::thread::spawn(move || {
        let (mut got, mut buf) = (0, vec![0; 128 << 10]);
        while started.elapsed() < Duration::from_secs(10) {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        got
    });
    assert!(
        answers.wait(Duration::from_secs(8)),
        "still writing behind after {:?}",
        started.elapsed()
    );
    assert!(
        reader.join().unwrap() < 16 << 20,
        "the whole answer arrived"
    );
}
