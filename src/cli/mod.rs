//! The command line (CONTRACT §1): raw arguments validated once into a `Command`, then run.
//! Every command that touches data takes `--db FILE` or `--db mysql://…` (else `storage.url` or
//! `$WAFER_DATABASE_URL`, else `$WAFER_DB` or `storage.path`, else `./wafer.db`). Errors come back as one
//! line for `main` to print.

pub mod import_wafer;

use crate::config::Config;
use crate::core::accounts;
use crate::core::credential::Broker;
use crate::secret::Secret;
use crate::store::{AppUpsert, Db, Target};
use std::path::PathBuf;

/// Parsed `--flag value` options; each is taken once by name, and leftovers are an error.
struct Opts {
    values: Vec<(String, Option<String>)>,
    positional: Vec<String>,
}

/// Flags that take no value.
const SWITCHES: &[&str] = &["force", "help", "merge"];

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut values = Vec::new();
        let mut positional = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(flag) = a.strip_prefix("--") {
                let (name, inline) = match flag.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (flag.to_string(), None),
                };
                if SWITCHES.contains(&name.as_str()) {
                    values.push((name, None));
                } else {
                    let v = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .cloned()
                            .ok_or_else(|| format!("--{name} needs a value"))?,
                    };
                    values.push((name, Some(v)));
                }
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Opts { values, positional })
    }

    fn take(&mut self, name: &str) -> Option<String> {
        let i = self.values.iter().position(|(n, _)| n == name)?;
        self.values.remove(i).1
    }

    fn flag(&mut self, name: &str) -> bool {
        match self.values.iter().position(|(n, _)| n == name) {
            Some(i) => {
                self.values.remove(i);
                true
            }
            None => false,
        }
    }

    fn need(&mut self, name: &str) -> Result<String, String> {
        self.take(name)
            .ok_or_else(|| format!("--{name} is required"))
    }

    /// A whole number within `range` (the bounds of a duration, so that no clock overflows).
    fn number(
        &mut self,
        name: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<Option<i64>, String> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if range.contains(&n) => Ok(Some(n)),
                _ => Err(format!(
                    "--{name}: expected a number from {} to {}, got {v:?}",
                    range.start(),
                    range.end()
                )),
            },
        }
    }

    /// Fail on anything not taken.
    fn done(self, max_positional: usize) -> Result<Vec<String>, String> {
        if let Some((n, _)) = self.values.first() {
            return Err(format!("unknown option --{n}"));
        }
        if self.positional.len() > max_positional {
            return Err(format!(
                "unexpected argument {:?}",
                self.positional[max_positional]
            ));
        }
        Ok(self.positional)
    }
}

pub const USAGE: &str = "usage: wafer <command>
  serve [--config FILE]                 run the server
  dev [--listen ADDR] [--db FILE]       run with an in-process fake WeChat and a demo app
  mock-wechat [--listen ADDR]           run only the fake WeChat
  app add --appid ID --secret S [--kind miniprogram|official] [--title T] [--login-days N]
          [--session-secs N] [--token T] [--aes-key K] [--forward-url URL]
  app list | app show ID | app remove ID
  work add --corpid C --agentid A --secret S [--remark R] [--token T] [--aes-key K] [--forward-url URL]
  work list | work remove --corpid C --agentid A
  component add --appid ID --secret S --token T --aes-key K [--redirect-uri URL] [--forward-url URL]
  component list
  token get APPID [--force]             print the current access token
  session purge                         delete expired sessions now
  key rotate --new-key-file F           re-seal every sealed value under the key in F
  import wafer --from mysql://USER:PASS@HOST:PORT/cAuth [--appid ID] [--tz ZONE]
                                        move in from an original Wafer: its apps, users and
                                        live sessions (every id/skey keeps working)
  db copy --from SRC --to DST [--merge]
                                        copy every row from one database to another (a SQLite
                                        file or a mysql:// URL); --merge adds what DST lacks
data commands take --db FILE or --db mysql://USER:PASS@HOST:PORT/DB (else $WAFER_DATABASE_URL
or the config's storage.url, else $WAFER_DB, else the config's storage.path, else ./wafer.db)";

