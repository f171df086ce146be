//! The credential broker: the only code that calls WeChat's token and ticket endpoints.
//!
//! Every hosted credential has a `Key` (built here and nowhere else). Its value and expiry live
//! in one SQLite row and, once asked for, in memory, from where callers are served. A key that
//! is missing or expired is fetched by exactly one caller (single-flight): the others wait on the
//! entry's condition variable for that result, bounded by the upstream timeout. A background
//! thread renews keys that were asked for recently ahead of their expiry, so callers normally
//! never wait on WeChat at all.
//!
//! Policy, from what the field learned the hard way (WECHAT.md): never auto-retry 40013, 40125,
//! 40164, 45009 or 8950x; retry -1 at most 3 times with back-off; on 45009 stop calling that key
//! until the next UTC day; `force` at most 20 times a day and 30 s apart; when WeChat fails and a
//! still-valid value is cached, serve it; WeCom's 40001 is a bad secret, not a stale token.

use crate::core::error::{Error, Refusal};
use crate::ids;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::store::{self, utc_day, Change, Db};
use crate::wechat::{errcode, urls, Host, UpstreamError, WeChat};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The longest lifetime believed from WeChat (`expires_in`; its real ones are 300 to 7200 s). A
/// longer one is cut to this: i64::MAX once overflowed the expiry and made every read refetch.
/// A shorter one is believed however short (zero or less is refused as garbage): serving a
/// token past the expiry WeChat stated would be worse than fetching again, and fetches of one
/// key are one at a time anyway.
pub const MAX_LIFETIME_SECS: i64 = 2 * 86400;

/// An upstream `expires_in` (positive) within [`MAX_LIFETIME_SECS`].
pub fn lifetime(expires_in: i64) -> i64 {
    expires_in.min(MAX_LIFETIME_SECS)
}

/// Forced refreshes allowed per key per UTC day, and the least time between two.
pub const FORCE_PER_DAY: i64 = 20;
pub const FORCE_MIN_INTERVAL_SECS: i64 = 30;
/// How often a -1 ("system busy") is retried, and the first back-off.
const BUSY_RETRIES: u32 = 3;
const BUSY_BACKOFF: Duration = Duration::from_millis(100);
/// The pause before busy retry number `attempt` (from 0): 100, 200, 400 ms.
fn busy_backoff(attempt: u32) -> Duration {
    BUSY_BACKOFF * 2u32.pow(attempt)
}
/// A credential unused for this long is no longer renewed in the background.
const KEEP_WARM_SECS: i64 = 3600;

/// What a credential is, and whose. The only place credential keys are formatted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    AppToken {
        appid: String,
    },
    AppTicket {
        appid: String,
    },
    WorkToken {
        corpid: String,
        agentid: String,
    },
    /// The corp jsapi ticket (`wx.config`), fetched with this agent's token.
    WorkCorpTicket {
        corpid: String,
        agentid: String,
    },
    /// The agent ticket (`wx.agentConfig`).
    WorkAgentTicket {
        corpid: String,
        agentid: String,
    },
    ComponentToken {
        component_appid: String,
    },
    AuthorizerToken {
        component_appid: String,
        authorizer_appid: String,
    },
}

impl Key {
    pub fn id(&self) -> String {
        match self {
            Key::AppToken { appid } => format!("app/{appid}/access_token"),
            Key::AppTicket { appid } => format!("app/{appid}/jsapi_ticket"),
            Key::WorkToken { corpid, agentid } => format!("work/{corpid}/{agentid}/access_token"),
            Key::WorkCorpTicket { corpid, agentid } => {
                format!("work/{corpid}/{agentid}/jsapi_ticket")
            }
            Key::WorkAgentTicket { corpid, agentid } => {
                format!("work/{corpid}/{agentid}/agent_ticket")
            }
            Key::ComponentToken { component_appid } => {
                format!("component/{component_appid}/access_token")
            }
            Key::AuthorizerToken {
                component_appid,
                authorizer_appid,
            } => {
                format!("component/{component_appid}/authorizer/{authorizer_appid}/access_token")
            }
        }
    }

    /// The key whose [`Key::id`] is `id` (a stored row's), if it is one.
    pub fn parse(id: &str) -> Option<Key> {
        let parts: Vec<&str> = id.split('/').collect();
        let s = |i: usize| parts[i].to_string();
        Some(match parts.as_slice() {
            ["app", _, "access_token"] => Key::AppToken { appid: s(1) },
            ["app", _, "jsapi_ticket"] => Key::AppTicket { appid: s(1) },
            ["work", _, _, kind] => {
                let (corpid, agentid) = (s(1), s(2));
                match *kind {
                    "access_token" => Key::WorkToken { corpid, agentid },
                    "jsapi_ticket" => Key::WorkCorpTicket { corpid, agentid },
                    "agent_ticket" => Key::WorkAgentTicket { corpid, agentid },
                    _ => return None,
                }
            }
            ["component", _, "access_token"] => Key::ComponentToken {
                component_appid: s(1),
            },
            ["component", _, "authorizer", _, "access_token"] => Key::AuthorizerToken {
                component_appid: s(1),
                authorizer_appid: s(3),
            },
            _ => return None,
        })
    }

    /// The prefix shared by every key of one app (its token and ticket), to drop them when its
    /// secret changes or it is removed.
    pub fn app_prefix(appid: &str) -> String {
        format!("app/{appid}/")
    }

