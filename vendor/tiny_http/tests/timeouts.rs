//! `Limits::io_timeout` (wafer's fix): idle connections are closed, a head must arrive whole in
//! time, and a client that does not read its answer cannot hold the responding thread.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_millis(500);

/// A server with `IO_TIMEOUT` answering `body_len` bytes to every request; it reports how long
/// each `respond` took and what it returned.
fn server(body_len: usize) -> (SocketAddr, mpsc::Receiver<(Duration, bool)>) {
    let mut limits = tiny_http::Limits::default();
    limits.io_timeout = Some(IO_TIMEOUT);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server =
        Arc::new(tiny_http::Server::from_listener_with_limits(listener, None, limits).unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(rq) = server.recv() {
            let started = Instant::now();
            let ok = rq
                .respond(tiny_http::Response::from_data(vec![b'x'; body_len]))
                .is_ok();
            let _ = tx.send((started.elapsed(), ok));
        }
    });
    (addr, rx)
}

/// Reads until the server closes (or 5 s pass): what arrived, and after how long.
fn until_closed(s: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    assert!(
        r.is_ok(),
        "the server did not close the connection: {:?}",
        r
    );
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn idle_connections_are_closed_without_an_answer() {
    let (addr, _) = server(2);
    let mut fresh = TcpStream::connect(addr).unwrap();
    let (text, after) = until_closed(&mut fresh);
    assert_eq!(text, "");
    assert!(after < Duration::from_secs(3), "{:?}", after);

    // Idle after an answered request (keep-alive).
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (text, after) = until_closed(&mut kept);
    assert!(text.starts_with("HTTP/1.1 200"), "{}", text);
    assert!(after < Duration::from_secs(3), "{:?}", after);
}

#[test]
fn a_head_must_arrive_whole_in_time() {
    let (addr, _) = server(2);
    let mut s = TcpStream::connect(addr).unwrap();
    let trickle = s.try_clone().unwrap();
    // A byte every 100 ms (each read makes progress) for up to 3 s.
    let sender = std::thread::spawn(move || {
        let mut trickle = trickle;
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ";
        for i in 0..30 {
            let byte = head.get(i).copied().unwrap_or(b'z');
            if trickle.write_all(&[byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let (text, after) = until_closed(&mut s);
    assert!(text.starts_with("HTTP/1.1 408"), "{}", text);
    assert!(after < Duration::from_millis(2500), "{:?}", after);
    sender.join().unwrap();
}

#[test]
fn a_client_that_never_reads_frees_the_responder() {
    // Far more than the loopback socket buffers hold.
    let (addr, answered) = server(64 << 20);
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let (took, ok) = answered.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(!ok, "the whole answer was written");
    assert!(took < Duration::from_secs(5), "{:?}", took);
    drop(s);
}