/// Run a command line (without the program name).
pub fn run(args: &[String]) -> Result<(), String> {
    crate::logging::init();
    let (cmd, rest) = args.split_first().ok_or(USAGE)?;
    let sub = rest.first().map(String::as_str).unwrap_or("");
    match (cmd.as_str(), sub) {
        ("serve", _) => serve(Opts::parse(rest)?),
        ("dev", _) => dev(Opts::parse(rest)?),
        ("mock-wechat", _) => {
            let mut o = Opts::parse(rest)?;
            let listen = o.take("listen").unwrap_or_else(|| "127.0.0.1:5758".into());
            o.done(0)?;
            fake_wechat::run_forever(&listen).map_err(|e| format!("mock-wechat {listen}: {e}"))
        }
        ("app", "add") => app_add(Opts::parse(&rest[1..])?),
        ("app", "list") => app_list(Opts::parse(&rest[1..])?),
        ("app", "show") => app_show(Opts::parse(&rest[1..])?),
        ("app", "remove") => app_remove(Opts::parse(&rest[1..])?),
        ("session", "purge") => session_purge(Opts::parse(&rest[1..])?),
        ("work", "add") => work_add(Opts::parse(&rest[1..])?),
        ("work", "list") => work_list(Opts::parse(&rest[1..])?),
        ("work", "remove") => work_remove(Opts::parse(&rest[1..])?),
        ("component", "add") => component_add(Opts::parse(&rest[1..])?),
        ("component", "list") => component_list(Opts::parse(&rest[1..])?),
        ("token", "get") => token_get(Opts::parse(&rest[1..])?),
        ("key", "rotate") => key_rotate(Opts::parse(&rest[1..])?),
        ("import", "wafer") => import_wafer(Opts::parse(&rest[1..])?),
        ("db", "copy") => db_copy(Opts::parse(&rest[1..])?),
        ("help" | "--help" | "-h", _) => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unknown command {:?}\n{USAGE}", args.join(" "))),
    }
}

/// The configuration and database a data command uses.
fn open_config_db(o: &mut Opts) -> Result<(Config, Db), String> {
    let config = o.take("config").map(PathBuf::from);
    let c = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
    // `--db` is a file path or a mysql:// URL; else `storage.url`, else `storage.path`.
    let target = match o.take("db") {
        Some(db) => Target::open(&db)?,
        None => Target::from_config(&c.storage)?,
    };
    let sealer = crate::seal::Sealer::from_config(&c.storage)?;
    let keyed = sealer.is_some();
    let db = Db::open_with(&target, sealer).map_err(|e| format!("database {target}: {e}"))?;
    // A key file on a database never sealed: seal it now, as `wafer serve` would at start.
    let never_sealed = || db.meta("seal_key_id").map(|id| id.is_none());
    if keyed && never_sealed().map_err(|e| format!("database {target}: {e}"))? {
        db.seal_existing()
            .map_err(|e| format!("database {target}: {e}"))?;
    }
    Ok((c, db))
}

fn open_db(o: &mut Opts) -> Result<Db, String> {
    open_config_db(o).map(|(_, db)| db)
}

/// The database and a broker for a command that changes accounts (`accounts` forgets their
/// credentials through the broker) or serves a credential, under the same policy as the server.
fn open_accounts(o: &mut Opts) -> Result<(Db, Broker), String> {
    let (config, db) = open_config_db(o)?;
    Ok((db, broker(&config)))
}

fn broker(config: &Config) -> Broker {
    let wechat = std::sync::Arc::new(crate::wechat::WeChat::new(&config.wechat));
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
    Broker::new(wechat, metrics, &config.wechat)
}

fn serve(mut o: Opts) -> Result<(), String> {
    let config = o.take("config").map(PathBuf::from);
    o.done(0)?;
    let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
    // Before the server listens: a SIGTERM sent once it says so must find the handler in place.
    let signals = shutdown_signals()?;
    let handle = crate::http::start(config, false)?;
    wait_for(signals);
    log::info!("wafer: shutting down");
    handle.shutdown();
    Ok(())
}