    /// The prefix shared by every key of one WeCom agent (to forget them when its secret changes).
    pub fn work_agent_prefix(corpid: &str, agentid: &str) -> String {
        format!("work/{corpid}/{agentid}/")
    }

    /// The prefix shared by every key of one authoriser of a component.
    pub fn authorizer_prefix(component_appid: &str, authorizer_appid: &str) -> String {
        format!("component/{component_appid}/authorizer/{authorizer_appid}/")
    }

    /// The metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Key::AppToken { .. } => "access_token",
            Key::AppTicket { .. } => "jsapi_ticket",
            Key::WorkToken { .. } => "work_access_token",
            Key::WorkCorpTicket { .. } => "work_jsapi_ticket",
            Key::WorkAgentTicket { .. } => "work_agent_ticket",
            Key::ComponentToken { .. } => "component_access_token",
            Key::AuthorizerToken { .. } => "authorizer_access_token",
        }
    }

    /// The host this credential is fetched from and used on.
    pub fn host(&self) -> Host {
        match self {
            Key::WorkToken { .. } | Key::WorkCorpTicket { .. } | Key::WorkAgentTicket { .. } => {
                Host::Work
            }
            _ => Host::Api,
        }
    }

    /// The token a ticket is fetched with.
    fn parent(&self) -> Option<Key> {
        match self {
            Key::AppTicket { appid } => Some(Key::AppToken {
                appid: appid.clone(),
            }),
            Key::WorkCorpTicket { corpid, agentid } | Key::WorkAgentTicket { corpid, agentid } => {
                Some(Key::WorkToken {
                    corpid: corpid.clone(),
                    agentid: agentid.clone(),
                })
            }
            _ => None,
        }
    }
}

/// A credential as served.
#[derive(Debug, Clone)]
pub struct Credential {
    pub value: Secret,
    pub expires_at: i64,
    /// True when this call fetched it (or waited for the fetch), false when served from cache.
    pub fresh: bool,
}

/// What a fetcher brings back from WeChat.
pub struct Fetched {
    pub value: String,
    pub expires_in: i64,
}

#[derive(Default)]
struct State {
    /// Loaded from the database (once per process per key).
    loaded: bool,
    /// When the row was last read: on a database shared by several instances it is read
    /// again at most every [`ROW_RECHECK`], so a value another instance renewed is served.
    checked: Option<Instant>,
    value: Option<Secret>,
    expires_at: i64,
    /// When the value was fetched; with `expires_at` it gives the lifetime.
    fetched_at: i64,
    /// When the background thread should renew it.
    refresh_at: i64,
    /// A fetch is under way; others wait on the condition variable.
    refreshing: bool,
    /// Bumped by each finished fetch, so waiters know theirs is done.
    generation: u64,
    /// The value an invalidation found stale (and cleared): the refresh under way replaces
    /// it, so another instance's write of that same value is not taken for a new one.
    superseded: Option<Secret>,
    last_error: Option<Error>,
    last_used: i64,
}

#[derive(Default)]
struct Entry {
    state: Mutex<State>,
    done: Condvar,
}

/// A refresh under way (`refreshing` set), until [`Broker::refresh_holding`] publishes its
/// outcome. Dropped unpublished, because something in the fetch panicked (the upstream pool
/// catches panics and goes on), it clears `refreshing` and wakes the waiters with an error:
/// else they, and every later caller of the key, would wait on a fetch that never ends.
struct Pending<'e> {
    entry: &'e Entry,
    /// Set in the same critical section that clears `refreshing`: once it is clear, another
    /// caller may start the next refresh, which this must not touch.
    finished: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut st = lock(&self.entry.state);
        st.refreshing = false;
        st.generation += 1;
        st.refresh_at = ids::now() + 5;
        st.last_error = Some(Error::Internal("the refresh failed unexpectedly".into()));
        drop(st);
        self.entry.done.notify_all();
    }
}

impl State {
    /// Served to callers only with some validity left: a tenth of its life, between 1 and 30 s
    /// (expiry is kept in whole seconds, so less than a second could already be past).
    fn usable(&self, now: i64) -> bool {
        // Saturating: a row stored before lifetimes were bounded may hold any expiry.
        let margin = (self.expires_at.saturating_sub(self.fetched_at) / 10).clamp(1, 30);
        self.value.is_some() && now < self.expires_at.saturating_sub(margin)
    }

    fn credential(&self, fresh: bool) -> Option<Credential> {
        self.value.as_ref().map(|v| Credential {
            value: v.clone(),
            expires_at: self.expires_at,
            fresh,
        })
    }
}

pub struct Broker {
    entries: Mutex<HashMap<Key, Arc<Entry>>>,
    wechat: Arc<WeChat>,
    metrics: Arc<Metrics>,
    stable_token: bool,
    refresh_ahead_secs: i64,
    /// The longest a caller waits for someone else's fetch.
    wait_limit: Duration,
    /// On a database shared by several instances: this instance's name as a lease owner,
    /// and how long a claim on a refresh lasts unless renewed.
    instance: String,
    lease_secs: i64,
    /// When this instance, as the elected refresher, last took in the stored credentials.
    adopted_at: Mutex<Option<Instant>>,
}

/// The lease that elects the one background refresher of a shared database.
const REFRESHER_LEASE: &str = "refresher";

/// How often the elected refresher takes in the stored credentials it does not hold yet.
const ADOPT_EVERY: Duration = Duration::from_secs(2);

