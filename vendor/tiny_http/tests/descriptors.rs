//! The accept loop outlives running out of file descriptors. A test binary of its own: it lowers
//! this process's descriptor limit (`prlimit --pid`, util-linux), which would break any test
//! running beside it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The soft and hard `RLIMIT_NOFILE` of this process, from `/proc/self/limits`.
fn nofile() -> (String, String) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut f = line.split_whitespace().skip(3);
    (f.next().unwrap().into(), f.next().unwrap().into())
}

fn set_nofile(soft: &str, hard: &str) {
    let ok = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={soft}:{hard}"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "prlimit failed");
}

/// A GET on a new connection, answered within `wait`?
fn answered(addr: std::net::SocketAddr, wait: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, wait) else {
        return false;
    };
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out.starts_with(b"HTTP/1.1 200")
}

#[test]
fn accepting_resumes_once_descriptors_are_free_again() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        println!("skipped: no prlimit on this machine");
        return;
    }
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    let s = server.clone();
    std::thread::spawn(move || loop {
        if let Ok(rq) = s.recv() {
            let _ = rq.respond(tiny_http::Response::from_string("ok"));
        }
    });
    assert!(answered(addr, Duration::from_secs(2)));

    // Room for a few dozen more descriptors, then far more connections than that: the accept
    // thread runs out (each accepted connection costs it two, the client here one).
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let (soft, hard) = nofile();
    set_nofile(&(open + 40).to_string(), &hard);
    let mut flood = Vec::new();
    for _ in 0..200 {
        match TcpStream::connect(addr) {
            Ok(c) => flood.push(c),
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let during = answered(addr, Duration::from_millis(200));
    drop(flood);
    set_nofile(&soft, &hard);

    let started = Instant::now();
    assert!(
        answered(addr, Duration::from_secs(2)),
        "no answer after the flood ended (the accept loop died)"
    );
    println!(
        "answered during the flood: {during}; after it: in {:?}",
        started.elapsed()
    );
}
