//! wafer's benchmark: the real release binary against a ceiling, in one run. See BENCHMARKS.md.
//!
//! `bench/run.sh` builds `wafer` and this example in release and runs it. It seeds two databases
//! by direct SQL (the same rows a login writes: a user, and a session under sha256(skey)), starts
//! `wafer mock-wechat` and `wafer serve` as child processes on loopback, drives keep-alive load at
//! them from this process, and prints a table. The ceiling is this same binary run as
//! `bench ceiling`: a minimal tiny_http server with the same worker count answering a fixed JSON
//! body of the same size as a session check's answer.
//!
//! Options: `--secs S` per scenario (default 5), `--conns N` (32), `--small N` (10000) and
//! `--large N` (1000000) sessions, `--workers N` (wafer's default: 2 × cores, at least 4),
//! `--wafer PATH` (default: the `wafer` next to this example's directory), `--data DIR` (keep the
//! large database there and reuse it next time), `--only TEXT` (of the 10k-session scenarios, run
//! only those whose name contains TEXT; for profiling).

mod loadgen;

use loadgen::{request, Check, MakeRequest, Report, Rng};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const APPID: &str = "wxbench000000001";
const SECRET: &str = "bench-secret";
const USER_INFO: &str = r#"{"nickName":"Band","gender":1,"language":"zh_CN","city":"Guangzhou","province":"Guangdong","country":"CN","avatarUrl":"http://wx.qlogo.cn/mmopen/vi_32/aSKcBBPpibyKNicHNTMM0qJVh8Kjgiak2AHWr8MHM4WgMEm7GFhsf8OYrySdbvAMvTsw3mo8ibKicsnfN5pRjl1p8HQ/0"}"#;

struct Opts {
    secs: f64,
    conns: usize,
    small: u64,
    large: u64,
    workers: usize,
    wafer: PathBuf,
    /// Keep the large database here and reuse it on the next run (seeding 1M takes a while).
    data: Option<PathBuf>,
    /// Run only the 10k-session scenarios whose name contains this (for profiling).
    only: Option<String>,
}

fn parse_opts() -> Opts {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let exe = std::env::current_exe().expect("current exe");
    let mut o = Opts {
        secs: 5.0,
        conns: 32,
        small: 10_000,
        large: 1_000_000,
        workers: (2 * cores).max(4),
        wafer: exe
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("wafer"))
            .unwrap_or_else(|| PathBuf::from("wafer")),
        data: None,
        only: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--secs" => o.secs = v().parse().unwrap_or_else(|_| die("--secs")),
            "--conns" => o.conns = v().parse().unwrap_or_else(|_| die("--conns")),
            "--small" => o.small = v().parse().unwrap_or_else(|_| die("--small")),
            "--large" => o.large = v().parse().unwrap_or_else(|_| die("--large")),
            "--workers" => o.workers = v().parse().unwrap_or_else(|_| die("--workers")),
            "--wafer" => o.wafer = PathBuf::from(v()),
            "--data" => o.data = Some(PathBuf::from(v())),
            "--only" => o.only = Some(v()),
            _ => die(&format!("unknown option {a}")),
        }
    }
    o
}