/// On a shared database, how stale a value in memory may be: the row is read again after
/// this long (another instance may have renewed it, and the old token may no longer work).
const ROW_RECHECK: Duration = Duration::from_secs(1);

/// How often an instance waiting on another's refresh reads the credential's row again.
const LEASE_POLL: Duration = Duration::from_millis(50);

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Broker {
    pub fn new(
        wechat: Arc<WeChat>,
        metrics: Arc<Metrics>,
        cfg: &crate::config::WeChatConfig,
    ) -> Broker {
        // A fetch is at most a ticket's token plus the ticket, each with its busy retries.
        let per_call = Duration::from_millis(cfg.timeout_ms);
        let wait_limit = (per_call + BUSY_BACKOFF * 8) * (2 * (BUSY_RETRIES + 1));
        Broker {
            entries: Mutex::new(HashMap::new()),
            wechat,
            metrics,
            stable_token: cfg.stable_token,
            refresh_ahead_secs: cfg.refresh_ahead_secs as i64,
            wait_limit,
            instance: ids::random_hex32().unwrap_or_else(|_| format!("pid-{}", std::process::id())),
            lease_secs: i64::try_from(cfg.lease_secs).unwrap_or(15),
            adopted_at: Mutex::new(None),
        }
    }

    pub fn wechat(&self) -> &WeChat {
        &self.wechat
    }

    fn entry(&self, key: &Key) -> Arc<Entry> {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get(key) {
            return e.clone();
        }
        map.entry(key.clone()).or_default().clone()
    }

    /// The entry's state, marked used now, with its row loaded from the database the first
    /// time in this process.
    fn used_state<'e>(
        &self,
        db: &Db,
        key: &Key,
        entry: &'e Entry,
        now: i64,
    ) -> Result<MutexGuard<'e, State>, Error> {
        let mut st = lock(&entry.state);
        st.last_used = now;
        let recheck = db.is_mysql()
            && !st.refreshing
            && st.checked.is_none_or(|t| t.elapsed() >= ROW_RECHECK);
        if !st.loaded || recheck {
            st.loaded = true;
            st.checked = Some(Instant::now());
            if let Some(row) = db.credential(&key.id())? {
                let same = st
                    .value
                    .as_ref()
                    .is_some_and(|v| v.expose() == row.value.expose())
                    && st.expires_at == row.expires_at;
                if !same {
                    st.value = Some(row.value);
                    st.expires_at = row.expires_at;
                    st.fetched_at = row.updated_at;
                    st.refresh_at = self.refresh_point(row.updated_at, row.expires_at);
                }
            }
        }
        Ok(st)
    }

    /// Serve a credential from memory (its row read from the database the first time) without
    /// waiting on anyone: `None` when it would take a fetch, ours or another caller's. This is
    /// what a server worker calls; on `None` the request goes to the upstream pool, which calls
    /// [`Broker::get`].
    pub fn try_get(&self, db: &Db, key: &Key) -> Result<Option<Credential>, Error> {
        let entry = self.entry(key);
        let now = ids::now();
        let st = self.used_state(db, key, &entry, now)?;
        Ok(if st.usable(now) {
            st.credential(false)
        } else {
            None
        })
    }

    /// Serve a credential: from memory when usable, else from one upstream fetch shared by every
    /// caller that needs it at the same time. `force` asks for a new one within the limits. May
    /// wait on WeChat: never called on a server worker (which calls [`Broker::try_get`]).
    pub fn get(&self, db: &Db, key: &Key, force: bool) -> Result<Credential, Error> {
        let entry = self.entry(key);
        let now = ids::now();
        let mut st = self.used_state(db, key, &entry, now)?;
        if !force && st.usable(now) {
            return Ok(st.credential(false).expect("usable implies a value"));
        }
        if st.refreshing {
            // Someone else is fetching: wait for that result rather than calling again.
            return self.wait_for(&entry, st, now);
        }
        if force {
            self.check_force_allowed(db, key, now)?;
        }
        st.refreshing = true;
        drop(st);
        self.refresh_holding(key, &entry, now, || self.fetch_for(db, key, &entry, force))
    }

    fn wait_for(
        &self,
        entry: &Entry,
        mut st: MutexGuard<'_, State>,
        now: i64,
    ) -> Result<Credential, Error> {
        let generation = st.generation;
        let deadline = Instant::now() + self.wait_limit;
        while st.refreshing && st.generation == generation {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Upstream(UpstreamError::Net(
                    "timed out waiting for a refresh".into(),
                )));
            }
            st = entry
                .done
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if st.value.is_some() && now < st.expires_at {
            return Ok(st.credential(true).expect("checked"));
        }
        Err(match &st.last_error {
            Some(e) => e.clone(),
            None => Error::Internal("refresh finished without a value".into()),
        })
    }

    /// The upstream fetch of a refresh: on a shared database through the key's lease.
    fn fetch_for(&self, db: &Db, key: &Key, entry: &Entry, force: bool) -> Result<Fetched, Error> {
        if db.is_mysql() {
            let known = {
                let mut st = lock(&entry.state);
                let superseded = st.superseded.take();
                st.value.clone().or(superseded).map(|v| (v, st.expires_at))
            };
            self.fetch_shared(db, key, force, known)
        } else {
            self.fetch_and_store(db, key, force)
        }
    }

    /// The caller has set `refreshing`; fetch (`fetch`: [`Broker::fetch_for`]), publish, wake
    /// the waiters.
    fn refresh_holding(
        &self,
        key: &Key,
        entry: &Entry,
        now: i64,
        fetch: impl FnOnce() -> Result<Fetched, Error>,
    ) -> Result<Credential, Error> {
        let mut pending = Pending {
            entry,
            finished: false,
        };
        let outcome = fetch();
        let mut st = lock(&entry.state);
        st.refreshing = false;
        pending.finished = true;
        st.generation += 1;
        let result = match outcome {
            Ok(f) => {
                let done = ids::now();
                // `f.expires_in` is within `lifetime`'s bounds: this cannot overflow.
                let expires_at = done + f.expires_in;
                let unchanged = st.value.as_ref().is_some_and(|v| v.expose() == f.value);
                st.value = Some(Secret::new(f.value));
                st.fetched_at = if unchanged { st.fetched_at } else { done };
                st.expires_at = expires_at;
                st.refresh_at = if unchanged {
                    // WeChat handed back the same token (a stable token not yet renewable):
                    // try again later, closer to expiry, rather than every tick.
                    done + ((expires_at - done) / 3).max(1)
                } else {
                    self.refresh_point(done, expires_at)
                };
                st.last_error = None;
                self.metrics.refresh(key.kind(), "ok");
                Ok(st.credential(true).expect("just set"))
            }
            Err(e) => {
                self.metrics.refresh(key.kind(), "error");
                // Serve a still-valid cached value rather than fail the caller.
                let fallback = (st.value.is_some() && now < st.expires_at)
                    .then(|| st.credential(false))
                    .flatten();
                // Back off the background renewal a little so a dead WeChat is not hammered.
                st.refresh_at = ids::now() + 5;
                st.last_error = Some(e.clone());
                match fallback {
                    Some(c) => Ok(c),
                    None => Err(e),
                }
            }
        };
        drop(st);
        entry.done.notify_all();
        result
    }

    /// On a database shared by several instances: one fetch for all of them. The key's lease
    /// (in the database's clock) says which instance fetches; the others read the row until
    /// the holder has written it, holding no connection while they wait, and claim the lease
    /// themselves if it runs out (the holder died). The holder renews it while its fetch runs.
    /// `known` is the value (and its expiry) this instance is replacing: a row still holding
    /// it is not new (for a forced refresh, only another value is).
    fn fetch_shared(
        &self,
        db: &Db,
        key: &Key,
        force: bool,
        known: Option<(Secret, i64)>,
    ) -> Result<Fetched, Error> {
        let id = key.id();
        let lease = format!("credential/{id}");
        let deadline = Instant::now() + self.wait_limit;
        loop {
            if db.claim_lease(&lease, &self.instance, self.lease_secs)? {
                // Another instance may have written it while this one waited for the lease.
                let outcome = match self.written_elsewhere(db, &id, force, known.as_ref())? {
                    Some(f) => Ok(f),
                    None => self.renewing(db, &lease, || self.fetch_and_store(db, key, force)),
                };
                let _ = db.release_lease(&lease, &self.instance);
                return outcome;
            }
            if let Some(f) = self.written_elsewhere(db, &id, force, known.as_ref())? {
                return Ok(f);
            }
            if Instant::now() >= deadline {
                return Err(Error::Upstream(UpstreamError::Net(
                    "timed out waiting for another instance's refresh".into(),
                )));
            }
            std::thread::sleep(LEASE_POLL);
        }
    }

    /// The stored value of `id`, if another instance has written a usable one that is not
    /// `known` (a forced refresh takes only another value; otherwise a later expiry will do).
    fn written_elsewhere(
        &self,
        db: &Db,
        id: &str,
        force: bool,
        known: Option<&(Secret, i64)>,
    ) -> Result<Option<Fetched>, Error> {
        let now = ids::now();
        let Some(row) = db.credential(id)? else {
            return Ok(None);
        };
        let margin = (row.expires_at.saturating_sub(row.updated_at) / 10).clamp(1, 30);
        let usable = now < row.expires_at.saturating_sub(margin);
        let new = match known {
            None => true,
            Some((v, expires_at)) => {
                v.expose() != row.value.expose() || (!force && row.expires_at > *expires_at)
            }
        };
        Ok((usable && new).then(|| Fetched {
            value: row.value.expose().to_string(),
            expires_in: row.expires_at - now,
        }))
    }

    /// Run `fetch` while renewing `lease` every third of its length from another thread (on
    /// its own handle on the pool), so a slow fetch keeps it.
    fn renewing<T>(&self, db: &Db, lease: &str, fetch: impl FnOnce() -> T) -> T {
        let Some(renewer) = db.sibling() else {
            return fetch();
        };
        let done = &(Mutex::new(false), Condvar::new());
        let every = Duration::from_millis((self.lease_secs * 1000 / 3).max(100) as u64);
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut finished = done.0.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    finished = done
                        .1
                        .wait_timeout(finished, every)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    if *finished {
                        return;
                    }
                    let _ = renewer.claim_lease(lease, &self.instance, self.lease_secs);
                }
            });
            let out = fetch();
            *done.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
            done.1.notify_all();
            out
        })
    }

    /// When to renew a value fetched at `fetched` expiring at `expires`: `refresh_ahead_secs`
    /// before expiry (at most a third of its life), less up to 10% jitter so keys spread out.
    fn refresh_point(&self, fetched: i64, expires: i64) -> i64 {
        let life = expires.saturating_sub(fetched).max(1);
        let ahead = self.refresh_ahead_secs.min(life / 3).max(1);
        let jitter = ids::random_bytes::<2>()
            .map(|b| u16::from_le_bytes(b) as i64)
            .unwrap_or(0)
            % (ahead / 10 + 1);
        expires.saturating_sub(ahead + jitter)
    }

    fn check_force_allowed(&self, db: &Db, key: &Key, now: i64) -> Result<(), Error> {
        let q = db.quota(&key.id(), &utc_day(now))?;
        if q.forced >= FORCE_PER_DAY {
            return Err(Error::Refused(Refusal::ForcePerDay {
                limit: FORCE_PER_DAY,
            }));
        }
        if q.last_forced > 0 && now - q.last_forced < FORCE_MIN_INTERVAL_SECS {
            return Err(Error::Refused(Refusal::ForceTooSoon {
                every_secs: FORCE_MIN_INTERVAL_SECS,
                next_in_secs: FORCE_MIN_INTERVAL_SECS - (now - q.last_forced),
            }));
        }
        Ok(())
    }

    /// One upstream fetch with the retry policy, counted against the quota, stored in SQLite.
    fn fetch_and_store(&self, db: &Db, key: &Key, force: bool) -> Result<Fetched, Error> {
        let id = key.id();
        let now = ids::now();
        let day = utc_day(now);
        if db.quota(&id, &day)?.blocked_until > now {
            return Err(Error::Refused(Refusal::DailyQuota));
        }
        let mut attempt = 0;
        let fetched = loop {
            db.count_upstream(&id, &day, force && attempt == 0, now)?;
            match self.fetch(db, key, force) {
                Err(Error::Upstream(UpstreamError::WeChat {
                    errcode: errcode::SYSTEM_BUSY,
                    ..
                })) if attempt < BUSY_RETRIES => {
                    std::thread::sleep(busy_backoff(attempt));
                    attempt += 1;
                }
                Err(Error::Upstream(UpstreamError::WeChat {
                    errcode: errcode::DAILY_QUOTA_REACHED,
                    errmsg,
                })) => {
                    let midnight = (now.div_euclid(86400) + 1) * 86400;
                    db.block_upstream(&id, &day, midnight)?;
                    return Err(Error::Upstream(UpstreamError::WeChat {
                        errcode: errcode::DAILY_QUOTA_REACHED,
                        errmsg,
                    }));
                }
                other => break other?,
            }
        };
        if fetched.value.is_empty() || fetched.expires_in <= 0 {
            return Err(Error::Upstream(UpstreamError::Garbage));
        }
        let fetched = Fetched {
            expires_in: lifetime(fetched.expires_in),
            ..fetched
        };
        let now = ids::now();
        db.put_credential(&id, &fetched.value, now + fetched.expires_in, now)?;
        Ok(fetched)
    }

    /// The upstream call for one key.
    fn fetch(&self, db: &Db, key: &Key, force: bool) -> Result<Fetched, Error> {
        match key {
            Key::AppToken { appid } => {
                let app = db.app_by_appid(appid)?.ok_or(Error::NoApp)?;
                let v = if self.stable_token {
                    self.wechat.post(
                        Host::Api,
                        urls::STABLE_TOKEN,
                        &[],
                        &json!({"grant_type": "client_credential", "appid": appid, "secret": app.secret.expose(), "force_refresh": force}),
                    )?
                } else {
                    self.wechat.get(
                        Host::Api,
                        urls::TOKEN,
                        &[
                            ("grant_type", "client_credential"),
                            ("appid", appid),
                            ("secret", app.secret.expose()),
                        ],
                    )?
                };
                fetched(&v, "access_token")
            }
            Key::WorkToken { corpid, agentid } => {
                let agent = db
                    .work_agent(corpid, agentid)?
                    .ok_or(Error::NotFound("WeCom agent"))?;
                let v = self.wechat.get(
                    Host::Work,
                    urls::WORK_GETTOKEN,
                    &[("corpid", corpid), ("corpsecret", agent.secret.expose())],
                )?;
                fetched(&v, "access_token")
            }
            Key::AppTicket { .. } | Key::WorkCorpTicket { .. } | Key::WorkAgentTicket { .. } => {
                self.fetch_ticket(db, key)
            }
            Key::ComponentToken { component_appid } => {
                fetch_component_token(self, db, component_appid)
            }
            Key::AuthorizerToken {
                component_appid,
                authorizer_appid,
            } => fetch_authorizer_token(self, db, component_appid, authorizer_appid),
        }
    }

    /// A ticket, fetched with its parent token. When WeChat says that token is stale, the token
    /// is refreshed once (if it is still the current one) and the ticket asked for again.
    fn fetch_ticket(&self, db: &Db, key: &Key) -> Result<Fetched, Error> {
        let parent = key.parent().expect("tickets have a parent token");
        let (host, endpoint, extra): (Host, &str, &[(&str, &str)]) = match key {
            Key::AppTicket { .. } => (Host::Api, urls::TICKET_GETTICKET, &[("type", "jsapi")]),
            Key::WorkCorpTicket { .. } => (Host::Work, urls::WORK_GET_JSAPI_TICKET, &[]),
            _ => (
                Host::Work,
                urls::WORK_TICKET_GET,
                &[("type", "agent_config")],
            ),
        };
        // The broker retries -1 around this whole fetch, so this call does not retry it again.
        let v = self.with_token(db, &parent, false, |wechat, token| {
            let mut query = vec![("access_token", token)];
            query.extend_from_slice(extra);
            wechat.get(host, endpoint, &query)
        })?;
        fetched(&v, "ticket")
    }

    /// Call WeChat with `key`'s current token (`call` gets the client and the token). When
    /// WeChat says the token is stale ([`crate::wechat::Errcode::stale_token`] for the token's host), it is
    /// invalidated once (if still current) and the call made again; a -1 is retried with
    /// back-off when `retry_busy`. Every token-bearing call outside the fetchers goes through here,
    /// the gateway's relay included (its `call` answers WeChat's raw answer, and reports a
    /// stale one as `UpstreamError::WeChat` itself).
    pub fn with_token<T>(
        &self,
        db: &Db,
        key: &Key,
        retry_busy: bool,
        mut call: impl FnMut(&WeChat, &str) -> Result<T, UpstreamError>,
    ) -> Result<T, Error> {
        let (mut refreshed, mut busy) = (false, 0);
        loop {
            let token = self.get(db, key, false)?;
            match call(&self.wechat, token.value.expose()) {
                Ok(v) => return Ok(v),
                Err(UpstreamError::WeChat { errcode, .. })
                    if !refreshed && errcode.stale_token(key.host()) =>
                {
                    refreshed = true;
                    self.invalidate(db, key, token.value.expose())?;
                }
                Err(UpstreamError::WeChat {
                    errcode: errcode::SYSTEM_BUSY,
                    ..
                }) if retry_busy && busy < BUSY_RETRIES => {
                    std::thread::sleep(busy_backoff(busy));
                    busy += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Invalidate-if-current: a caller got "token invalid" with `stale`. Refresh only if `stale`
    /// is still the current value (else someone already did); answer the current credential.
    /// Nearly always a refresh: may wait on WeChat, like [`Broker::get`].
    pub fn invalidate(&self, db: &Db, key: &Key, stale: &str) -> Result<Credential, Error> {
        let entry = self.entry(key);
        let now = ids::now();
        let mut st = lock(&entry.state);
        if !st.loaded {
            drop(st);
            self.get(db, key, false)?;
            st = lock(&entry.state);
        }
        let current = st
            .value
            .as_ref()
            .is_some_and(|v| crate::crypto::ct_eq(v.expose().as_bytes(), stale.as_bytes()));
        if !current {
            if st.refreshing {
                return self.wait_for(&entry, st, now);
            }
            drop(st);
            return self.get(db, key, false);
        }
        if st.refreshing {
            return self.wait_for(&entry, st, now);
        }
        // A refresh of the current token is a forced one (a stable token only changes with
        // force_refresh), so it is held to the same limits as `get(.., force)`.
        self.check_force_allowed(db, key, now)?;
        st.refreshing = true;
        // The value is known bad: forget it, so a failed refresh does not serve it again.
        st.superseded = st.value.take();
        drop(st);
        self.refresh_holding(key, &entry, now, || self.fetch_for(db, key, &entry, true))
    }

    /// Forget every credential whose key starts with `prefix` (a revoked authoriser), stored
    /// and in memory.
    pub fn forget(&self, db: &Db, prefix: &str) -> Result<(), Error> {
        db.delete_credentials_with_prefix(prefix)?;
        self.forget_held(prefix);
        Ok(())
    }

    /// Delete the stored credentials whose key starts with `prefix` inside an accounts change
    /// (an account removed or its secret changed: `accounts`), so that they go with the change
    /// or not at all. Once the change is committed, the caller calls [`Broker::forget_held`].
    pub fn forget_stored(&self, change: &Change, prefix: &str) -> Result<(), store::Error> {
        change.delete_credentials_with_prefix(prefix)?;
        Ok(())
    }

    /// Drop what this process holds in memory under `prefix` (after [`Broker::forget_stored`]'s
    /// change is committed, so that nothing reloads the deleted rows in between).
    pub fn forget_held(&self, prefix: &str) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| !k.id().starts_with(prefix));
    }

    /// Store a credential that arrived with something else (the authoriser token that
    /// `api_query_auth` returns with the code), replacing whatever this process held for it:
    /// the one credential not fetched by [`Broker::get`], still written only here.
    pub fn seed(&self, db: &Db, key: &Key, value: &str, expires_in: i64) -> Result<(), Error> {
        let now = ids::now();
        db.put_credential(&key.id(), value, now + lifetime(expires_in), now)?;
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(key);
        Ok(())
    }

    /// Another process changed the accounts (`accounts::Watch`): read again what this process
    /// holds in memory. A key whose row is gone (its account removed, or its secret changed) is
    /// forgotten, so it is neither served nor renewed; a key whose row another process rewrote
    /// takes the stored value. A key being fetched right now is left to its fetch.
    pub fn reload(&self, db: &Db) -> Result<(), Error> {
        let held: Vec<(Key, Arc<Entry>)> = {
            let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            map.iter().map(|(k, e)| (k.clone(), e.clone())).collect()
        };
        for (key, entry) in held {
            let row = db.credential(&key.id())?;
            let mut st = lock(&entry.state);
            if st.refreshing || !st.loaded {
                continue;
            }
            match row {
                None => {
                    drop(st);
                    let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                    if map.get(&key).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                        map.remove(&key);
                    }
                }
                Some(row) => {
                    let same = st
                        .value
                        .as_ref()
                        .is_some_and(|v| v.expose() == row.value.expose());
                    if !same {
                        st.value = Some(row.value);
                        st.expires_at = row.expires_at;
                        st.fetched_at = row.updated_at;
                        st.refresh_at = self.refresh_point(row.updated_at, row.expires_at);
                    }
                }
            }
        }
        Ok(())
    }

    /// One pass of the background renewal: every key used within the last hour whose refresh
    /// point has passed and which nobody is fetching. Returns how many were renewed.
    pub fn refresh_due(&self, db: &Db) -> usize {
        let now = ids::now();
        if db.is_mysql() {
            self.elect(db, now);
        }
        let due: Vec<(Key, Arc<Entry>)> = {
            let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .filter(|(_, e)| {
                    let st = lock(&e.state);
                    st.value.is_some()
                        && !st.refreshing
                        && now >= st.refresh_at
                        && now - st.last_used < KEEP_WARM_SECS
                })
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect()
        };
        let mut renewed = 0;
        for (key, entry) in due {
            let mut st = lock(&entry.state);
            if st.refreshing || now < st.refresh_at {
                continue;
            }
            st.refreshing = true;
            drop(st);
            let fetch = || self.fetch_for(db, &key, &entry, false);
            if self.refresh_holding(&key, &entry, now, fetch).is_ok() {
                renewed += 1;
            }
        }
        renewed
    }
}

