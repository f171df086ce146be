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
//! only those whose name contains TEXT; for profiling), `--driver wrk` (drive the load with `wrk`
//! and `bench/wrk.lua` instead of this process's own load generator), `--login-conns N` (256:
//! the connections logging in while WeChat takes 100 ms), `--mysql URL` (or
//! `WAFER_BENCH_MYSQL_URL`: also run the session check on that MySQL-compatible server, one
//! instance and then three; `WAFER_BENCH_MYSQL_PID`, when set, is the database server's process,
//! whose CPU is then reported too).

mod loadgen;

use loadgen::{request, Check, MakeRequest, Report, Rng};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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
    driver: Driver,
    /// Connections logging in while WeChat takes 100 ms over each.
    login_conns: usize,
    /// Where the wrk driver writes its script and request files.
    work: PathBuf,
    /// A MySQL-compatible server (`mysql://USER:PASS@HOST:PORT/`) to run the session check on
    /// as well; the harness makes a database of its own there and drops it at the end.
    mysql: Option<String>,
    /// That server's process on this machine, if known, for its CPU per request.
    mysql_pid: Option<u32>,
}

/// What drives the load: this process's own generator (a thread per connection) or `wrk`.
#[derive(Clone, Copy, PartialEq)]
enum Driver {
    Own,
    Wrk,
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
        driver: Driver::Own,
        login_conns: 256,
        work: PathBuf::new(),
        mysql: std::env::var("WAFER_BENCH_MYSQL_URL")
            .ok()
            .filter(|u| !u.is_empty()),
        mysql_pid: std::env::var("WAFER_BENCH_MYSQL_PID")
            .ok()
            .and_then(|p| p.parse().ok()),
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
            "--driver" => {
                o.driver = match v().as_str() {
                    "wrk" => Driver::Wrk,
                    "own" => Driver::Own,
                    d => die(&format!("--driver {d}: `own` or `wrk`")),
                }
            }
            "--login-conns" => o.login_conns = v().parse().unwrap_or_else(|_| die("--login-conns")),
            "--mysql" => {
                let url = v();
                if !url.starts_with("mysql://") {
                    die("--mysql needs a mysql:// URL (bench/run.sh --mysql without one starts a private MariaDB)");
                }
                o.mysql = Some(url);
            }
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
    let mut o = parse_opts();
    if !o.wafer.exists() {
        die(&format!(
            "{} not found: build it with `cargo build --release` (bench/run.sh does)",
            o.wafer.display()
        ));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    o.work = dir.path().to_path_buf();
    if o.driver == Driver::Wrk {
        std::fs::write(o.work.join("wrk.lua"), WRK_LUA).expect("wrk.lua");
        let found = Command::new("wrk").arg("--version").output().is_ok();
        if !found {
            die("--driver wrk: `wrk` not found (bench/run.sh --driver wrk installs it)");
        }
    }
    println!(
        "# wafer bench: {} connections, {} s per scenario, {} workers, driver {}, {}",
        o.conns,
        o.secs,
        o.workers,
        match o.driver {
            Driver::Own => "own (a thread per connection)",
            Driver::Wrk => "wrk (2 threads)",
        },
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
    // What `--mysql` copies: the small database as seeded, before the logins add users to it.
    let mysql_seed = dir.path().join("mysql-seed.db");
    if o.mysql.is_some() {
        std::fs::copy(&small_db, &mysql_seed).expect("copy of the small database");
    }

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
    // Lines printed under the table.
    let mut notes: Vec<String> = Vec::new();

    let server = serve(
        &o,
        Store::File(&small_db),
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
    let ceiling_run = |size: usize, sc: &Scenario| {
        let ceiling = Proc::spawn(
            {
                let mut c = Command::new(std::env::current_exe().unwrap());
                c.args(["ceiling", &o.workers.to_string(), &size.to_string()]);
                c
            },
            &ceiling_log,
            "ceiling listening on http://",
        );
        // The ceiling answers 200 with its own body to everything.
        let mut sc = sc.clone();
        sc.want = Want::Status;
        let (r, cpu) = measure(&o, &[ceiling.addr], &[ceiling.child.id()], o.conns, &sc);
        (r, cpu[0], ceiling.hwm_kb())
    };
    let get = Scenario::new(|_, _| request("GET", "/", b""), Want::Status);
    let (r, cpu, hwm) = ceiling_run(body.len(), &get);
    let rps = r.rps();
    rows.push(Row::new(
        "ceiling (fixed JSON, GET /)",
        r,
        cpu,
        hwm,
        Some((rps, cpu)),
    ));

    let n = o.small;
    let skip = |name: &str| {
        o.only
            .as_ref()
            .is_some_and(|only| !name.contains(only.as_str()))
    };
    // One scenario against `srvs` (the connections spread over them, round-robin), right after
    // the ceiling given the same requests when `paired` (skipped when `--only` excludes it). The
    // row's CPU per request is that of `srvs` together; the CPU per request of each of `srvs`,
    // then of each of `others`, is returned.
    let run_on = |name: &str,
                  srvs: &[&Proc],
                  others: &[u32],
                  paired: bool,
                  sc: Scenario,
                  rows: &mut Vec<Row>| {
        if skip(name) {
            return None;
        }
        let ceiling = paired.then(|| {
            // The server's answer to this scenario, for the size of the ceiling's body.
            let (_, answer) = one(srvs[0].addr, &(sc.make)(0, 1 << 50));
            let (c, c_cpu, _) = ceiling_run(answer.len(), &sc);
            (c.rps(), c_cpu)
        });
        let addrs: Vec<SocketAddr> = srvs.iter().map(|p| p.addr).collect();
        let pids: Vec<u32> = srvs
            .iter()
            .map(|p| p.child.id())
            .chain(others.iter().copied())
            .collect();
        let (r, cpu) = measure(&o, &addrs, &pids, o.conns, &sc);
        let hwm = srvs.iter().map(|p| p.hwm_kb()).max().unwrap_or(0);
        rows.push(Row::new(
            name,
            r,
            cpu[..srvs.len()].iter().sum(),
            hwm,
            ceiling,
        ));
        Some(cpu)
    };
    let run = |name: &str, srv: &Proc, sc: Scenario, rows: &mut Vec<Row>| {
        run_on(name, &[srv], &[], true, sc, rows);
    };
    let checks = move |c: usize, s: u64| check_rq(pick(c, s, n), n);
    run(
        &format!("POST /v1/sessions/check ({n} sessions)"),
        &server,
        Scenario::new(checks, Want::Status),
        &mut rows,
    );
    run(
        "qcloud.cam.auth",
        &server,
        Scenario::new(move |c, s| auth_rq(pick(c, s, n)), Want::Envelope),
        &mut rows,
    );
    let (status, body) = one(server.addr, &token_rq());
    assert_eq!(status, 200, "token: {}", String::from_utf8_lossy(&body));
    run(
        "GET /v1/apps/{appid}/access_token (warm)",
        &server,
        Scenario::new(|_, _| token_rq(), Want::Status),
        &mut rows,
    );
    // The gateway (CONTRACT §9), then the very same call made straight to the fake WeChat with
    // the token wafer holds: the fake echoes the same query and body both ways, so the answers
    // match. Both processes' CPU is taken in both runs: wafer's added CPU per call is its own plus
    // whatever more the fake spends when wafer is the caller.
    let token = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["access_token"].as_str().map(String::from))
        .unwrap_or_else(|| die("token: no access_token in the answer"));
    let direct = move |_: usize, _: u64| direct_rq(&token);
    let (via_name, direct_name) = (
        "gateway: POST /v1/apps/{appid}/wechat/cgi-bin/message/custom/send",
        "the gateway's call made directly: POST /cgi-bin/message/custom/send to the fake WeChat",
    );
    let pair = [(server.addr, gateway_rq()), (mock.addr, direct(0, 0))];
    for (addr, rq) in pair
        .iter()
        .filter(|_| !(skip(via_name) && skip(direct_name)))
    {
        let (status, body) = one(*addr, rq);
        if !wechat_ok(status, &body) {
            die(&format!(
                "gateway call: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
    }
    let via = run_on(
        via_name,
        &[&server],
        &[mock.child.id()],
        true,
        Scenario::new(|_, _| gateway_rq(), Want::WechatOk),
        &mut rows,
    );
    let direct = run_on(
        direct_name,
        &[&mock],
        &[server.child.id()],
        true,
        Scenario::new(direct, Want::WechatOk),
        &mut rows,
    );
    if let (Some(via), Some(direct)) = (via, direct) {
        let line = format!(
            "gateway call, CPU per call: wafer {:.1} µs + the fake WeChat {:.1} µs; the same call \
             made directly: the fake {:.1} µs (wafer, idle, {:.1} µs); wafer adds {:.1} µs per \
             call (issue 15: < 100 µs)",
            via[0],
            via[1],
            direct[0],
            direct[1],
            via[0] + via[1] - direct[0],
        );
        eprintln!("{line}");
        notes.push(line);
    }
    let login_name = "qcloud.cam.id_skey (login via fake WeChat)";
    run(
        login_name,
        &server,
        Scenario::new(login_rq, Want::Envelope),
        &mut rows,
    );
    run(
        "mixed (60% auth, 25% check, 10% token, 5% login)",
        &server,
        Scenario::new(
            move |c, s| match pick(c, s, 100) {
                0..=59 => auth_rq(pick(c, s + 1, n)),
                60..=84 => check_rq(pick(c, s + 1, n), n),
                85..=94 => token_rq(),
                _ => login_rq(c, s + (1 << 40)),
            },
            Want::Mixed,
        ),
        &mut rows,
    );
    // A burst of logins while WeChat takes 100 ms over each, with session checks on a few
    // connections beside them: a slow WeChat should cost logins its latency and nothing else,
    // and the checks should not queue behind the logins. The same checks run alone first, for
    // their p99 without the logins. Not paired with a ceiling.
    let slow_name = format!(
        "logins on {} connections with WeChat answering in 100 ms, checks beside them",
        o.login_conns
    );
    let slow = if skip(&slow_name) {
        None
    } else {
        let check_sc = Scenario::new(checks, Want::Status);
        let alone = load(&o, &[server.addr], SLOW_CHECK_CONNS, &check_sc);
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
        let login_sc = Scenario::new(|c, s| login_rq(c, s + (1 << 41)), Want::Envelope);
        let (logins, beside) = std::thread::scope(|scope| {
            let logins = scope.spawn(|| load(&o, &[server.addr], o.login_conns, &login_sc));
            let beside = load(&o, &[server.addr], SLOW_CHECK_CONNS, &check_sc);
            (logins.join().expect("login load"), beside)
        });
        let at_once = rows
            .iter()
            .find(|r| r.name == login_name)
            .map_or(f64::NAN, |r| r.figures.rps());
        let bound = (o.login_conns as f64 / 0.1).min(at_once);
        let line = format!(
            "{slow_name}: {:.0} logins/s ({} errors; target ≥ 0.8 × min({} / 0.1 s, {:.0}/s at \
             once) = {:.0}/s: {:.0}%); {:.0} checks/s on {SLOW_CHECK_CONNS} connections, p50 \
             {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} errors); the same checks alone: {:.0}/s, \
             p50 {:.3} ms, p99 {:.3} ms; peak RSS {:.1} MB",
            logins.rps(),
            logins.errors,
            o.login_conns,
            at_once,
            0.8 * bound,
            100.0 * logins.rps() / bound,
            beside.rps(),
            beside.p50_ms,
            beside.p99_ms,
            beside.max_ms,
            beside.errors,
            alone.rps(),
            alone.p50_ms,
            alone.p99_ms,
            server.hwm_kb() as f64 / 1024.0,
        );
        eprintln!("{line}");
        Some(line)
    };
    drop(server);

    // The session check on a MySQL-compatible server (`--mysql`): the seeded sessions copied
    // there with `wafer db copy`, one instance (paired with the ceiling like the rows above), then
    // three on the same database with the connections spread over them (no ceiling: one
    // tiny_http server against three wafers and a database server says nothing).
    if let Some(url) = &o.mysql {
        let one_name = format!("POST /v1/sessions/check ({n} sessions, MySQL, 1 instance)");
        let three_name = format!(
            "POST /v1/sessions/check ({n} sessions, MySQL, 3 instances, connections round-robin; \
             no ceiling ratio: three servers against one)"
        );
        if !(skip(&one_name) && skip(&three_name)) {
            let db = MysqlDb::create(url);
            let t = Instant::now();
            copy_to(&o, &mysql_seed, &db.url);
            eprintln!("copied {n} sessions to MySQL in {:.1?}", t.elapsed());
            let db_pid: Vec<u32> = o.mysql_pid.into_iter().collect();
            let start = |i: usize| {
                serve(
                    &o,
                    Store::Url(&db.url),
                    &mock_base,
                    &dir.path().join(format!("wafer-mysql-{i}.log")),
                    None,
                )
            };
            // A fresh instance opens its pool's connections as load comes: half a second of
            // checks first, not counted (wrk counts from its first request).
            let warm = |srvs: &[&Proc]| {
                let addrs: Vec<SocketAddr> = srvs.iter().map(|p| p.addr).collect();
                let sc = Scenario::new(checks, Want::Status);
                let make = sc.make.clone();
                loadgen::run_spread(
                    &addrs,
                    o.conns,
                    Duration::ZERO,
                    WARM_UP,
                    make,
                    sc.want.check(),
                );
            };
            let first = start(1);
            let (status, body) = one(first.addr, &check_rq(0, n));
            assert_eq!(
                status,
                200,
                "MySQL check: {}",
                String::from_utf8_lossy(&body)
            );
            warm(&[&first]);
            // Visited just now, as on SQLite: the checks only read.
            db.touch_sessions();
            let alone = run_on(
                &one_name,
                &[&first],
                &db_pid,
                true,
                Scenario::new(checks, Want::Status),
                &mut rows,
            );
            let (second, third) = (start(2), start(3));
            warm(&[&second, &third]);
            db.touch_sessions();
            let three = run_on(
                &three_name,
                &[&first, &second, &third],
                &db_pid,
                false,
                Scenario::new(checks, Want::Status),
                &mut rows,
            );
            let database = |cpu: &[f64], at: usize| match o.mysql_pid {
                Some(_) => format!("{:.1} µs", cpu[at]),
                None => "not measured (WAFER_BENCH_MYSQL_PID unset)".into(),
            };
            let mut line = String::from("MySQL session checks:");
            if let Some(cpu) = &alone {
                line += &format!(
                    " one instance {:.1} µs CPU per check, the database server {};",
                    cpu[0],
                    database(cpu, 1)
                );
            }
            if let Some(cpu) = &three {
                line += &format!(
                    " three instances {:.1} + {:.1} + {:.1} µs per check served by any of them \
                     (each serves about a third), the database server {}",
                    cpu[0],
                    cpu[1],
                    cpu[2],
                    database(cpu, 3)
                );
            }
            eprintln!("{line}");
            notes.push(line);
        }
    }

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
            Store::File(&large_db),
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
        let big_checks = move |c: usize, s: u64| check_rq(pick(c, s, big), big);
        run(
            &format!("check, {big} sessions, each slides last_visit (a write)"),
            &server,
            Scenario::new(big_checks, Want::Status),
            &mut rows,
        );
        // Now every session visited just now, like the small database: checks only read.
        set_last_visit(&large_db, wafer::ids::now());
        run(
            &format!("POST /v1/sessions/check ({big} sessions)"),
            &server,
            Scenario::new(big_checks, Want::Status),
            &mut rows,
        );
        run(
            &format!("qcloud.cam.auth ({big} sessions)"),
            &server,
            Scenario::new(move |c, s| auth_rq(pick(c, s, big)), Want::Envelope),
            &mut rows,
        );
    }
    drop(mock);

    print_table(&rows);
    println!();
    if let Some(line) = slow {
        println!("{line}");
    }
    for line in &notes {
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
            .map_or(f64::NAN, |r| r.figures.rps())
    };
    let small_rate = rps(&format!("POST /v1/sessions/check ({n} "));
    let large_rate = rps(&format!("POST /v1/sessions/check ({big} "));
    println!(
        "session check at {big} sessions / at {n}: {:.0}%",
        100.0 * large_rate / small_rate
    );
}

/// The script `--driver wrk` runs (written next to the request files).
const WRK_LUA: &str = include_str!("../../bench/wrk.lua");

/// What counts as a success in a scenario.
#[derive(Clone, Copy)]
enum Want {
    /// Status 200.
    Status,
    /// Status 200 and a Wafer envelope with `returnCode` 0.
    Envelope,
    /// Status 200, and `returnCode` 0 if the answer is an envelope.
    Mixed,
    /// Status 200 and WeChat's `"errcode":0` in the body (a token WeChat refused is 200 too).
    WechatOk,
}

impl Want {
    fn name(self) -> &'static str {
        match self {
            Want::Status => "status",
            Want::Envelope => "envelope",
            Want::Mixed => "mixed",
            Want::WechatOk => "errcode",
        }
    }

    fn check(self) -> Arc<Check> {
        match self {
            Want::Status => Arc::new(|s, _| s == 200),
            Want::Envelope => Arc::new(envelope_ok),
            Want::Mixed => Arc::new(|s, b| {
                s == 200 && (!b.starts_with(b"{\"returnCode\"") || envelope_ok(s, b))
            }),
            Want::WechatOk => Arc::new(wechat_ok),
        }
    }
}

/// A scenario's requests and what counts as a success. For `wrk`, the requests are written to
/// a file once (the ceiling and wafer are sent the same file).
#[derive(Clone)]
struct Scenario {
    make: Arc<MakeRequest>,
    want: Want,
    file: Arc<OnceLock<PathBuf>>,
}

impl Scenario {
    fn new(make: impl Fn(usize, u64) -> Vec<u8> + Send + Sync + 'static, want: Want) -> Scenario {
        Scenario {
            make: Arc::new(make),
            want,
            file: Arc::default(),
        }
    }

    /// The requests as `bench/wrk.lua` reads them: record i is request (i % conns, i / conns),
    /// as connection i % conns of the own driver would send it; enough of them that a run at
    /// 40k requests/s does not come round to the first again (a login's code is used once, a
    /// sliding check slides its session once).
    fn wrk_file(&self, o: &Opts) -> &Path {
        self.file.get_or_init(|| {
            static N: AtomicU64 = AtomicU64::new(0);
            let path = o.work.join(format!(
                "requests-{}.bin",
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let records = ((o.secs * 40_000.0) as u64).clamp(10_000, 1_000_000);
            let conns = o.conns.max(o.login_conns) as u64;
            let mut out = Vec::new();
            for i in 0..records {
                let rq = (self.make)((i % conns) as usize, i / conns);
                out.extend_from_slice(format!("{}\n", rq.len()).as_bytes());
                out.extend_from_slice(&rq);
            }
            std::fs::write(&path, out).expect("wrk request file");
            path
        })
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if Arc::strong_count(&self.file) == 1 {
            if let Some(p) = self.file.get() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// What one run measured, by either driver.
struct Figures {
    requests: u64,
    errors: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

impl Figures {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    fn from_report(r: &Report) -> Figures {
        Figures {
            requests: r.requests,
            errors: r.errors,
            secs: r.secs,
            p50_ms: r.quantile_ms(0.5),
            p99_ms: r.quantile_ms(0.99),
            p999_ms: r.quantile_ms(0.999),
            max_ms: r.quantile_ms(1.0),
        }
    }
}

/// Drive `conns` connections at `addr` for `--secs` with the scenario's requests.
/// With several addresses the connections are spread over them, round-robin.
fn load(o: &Opts, addrs: &[SocketAddr], conns: usize, sc: &Scenario) -> Figures {
    let secs = Duration::from_secs_f64(o.secs);
    match o.driver {
        Driver::Own => Figures::from_report(&loadgen::run_spread(
            addrs,
            conns,
            WARM_UP,
            secs,
            sc.make.clone(),
            sc.want.check(),
        )),
        Driver::Wrk => wrk(o, addrs, conns, sc),
    }
}

/// The own driver's warm-up before it counts (`wrk` has none: it counts from its first request).
const WARM_UP: Duration = Duration::from_millis(500);

/// One `wrk` run: 2 threads (fewer with fewer connections), no warm-up, `--secs` rounded up.
/// With several addresses, one thread per address (`wrk.lua` points thread t at address t), and
/// wrk splits the connections evenly among them (dropping the remainder).
fn wrk(o: &Opts, addrs: &[SocketAddr], conns: usize, sc: &Scenario) -> Figures {
    let addr = addrs[0];
    let threads = if addrs.len() > 1 {
        addrs.len()
    } else {
        conns.clamp(1, 2)
    }
    .to_string();
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let out = Command::new("wrk")
        .args(["-t", &threads, "-c", &conns.to_string()])
        .args(["-d", &format!("{}s", o.secs.ceil().max(1.0) as u64)])
        .args(["--timeout", "10s", "-s"])
        .arg(o.work.join("wrk.lua"))
        .arg(format!("http://{addr}"))
        .args(["--", &threads])
        .env("WAFER_BENCH_REQUESTS", sc.wrk_file(o))
        .env("WAFER_BENCH_WANT", sc.want.name())
        .env("WAFER_BENCH_ADDRS", list.join(","))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| die(&format!("wrk: {e}")));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("WAFER-BENCH "))
        .unwrap_or_else(|| {
            die(&format!(
                "wrk printed no figures: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        });
    let field = |k: &str| -> f64 {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| die(&format!("wrk: no {k} in {line:?}")))
    };
    // wrk's count of requests includes the failed ones; the own driver's counts successes.
    let errors = field("errors") as u64;
    Figures {
        requests: (field("requests") as u64).saturating_sub(errors),
        errors,
        secs: field("secs"),
        p50_ms: field("p50") / 1000.0,
        p99_ms: field("p99") / 1000.0,
        p999_ms: field("p999") / 1000.0,
        max_ms: field("max") / 1000.0,
    }
}

struct Row {
    name: String,
    figures: Figures,
    /// The server's CPU time (user + system) per counted request, in microseconds.
    cpu_us: f64,
    hwm_kb: u64,
    /// The ceiling's rate and CPU per request in the run just before this one (none where a
    /// ratio would mean nothing).
    ceiling: Option<(f64, f64)>,
}

impl Row {
    fn new(
        name: &str,
        figures: Figures,
        cpu_us: f64,
        hwm_kb: u64,
        ceiling: Option<(f64, f64)>,
    ) -> Row {
        let paired = match ceiling {
            Some((rps, cpu)) => format!(
                "{:.0}% of the ceiling's {rps:.0}), p99 {:.2} ms, {} errors, {cpu_us:.1} µs \
                 CPU/request (ceiling {cpu:.1})",
                100.0 * figures.rps() / rps,
                figures.p99_ms,
                figures.errors
            ),
            None => format!(
                "no ceiling), p99 {:.2} ms, {} errors, {cpu_us:.1} µs CPU/request",
                figures.p99_ms, figures.errors
            ),
        };
        eprintln!("{name}: {:.0} req/s ({paired}", figures.rps());
        Row {
            name: name.to_string(),
            figures,
            cpu_us,
            hwm_kb,
            ceiling,
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
        let f = &r.figures;
        let (c_rps, ratio, c_cpu) = match r.ceiling {
            Some((rps, cpu)) => (
                format!("{rps:.0}"),
                format!("{:.0}%", 100.0 * f.rps() / rps),
                format!("{cpu:.1}"),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        println!(
            "| {} | {:.0} | {c_rps} | {ratio} | {:.3} | {:.3} | {:.3} | {} | {:.1} ({c_cpu}) | {:.1} |",
            r.name,
            f.rps(),
            f.p50_ms,
            f.p99_ms,
            f.p999_ms,
            f.errors,
            r.cpu_us,
            r.hwm_kb as f64 / 1024.0
        );
    }
}

/// Load `addrs` as `load` does, and also take the CPU time each of `pids` spent over the counted
/// part of the run: (figures, each process's CPU µs per counted request).
fn measure(
    o: &Opts,
    addrs: &[SocketAddr],
    pids: &[u32],
    conns: usize,
    sc: &Scenario,
) -> (Figures, Vec<f64>) {
    let pids = pids.to_vec();
    // The own driver counts after its warm-up; wrk from its first request.
    let warm = if o.driver == Driver::Own {
        WARM_UP
    } else {
        Duration::ZERO
    };
    if o.driver == Driver::Wrk {
        sc.wrk_file(o); // written before the CPU clock starts
    }
    let sampled = pids.clone();
    let at_start = std::thread::spawn(move || {
        std::thread::sleep(warm);
        sampled.iter().map(|&p| cpu_ticks(p)).collect::<Vec<_>>()
    });
    let r = load(o, addrs, conns, sc);
    let end: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let start = at_start.join().expect("cpu sampler");
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let cpu_us = end
        .iter()
        .zip(&start)
        .map(|(e, s)| e.saturating_sub(*s) as f64 / ticks_per_sec * 1e6 / r.requests.max(1) as f64)
        .collect();
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

/// A customer-service message: one of the fake WeChat's token-checked APIs, answered with an
/// echo of what it was sent (small: the body below and the query).
const GATEWAY_BODY: &[u8] =
    br#"{"touser":"obench0000000000000000000000","msgtype":"text","text":{"content":"bench"}}"#;

fn gateway_rq() -> Vec<u8> {
    request(
        "POST",
        &format!("/v1/apps/{APPID}/wechat/cgi-bin/message/custom/send"),
        GATEWAY_BODY,
    )
}

/// The gateway's call as wafer makes it, made directly with the token wafer holds.
fn direct_rq(token: &str) -> Vec<u8> {
    request(
        "POST",
        &format!("/cgi-bin/message/custom/send?access_token={token}"),
        GATEWAY_BODY,
    )
}

fn token_rq() -> Vec<u8> {
    request("GET", &format!("/v1/apps/{APPID}/access_token"), b"")
}

fn wechat_ok(status: u16, body: &[u8]) -> bool {
    status == 200 && body.windows(WECHAT_OK.len()).any(|w| w == WECHAT_OK)
}
const WECHAT_OK: &[u8] = b"\"errcode\":0,";

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
        let app = wafer::store::AppUpsert {
            appid: APPID.into(),
            secret: wafer::secret::Secret::new(SECRET),
            ..Default::default()
        };
        db.change_accounts(|ch| ch.upsert_app(&app, now))
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

// ---- MySQL ----

/// The harness's own database on the `--mysql` server, dropped at the end.
struct MysqlDb {
    server: mysql::Opts,
    name: String,
    /// `--mysql`'s URL naming this database.
    url: String,
}

impl MysqlDb {
    fn create(url: &str) -> MysqlDb {
        use mysql::prelude::Queryable;
        let opts = mysql::Opts::from_url(url).unwrap_or_else(|e| die(&format!("--mysql: {e}")));
        let server: mysql::Opts = mysql::OptsBuilder::from_opts(opts)
            .db_name(None::<String>)
            .into();
        let name = format!("wafer_bench_{}", std::process::id());
        let mut c = mysql::Conn::new(server.clone())
            .unwrap_or_else(|e| die(&format!("--mysql: cannot connect: {e}")));
        c.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .and_then(|_| {
                c.query_drop(format!(
                    "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                ))
            })
            .unwrap_or_else(|e| die(&format!("--mysql: cannot create database {name}: {e}")));
        MysqlDb {
            server,
            url: with_db(url, &name),
            name,
        }
    }

    /// Every session visited just now, so that checks only read (as on the SQLite databases).
    fn touch_sessions(&self) {
        use mysql::prelude::Queryable;
        let opts = mysql::OptsBuilder::from_opts(self.server.clone()).db_name(Some(&self.name));
        mysql::Conn::new(opts)
            .and_then(|mut c| {
                c.exec_drop("UPDATE sessions SET last_visit = ?", (wafer::ids::now(),))
            })
            .unwrap_or_else(|e| die(&format!("--mysql: touching the sessions: {e}")));
    }
}

impl Drop for MysqlDb {
    fn drop(&mut self) {
        use mysql::prelude::Queryable;
        if let Ok(mut c) = mysql::Conn::new(self.server.clone()) {
            let _ = c.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}

/// `url` (`mysql://USER:PASS@HOST:PORT/[DB][?QUERY]`) naming database `db` instead.
fn with_db(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let host = base.find("://").map_or(0, |i| i + 3);
    let host = base[host..].rfind('@').map_or(host, |i| host + i + 1);
    let end = base[host..].find('/').map_or(base.len(), |i| host + i);
    let mut out = format!("{}/{db}", &base[..end]);
    if !query.is_empty() {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// `wafer db copy --from FILE --to URL`: the seeded rows into the MySQL database.
fn copy_to(o: &Opts, from: &Path, url: &str) {
    let out = Command::new(&o.wafer)
        .args(["db", "copy", "--from"])
        .arg(from)
        .args(["--to", url])
        .env_remove("WAFER_CONFIG")
        .env_remove("WAFER_DATABASE_URL")
        .current_dir(&o.work)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| die(&format!("wafer db copy: {e}")));
    if !out.status.success() {
        die(&format!(
            "wafer db copy: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
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

/// Where a `wafer serve` keeps its data.
#[derive(Clone, Copy)]
enum Store<'a> {
    File(&'a Path),
    /// A `mysql://` URL (`storage.url`).
    Url(&'a str),
}

/// `wafer serve` on `store`, pointed at the fake WeChat.
fn serve(o: &Opts, store: Store, mock: &str, log: &Path, port: Option<u16>) -> Proc {
    let mut c = Command::new(&o.wafer);
    c.arg("serve")
        .env_remove("WAFER_CONFIG")
        .env_remove("WAFER_API_KEY")
        .env_remove("WAFER_DATABASE_URL")
        .env("WAFER_LISTEN", format!("127.0.0.1:{}", port.unwrap_or(0)))
        .env("WAFER_WORKERS", o.workers.to_string())
        .env("WAFER_WECHAT_API_BASE", mock)
        .env("WAFER_WORK_API_BASE", mock)
        .current_dir(&o.work);
    match store {
        Store::File(db) => c.env("WAFER_DB", db),
        Store::Url(url) => c
            .env("WAFER_DATABASE_URL", url)
            .env("WAFER_DB", o.work.join("unused.db")),
    };
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