/// The demo mini program `wafer dev` registers.
pub const DEV_APPID: &str = "wxdevdemo0000001";

fn dev(mut o: Opts) -> Result<(), String> {
    let listen = o.take("listen").unwrap_or_else(|| "127.0.0.1:5757".into());
    let db = o.take("db").unwrap_or_else(|| "wafer-dev.db".into());
    o.done(0)?;
    let mock = fake_wechat::start("127.0.0.1:0").map_err(|e| format!("fake WeChat: {e}"))?;
    let mut config = Config::default();
    // The links it hands out (a component's authorisation callback) point at itself.
    config.server.public_url = format!("http://{listen}");
    config.server.listen = listen;
    config.storage.path = db;
    config.wechat.api_base = mock.base_url();
    config.wechat.work_api_base = mock.base_url();
    config.wechat.timeout_ms = 2000;
    config.apply_dev_env();
    config.validate().map_err(|e| e.to_string())?;
    config.check_listen_needs_key().map_err(|e| e.to_string())?;
    let db = Db::open(std::path::Path::new(&config.storage.path))
        .map_err(|e| format!("database {}: {e}", config.storage.path))?;
    let demo = AppUpsert {
        appid: DEV_APPID.into(),
        secret: Secret::new("dev-secret"),
        title: Some("wafer dev demo".into()),
        ..Default::default()
    };
    accounts::save_app(&db, &broker(&config), &demo, crate::ids::now())
        .map_err(|e| format!("database {}: {e}", config.storage.path))?;
    drop(db);
    // With a key, the /v1 example needs it too (the session interfaces never do).
    let bearer = if config.server.api_key.is_empty() {
        ""
    } else {
        " -H \"Authorization: Bearer $WAFER_API_KEY\""
    };
    let signals = shutdown_signals()?;
    let handle = crate::http::start(config, true)?;
    let a = handle.addr();
    println!(
        r#"wafer dev is running on http://{a} with a fake WeChat at {mock}
The demo app is {DEV_APPID}; any code logs in (the same code is the same user).

# log in (Wafer protocol):
curl -s http://{a}/mina_auth/ -d '{{"version":1,"componentName":"MA","interface":{{"interfaceName":"qcloud.cam.id_skey","para":{{"code":"demo-user-1"}}}}}}'
# check the session (paste id and skey from the answer above):
curl -s http://{a}/mina_auth/ -d '{{"version":1,"componentName":"MA","interface":{{"interfaceName":"qcloud.cam.auth","para":{{"id":"ID","skey":"SKEY"}}}}}}'
# make encrypted data for that session, then decrypt it:
curl -s http://{a}/dev/encrypted_data -d '{{"id":"ID","skey":"SKEY","data":{{"nickName":"Band"}}}}'
curl -s http://{a}/mina_auth/ -d '{{"version":1,"componentName":"MA","interface":{{"interfaceName":"qcloud.cam.decrypt","para":{{"id":"ID","skey":"SKEY","encrypt_data":"ENC","iv":"IV"}}}}}}'
# the same with the /v1 API:
curl -s{bearer} http://{a}/v1/sessions -d '{{"appid":"{DEV_APPID}","code":"demo-user-1"}}'
Ctrl-C stops it."#,
        mock = mock.base_url()
    );
    wait_for(signals);
    handle.shutdown();
    mock.shutdown();
    Ok(())
}

/// SIGTERM and SIGINT, caught from now on (until then they end the process at once).
fn shutdown_signals() -> Result<signal_hook::iterator::Signals, String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("signals: {e}"))
}

/// Block until one of `signals` arrives.
fn wait_for(mut signals: signal_hook::iterator::Signals) {
    signals.forever().next();
}

