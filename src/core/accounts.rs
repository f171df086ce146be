//! The accounts: the apps, WeCom agents and Open Platform components wafer hosts. The only code
//! that registers, changes or removes one (the CLI, the configuration applied at start and the
//! envelope's `qcloud.work.initagent` all call it), and so the only place that decides when an
//! account's credentials go: when it is new, removed, or its secret changed, through
//! `Broker::forget_stored` (the broker stays the only writer of credentials).
//!
//! Each change is one transaction (`change`): the account written, its stale credentials
//! deleted and the database's accounts generation bumped commit together or not at all, so a
//! failure half-way leaves neither a new secret beside its old token nor a change that no other
//! process hears of. Every serving process polls the generation
//! ([`spawn_watch`]: its own thread and connection, every 200 ms) and on a change reloads what
//! its broker holds in memory, so a change another process made (the CLI today) is seen within
//! a second.
//!
//! Lookups for the handlers (`app`, `work_agent`, `component`) answer the domain error the
//! dialects render (`NoApp`, `NotFound`), so that no handler reads the database itself.

use crate::config::Config;
use crate::core::credential::{Broker, Key};
use crate::core::error::Error;
use crate::secret::Secret;
use crate::store::{self, App, AppUpsert, Change, Component, ComponentUpsert, Db, WorkAgent};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A registered app, or `NoApp`.
pub fn app(db: &Db, appid: &str) -> Result<App, Error> {
    db.app_by_appid(appid)?.ok_or(Error::NoApp)
}

/// A registered WeCom agent, or `NotFound`.
pub fn work_agent(db: &Db, corpid: &str, agentid: &str) -> Result<WorkAgent, Error> {
    db.work_agent(corpid, agentid)?
        .ok_or(Error::NotFound("WeCom agent"))
}

/// A registered component, or `NotFound`.
pub fn component(db: &Db, appid: &str) -> Result<Component, Error> {
    db.component(appid)?.ok_or(Error::NotFound("component"))
}

/// Register or update an app. Its token and ticket go when it is new or its secret changed.
pub fn save_app(db: &Db, broker: &Broker, a: &AppUpsert, now: i64) -> Result<App, Error> {
    change(db, broker, |ch| {
        let before = ch.app(&a.appid)?;
        let app = ch.upsert_app(a, now)?;
        let rekeyed = before.is_none_or(|b| b.secret != a.secret);
        Ok((app, rekeyed.then(|| Key::app_prefix(&a.appid))))
    })
}

/// Remove an app with its users, sessions and credentials. False when there was no such app.
pub fn remove_app(db: &Db, broker: &Broker, appid: &str) -> Result<bool, Error> {
    change(db, broker, |ch| {
        let removed = ch.remove_app(appid)?;
        Ok((removed, removed.then(|| Key::app_prefix(appid))))
    })
}

/// Register or update a WeCom agent. Its tokens and tickets go when it is new or its secret
/// changed.
pub fn save_work_agent(db: &Db, broker: &Broker, a: &WorkAgent, now: i64) -> Result<(), Error> {
    change(db, broker, |ch| {
        let before = ch.work_agent(&a.corpid, &a.agentid)?;
        ch.upsert_work_agent(a, now)?;
        let rekeyed = before.is_none_or(|b| b.secret != a.secret);
        Ok((
            (),
            rekeyed.then(|| Key::work_agent_prefix(&a.corpid, &a.agentid)),
        ))
    })
}

/// Remove a WeCom agent with its credentials. False when there was no such agent.
pub fn remove_work_agent(
    db: &Db,
    broker: &Broker,
    corpid: &str,
    agentid: &str,
) -> Result<bool, Error> {
    change(db, broker, |ch| {
        let removed = ch.remove_work_agent(corpid, agentid)?;
        Ok((
            removed,
            removed.then(|| Key::work_agent_prefix(corpid, agentid)),
        ))
    })
}

/// Register or update a component. Its component token goes when it is new or its secret
/// changed (its authorisers keep theirs: they were granted to the component, not the secret).
pub fn save_component(
    db: &Db,
    broker: &Broker,
    c: &ComponentUpsert,
    now: i64,
) -> Result<(), Error> {
    change(db, broker, |ch| {
        let before = ch.component(&c.appid)?;
        ch.upsert_component(c, now)?;
        let rekeyed = before.is_none_or(|b| b.secret != c.secret);
        let key = Key::ComponentToken {
            component_appid: c.appid.clone(),
        };
        Ok(((), rekeyed.then(|| key.id())))
    })
}

/// One accounts change as one transaction (`Db::change_accounts`): `write` writes the account
/// and answers its value and the prefix of the credentials it makes stale, if any; the broker
/// deletes those in the same transaction, which also bumps the accounts generation for every
/// process serving this database ([`Watch`]). A failure anywhere leaves nothing of it behind.
/// Once it is committed, this process drops what it holds under the prefix.
fn change<T>(
    db: &Db,
    broker: &Broker,
    mut write: impl FnMut(&Change) -> store::Result<(T, Option<String>)>,
) -> Result<T, Error> {
    let (value, stale) = db.change_accounts(|ch| {
        let (value, stale) = write(ch)?;
        if let Some(prefix) = &stale {
            broker.forget_stored(ch, prefix)?;
        }
        Ok((value, stale))
    })?;
    if let Some(prefix) = stale {
        broker.forget_held(&prefix);
    }
    Ok(value)
}

