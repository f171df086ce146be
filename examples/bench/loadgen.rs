//! A small closed-loop HTTP/1.1 load generator: N keep-alive connections, one thread each, one
//! request in flight per connection (no pipelining), for a fixed time. Shared by the `bench`
//! example and the smoke test in `tests/bench_smoke.rs` (included there by path).
//!
//! Only what wafer and the ceiling answer is understood: a status line, headers, and a body
//! framed by `Content-Length`. Anything else counts as an error and the connection is reopened.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Builds the raw bytes of request number `seq` on connection `conn`.
pub type MakeRequest = dyn Fn(usize, u64) -> Vec<u8> + Send + Sync;
/// Is this (status, body) a success?
pub type Check = dyn Fn(u16, &[u8]) -> bool + Send + Sync;

/// What one run measured. Latencies are in microseconds, sorted.
pub struct Report {
    pub requests: u64,
    pub errors: u64,
    pub secs: f64,
    pub latencies_us: Vec<u32>,
}

impl Report {
    #[allow(dead_code)] // the smoke test's; the bench reads rates from its `Figures`
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * q).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

/// A tiny xorshift generator, so request mixes need no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// `METHOD path` with a JSON body (or none), keep-alive. The `Host` is loopback's: without an
/// api key, wafer serves `/v1` and the credential interfaces to no other (CONTRACT §8).
pub fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n").into_bytes();
    if !body.is_empty() || method == "POST" {
        r.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )
            .as_bytes(),
        );
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

/// Read one response: (status, body). Errors on anything but a Content-Length-framed answer.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    buf.clear();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("head"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status"))?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| bad("no content-length"))?;
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("closed in body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if body.len() > len {
        return Err(bad("more than one response (pipelining is not used)"));
    }
    Ok((status, body))
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Drive `conns` connections for `warmup + duration`; only requests started after the warm-up
/// are counted. Bounded: every connection stops by itself when the time is up.
#[allow(dead_code)] // the smoke test's; the bench calls `run_spread`
pub fn run(
    addr: SocketAddr,
    conns: usize,
    warmup: Duration,
    duration: Duration,
    make: Arc<MakeRequest>,
    check: Arc<Check>,
) -> Report {
    run_spread(&[addr], conns, warmup, duration, make, check)
}

/// [`run`] against several servers: connection `c` talks to `addrs[c % addrs.len()]`.
pub fn run_spread(
    addrs: &[SocketAddr],
    conns: usize,
    warmup: Duration,
    duration: Duration,
    make: Arc<MakeRequest>,
    check: Arc<Check>,
) -> Report {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let (make, check, stop) = (make.clone(), check.clone(), stop.clone());
            let addr = addrs[c % addrs.len()];
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(1 << 16);
                let (mut ok, mut errors) = (0u64, 0u64);
                let mut buf = Vec::with_capacity(8192);
                let mut stream: Option<TcpStream> = None;
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if Instant::now() >= end {
                        break;
                    }
                    let rq = make(c, seq);
                    seq += 1;
                    let t0 = Instant::now();
                    let s = match stream.take().map(Ok).unwrap_or_else(|| connect(addr)) {
                        Ok(s) => s,
                        Err(_) => {
                            if t0 >= measure_from {
                                errors += 1;
                            }
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    let mut s = s;
                    let res = s
                        .write_all(&rq)
                        .and_then(|_| read_response(&mut s, &mut buf));
                    let counted = t0 >= measure_from;
                    match res {
                        Ok((status, body)) => {
                            if counted {
                                if check(status, &body) {
                                    ok += 1;
                                    lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                                } else {
                                    errors += 1;
                                }
                            }
                            stream = Some(s);
                        }
                        Err(_) => {
                            if counted {
                                errors += 1;
                            }
                        }
                    }
                }
                (ok, errors, lat)
            })
        })
        .collect();
    let mut report = Report {
        requests: 0,
        errors: 0,
        secs: duration.as_secs_f64(),
        latencies_us: Vec::new(),
    };
    for t in threads {
        let (ok, errors, lat) = t.join().expect("load thread panicked");
        report.requests += ok;
        report.errors += errors;
        report.latencies_us.extend(lat);
    }
    stop.store(true, Ordering::Relaxed);
    let measured = start.elapsed().saturating_sub(warmup).as_secs_f64();
    // The last requests may finish a little after `end`: divide by the time actually measured.
    report.secs = measured.max(duration.as_secs_f64());
    report.latencies_us.sort_unstable();
    report
}