impl Broker {
    /// On a shared database, one instance is the refresher: the holder of the `refresher`
    /// lease, claimed (or renewed) on every pass of the background renewal, so another takes
    /// over within `wechat.lease_secs` when it dies. The refresher takes in every stored
    /// credential it does not hold (every [`ADOPT_EVERY`]) and so renews it ahead of expiry
    /// even if no caller of this instance ever asked for it. The other instances renew only
    /// what their callers use; the per-key lease keeps that to one upstream call.
    fn elect(&self, db: &Db, now: i64) {
        if !db
            .claim_lease(REFRESHER_LEASE, &self.instance, self.lease_secs)
            .unwrap_or(false)
        {
            *self.adopted_at.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return;
        }
        {
            let mut at = self.adopted_at.lock().unwrap_or_else(|e| e.into_inner());
            if at.is_some_and(|t| t.elapsed() < ADOPT_EVERY) {
                return;
            }
            *at = Some(Instant::now());
        }
        let Ok(rows) = db.list_credentials() else {
            return;
        };
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for (id, row) in rows {
            let Some(key) = Key::parse(&id) else {
                continue;
            };
            if map.contains_key(&key) {
                continue;
            }
            let entry = Entry::default();
            {
                let mut st = lock(&entry.state);
                st.loaded = true;
                st.checked = Some(Instant::now());
                st.value = Some(row.value);
                st.expires_at = row.expires_at;
                st.fetched_at = row.updated_at;
                st.refresh_at = self.refresh_point(row.updated_at, row.expires_at);
                st.last_used = now;
            }
            map.insert(key, Arc::new(entry));
        }
    }
}

