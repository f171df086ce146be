//! `wafer import wafer` (CONTRACT §10): an original Wafer deployment's `cAppinfo` and
//! `cSessionInfo` (its `cAuth` database on MySQL) become an app, users and sessions, so that every
//! live `id`/`skey` pair keeps authenticating after the switch.
//!
//! The mapping: our user `id` is their `uuid` (stable per `open_id`); only the SHA-256 of the
//! `skey` is stored; a session keeps its `create_time` and `last_visit_time` and the app's
//! `login_duration` (days) and `session_duration` (seconds), so it expires when it would have
//! there. `user_info` is base64 of the decrypted JSON in the original (plain JSON is taken too);
//! anything else is stored as `null` and counted. The DATETIME columns are turned into unix
//! seconds by the source database itself (`UNIX_TIMESTAMP` in the session's `time_zone`: the
//! server's unless `--tz` says otherwise), which also reads TIMESTAMP columns right and knows
//! named zones' summer time. Expired sessions are not copied, but their user is, so the same
//! WeChat user keeps their `id` at the next login. An `open_id` that already has a user is left
//! alone and counted: running the import twice adds nothing the second time.
//!
//! This is the one module besides `store` that uses a database driver: it reads a foreign
//! schema, read-only, and writes only through `store` (so a sealed target is sealed) and
//! `accounts`. The source URL's password is never printed: errors name the URL with `***`.

use crate::config::{LOGIN_DAYS, SESSION_SECS};
use crate::core::accounts;
use crate::core::credential::Broker;
use crate::ids;
use crate::secret::Secret;
use crate::store::{AppUpsert, Db, Imported, ImportedSession, ImportedUser, MAX_SESSIONS_PER_USER};
use mysql::prelude::Queryable;
use std::time::Duration;

/// What `wafer import wafer` was asked to do.
pub struct Options {
    /// `mysql://USER:PASS@HOST:PORT/cAuth`
    pub from: String,
    /// Which `cAppinfo` row the sessions belong to, when there are several.
    pub appid: Option<String>,
    /// The zone the DATETIME columns are in (`+08:00`, or a name the server knows).
    pub tz: Option<String>,
}

/// What an import did, counted for the report it prints.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub users: usize,
    pub sessions: usize,
    /// Sessions past either clock: not copied.
    pub expired: usize,
    /// `open_id`s that already had a wafer user: left alone.
    pub openid_known: usize,
    /// Users whose `uuid` is already another wafer user's `id`: left alone.
    pub id_taken: usize,
    /// Rows without an `open_id`, or whose `uuid`/`skey` is not 32 lowercase hex (no client can
    /// present them to wafer), or without a `session_key`.
    pub malformed: usize,
    /// Rows of an `open_id` under another `uuid` than its latest row's (the user keeps one id).
    pub other_uuid: usize,
    /// Sessions of one user beyond wafer's cap of live sessions per user (the oldest).
    pub over_cap: usize,
    /// Imported users whose `user_info` was empty or not base64 of a JSON object (stored null).
    pub no_user_info: usize,
}

/// The app the sessions belong to, as `cAppinfo` has it (with wafer's bounds applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceApp {
    pub appid: String,
    pub secret: String,
    pub login_days: i64,
    pub session_secs: i64,
}

/// One `cSessionInfo` row, its times as unix seconds (`None`: NULL or not a date).
#[derive(Debug, Clone, Default)]
pub struct SourceRow {
    pub uuid: String,
    pub skey: String,
    pub created: Option<i64>,
    pub last_visit: Option<i64>,
    pub open_id: String,
    pub session_key: String,
    pub user_info: Option<String>,
}

/// What one `open_id`'s rows become.
#[derive(Debug)]
pub struct PlannedUser {
    pub id: String,
    pub openid: String,
    pub session_key: String,
    pub user_info: Option<String>,
    pub sessions: Vec<ImportedSession>,
    /// The counts this user adds if it is written.
    pub counts: Counts,
}