fn app_add(mut o: Opts) -> Result<(), String> {
    let kind = o.take("kind");
    if let Some(k) = &kind {
        if k != "miniprogram" && k != "official" {
            return Err(format!(
                "--kind: expected miniprogram or official, got {k:?}"
            ));
        }
    }
    let upsert = AppUpsert {
        appid: o.need("appid")?,
        secret: Secret::new(o.need("secret")?),
        kind,
        title: o.take("title"),
        login_days: o.number("login-days", crate::config::LOGIN_DAYS)?,
        session_secs: o.number("session-secs", crate::config::SESSION_SECS)?,
        token: o.take("token").map(Secret::new),
        aes_key: o.take("aes-key").map(Secret::new),
        prev_aes_key: None,
        forward_url: o.take("forward-url"),
    };
    if let Some(k) = &upsert.aes_key {
        if k.expose().len() != 43 {
            return Err("--aes-key: an EncodingAESKey is 43 characters".into());
        }
    }
    let (db, broker) = open_accounts(&mut o)?;
    o.done(0)?;
    let app = accounts::save_app(&db, &broker, &upsert, crate::ids::now())
        .map_err(|e| format!("app add: {e}"))?;
    println!("app {} saved (app_id {})", app.appid, app.id);
    Ok(())
}

fn app_list(mut o: Opts) -> Result<(), String> {
    let db = open_db(&mut o)?;
    o.done(0)?;
    println!(
        "{:<8} {:<24} {:<12} {:<10} {:<12} title",
        "app_id", "appid", "kind", "login_days", "session_secs"
    );
    for a in db.list_apps().map_err(|e| format!("app list: {e}"))? {
        println!(
            "{:<8} {:<24} {:<12} {:<10} {:<12} {}",
            a.id, a.appid, a.kind, a.login_days, a.session_secs, a.title
        );
    }
    Ok(())
}

fn app_show(mut o: Opts) -> Result<(), String> {
    let db = open_db(&mut o)?;
    let pos = o.done(1)?;
    let appid = pos
        .first()
        .ok_or("app show: which app? (wafer app show APPID)")?;
    let a = db
        .app_by_appid(appid)
        .map_err(|e| format!("app show: {e}"))?
        .ok_or(format!("no app {appid}"))?;
    let set = |o: &Option<Secret>| if o.is_some() { "set" } else { "not set" };
    println!("app_id:       {}", a.id);
    println!("appid:        {}", a.appid);
    println!("kind:         {}", a.kind);
    println!("title:        {}", a.title);
    println!("login_days:   {}", a.login_days);
    println!("session_secs: {}", a.session_secs);
    println!("secret:       set");
    println!("token:        {}", set(&a.token));
    println!("aes_key:      {}", set(&a.aes_key));
    println!("forward_url:  {}", a.forward_url.as_deref().unwrap_or("-"));
    Ok(())
}

fn app_remove(mut o: Opts) -> Result<(), String> {
    let (db, broker) = open_accounts(&mut o)?;
    let pos = o.done(1)?;
    let appid = pos
        .first()
        .ok_or("app remove: which app? (wafer app remove APPID)")?;
    if !accounts::remove_app(&db, &broker, appid).map_err(|e| format!("app remove: {e}"))? {
        return Err(format!("no app {appid}"));
    }
    println!("app {appid} removed with its users, sessions and stored tokens");
    Ok(())
}

fn session_purge(mut o: Opts) -> Result<(), String> {
    let db = open_db(&mut o)?;
    o.done(0)?;
    let n = db
        .purge_expired_sessions(crate::ids::now())
        .map_err(|e| format!("session purge: {e}"))?;
    println!("{n} expired session(s) deleted");
    Ok(())
}

fn work_add(mut o: Opts) -> Result<(), String> {
    let agent = crate::store::WorkAgent {
        corpid: o.need("corpid")?,
        agentid: o.need("agentid")?,
        secret: Secret::new(o.need("secret")?),
        remark: o.take("remark").unwrap_or_default(),
        token: o.take("token").map(Secret::new),
        aes_key: o.take("aes-key").map(Secret::new),
        prev_aes_key: None,
        forward_url: o.take("forward-url"),
    };
    if agent
        .aes_key
        .as_ref()
        .is_some_and(|k| k.expose().len() != 43)
    {
        return Err("--aes-key: an EncodingAESKey is 43 characters".into());
    }
    let (db, broker) = open_accounts(&mut o)?;
    o.done(0)?;
    accounts::save_work_agent(&db, &broker, &agent, crate::ids::now())
        .map_err(|e| format!("work add: {e}"))?;
    println!("WeCom agent {}/{} saved", agent.corpid, agent.agentid);
    Ok(())
}