/// Start the background renewal thread; it stops when `stop` is set.
pub fn spawn_refresher(
    broker: Arc<Broker>,
    db: Db,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("refresher".into())
        .spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                broker.refresh_due(&db);
                // The workers do not checkpoint (Db::no_autocheckpoint): this thread does.
                let _ = db.checkpoint();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
}

/// `{FIELD, expires_in}` from a WeChat answer.
pub fn fetched(v: &Value, field: &str) -> Result<Fetched, Error> {
    match (
        v.get(field).and_then(Value::as_str),
        v.get("expires_in").and_then(Value::as_i64),
    ) {
        (Some(value), Some(expires_in)) if !value.is_empty() && expires_in > 0 => Ok(Fetched {
            value: value.to_string(),
            expires_in,
        }),
        _ => Err(Error::Upstream(UpstreamError::Garbage)),
    }
}

/// A JS-SDK signature over exactly the caller's `noncestr` and `timestamp` when given, else a
/// fresh random nonce and the current time. Returns (nonceStr, timestamp, signature).
pub fn js_signature(
    ticket: &str,
    url: &str,
    noncestr: Option<&str>,
    timestamp: Option<&str>,
) -> Result<(String, String, String), Error> {
    let nonce = match noncestr {
        Some(n) => n.to_string(),
        None => crate::crypto::hex(&ids::random_bytes::<8>()?),
    };
    let ts = timestamp
        .map(str::to_string)
        .unwrap_or_else(|| ids::now().to_string());
    let sig = crate::crypto::jsapi_signature(ticket, &nonce, &ts, url);
    Ok((nonce, ts, sig))
}