/// The user and live sessions that one `open_id`'s rows (latest `last_visit_time` first)
/// become; `None` with the count of unusable rows when none of them can be used.
pub fn plan_user(rows: &[SourceRow], app: &SourceApp, now: i64) -> Result<PlannedUser, usize> {
    let usable = |r: &SourceRow| {
        ids::is_hex32(&r.uuid) && !r.open_id.is_empty() && !r.session_key.is_empty()
    };
    let Some(latest) = rows.iter().find(|r| usable(r)) else {
        return Err(rows.len());
    };
    let mut counts = Counts {
        users: 1,
        ..Counts::default()
    };
    let mut sessions = Vec::new();
    for r in rows {
        if !usable(r) || !ids::is_hex32(&r.skey) {
            counts.malformed += 1;
            continue;
        }
        if r.uuid != latest.uuid {
            counts.other_uuid += 1;
            continue;
        }
        let (Some(created), Some(last_visit)) = (r.created, r.last_visit) else {
            counts.expired += 1;
            continue;
        };
        let expires_at = created.saturating_add(app.login_days.saturating_mul(86400));
        if now > expires_at || now - last_visit > app.session_secs {
            counts.expired += 1;
            continue;
        }
        if sessions.len() as i64 >= MAX_SESSIONS_PER_USER {
            counts.over_cap += 1;
            continue;
        }
        sessions.push(ImportedSession {
            skey_hash: ids::skey_hash(&r.skey),
            created,
            last_visit,
            expires_at,
            idle_secs: app.session_secs,
        });
    }
    counts.sessions = sessions.len();
    let user_info = latest.user_info.as_deref().and_then(decode_user_info);
    if user_info.is_none() {
        counts.no_user_info = 1;
    }
    Ok(PlannedUser {
        id: latest.uuid.clone(),
        openid: latest.open_id.clone(),
        session_key: latest.session_key.clone(),
        user_info,
        sessions,
        counts,
    })
}

/// The original's `user_info` (base64 of the decrypted JSON; some forks store the JSON itself)
/// as JSON object text, or `None` when it is empty or not that.
pub fn decode_user_info(stored: &str) -> Option<String> {
    use base64::Engine;
    let stored = stored.trim();
    let json = if stored.starts_with('{') {
        stored.as_bytes().to_vec()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(stored)
            .ok()?
    };
    match serde_json::from_slice::<serde_json::Value>(&json).ok()? {
        v @ serde_json::Value::Object(_) => Some(v.to_string()),
        _ => None,
    }
}

/// `--tz`: an offset (`+08:00`) or a zone name (`Asia/Shanghai`, which the server must know),
/// checked to be only that, since it is sent inside a `SET time_zone` statement.
pub fn check_tz(tz: &str) -> Result<(), String> {
    let ok = !tz.is_empty()
        && tz.len() <= 64
        && tz
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-:/_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--tz: expected an offset such as +08:00 or a zone name, got {tz:?}"
        ))
    }
}

/// The URL with its password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// The password in a URL, raw and percent-decoded, to scrub from a driver's message.
fn passwords(url: &str) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return Vec::new();
    };
    let Some((_, pass)) = userinfo.split_once(':') else {
        return Vec::new();
    };
    let decoded = percent_encoding::percent_decode_str(pass)
        .decode_utf8_lossy()
        .into_owned();
    [pass.to_string(), decoded]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect()
}

/// How messages name the source: its URL without the password, and the password to scrub
/// from whatever the driver says.
struct Label {
    name: String,
    passwords: Vec<String>,
}

impl Label {
    fn fail(&self, what: &str, e: impl std::fmt::Display) -> String {
        let mut msg = e.to_string();
        for p in &self.passwords {
            msg = msg.replace(p.as_str(), "***");
        }
        format!("--from {}: {what}: {msg}", self.name)
    }
}