fn work_list(mut o: Opts) -> Result<(), String> {
    let db = open_db(&mut o)?;
    o.done(0)?;
    println!("{:<24} {:<12} remark", "corpid", "agentid");
    for a in db
        .list_work_agents()
        .map_err(|e| format!("work list: {e}"))?
    {
        println!("{:<24} {:<12} {}", a.corpid, a.agentid, a.remark);
    }
    Ok(())
}

fn work_remove(mut o: Opts) -> Result<(), String> {
    let (corpid, agentid) = (o.need("corpid")?, o.need("agentid")?);
    let (db, broker) = open_accounts(&mut o)?;
    o.done(0)?;
    if !accounts::remove_work_agent(&db, &broker, &corpid, &agentid)
        .map_err(|e| format!("work remove: {e}"))?
    {
        return Err(format!("no WeCom agent {corpid}/{agentid}"));
    }
    println!("WeCom agent {corpid}/{agentid} removed");
    Ok(())
}

fn component_add(mut o: Opts) -> Result<(), String> {
    let c = crate::store::ComponentUpsert {
        appid: o.need("appid")?,
        secret: Secret::new(o.need("secret")?),
        token: Secret::new(o.need("token")?),
        aes_key: Secret::new(o.need("aes-key")?),
        prev_aes_key: None,
        redirect_uri: o.take("redirect-uri"),
        forward_url: o.take("forward-url"),
    };
    if c.aes_key.expose().len() != 43 {
        return Err("--aes-key: an EncodingAESKey is 43 characters".into());
    }
    let (db, broker) = open_accounts(&mut o)?;
    o.done(0)?;
    accounts::save_component(&db, &broker, &c, crate::ids::now())
        .map_err(|e| format!("component add: {e}"))?;
    println!("component {} saved", c.appid);
    println!(
        "event URL (授权事件接收URL): https://YOUR-HOST/wechat/component/{}/events",
        c.appid
    );
    Ok(())
}