// The component's tokens: fetched by the broker, the authoriser's with the component's own
// (so this lives with the broker, not in `component`, which only calls them).

/// Fetch a component access token with the stored verify ticket.
pub fn fetch_component_token(
    broker: &Broker,
    db: &Db,
    component_appid: &str,
) -> Result<Fetched, Error> {
    let c = db
        .component(component_appid)?
        .ok_or(Error::NotFound("component"))?;
    let ticket = c
        .verify_ticket
        .ok_or(Error::Refused(Refusal::NoVerifyTicket))?;
    let v = broker.wechat().post(
        Host::Api,
        urls::COMPONENT_TOKEN,
        &[],
        &json!({
            "component_appid": component_appid,
            "component_appsecret": c.secret.expose(),
            "component_verify_ticket": ticket.expose(),
        }),
    )?;
    fetched(&v, "component_access_token")
}

/// Fetch an authoriser access token with the stored refresh token, and store a rotated refresh
/// token before the new access token is handed to the broker. A revoked authoriser is NotFound.
pub fn fetch_authorizer_token(
    broker: &Broker,
    db: &Db,
    component_appid: &str,
    authorizer_appid: &str,
) -> Result<Fetched, Error> {
    let a = live_authorizer(db, component_appid, authorizer_appid)?;
    // The broker retries -1 around this whole fetch, so this call does not retry it again.
    let v = with_component_token(
        broker,
        db,
        component_appid,
        urls::AUTHORIZER_TOKEN,
        &json!({
            "component_appid": component_appid,
            "authorizer_appid": authorizer_appid,
            "authorizer_refresh_token": a.refresh_token.expose(),
        }),
        false,
    )?;
    if let Some(rotated) = v
        .get("authorizer_refresh_token")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty() && *r != a.refresh_token.expose())
    {
        db.set_refresh_token(component_appid, authorizer_appid, rotated)?;
    }
    fetched(&v, "authorizer_access_token")
}