/// The source database: a connection and its label.
struct Source {
    conn: mysql::Conn,
    label: Label,
}

impl Source {
    fn connect(url: &str, tz: Option<&str>) -> Result<Source, String> {
        let label = Label {
            name: redact(url),
            passwords: passwords(url),
        };
        if !url.starts_with("mysql://") {
            return Err(format!(
                "--from {}: expected mysql://USER:PASS@HOST:PORT/cAuth",
                label.name
            ));
        }
        let opts = mysql::Opts::from_url(url).map_err(|e| label.fail("not a MySQL URL", e))?;
        if opts.get_db_name().is_none_or(str::is_empty) {
            return Err(format!(
                "--from {}: name the original's database (…/cAuth)",
                label.name
            ));
        }
        let opts = mysql::OptsBuilder::from_opts(opts)
            .tcp_connect_timeout(Some(Duration::from_secs(10)))
            .read_timeout(Some(Duration::from_secs(120)))
            .write_timeout(Some(Duration::from_secs(120)));
        let mut conn = mysql::Conn::new(opts).map_err(|e| label.fail("cannot connect", e))?;
        if let Some(tz) = tz {
            check_tz(tz)?;
            conn.query_drop(format!("SET time_zone = '{tz}'"))
                .map_err(|e| label.fail(&format!("--tz {tz}"), e))?;
        }
        Ok(Source { conn, label })
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> String {
        self.label.fail(what, e)
    }

    /// The actual name of a table, whatever its case (`cAppinfo` in the original DDL, `cAppInfo`
    /// in some copies, lower case on servers with `lower_case_table_names`).
    fn table(&mut self, lower: &str) -> Result<String, String> {
        let names: Vec<String> = self
            .conn
            .exec(
                "SELECT table_name FROM information_schema.tables
                 WHERE table_schema = DATABASE() AND LOWER(table_name) = ?",
                (lower,),
            )
            .map_err(|e| self.fail("listing tables", e))?;
        names.into_iter().next().ok_or_else(|| {
            format!(
                "--from {}: no table {lower} (is this Wafer's cAuth database?)",
                self.label.name
            )
        })
    }

    fn apps(&mut self) -> Result<Vec<SourceApp>, String> {
        let table = self.table("cappinfo")?;
        let rows: Vec<mysql::Row> = self
            .conn
            .query(format!(
                "SELECT appid, secret, login_duration, session_duration FROM `{table}`"
            ))
            .map_err(|e| self.fail(&table, e))?;
        let mut apps: Vec<SourceApp> = Vec::new();
        for r in rows {
            let appid = text(&r, 0).unwrap_or_default();
            // Some deployments hold the same app row more than once.
            if appid.is_empty() || apps.iter().any(|a| a.appid == appid) {
                continue;
            }
            let bounded = |v: Option<i64>, default, range: std::ops::RangeInclusive<i64>| {
                v.unwrap_or(default).clamp(*range.start(), *range.end())
            };
            apps.push(SourceApp {
                appid,
                secret: text(&r, 1).unwrap_or_default(),
                login_days: bounded(int(&r, 2), 30, LOGIN_DAYS),
                session_secs: bounded(int(&r, 3), 2_592_000, SESSION_SECS),
            });
        }
        Ok(apps)
    }
}

/// A column as text (the text protocol sends every value as bytes); `None` for NULL.
fn text(r: &mysql::Row, i: usize) -> Option<String> {
    match r.as_ref(i)? {
        mysql::Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        mysql::Value::Int(n) => Some(n.to_string()),
        mysql::Value::UInt(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A column as a whole number; `None` for NULL or anything else.
fn int(r: &mysql::Row, i: usize) -> Option<i64> {
    text(r, i)?.trim().parse().ok()
}

/// The app the sessions belong to: the only one, or the one `--appid` names.
fn pick_app(apps: Vec<SourceApp>, appid: Option<&str>, table: &str) -> Result<SourceApp, String> {
    let list = || {
        apps.iter()
            .map(|a| a.appid.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match appid {
        Some(id) => match apps.iter().position(|a| a.appid == id) {
            Some(i) => Ok(apps[i].clone()),
            None => Err(format!(
                "--appid {id}: not in {table} (it holds: {})",
                list()
            )),
        },
        None if apps.len() == 1 => Ok(apps[0].clone()),
        None if apps.is_empty() => Err(format!("{table} has no app row")),
        None => Err(format!(
            "{table} holds several apps ({}): say which one the sessions belong to with --appid",
            list()
        )),
    }
}

/// What [`run`] reports: the app and the counts.
pub struct Report {
    pub appid: String,
    /// False when the app was registered already (then it is kept as it is).
    pub app_added: bool,
    pub counts: Counts,
}

/// Import from `opts.from` into `db`.
pub fn run(db: &Db, broker: &Broker, opts: &Options, now: i64) -> Result<Report, String> {
    let mut src = Source::connect(&opts.from, opts.tz.as_deref())?;
    let app_table = src.table("cappinfo")?;
    let session_table = src.table("csessioninfo")?;
    let app = pick_app(src.apps()?, opts.appid.as_deref(), &app_table)?;
    let target = |e: &dyn std::fmt::Display| format!("database: {e}");
    let (app_pk, app_added) = match db.app_by_appid(&app.appid).map_err(|e| target(&e))? {
        Some(a) => (a.id, false),
        None => {
            let upsert = AppUpsert {
                appid: app.appid.clone(),
                secret: Secret::new(app.secret.clone()),
                title: Some("moved in from Wafer".into()),
                login_days: Some(app.login_days),
                session_secs: Some(app.session_secs),
                ..Default::default()
            };
            let a = accounts::save_app(db, broker, &upsert, now).map_err(|e| target(&e))?;
            (a.id, true)
        }
    };
    let mut counts = Counts::default();
    // One open_id's rows together (compared as bytes, as openids are: a case-insensitive
    // collation could interleave two of them), the latest first: its latest row names the user.
    let query = format!(
        "SELECT uuid, skey, CAST(UNIX_TIMESTAMP(create_time) AS SIGNED),
                CAST(UNIX_TIMESTAMP(last_visit_time) AS SIGNED), open_id, session_key, user_info
         FROM `{session_table}` ORDER BY CAST(open_id AS BINARY), last_visit_time DESC"
    );
    let Source { conn, label } = &mut src;
    let mut result = conn
        .query_iter(query)
        .map_err(|e| label.fail(&session_table, e))?;
    let mut group: Vec<SourceRow> = Vec::new();
    let mut rows = result.iter().into_iter().flatten();
    loop {
        let row = match rows.next() {
            Some(Ok(r)) => Some(SourceRow {
                uuid: text(&r, 0).unwrap_or_default(),
                skey: text(&r, 1).unwrap_or_default(),
                created: int(&r, 2).filter(|t| *t > 0),
                last_visit: int(&r, 3).filter(|t| *t > 0),
                open_id: text(&r, 4).unwrap_or_default(),
                session_key: text(&r, 5).unwrap_or_default(),
                user_info: text(&r, 6),
            }),
            Some(Err(e)) => return Err(label.fail(&session_table, e)),
            None => None,
        };
        let next_user = row
            .as_ref()
            .is_none_or(|r| group.first().is_some_and(|g| g.open_id != r.open_id));
        if next_user && !group.is_empty() {
            import_group(db, app_pk, &app, &group, now, &mut counts).map_err(|e| target(&e))?;
            group.clear();
        }
        match row {
            Some(r) => group.push(r),
            None => break,
        }
    }
    Ok(Report {
        appid: app.appid,
        app_added,
        counts,
    })
}

/// Plan and write one `open_id`'s rows, adding to `counts`.
fn import_group(
    db: &Db,
    app_pk: i64,
    app: &SourceApp,
    rows: &[SourceRow],
    now: i64,
    counts: &mut Counts,
) -> Result<(), crate::store::Error> {
    let plan = match plan_user(rows, app, now) {
        Ok(p) => p,
        Err(unusable) => {
            counts.malformed += unusable;
            return Ok(());
        }
    };
    let written = db.import_user(&ImportedUser {
        app_pk,
        id: &plan.id,
        openid: &plan.openid,
        session_key: &plan.session_key,
        user_info: plan.user_info.as_deref(),
        now,
        sessions: &plan.sessions,
    })?;
    match written {
        Imported::Added(n) => {
            let c = plan.counts;
            counts.users += 1;
            counts.sessions += n;
            counts.expired += c.expired;
            counts.malformed += c.malformed;
            counts.other_uuid += c.other_uuid;
            counts.over_cap += c.over_cap;
            counts.no_user_info += c.no_user_info;
        }
        Imported::OpenidKnown => counts.openid_known += 1,
        Imported::IdTaken => counts.id_taken += 1,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";
    const SKEY: &str = "fedcba9876543210fedcba9876543210";

    fn app() -> SourceApp {
        SourceApp {
            appid: "wx1".into(),
            secret: "s".into(),
            login_days: 30,
            session_secs: 3600,
        }
    }

    fn row(skey: &str, created: i64, last_visit: i64) -> SourceRow {
        SourceRow {
            uuid: ID.into(),
            skey: skey.into(),
            created: Some(created),
            last_visit: Some(last_visit),
            open_id: "o1".into(),
            session_key: "k".into(),
            user_info: None,
        }
    }

    #[test]
    fn user_info_is_base64_json_object_or_none() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        for (stored, want) in [
            (
                b64(r#"{"nickName":"Band","city":"深圳"}"#),
                Some(r#"{"nickName":"Band","city":"深圳"}"#),
            ),
            (format!(" {}\n", b64(r#"{"a":1}"#)), Some(r#"{"a":1}"#)),
            (r#"{"openId":"o1"}"#.to_string(), Some(r#"{"openId":"o1"}"#)),
            (String::new(), None),
            ("%%% not base64".into(), None),
            (b64("not json"), None),
            (b64(r#"["an","array"]"#), None),
            (b64(r#""a string""#), None),
            (b64("null"), None),
        ] {
            assert_eq!(decode_user_info(&stored).as_deref(), want, "{stored:?}");
        }
    }

    #[test]
    fn both_clocks_decide_which_sessions_are_copied() {
        let now = 10_000_000;
        let day = 86_400;
        let rows = [
            row("a0000000000000000000000000000000", now - day, now - 60),
            // Past the sliding window (an hour).
            row("b0000000000000000000000000000000", now - day, now - 3601),
            // Past login_duration (30 days) though visited just now.
            row("c0000000000000000000000000000000", now - 31 * day, now - 1),
            // On the sliding edge: still valid, as the session check has it.
            row("d0000000000000000000000000000000", now - day, now - 3600),
        ];
        let p = plan_user(&rows, &app(), now).unwrap();
        assert_eq!((p.counts.sessions, p.counts.expired), (2, 2));
        let a = &p.sessions[0];
        assert_eq!(
            a.skey_hash,
            ids::skey_hash("a0000000000000000000000000000000")
        );
        assert_eq!(
            (a.created, a.last_visit, a.expires_at, a.idle_secs),
            (now - day, now - 60, now - day + 30 * day, 3600)
        );
        assert_eq!(p.id, ID);
    }

    #[test]
    fn the_latest_usable_row_names_the_user() {
        let now = 1_000_000;
        let mut other = row(SKEY, now, now);
        other.uuid = "ffffffffffffffffffffffffffffffff".into();
        let mut bad_uuid = row(SKEY, now, now);
        bad_uuid.uuid = "d41445eb-d3a0-4f95-b447-34b554c6cd32".into();
        let mut bad_skey = row("4B076F01CF333262BFB5E1F9BB962A2E", now, now);
        bad_skey.user_info = Some("x".into());
        let mut latest = row(SKEY, now, now);
        latest.user_info = Some(r#"{"n":1}"#.into());
        let p = plan_user(&[bad_uuid, latest, other, bad_skey], &app(), now).unwrap();
        assert_eq!(p.id, ID);
        assert_eq!(p.user_info.as_deref(), Some(r#"{"n":1}"#));
        let c = &p.counts;
        assert_eq!(
            (c.sessions, c.malformed, c.other_uuid, c.no_user_info),
            (1, 2, 1, 0)
        );
        // No usable row at all: nothing planned, every row counted.
        let mut no_openid = row(SKEY, now, now);
        no_openid.open_id.clear();
        assert_eq!(plan_user(&[no_openid], &app(), now).unwrap_err(), 1);
    }

    #[test]
    fn no_more_sessions_than_the_cap() {
        let now = 1_000_000;
        let rows: Vec<SourceRow> = (0..MAX_SESSIONS_PER_USER + 2)
            .map(|i| row(&format!("{i:032x}"), now - 100, now - i))
            .collect();
        let p = plan_user(&rows, &app(), now).unwrap();
        assert_eq!(p.sessions.len() as i64, MAX_SESSIONS_PER_USER);
        assert_eq!(p.counts.over_cap, 2);
    }

    #[test]
    fn messages_never_carry_the_password() {
        for (url, want) in [
            (
                "mysql://root:s3cr%40t@db:3306/cAuth",
                "mysql://root:***@db:3306/cAuth",
            ),
            (
                "mysql://u:p@ss@h/cAuth?ssl-mode=REQUIRED",
                "mysql://u:***@h/cAuth?ssl-mode=REQUIRED",
            ),
            ("mysql://u@h/cAuth", "mysql://u@h/cAuth"),
            ("mysql://h:3306/cAuth", "mysql://h:3306/cAuth"),
        ] {
            assert_eq!(redact(url), want);
        }
        assert_eq!(
            passwords("mysql://root:s3cr%40t@db:3306/cAuth"),
            ["s3cr%40t", "s3cr@t"]
        );
        assert!(passwords("mysql://u@h/cAuth").is_empty());
    }

    #[test]
    fn tz_is_an_offset_or_a_name_and_nothing_else() {
        for tz in [
            "+08:00",
            "-05:30",
            "UTC",
            "Asia/Shanghai",
            "America/Argentina/Buenos_Aires",
        ] {
            assert!(check_tz(tz).is_ok(), "{tz}");
        }
        for tz in ["", "+08:00'; DROP TABLE x; --", "a b", "+08'00"] {
            assert!(check_tz(tz).is_err(), "{tz}");
        }
    }

    #[test]
    fn the_app_is_the_only_one_or_the_named_one() {
        let a = |id: &str| SourceApp {
            appid: id.into(),
            ..app()
        };
        assert_eq!(
            pick_app(vec![a("wx1")], None, "cAppinfo").unwrap().appid,
            "wx1"
        );
        let both = || vec![a("wx1"), a("wx2")];
        let e = pick_app(both(), None, "cAppinfo").unwrap_err();
        assert!(e.contains("wx1, wx2") && e.contains("--appid"), "{e}");
        assert_eq!(
            pick_app(both(), Some("wx2"), "cAppinfo").unwrap().appid,
            "wx2"
        );
        let e = pick_app(both(), Some("wx3"), "cAppinfo").unwrap_err();
        assert!(e.contains("wx3") && e.contains("wx1, wx2"), "{e}");
        assert!(pick_app(vec![], None, "cAppinfo").is_err());
    }
}