fn die(m: &str) -> ! {
    eprintln!("bench: {m}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("ceiling") {
        let workers = args[2]
            .parse()
            .unwrap_or_else(|_| die("ceiling WORKERS BODY_BYTES"));
        let size = args[3]
            .parse()
            .unwrap_or_else(|_| die("ceiling WORKERS BODY_BYTES"));
        return ceiling(workers, size);
    }
    let o = parse_opts();
    if !o.wafer.exists() {
        die(&format!(
            "{} not found: build it with `cargo build --release` (bench/run.sh does)",
            o.wafer.display()
        ));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    println!(
        "# wafer bench: {} connections, {} s per scenario, {} workers, {}",
        o.conns,
        o.secs,
        o.workers,
        machine()
    );

    let t = Instant::now();
    let large_db = match &o.data {
        Some(d) => {
            std::fs::create_dir_all(d).expect("--data directory");
            d.join(format!("large-{}.db", o.large))
        }
        None => dir.path().join("large.db"),
    };
    if large_db.exists() {
        eprintln!("reusing {}", large_db.display());
    } else {
        seed(&large_db, o.large);
        eprintln!("seeded {} sessions in {:.1?}", o.large, t.elapsed());
    }
    // Seeded last: its sessions were visited just now, as the large one's are made to be below.
    let t = Instant::now();
    let small_db = dir.path().join("small.db");
    seed(&small_db, o.small);
    eprintln!("seeded {} sessions in {:.1?}", o.small, t.elapsed());

    let mock = Proc::spawn(
        {
            let mut c = Command::new(&o.wafer);
            c.args(["mock-wechat", "--listen", "127.0.0.1:0"]);
            c
        },
        &dir.path().join("mock.log"),
        "mock-wechat listening on http://",
    );
    let mock_base = format!("http://{}", mock.addr);

    let mut rows: Vec<Row> = Vec::new();
    let secs = Duration::from_secs_f64(o.secs);
    let warm = Duration::from_millis(500);

    let server = serve(
        &o,
        &small_db,
        &mock_base,
        &dir.path().join("wafer-small.log"),
        None,
    );
    let (status, body) = one(server.addr, &check_rq(0, o.small));
    assert_eq!(
        status,
        200,
        "session check: {}",
        String::from_utf8_lossy(&body)
    );

    // The ceiling is measured right before each scenario, with the very same requests and an
    // answer of the same size as wafer's, and each ratio is to that run: the machine's other
    // load drifts over a run of minutes, and a pair seconds apart shares it.
    let ceiling_log = dir.path().join("ceiling.log");
    let ceiling_run = |size: usize, make: &Arc<MakeRequest>| {
        let ceiling = Proc::spawn(
            {
                let mut c = Command::new(std::env::current_exe().unwrap());
                c.args(["ceiling", &o.workers.to_string(), &size.to_string()]);
                c
            },
            &ceiling_log,
            "ceiling listening on http://",
        );
        let (r, cpu) = measure(
            &ceiling,
            o.conns,
            warm,
            secs,
            make.clone(),
            Arc::new(|s, _| s == 200),
        );
        (r, cpu, ceiling.hwm_kb())
    };
    let get: Arc<MakeRequest> = {
        let get = request("GET", "/", b"");
        Arc::new(move |_, _| get.clone())
    };
    let (r, cpu, hwm) = ceiling_run(body.len(), &get);
    let rps = r.rps();
    rows.push(Row::new(
        "ceiling (fixed JSON, GET /)",
        r,
        cpu,
        hwm,
        rps,
        cpu,
    ));

    let n = o.small;
    // One scenario against `srv`, right after the ceiling given the same requests (skipped when
    // `--only` excludes it).
    let run =
        |name: &str, srv: &Proc, make: Arc<MakeRequest>, check: Arc<Check>, rows: &mut Vec<Row>| {
            if o.only
                .as_ref()
                .is_some_and(|only| !name.contains(only.as_str()))
            {
                return;
            }
            // wafer's answer to this scenario, for the size of the ceiling's body.
            let (_, answer) = one(srv.addr, &make(0, 1 << 50));
            let (c, c_cpu, _) = ceiling_run(answer.len(), &make);
            let (r, cpu) = measure(srv, o.conns, warm, secs, make, check);
            rows.push(Row::new(name, r, cpu, srv.hwm_kb(), c.rps(), c_cpu));
        };
    run(
        &format!("POST /v1/sessions/check ({n} sessions)"),
        &server,
        Arc::new(move |c, s| check_rq(pick(c, s, n), n)),
        Arc::new(|s, _| s == 200),
        &mut rows,
    );
    run(
        "qcloud.cam.auth",
        &server,
        Arc::new(move |c, s| auth_rq(pick(c, s, n))),
        Arc::new(envelope_ok),
        &mut rows,
    );
    let (status, body) = one(server.addr, &token_rq());
    assert_eq!(status, 200, "token: {}", String::from_utf8_lossy(&body));
    run(
        "GET /v1/apps/{appid}/access_token (warm)",
        &server,
        Arc::new(|_, _| token_rq()),
        Arc::new(|s, _| s == 200),
        &mut rows,
    );
    run(
        "qcloud.cam.id_skey (login via fake WeChat)",
        &server,
        Arc::new(login_rq),
        Arc::new(envelope_ok),
        &mut rows,
    );
    run(
        "mixed (60% auth, 25% check, 10% token, 5% login)",
        &server,
        Arc::new(move |c, s| match pick(c, s, 100) {
            0..=59 => auth_rq(pick(c, s + 1, n)),
            60..=84 => check_rq(pick(c, s + 1, n), n),
            85..=94 => token_rq(),
            _ => login_rq(c, s + (1 << 40)),
        }),
        Arc::new(|s, b| s == 200 && (!b.starts_with(b"{\"returnCode\"") || envelope_ok(s, b))),
        &mut rows,
    );
    // Logins while WeChat takes 100 ms over each, with session checks on a few connections
    // beside them: the workers must not be the ones waiting (`server::lane`). Not paired with a
    // ceiling: the figure is the checks' latency next to the logins' rate.
    let slow_name = "logins with WeChat answering in 100 ms, checks beside them";
    let slow = if o
        .only
        .as_ref()
        .is_some_and(|only| !slow_name.contains(only.as_str()))
    {
        None
    } else {
        let fault = r#"{"path":"/sns/jscode2session","delay_ms":100,"times":1000000000}"#;
        let (status, body) = one(
            mock.addr,
            &request("POST", "/__mock__/fail", fault.as_bytes()),
        );
        assert_eq!(
            status,
            200,
            "mock fault: {}",
            String::from_utf8_lossy(&body)
        );
        let (addr, conns) = (server.addr, o.conns);
        let logins = std::thread::spawn(move || {
            loadgen::run(
                addr,
                conns,
                warm,
                secs,
                Arc::new(|c, s| login_rq(c, s + (1 << 41))),
                Arc::new(envelope_ok),
            )
        });
        let checks = loadgen::run(
            server.addr,
            SLOW_CHECK_CONNS,
            warm,
            secs,
            Arc::new(move |c, s| check_rq(pick(c, s, n), n)),
            Arc::new(|s, _| s == 200),
        );
        let logins = logins.join().expect("login load");
        let line = format!(
            "{slow_name}: {:.0} logins/s on {conns} connections ({} errors); {:.0} checks/s on \
             {SLOW_CHECK_CONNS} connections, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} errors)",
            logins.rps(),
            logins.errors,
            checks.rps(),
            checks.quantile_ms(0.5),
            checks.quantile_ms(0.99),
            checks.quantile_ms(1.0),
            checks.errors,
        );
        eprintln!("{line}");
        Some(line)
    };
    drop(server);

    // Scale (skipped with `--large 0`): start-up to a healthy /healthz, then the same session
    // check, at `large` sessions.
    let big = o.large;
    let mut healthy = None;
    if big > 0 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Sessions last visited two minutes ago: the first check of each slides `last_visit` (a
        // write), as it does for a user back after a pause.
        set_last_visit(&large_db, wafer::ids::now() - 120);
        let started = Instant::now();
        let server = serve(
            &o,
            &large_db,
            &mock_base,
            &dir.path().join("wafer-large.log"),
            Some(port),
        );
        healthy = Some(loop {
            if let Ok(mut s) = TcpStream::connect(addr) {
                let _ =
                    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                if out.starts_with(b"HTTP/1.1 200") {
                    break started.elapsed();
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                die("the server did not become healthy within 60 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        });
        run(
            &format!("check, {big} sessions, each slides last_visit (a write)"),
            &server,
            Arc::new(move |c, s| check_rq(pick(c, s, big), big)),
            Arc::new(|s, _| s == 200),
            &mut rows,
        );
        // Now every session visited just now, like the small database: checks only read.
        set_last_visit(&large_db, wafer::ids::now());
        run(
            &format!("POST /v1/sessions/check ({big} sessions)"),
            &server,
            Arc::new(move |c, s| check_rq(pick(c, s, big), big)),
            Arc::new(|s, _| s == 200),
            &mut rows,
        );
    }
    drop(mock);

    print_table(&rows);
    println!();
    if let Some(line) = slow {
        println!("{line}");
    }
    let Some(healthy) = healthy else { return };
    println!(
        "start-up to a healthy /healthz with {big} sessions: {:.1} ms",
        healthy.as_secs_f64() * 1000.0
    );
    let rps = |prefix: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(prefix))
            .map_or(f64::NAN, |r| r.report.rps())
    };
    let small_rate = rps(&format!("POST /v1/sessions/check ({n} "));
    let large_rate = rps(&format!("POST /v1/sessions/check ({big} "));
    println!(
        "session check at {big} sessions / at {n}: {:.0}%",
        100.0 * large_rate / small_rate
    );
}

struct Row {
    name: String,
    report: Report,
    /// The server's CPU time (user + system) per counted request, in microseconds.
    cpu_us: f64,
    hwm_kb: u64,
    /// The ceiling's rate and CPU per request in the run just before this one.
    ceiling_rps: f64,
    ceiling_cpu_us: f64,
}

impl Row {
    fn new(
        name: &str,
        report: Report,
        cpu_us: f64,
        hwm_kb: u64,
        ceiling_rps: f64,
        ceiling_cpu_us: f64,
    ) -> Row {
        eprintln!(
            "{name}: {:.0} req/s ({:.0}% of the ceiling's {:.0}), p99 {:.2} ms, {} errors, \
             {cpu_us:.1} µs CPU/request (ceiling {ceiling_cpu_us:.1})",
            report.rps(),
            100.0 * report.rps() / ceiling_rps,
            ceiling_rps,
            report.quantile_ms(0.99),
            report.errors
        );
        Row {
            name: name.to_string(),
            report,
            cpu_us,
            hwm_kb,
            ceiling_rps,
            ceiling_cpu_us,
        }
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| scenario | req/s | ceiling req/s (paired) | vs ceiling | p50 ms | p99 ms | p99.9 ms | errors | CPU µs/req (ceiling) | peak RSS MB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0}% | {:.3} | {:.3} | {:.3} | {} | {:.1} ({:.1}) | {:.1} |",
            r.name,
            r.report.rps(),
            r.ceiling_rps,
            100.0 * r.report.rps() / r.ceiling_rps,
            r.report.quantile_ms(0.5),
            r.report.quantile_ms(0.99),
            r.report.quantile_ms(0.999),
            r.report.errors,
            r.cpu_us,
            r.ceiling_cpu_us,
            r.hwm_kb as f64 / 1024.0
        );
    }
}

/// Load `p` as `loadgen::run` does, and also take the CPU time `p` spent over the counted part
/// of the run: (report, server CPU µs per counted request).
fn measure(
    p: &Proc,
    conns: usize,
    warm: Duration,
    secs: Duration,
    make: Arc<MakeRequest>,
    check: Arc<Check>,
) -> (Report, f64) {
    let pid = p.child.id();
    let at_start = std::thread::spawn(move || {
        std::thread::sleep(warm);
        cpu_ticks(pid)
    });
    let r = loadgen::run(p.addr, conns, warm, secs, make, check);
    let end = cpu_ticks(pid);
    let start = at_start.join().expect("cpu sampler");
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let cpu_us = (end - start) as f64 / ticks_per_sec * 1e6 / r.requests.max(1) as f64;
    (r, cpu_us)
}

/// utime + stime of a process, in clock ticks (0 if it cannot be read).
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cores} cores, {cpu}")
}