/// An authoriser of a registered component that has not revoked it: else `NotFound` (naming
/// the component or the authoriser).
pub fn live_authorizer(
    db: &Db,
    component_appid: &str,
    authorizer_appid: &str,
) -> Result<crate::store::Authorizer, Error> {
    db.component(component_appid)?
        .ok_or(Error::NotFound("component"))?;
    db.authorizer(component_appid, authorizer_appid)?
        .filter(|a| a.revoked_at.is_none())
        .ok_or(Error::NotFound("authoriser"))
}

/// A component-token call: `POST path?component_access_token=…`, through
/// [`Broker::with_token`] (a stale token refreshed once; -1 retried when `retry_busy`).
pub fn with_component_token(
    broker: &Broker,
    db: &Db,
    component_appid: &str,
    endpoint: &str,
    body: &Value,
    retry_busy: bool,
) -> Result<Value, Error> {
    let key = Key::ComponentToken {
        component_appid: component_appid.to_string(),
    };
    broker.with_token(db, &key, retry_busy, |wechat, token| {
        wechat.post(
            Host::Api,
            endpoint,
            &[("component_access_token", token)],
            body,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_back_from_its_id() {
        let (a, b) = (|| "wxa".to_string(), || "1002".to_string());
        for key in [
            Key::AppToken { appid: a() },
            Key::AppTicket { appid: a() },
            Key::WorkToken {
                corpid: a(),
                agentid: b(),
            },
            Key::WorkCorpTicket {
                corpid: a(),
                agentid: b(),
            },
            Key::WorkAgentTicket {
                corpid: a(),
                agentid: b(),
            },
            Key::ComponentToken {
                component_appid: a(),
            },
            Key::AuthorizerToken {
                component_appid: a(),
                authorizer_appid: b(),
            },
        ] {
            assert_eq!(Key::parse(&key.id()), Some(key.clone()), "{}", key.id());
        }
        for junk in [
            "",
            "app",
            "app/x",
            "app/x/other",
            "work/a/b/c/d",
            "component/x/y",
        ] {
            assert_eq!(Key::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn a_refresh_that_panics_leaves_the_key_to_the_next_caller() {
        // A fetch that panics (the upstream pool catches it and goes on) must not leave the
        // key marked as being fetched: its waiters would wait out the whole wait limit and
        // every later caller with them, for as long as the process lives.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.db");
        let cfg = crate::config::WeChatConfig {
            api_base: "http://127.0.0.1:9".into(),
            work_api_base: "http://127.0.0.1:9".into(),
            timeout_ms: 200,
            ..Default::default()
        };
        let broker = Arc::new(Broker::new(
            Arc::new(WeChat::new(&cfg)),
            Arc::new(Metrics::default()),
            &cfg,
        ));
        // No such app: a caller that fetches gets `NoApp` at once, without calling WeChat.
        let key = Key::AppToken {
            appid: "wxnosuchapp".into(),
        };
        let entry = broker.entry(&key);
        lock(&entry.state).refreshing = true;
        let waiter = {
            let (broker, key, path) = (broker.clone(), key.clone(), path.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let got = broker.get(&Db::open(&path).unwrap(), &key, false);
                (got.err(), started.elapsed())
            })
        };
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            broker.refresh_holding(&key, &entry, ids::now(), || {
                std::thread::sleep(Duration::from_millis(300));
                panic!("a fetch that panics");
            })
        }));
        assert!(panicked.is_err());
        let (err, waited) = waiter.join().unwrap();
        assert!(
            waited < Duration::from_secs(2),
            "a caller waiting on the refresh waited {waited:?} ({err:?})"
        );
        let started = Instant::now();
        let got = broker.get(&Db::open(&path).unwrap(), &key, false);
        assert!(
            matches!(got, Err(Error::NoApp)),
            "the next caller got {:?} after {:?}",
            got.err(),
            started.elapsed()
        );
    }

    #[test]
    fn upstream_lifetimes_are_clamped() {
        for (given, kept) in [
            (1, 1),
            (300, 300),
            (7200, 7200),
            (2 * 86400, MAX_LIFETIME_SECS),
            (i64::MAX, MAX_LIFETIME_SECS),
        ] {
            assert_eq!(lifetime(given), kept, "{given}");
        }
    }
}
