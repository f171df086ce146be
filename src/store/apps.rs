//! The `apps` table: mini programs and official accounts, with their secrets and callback keys.

use super::sql::{args, Row, Sql};
use super::{next_prev_aes_key, Change, Db, Result};
use crate::secret::Secret;

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

impl Change<'_, '_> {
    /// The app as it is inside the change.
    pub fn app(&self, appid: &str) -> Result<Option<App>> {
        self.db.app_on(self.sql, appid)
    }

    /// Insert or update an app (the credentials it makes stale are the broker's to delete, in
    /// the same change).
    pub fn upsert_app(&self, a: &AppUpsert, now: i64) -> Result<App> {
        let (db, c) = (self.db, self.sql);
        let secret = db.seal("apps.secret", a.secret.expose())?;
        let token = db.seal_opt("apps.token", a.token.as_ref().map(Secret::expose))?;
        let aes_key = db.seal_opt("apps.aes_key", a.aes_key.as_ref().map(Secret::expose))?;
        let select = format!("SELECT {APP_COLUMNS} FROM apps WHERE appid = ?1");
        let stored = c.row(&select, args![&a.appid], |r| db.app_from_row(r))?;
        let prev = next_prev_aes_key(a.prev_aes_key.as_ref(), a.aes_key.as_ref(), stored.as_ref());
        let prev = db.seal_opt("apps.prev_aes_key", prev.as_ref().map(Secret::expose))?;
        c.exec(
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
            args![
                &a.appid,
                &secret,
                a.kind.as_ref(),
                a.title.as_ref(),
                a.login_days,
                a.session_secs,
                token.as_ref(),
                aes_key.as_ref(),
                a.forward_url.as_ref(),
                now,
                prev.as_ref(),
            ],
        )?;
        c.row(&select, args![&a.appid], |r| db.app_from_row(r))?
            .ok_or_else(|| super::store_error("the app just written is not there"))
    }

    /// Remove an app with its users and sessions (cascade). False when there was no such app.
    pub fn remove_app(&self, appid: &str) -> Result<bool> {
        Ok(self
            .sql
            .exec("DELETE FROM apps WHERE appid = ?1", args![appid])?
            > 0)
    }
}

impl Db {
    fn app_from_row(&self, r: &Row) -> Result<App> {
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
        self.run(|c| self.app_on(c, appid))
    }

    fn app_on(&self, c: &Sql, appid: &str) -> Result<Option<App>> {
        c.row(
            &format!("SELECT {APP_COLUMNS} FROM apps WHERE appid = ?1"),
            args![appid],
            |r| self.app_from_row(r),
        )
    }

    pub fn app_by_id(&self, id: i64) -> Result<Option<App>> {
        self.row(
            &format!("SELECT {APP_COLUMNS} FROM apps WHERE id = ?1"),
            args![id],
            |r| self.app_from_row(r),
        )
    }

    /// The mini-program app when exactly one is registered (the single-app fallback).
    pub fn sole_miniprogram_app(&self) -> Result<Option<App>> {
        let apps = self.rows(
            &format!("SELECT {APP_COLUMNS} FROM apps WHERE kind = 'miniprogram' LIMIT 2"),
            &[],
            |r| self.app_from_row(r),
        )?;
        Ok(if apps.len() == 1 {
            apps.into_iter().next()
        } else {
            None
        })
    }

    pub fn list_apps(&self) -> Result<Vec<App>> {
        self.rows(
            &format!("SELECT {APP_COLUMNS} FROM apps ORDER BY id"),
            &[],
            |r| self.app_from_row(r),
        )
    }
}
