//! Configuration: `wafer.toml` plus the environment overrides of CONTRACT §2, validated once
//! into ready-to-use values. Nothing else reads the environment or the config file.

use crate::secret::Secret;
use serde::Deserialize;
use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub wechat: WeChatConfig,
    pub gateway: GatewayConfig,
    #[serde(rename = "app")]
    pub apps: Vec<AppDecl>,
    #[serde(rename = "work_agent")]
    pub work_agents: Vec<WorkAgentDecl>,
    #[serde(rename = "component")]
    pub components: Vec<ComponentDecl>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub workers: usize,
    pub max_body_bytes: usize,
    pub api_key: Secret,
    /// How long one read or write on a client connection may make no progress, and how long a
    /// whole request body may take (see `http::listen`).
    pub io_timeout_ms: u64,
    /// The external base URL (`https://wx.example.com`, no trailing slash) every URL wafer
    /// hands out is built from (a component's `redirect_uri`); empty = none. The `Host` header
    /// is never used for that.
    pub public_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub path: String,
    /// `mysql://USER:PASS@HOST:PORT/DB`: the shared MySQL-compatible database (CONTRACT §10),
    /// which wins over `path`. Empty: the SQLite file `path`. A secret: it holds a password.
    pub url: Secret,
    /// A file of 32 random bytes (raw or hex); when set, secrets are sealed at rest with it
    /// (CONTRACT §11). Empty: nothing is sealed.
    pub key_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeChatConfig {
    pub api_base: String,
    pub work_api_base: String,
    pub timeout_ms: u64,
    pub stable_token: bool,
    pub refresh_ahead_secs: u64,
    /// How long an instance's claim on a credential refresh lasts unless renewed (a holder
    /// renews it while its refresh runs), on a database shared by several (CONTRACT §10).
    pub lease_secs: u64,
    /// A callback whose `timestamp` is further than this from the server's clock is refused;
    /// callbacks already handled are remembered this long (`push::Claim`).
    pub callback_window_secs: u64,
}

/// The WeChat API gateway (CONTRACT §9, `gateway::Gateway`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// The largest body relayed, either way: a larger request is refused 413, a larger answer
    /// 502 `upstream_too_large`.
    pub max_body_bytes: u64,
    /// The bytes of bodies all gateway calls may hold at once; a call that would go past it is
    /// answered 503 `busy` without being relayed.
    pub max_inflight_bytes: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_body_bytes: 10 << 20,
            max_inflight_bytes: 64 << 20,
        }
    }
}

/// An app declared in the config file; applied to the database at start-up (insert or update).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppDecl {
    pub appid: String,
    pub secret: Secret,
    #[serde(default = "default_kind")]
    pub kind: String,
    #[serde(default)]
    pub title: String,
    #[serde(default = "default_login_days")]
    pub login_days: i64,
    #[serde(default = "default_session_secs")]
    pub session_secs: i64,
    pub token: Option<Secret>,
    pub aes_key: Option<Secret>,
    pub prev_aes_key: Option<Secret>,
    pub forward_url: Option<String>,
}