/// Declared EncodingAESKeys (current and previous) must be 43 characters. Checked at start-up
/// rather than in `Config::validate`, so the example file's placeholders still validate; a real
/// start-up refuses a key that could never decrypt anything (a malformed previous key would
/// otherwise make every safe-mode message fail, the current key's included).
fn encoding_keys_ok(kind: &str, id: &str, keys: &[Option<&Secret>]) -> Result<(), String> {
    if keys.iter().flatten().any(|k| k.expose().len() != 43) {
        return Err(format!(
            "{kind}.aes_key ({id}): an EncodingAESKey is 43 characters"
        ));
    }
    Ok(())
}

/// Apply the apps, components and WeCom agents declared in the configuration (`[[app]]`,
/// `[[component]]`, `[[work_agent]]`), as `wafer serve` does at start. Errors name the entry.
pub fn apply_config(db: &Db, broker: &Broker, config: &Config, now: i64) -> Result<(), String> {
    for a in &config.apps {
        encoding_keys_ok(
            "app",
            &a.appid,
            &[a.aes_key.as_ref(), a.prev_aes_key.as_ref()],
        )?;
        let upsert = AppUpsert {
            appid: a.appid.clone(),
            secret: a.secret.clone(),
            kind: Some(a.kind.clone()),
            title: Some(a.title.clone()),
            login_days: Some(a.login_days),
            session_secs: Some(a.session_secs),
            token: a.token.clone(),
            aes_key: a.aes_key.clone(),
            prev_aes_key: a.prev_aes_key.clone(),
            forward_url: a.forward_url.clone(),
        };
        save_app(db, broker, &upsert, now).map_err(|e| format!("config app {}: {e}", a.appid))?;
    }
    for c in &config.components {
        encoding_keys_ok(
            "component",
            &c.appid,
            &[Some(&c.aes_key), c.prev_aes_key.as_ref()],
        )?;
        let upsert = ComponentUpsert {
            appid: c.appid.clone(),
            secret: c.secret.clone(),
            token: c.token.clone(),
            aes_key: c.aes_key.clone(),
            prev_aes_key: c.prev_aes_key.clone(),
            redirect_uri: c.redirect_uri.clone(),
            forward_url: c.forward_url.clone(),
        };
        save_component(db, broker, &upsert, now)
            .map_err(|e| format!("config component {}: {e}", c.appid))?;
    }
    for a in &config.work_agents {
        let id = format!("{}/{}", a.corpid, a.agentid);
        encoding_keys_ok(
            "work_agent",
            &id,
            &[a.aes_key.as_ref(), a.prev_aes_key.as_ref()],
        )?;
        let agent = WorkAgent {
            corpid: a.corpid.clone(),
            agentid: a.agentid.clone(),
            secret: a.secret.clone(),
            remark: a.remark.clone(),
            token: a.token.clone(),
            aes_key: a.aes_key.clone(),
            prev_aes_key: a.prev_aes_key.clone(),
            forward_url: a.forward_url.clone(),
        };
        save_work_agent(db, broker, &agent, now)
            .map_err(|e| format!("config work_agent {id}: {e}"))?;
    }
    Ok(())
}

/// How often a serving process reads the accounts generation ([`spawn_watch`]).
pub const WATCH_EVERY: Duration = Duration::from_millis(200);

/// Start the thread that notices changes to the accounts ([`Watch`], every [`WATCH_EVERY`], on
/// its own connection, so that a renewal waiting on WeChat cannot delay it): on a change the
/// broker reloads what it holds and `on_change` forgets whatever else the server remembers
/// about accounts. It stops when `stop` is set.
pub fn spawn_watch(
    db: Db,
    broker: Arc<Broker>,
    stop: Arc<AtomicBool>,
    on_change: impl Fn() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut watch = Watch::new(&db).map_err(std::io::Error::other)?;
    std::thread::Builder::new()
        .name("accounts-watch".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if watch.poll(&db, &broker) {
                    on_change();
                }
                std::thread::sleep(WATCH_EVERY);
            }
        })
}

/// How a serving process notices a change to the accounts made by another (or by itself): the
/// accounts generation, read each time [`Watch::poll`] is called.
pub struct Watch {
    seen: i64,
}

impl Watch {
    /// Start from the generation the database has now.
    pub fn new(db: &Db) -> Result<Watch, Error> {
        Ok(Watch {
            seen: db.accounts_generation()?,
        })
    }

    /// True when the accounts changed since the last poll; the broker has then reloaded what it
    /// holds in memory (removed accounts' and changed secrets' credentials forgotten). The
    /// caller forgets whatever else it remembers about accounts.
    pub fn poll(&mut self, db: &Db, broker: &Broker) -> bool {
        let Ok(now) = db.accounts_generation() else {
            return false;
        };
        if now == self.seen {
            return false;
        }
        if let Err(e) = broker.reload(db) {
            // Tried again at the next poll.
            log::warn!("wafer: reloading credentials after an accounts change: {e}");
            return false;
        }
        self.seen = now;
        true
    }
}