// ---- requests ----

/// 32 lowercase hex characters, a pure function of (i, salt): the bench can name any seeded
/// session without keeping a list.
fn hex32(i: u64, salt: u64) -> String {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    format!(
        "{:016x}{:016x}",
        mix(i ^ salt.rotate_left(32)),
        mix(i.wrapping_mul(31) ^ salt)
    )
}

fn user_id(i: u64) -> String {
    hex32(i, 1)
}
fn skey(i: u64) -> String {
    hex32(i, 2)
}

/// A session index in 0..n, spread evenly over the whole table.
fn pick(conn: usize, seq: u64, n: u64) -> u64 {
    Rng::new(((conn as u64) << 40) ^ seq ^ 0x5EED).next() % n
}

/// Connections making session checks while logins wait on a slow WeChat.
const SLOW_CHECK_CONNS: usize = 4;

fn check_rq(i: u64, _n: u64) -> Vec<u8> {
    let body = format!(r#"{{"id":"{}","skey":"{}"}}"#, user_id(i), skey(i));
    request("POST", "/v1/sessions/check", body.as_bytes())
}

fn auth_rq(i: u64) -> Vec<u8> {
    let body = format!(
        r#"{{"version":1,"componentName":"MA","interface":{{"interfaceName":"qcloud.cam.auth","para":{{"id":"{}","skey":"{}","appid":"{APPID}"}}}}}}"#,
        user_id(i),
        skey(i)
    );
    request("POST", "/mina_auth/", body.as_bytes())
}

fn login_rq(conn: usize, seq: u64) -> Vec<u8> {
    let body = format!(
        r#"{{"version":1,"componentName":"MA","interface":{{"interfaceName":"qcloud.cam.id_skey","para":{{"code":"bench-{}-{conn}-{seq}","appid":"{APPID}"}}}}}}"#,
        std::process::id()
    );
    request("POST", "/mina_auth/", body.as_bytes())
}

fn token_rq() -> Vec<u8> {
    request("GET", &format!("/v1/apps/{APPID}/access_token"), b"")
}

fn envelope_ok(status: u16, body: &[u8]) -> bool {
    status == 200 && body.starts_with(b"{\"returnCode\":0,")
}

/// One request on a fresh connection: (status, body).
fn one(addr: SocketAddr, rq: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut rq = rq.to_vec();
    // Ask the server to close, so the answer ends at EOF.
    let at = rq.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    rq.splice(at..at, b"Connection: close\r\n".iter().copied());
    s.write_all(&rq).expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let head_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response")
        + 4;
    let status = std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap();
    (status, out[head_end..].to_vec())
}

// ---- seeding ----

/// A database with one app and `n` live sessions, one user each, written as a login writes them.
fn seed(path: &Path, n: u64) {
    let now = wafer::ids::now();
    {
        let db = wafer::store::Db::open(path).expect("open");
        db.upsert_app(
            &wafer::store::AppUpsert {
                appid: APPID.into(),
                secret: wafer::config::Secret::new(SECRET),
                ..Default::default()
            },
            now,
        )
        .expect("app");
    }
    let mut c = rusqlite::Connection::open(path).expect("open");
    c.pragma_update(None, "synchronous", "OFF").unwrap();
    let app: i64 = c
        .query_row("SELECT id FROM apps WHERE appid = ?1", [APPID], |r| {
            r.get(0)
        })
        .unwrap();
    let tx = c.transaction().unwrap();
    {
        let mut users = tx
            .prepare(
                "INSERT INTO users (id, app, openid, unionid, session_key, user_info, updated_at)
                 VALUES (?1, ?2, ?3, NULL, ?4, ?5, ?6)",
            )
            .unwrap();
        let mut sessions = tx
            .prepare(
                "INSERT INTO sessions (skey_hash, user_id, created, expires_at, idle_secs, last_visit)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?3)",
            )
            .unwrap();
        for i in 0..n {
            let id = user_id(i);
            let openid = format!("obench{}", &hex32(i, 3)[..22]);
            let session_key = format!("{}==", &hex32(i, 4)[..22]);
            users
                .execute(rusqlite::params![
                    id,
                    app,
                    openid,
                    session_key,
                    USER_INFO,
                    now
                ])
                .unwrap();
            let hash = wafer::ids::skey_hash(&skey(i));
            sessions
                .execute(rusqlite::params![
                    &hash[..],
                    id,
                    now,
                    now + 30 * 86400,
                    2_592_000
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
}

/// Set every session's `last_visit` (a whole-table update, then a checkpoint).
fn set_last_visit(path: &Path, at: i64) {
    let t = Instant::now();
    let c = rusqlite::Connection::open(path).expect("open");
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c.execute("UPDATE sessions SET last_visit = ?1", [at])
        .expect("update");
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    eprintln!("set last_visit of every session in {:.1?}", t.elapsed());
}

// ---- child processes ----

struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Proc {
    /// Start with stderr to `log`, and wait for the line `prefix ADDR…` in it.
    fn spawn(mut cmd: Command, log: &Path, prefix: &str) -> Proc {
        let file = std::fs::File::create(log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| die(&format!("spawning {cmd:?}: {e}")));
        let mut p = Proc {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        let t = Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            // Only a whole line: the child may be part-way through writing it.
            let whole = text.split_inclusive('\n').filter(|l| l.ends_with('\n'));
            if let Some(line) = whole.map(str::trim_end).find(|l| l.starts_with(prefix)) {
                let a = line[prefix.len()..].split_whitespace().next().unwrap_or("");
                p.addr = a
                    .parse()
                    .unwrap_or_else(|_| die(&format!("address in {line:?}")));
                return p;
            }
            if t.elapsed() > Duration::from_secs(60) || p.child.try_wait().ok().flatten().is_some()
            {
                die(&format!("{cmd:?} did not start: {text}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Peak resident set size (VmHWM) in KiB.
    fn hwm_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    /// SIGTERM (wafer then closes its database cleanly), SIGKILL after 5 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `wafer serve` on `db`, pointed at the fake WeChat.
fn serve(o: &Opts, db: &Path, mock: &str, log: &Path, port: Option<u16>) -> Proc {
    let mut c = Command::new(&o.wafer);
    c.arg("serve")
        .env_remove("WAFER_CONFIG")
        .env_remove("WAFER_API_KEY")
        .env("WAFER_DB", db)
        .env("WAFER_LISTEN", format!("127.0.0.1:{}", port.unwrap_or(0)))
        .env("WAFER_WORKERS", o.workers.to_string())
        .env("WAFER_WECHAT_API_BASE", mock)
        .env("WAFER_WORK_API_BASE", mock)
        .current_dir(db.parent().unwrap());
    Proc::spawn(c, log, "wafer listening on http://")
}

// ---- the ceiling ----

/// A minimal tiny_http server: `workers` threads on one `Arc<Server>`, each answering every
/// request with the same JSON body of `size` bytes. No routing, no logging, no state.
fn ceiling(workers: usize, size: usize) {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
    let mut body = String::from(r#"{"ok":""#);
    while body.len() + 2 < size {
        body.push('x');
    }
    body.push_str("\"}");
    let body = Arc::new(body.into_bytes());
    eprintln!(
        "ceiling listening on http://{}",
        server.server_addr().to_ip().unwrap()
    );
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (server, body) = (server.clone(), body.clone());
            std::thread::spawn(move || {
                let ct = tiny_http::Header::from_bytes(
                    &b"Content-Type"[..],
                    &b"application/json; charset=utf-8"[..],
                )
                .unwrap();
                while let Ok(mut rq) = server.recv() {
                    let mut sink = Vec::new();
                    let _ = rq.as_reader().read_to_end(&mut sink);
                    let resp =
                        tiny_http::Response::from_data(body.as_slice()).with_header(ct.clone());
                    let _ = rq.respond(resp);
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