impl AppDecl {
    /// A mini-program app with the same defaults a `[[app]]` table gets.
    pub fn new(appid: &str, secret: &str) -> AppDecl {
        AppDecl {
            appid: appid.into(),
            secret: Secret::new(secret),
            kind: default_kind(),
            title: String::new(),
            login_days: default_login_days(),
            session_secs: default_session_secs(),
            token: None,
            aes_key: None,
            prev_aes_key: None,
            forward_url: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkAgentDecl {
    pub corpid: String,
    pub agentid: String,
    pub secret: Secret,
    #[serde(default)]
    pub remark: String,
    pub token: Option<Secret>,
    pub aes_key: Option<Secret>,
    pub prev_aes_key: Option<Secret>,
    pub forward_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentDecl {
    pub appid: String,
    pub secret: Secret,
    pub token: Secret,
    pub aes_key: Secret,
    pub prev_aes_key: Option<Secret>,
    pub redirect_uri: Option<String>,
    /// Where the component's authorisation events are relayed as JSON.
    pub forward_url: Option<String>,
}

fn default_kind() -> String {
    "miniprogram".into()
}
/// The range of an app's `login_days` (CLI `--login-days`, `app.login_days`): up to ten years.
/// Bounded so that no lifetime added to a clock can overflow (a huge value once wrapped a
/// session's `duration` negative).
pub const LOGIN_DAYS: std::ops::RangeInclusive<i64> = 1..=3650;
/// The range of an app's `session_secs` (`--session-secs`, `app.session_secs`): up to ten years.
pub const SESSION_SECS: std::ops::RangeInclusive<i64> = 1..=3650 * 86400;

pub fn default_login_days() -> i64 {
    30
}
pub fn default_session_secs() -> i64 {
    2_592_000
}

impl Default for ServerConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        ServerConfig {
            listen: "127.0.0.1:5757".into(),
            workers: (2 * cores).max(4),
            max_body_bytes: 65536,
            api_key: Secret::default(),
            io_timeout_ms: 10_000,
            public_url: String::new(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: "wafer.db".into(),
            url: Secret::default(),
            key_file: String::new(),
        }
    }
}

impl Default for WeChatConfig {
    fn default() -> Self {
        WeChatConfig {
            api_base: "https://api.weixin.qq.com".into(),
            work_api_base: "https://qyapi.weixin.qq.com".into(),
            timeout_ms: 5000,
            stable_token: true,
            refresh_ahead_secs: 600,
            lease_secs: 15,
            callback_window_secs: 300,
        }
    }
}

/// A configuration problem, reported as one line naming the key.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Load from an explicit file, else `$WAFER_CONFIG`, else `./wafer.toml` if present, else the
    /// defaults; then apply the environment overrides and validate.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let env_path = std::env::var_os("WAFER_CONFIG").map(std::path::PathBuf::from);
        let path = match (explicit, env_path) {
            (Some(p), _) => Some(p.to_path_buf()),
            (None, Some(p)) => Some(p),
            (None, None) => Some(Path::new("wafer.toml").to_path_buf()).filter(|p| p.exists()),
        };
        let mut config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| ConfigError(format!("config {}: {e}", p.display())))?;
                Config::parse(&text)
                    .map_err(|e| ConfigError(format!("config {}: {}", p.display(), e.0)))?
            }
            None => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Parse TOML text; the error names the offending key in one line.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str::<Config>(text).map_err(|e| {
            let msg = e.message().replace('\n', " ");
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError(format!("{msg}{at}"))
        })
    }

    /// Environment overrides of CONTRACT §2. `get` is the environment (a parameter for tests).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("WAFER_LISTEN") {
            self.server.listen = v;
        }
        if let Some(v) = get("WAFER_WORKERS") {
            self.server.workers = v.parse().map_err(|_| {
                ConfigError(format!(
                    "WAFER_WORKERS (server.workers): not a number: {v:?}"
                ))
            })?;
        }
        if let Some(v) = get("WAFER_API_KEY") {
            self.server.api_key = Secret::new(v);
        }
        if let Some(v) = get("WAFER_PUBLIC_URL") {
            self.server.public_url = v;
        }
        if let Some(v) = get("WAFER_DB") {
            self.storage.path = v;
        }
        if let Some(v) = get("WAFER_DATABASE_URL") {
            self.storage.url = Secret::new(v);
        }
        if let Some(v) = get("WAFER_KEY_FILE") {
            self.storage.key_file = v;
        }
        if let Some(v) = get("WAFER_WECHAT_API_BASE") {
            self.wechat.api_base = v;
        }
        if let Some(v) = get("WAFER_WORK_API_BASE") {
            self.wechat.work_api_base = v;
        }
        Ok(())
    }

    /// `wafer dev`: of the environment overrides only `WAFER_API_KEY` applies (dev has its own
    /// `--listen` and `--db`, and ignores config files).
    pub fn apply_dev_env(&mut self) {
        if let Ok(v) = std::env::var("WAFER_API_KEY") {
            self.server.api_key = Secret::new(v);
        }
    }

    /// CONTRACT §8: without `server.api_key`, the server listens on loopback only. Checked when
    /// a server starts (`wafer serve`, `wafer dev`), not by the data commands, which may run
    /// without the key the service gets from its unit's environment.
    pub fn check_listen_needs_key(&self) -> Result<(), ConfigError> {
        let loopback = self
            .server
            .listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback());
        if loopback || !self.server.api_key.is_empty() {
            return Ok(());
        }
        Err(ConfigError(format!(
            "server.api_key: required to listen on {}, which is not loopback (set server.api_key or WAFER_API_KEY, or listen on 127.0.0.1)",
            self.server.listen
        )))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "server.listen",
                "expected HOST:PORT with a numeric IP, e.g. 127.0.0.1:5757",
            );
        }
        if self.server.workers == 0 || self.server.workers > 1024 {
            return bad("server.workers", "must be between 1 and 1024");
        }
        if self.server.max_body_bytes < 1024 || self.server.max_body_bytes > 64 << 20 {
            return bad("server.max_body_bytes", "must be between 1024 and 67108864");
        }
        if self.server.io_timeout_ms < 100 || self.server.io_timeout_ms > 600_000 {
            return bad("server.io_timeout_ms", "must be between 100 and 600000");
        }
        let public = &self.server.public_url;
        if !public.is_empty() {
            let rest = public
                .strip_prefix("https://")
                .or_else(|| public.strip_prefix("http://"));
            match rest {
                Some(host) if !host.is_empty() && !host.contains(['?', '#', ' ', '"', '<', '>']) => {}
                _ => {
                    return bad(
                        "server.public_url",
                        "must be empty or an http:// or https:// URL without query or fragment, e.g. https://wx.example.com",
                    )
                }
            }
        }
        if self.storage.path.is_empty() {
            return bad("storage.path", "must not be empty");
        }
        for (key, base) in [
            ("wechat.api_base", &self.wechat.api_base),
            ("wechat.work_api_base", &self.wechat.work_api_base),
        ] {
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return bad(key, "must start with http:// or https://");
            }
        }
        if self.wechat.timeout_ms == 0 || self.wechat.timeout_ms > 120_000 {
            return bad("wechat.timeout_ms", "must be between 1 and 120000");
        }
        if !(1..=300).contains(&self.wechat.lease_secs) {
            return bad("wechat.lease_secs", "must be between 1 and 300");
        }
        if self.wechat.refresh_ahead_secs > 3600 {
            return bad("wechat.refresh_ahead_secs", "must be at most 3600");
        }
        // WeChat retries for about 15 s after its first try; less than a minute would refuse
        // genuine pushes over ordinary clock drift, more than a day keeps too much memory.
        if !(60..=86_400).contains(&self.wechat.callback_window_secs) {
            return bad(
                "wechat.callback_window_secs",
                "must be between 60 and 86400",
            );
        }
        let gateway = &self.gateway;
        if !(1024..=1 << 30).contains(&gateway.max_body_bytes) {
            return bad(
                "gateway.max_body_bytes",
                "must be between 1024 and 1073741824",
            );
        }
        if !(gateway.max_body_bytes..=1 << 40).contains(&gateway.max_inflight_bytes) {
            return bad(
                "gateway.max_inflight_bytes",
                "must be at least gateway.max_body_bytes and at most 1099511627776",
            );
        }
        for app in &self.apps {
            if app.appid.is_empty() {
                return bad("app.appid", "must not be empty");
            }
            if app.kind != "miniprogram" && app.kind != "official" {
                return bad("app.kind", "must be \"miniprogram\" or \"official\"");
            }
            if !LOGIN_DAYS.contains(&app.login_days) {
                return bad("app.login_days", "must be between 1 and 3650 (days)");
            }
            if !SESSION_SECS.contains(&app.session_secs) {
                return bad(
                    "app.session_secs",
                    "must be between 1 and 315360000 (seconds)",
                );
            }
        }
        for c in &self.components {
            if c.appid.is_empty() {
                return bad("component.appid", "must not be empty");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:5757");
        assert!(c.server.workers >= 4);
        assert_eq!(c.server.max_body_bytes, 65536);
        assert_eq!(c.server.io_timeout_ms, 10_000);
        assert!(c.server.api_key.is_empty());
        assert_eq!(c.storage.path, "wafer.db");
        assert_eq!(c.storage.key_file, "");
        assert_eq!(c.wechat.api_base, "https://api.weixin.qq.com");
        assert_eq!(c.wechat.work_api_base, "https://qyapi.weixin.qq.com");
        assert_eq!(c.wechat.timeout_ms, 5000);
        assert!(c.wechat.stable_token);
        assert_eq!(c.wechat.refresh_ahead_secs, 600);
        assert_eq!(c.wechat.callback_window_secs, 300);
        assert_eq!(c.server.public_url, "");
        assert_eq!(c.gateway.max_body_bytes, 10_485_760);
        assert_eq!(c.gateway.max_inflight_bytes, 67_108_864);
    }

    #[test]
    fn bad_keys_are_named() {
        for (text, needle) in [
            ("[server]\nworkers = \"x\"", "line 2"),
            ("[server]\nlisten = 5", "line 2"),
            ("[server]\nlisten_at = \"x\"", "listen_at"),
            ("[wechat]\ntimeout_ms = -1", "line 2"),
        ] {
            let e = Config::parse(text).unwrap_err().0;
            assert!(e.contains(needle), "{text:?} gave {e:?}");
        }
        for bad_url in [
            "wx.example.com",
            "https://",
            "https://a.example/?x=1",
            "ftp://a",
        ] {
            let mut c = Config::default();
            c.server.public_url = bad_url.into();
            let e = c.validate().unwrap_err().0;
            assert!(e.starts_with("server.public_url"), "{bad_url}: {e}");
        }
        let c = Config::parse("[wechat]\ncallback_window_secs = 5").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .0
            .starts_with("wechat.callback_window_secs"));
        for (text, key) in [
            ("[gateway]\nmax_body_bytes = 10", "gateway.max_body_bytes"),
            (
                "[gateway]\nmax_body_bytes = 2048\nmax_inflight_bytes = 1024",
                "gateway.max_inflight_bytes",
            ),
        ] {
            let e = Config::parse(text).unwrap().validate().unwrap_err().0;
            assert!(e.starts_with(key), "{text:?} gave {e:?}");
        }
        let c = Config::parse("[server]\nio_timeout_ms = 5").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .0
            .starts_with("server.io_timeout_ms"));
        let mut c = Config::parse("[server]\nlisten = \"nowhere\"").unwrap();
        assert!(c.validate().unwrap_err().0.starts_with("server.listen"));
        c.server.listen = "127.0.0.1:1".into();
        c.apply_env(|k| (k == "WAFER_WORKERS").then(|| "many".to_string()))
            .unwrap_err();
    }

    #[test]
    fn a_non_loopback_listen_needs_a_key() {
        let mut c = Config::default();
        for (listen, ok) in [
            ("127.0.0.1:5757", true),
            ("127.0.0.2:1", true),
            ("[::1]:5757", true),
            ("0.0.0.0:5757", false),
            ("[::]:5757", false),
            ("192.168.1.2:5757", false),
        ] {
            c.server.listen = listen.into();
            let e = c.check_listen_needs_key();
            assert_eq!(e.is_ok(), ok, "{listen}");
            if let Err(e) = e {
                assert!(e.0.starts_with("server.api_key: "), "{e}");
                assert!(!e.0.contains('\n'));
            }
        }
        c.server.api_key = Secret::new("k");
        assert!(c.check_listen_needs_key().is_ok());
    }

    #[test]
    fn env_overrides_apply() {
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "WAFER_LISTEN" => Some("0.0.0.0:1".into()),
            "WAFER_DB" => Some("/tmp/x.db".into()),
            "WAFER_API_KEY" => Some("k".into()),
            "WAFER_KEY_FILE" => Some("/etc/wafer/key".into()),
            "WAFER_PUBLIC_URL" => Some("https://wx.example.com".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.storage.key_file, "/etc/wafer/key");
        assert_eq!(c.server.listen, "0.0.0.0:1");
        assert_eq!(c.storage.path, "/tmp/x.db");
        assert_eq!(c.server.api_key.expose(), "k");
        assert_eq!(c.server.public_url, "https://wx.example.com");
        assert_eq!(format!("{:?}", c.server.api_key), "Secret(***)");
    }

    #[test]
    fn apps_parse() {
        let c = Config::parse(
            "[[app]]\nappid = \"wx1\"\nsecret = \"s\"\n[[app]]\nappid = \"wx2\"\nsecret = \"t\"\nkind = \"official\"",
        )
        .unwrap();
        assert_eq!(c.apps.len(), 2);
        assert_eq!(c.apps[1].kind, "official");
        assert_eq!(c.apps[0].login_days, 30);
        assert!(!format!("{c:?}").contains("\"s\""));
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn the_example_file_parses_and_validates() {
        let c = super::Config::parse(include_str!("../wafer.toml.example")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:5757");
        // With every commented-out key switched on, it still parses: the example names no key
        // the loader would reject.
        let all: String = include_str!("../wafer.toml.example")
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with("[[")
                        || rest.split_once(" = ").is_some_and(|(k, _)| {
                            k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        }) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = super::Config::parse(&all).unwrap();
        c.validate().unwrap();
        assert_eq!(
            (c.apps.len(), c.work_agents.len(), c.components.len()),
            (1, 1, 1)
        );
        assert_eq!(c.server.workers, 4);
    }
}
