//! The `apps` table: mini programs and official accounts, with their secrets and callback keys.

use super::{next_prev_aes_key, Db, Error, Result};
use crate::config::Secret;
use rusqlite::{params, OptionalExtension, TransactionBehavior};

#[derive(Debug, Clone)]
pub struct App {
    pub id: i64,
    pub appid: String,
    pub secret: Secret,
    pub kind: String,
    pub title: String,
    pub login_days: i64,
    pub session_secs: i64,
    pub token: Option<Secret>,
    pub aes_key: Option<Secret>,
    pub prev_aes_key: Option<Secret>,
    pub forward_url: Option<String>,
}

/// What `app add` and `[[app]]` write; `None` keeps the stored value on update.
#[derive(Debug, Clone, Default)]
pub struct AppUpsert {
    pub appid: String,
    pub secret: Secret,
    pub kind: Option<String>,
    pub title: Option<String>,
    pub login_days: Option<i64>,
    pub session_secs: Option<i64>,
    pub token: Option<Secret>,
    pub aes_key: Option<Secret>,
    /// The previous EncodingAESKey, set explicitly (`[[app]] prev_aes_key`). Without it, a
    /// changed `aes_key` makes the stored one the previous key.
    pub prev_aes_key: Option<Secret>,
    pub forward_url: Option<String>,
}

const APP_COLUMNS: &str =
    "id, appid, secret, kind, title, login_days, session_secs, token, aes_key, prev_aes_key, forward_url";

impl Db {
    /// Insert or update an app (its credentials are `accounts`' to forget).
    pub fn upsert_app(&self, a: &AppUpsert, now: i64) -> Result<App> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let stored = self.app_by_appid(&a.appid)?;
        let prev = next_prev_aes_key(a.prev_aes_key.as_ref(), a.aes_key.as_ref(), stored.as_ref());
        tx.execute(
            "INSERT INTO apps (appid, secret, kind, title, login_days, session_secs, token, aes_key, forward_url, created_at, prev_aes_key)
             VALUES (?1, ?2, COALESCE(?3, 'miniprogram'), COALESCE(?4, ''), COALESCE(?5, 30), COALESCE(?6, 2592000), ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (appid) DO UPDATE SET
               secret = excluded.secret,
               kind = COALESCE(?3, kind),
               title = COALESCE(?4, title),
               login_days = COALESCE(?5, login_days),
               session_secs = COALESCE(?6, session_secs),
               token = COALESCE(?7, token),
               prev_aes_key = ?11,
               aes_key = COALESCE(?8, aes_key),
               forward_url = COALESCE(?9, forward_url)",
            params![
                a.appid,
                self.seal("apps.secret", a.secret.expose())?,
                a.kind,
                a.title,
                a.login_days,
                a.session_secs,
                self.seal_opt("apps.token", a.token.as_ref().map(Secret::expose))?,
                self.seal_opt("apps.aes_key", a.aes_key.as_ref().map(Secret::expose))?,
                a.forward_url,
                now,
                self.seal_opt("apps.prev_aes_key", prev.as_ref().map(Secret::expose))?,
            ],
        )?;
        let app = self
            .app_by_appid(&a.appid)?
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        tx.commit()?;
        Ok(app)
    }

    fn app_from_row(&self, r: &rusqlite::Row) -> rusqlite::Result<App> {
        Ok(App {
            id: r.get(0)?,
            appid: r.get(1)?,
            secret: self.secret("apps.secret", r, 2)?,
            kind: r.get(3)?,
            title: r.get(4)?,
            login_days: r.get(5)?,
            session_secs: r.get(6)?,
            token: self.secret_opt("apps.token", r, 7)?,
            aes_key: self.secret_opt("apps.aes_key", r, 8)?,
            prev_aes_key: self.secret_opt("apps.prev_aes_key", r, 9)?,
            forward_url: r.get(10)?,
        })
    }

    pub fn app_by_appid(&self, appid: &str) -> Result<Option<App>> {
        self.conn
            .prepare_cached(&format!("SELECT {APP_COLUMNS} FROM apps WHERE appid = ?1"))?
            .query_row([appid], |r| self.app_from_row(r))
            .optional()
            .map_err(Error::from)
    }

    pub fn app_by_id(&self, id: i64) -> Result<Option<App>> {
        self.conn
            .prepare_cached(&format!("SELECT {APP_COLUMNS} FROM apps WHERE id = ?1"))?
            .query_row([id], |r| self.app_from_row(r))
            .optional()
            .map_err(Error::from)
    }

    /// The mini-program app when exactly one is registered (the single-app fallback).
    pub fn sole_miniprogram_app(&self) -> Result<Option<App>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE kind = 'miniprogram' LIMIT 2"
        ))?;
        let apps = stmt
            .query_map([], |r| self.app_from_row(r))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(if apps.len() == 1 {
            apps.into_iter().next()
        } else {
            None
        })
    }

    pub fn list_apps(&self) -> Result<Vec<App>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {APP_COLUMNS} FROM apps ORDER BY id"))?;
        let apps = stmt
            .query_map([], |r| self.app_from_row(r))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(apps)
    }

    /// Remove an app with its users and sessions (cascade). False when there was no such app.
    pub fn remove_app(&self, appid: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM apps WHERE appid = ?1", [appid])?
            > 0)
    }
}