/// Components with their ticket age and live authorisers; never a secret.
fn component_list(mut o: Opts) -> Result<(), String> {
    let db = open_db(&mut o)?;
    o.done(0)?;
    let now = crate::ids::now();
    println!(
        "{:<24} {:<14} {:<11} redirect_uri",
        "appid", "ticket", "authorisers"
    );
    for c in db
        .list_components()
        .map_err(|e| format!("component list: {e}"))?
    {
        let ticket = match c.ticket_at {
            Some(at) if c.verify_ticket.is_some() => format!("{}s ago", now - at),
            _ => "none yet".into(),
        };
        let n = db
            .list_authorizers(&c.appid)
            .map_err(|e| format!("component list: {e}"))?
            .len();
        println!(
            "{:<24} {:<14} {:<11} {}",
            c.appid,
            ticket,
            n,
            c.redirect_uri.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// Print an app's access token: the stored one while valid, else fetched through the same
/// broker (and policy) the server uses.
fn token_get(mut o: Opts) -> Result<(), String> {
    let force = o.flag("force");
    let (config, db) = open_config_db(&mut o)?;
    let pos = o.done(1)?;
    let appid = pos
        .first()
        .ok_or("token get: which app? (wafer token get APPID)")?;
    let broker = broker(&config);
    match accounts::app(&db, appid) {
        Err(crate::core::error::Error::NoApp) => return Err(format!("no app {appid}")),
        other => other.map_err(|e| format!("token get: {e}"))?,
    };
    let c = broker
        .get(
            &db,
            &crate::core::credential::Key::AppToken {
                appid: appid.clone(),
            },
            force,
        )
        .map_err(|e| format!("token get: {e}"))?;
    println!("{}", c.value.expose());
    eprintln!("expires_at {}", c.expires_at);
    Ok(())
}

/// `wafer key rotate --new-key-file F`: re-seal every value under the key in F, with the
/// current key (`storage.key_file`) to open them. A serving wafer adopts the new key from F
/// (the file is recorded in the database) and seals with it within `Sealer::RECHECK_MS`; until
/// then it may still write values under the old key, so the sweep repeats until one finds
/// none. Then the operator points `storage.key_file` at F (README, "Secrets at rest").
fn key_rotate(mut o: Opts) -> Result<(), String> {
    use crate::seal::Sealer;
    let file = PathBuf::from(o.need("new-key-file")?);
    let key = Sealer::read_key_file(&file, "--new-key-file")?;
    let id = key.id().to_string();
    let (_, mut db) = open_config_db(&mut o)?;
    o.done(0)?;
    let mut sealed = db
        .rotate_to(key, &file)
        .map_err(|e| format!("key rotate: {e}"))?;
    let mut settled = false;
    for _ in 0..10 {
        std::thread::sleep(std::time::Duration::from_millis(2 * Sealer::RECHECK_MS));
        let n = db.seal_existing().map_err(|e| format!("key rotate: {e}"))?;
        sealed += n;
        if n == 0 {
            settled = true;
            break;
        }
    }
    if !settled {
        return Err(format!(
            "key rotate: values are still being written under the old key; run it again (the {sealed} done stay done)"
        ));
    }
    println!("{sealed} value(s) sealed with key id {id}");
    println!(
        "now set storage.key_file (or WAFER_KEY_FILE) to {} and restart wafer; keep the old key file until then",
        file.display()
    );
    Ok(())
}

/// `wafer import wafer --from mysql://…/cAuth`: an original Wafer's app, users and live sessions
/// into this database (CONTRACT §10; `import_wafer`). The source's password is never printed.
/// `db copy`: every row from one database to another, as stored (sealed values stay sealed
/// under the one key both are opened with; what the target holds in clear is sealed with it).
fn db_copy(mut o: Opts) -> Result<(), String> {
    let config = o.take("config").map(PathBuf::from);
    let c = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
    let from = Target::open(&o.need("from")?)?;
    let to = Target::open(&o.need("to")?)?;
    let merge = o.flag("merge");
    o.done(0)?;
    let sealer = crate::seal::Sealer::from_config(&c.storage)?;
    let open =
        |t: &Target| Db::open_with(t, sealer.clone()).map_err(|e| format!("database {t}: {e}"));
    let (src, dst) = (open(&from)?, open(&to)?);
    let report = src
        .copy_into(&dst, merge)
        .map_err(|e| format!("db copy {from} -> {to}: {e}"))?;
    for t in report {
        println!("{}: {} copied, {} kept", t.table, t.written, t.kept);
    }
    Ok(())
}

fn import_wafer(mut o: Opts) -> Result<(), String> {
    let opts = crate::cli::import_wafer::Options {
        from: o.need("from")?,
        appid: o.take("appid"),
        tz: o.take("tz"),
    };
    if let Some(tz) = &opts.tz {
        crate::cli::import_wafer::check_tz(tz)?;
    }
    let (db, broker) = open_accounts(&mut o)?;
    o.done(0)?;
    let r = crate::cli::import_wafer::run(&db, &broker, &opts, crate::ids::now())
        .map_err(|e| format!("import wafer: {e}"))?;
    let c = &r.counts;
    if r.app_added {
        println!("app {}: added", r.appid);
    } else {
        println!("app {}: already registered, kept as it is", r.appid);
    }
    println!(
        "users: {} imported, {} skipped (open_id already a wafer user), {} skipped (uuid already a wafer id)",
        c.users, c.openid_known, c.id_taken
    );
    println!(
        "sessions: {} imported, {} expired (not imported), {} beyond {} per user, {} under an older uuid of the same open_id",
        c.sessions, c.expired, c.over_cap, crate::store::MAX_SESSIONS_PER_USER, c.other_uuid
    );
    println!(
        "rows skipped as unusable (no open_id or session_key, uuid/skey not 32 lowercase hex): {}",
        c.malformed
    );
    println!(
        "user_info empty or not base64 JSON (stored as null): {}",
        c.no_user_info
    );
    Ok(())
}
