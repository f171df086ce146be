//! The `components` and `authorizers` tables: Open Platform components (secret, callback keys,
//! verify ticket, pre-auth code, the last 60 s of `api_query_auth` calls) and the accounts that
//! authorised them (refresh token, scopes, authorisation and revocation times).

use super::sql::{args, Row, Sql};
use super::{next_prev_aes_key, Change, Db, Result};
use crate::secret::Secret;

/// An Open Platform component as registered (`component add`, `[[component]]`).
#[derive(Debug, Clone)]
pub struct Component {
    pub appid: String,
    pub secret: Secret,
    pub token: Secret,
    pub aes_key: Secret,
    pub prev_aes_key: Option<Secret>,
    pub redirect_uri: Option<String>,
    /// Where the authorisation events are relayed (as JSON), if anywhere.
    pub forward_url: Option<String>,
    /// The last `component_verify_ticket` WeChat pushed, and when.
    pub verify_ticket: Option<Secret>,
    pub ticket_at: Option<i64>,
}

/// What `component add` and `[[component]]` write. A changed `aes_key` moves the stored one to
/// `prev_aes_key` (unless one is given), so messages in flight during a rotation still open.
#[derive(Debug, Clone)]
pub struct ComponentUpsert {
    pub appid: String,
    pub secret: Secret,
    pub token: Secret,
    pub aes_key: Secret,
    pub prev_aes_key: Option<Secret>,
    pub redirect_uri: Option<String>,
    pub forward_url: Option<String>,
}

/// An account that authorised a component.
#[derive(Debug, Clone)]
pub struct Authorizer {
    pub component_appid: String,
    pub authorizer_appid: String,
    pub refresh_token: Secret,
    /// JSON as WeChat sent it.
    pub func_info: String,
    pub authorized_at: i64,
    pub revoked_at: Option<i64>,
    /// WeChat's `authorizer_info` (JSON), once a fetch succeeded.
    pub info: Option<String>,
}

const COMPONENT_COLUMNS: &str =
    "appid, secret, token, aes_key, prev_aes_key, redirect_uri, verify_ticket, ticket_at, forward_url";

/// How often [`Db::count_query_auth`] reads and tries again when another caller changed the
/// times in between.
const QUERY_AUTH_TRIES: usize = 8;

/// The call times `held` (`components.query_auth_times`) with one at `now` added and those 60 s
/// or more before it gone; `None` when `per_minute` remain.
fn query_auth_times_with(held: &str, now: i64, per_minute: i64) -> Option<String> {
    let mut times: Vec<i64> = held
        .split_ascii_whitespace()
        .filter_map(|t| t.parse().ok())
        .filter(|&t| t > now.saturating_sub(60))
        .collect();
    if i64::try_from(times.len()).unwrap_or(i64::MAX) >= per_minute {
        return None;
    }
    times.push(now);
    Some(
        times
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

const AUTHORIZER_COLUMNS: &str =
    "component_appid, authorizer_appid, refresh_token, func_info, authorized_at, revoked_at, info";

impl Db {
    // ---- Open Platform components ----

    fn component_from_row(&self, r: &Row) -> Result<Component> {
        Ok(Component {
            appid: r.get(0)?,
            secret: self.secret("components.secret", r, 1)?,
            token: self.secret("components.token", r, 2)?,
            aes_key: self.secret("components.aes_key", r, 3)?,
            prev_aes_key: self.secret_opt("components.prev_aes_key", r, 4)?,
            redirect_uri: r.get(5)?,
            verify_ticket: self.secret_opt("components.verify_ticket", r, 6)?,
            ticket_at: r.get(7)?,
            forward_url: r.get(8)?,
        })
    }

    fn authorizer_from_row(&self, r: &Row) -> Result<Authorizer> {
        Ok(Authorizer {
            component_appid: r.get(0)?,
            authorizer_appid: r.get(1)?,
            refresh_token: self.secret("authorizers.refresh_token", r, 2)?,
            func_info: r.get(3)?,
            authorized_at: r.get(4)?,
            revoked_at: r.get(5)?,
            info: r.get(6)?,
        })
    }

    pub fn component(&self, appid: &str) -> Result<Option<Component>> {
        self.run(|c| self.component_on(c, appid))
    }

    fn component_on(&self, c: &Sql, appid: &str) -> Result<Option<Component>> {
        c.row(
            &format!("SELECT {COMPONENT_COLUMNS} FROM components WHERE appid = ?1"),
            args![appid],
            |r| self.component_from_row(r),
        )
    }

    pub fn list_components(&self) -> Result<Vec<Component>> {
        self.rows(
            &format!("SELECT {COMPONENT_COLUMNS} FROM components ORDER BY appid"),
            &[],
            |r| self.component_from_row(r),
        )
    }

    /// Keep the ticket WeChat just pushed, made at `created` (its `CreateTime`), unless the
    /// stored one is newer. False when nothing changed (no such component, or a newer ticket).
    pub fn set_verify_ticket(&self, appid: &str, ticket: &str, created: i64) -> Result<bool> {
        let ticket = self.seal("components.verify_ticket", ticket)?;
        Ok(self.exec(
            "UPDATE components SET verify_ticket = ?2, ticket_at = ?3
             WHERE appid = ?1 AND (ticket_at IS NULL OR ticket_at <= ?3)",
            args![appid, &ticket, created],
        )? > 0)
    }

    /// The stored pre-auth code and its expiry (unix seconds), if any.
    pub fn pre_auth_code(&self, appid: &str) -> Result<Option<(String, i64)>> {
        Ok(self
            .row(
                "SELECT pre_auth_code, pre_auth_expires_at FROM components WHERE appid = ?1",
                args![appid],
                |r| Ok(r.get::<Option<String>>(0)?.zip(r.get::<Option<i64>>(1)?)),
            )?
            .flatten())
    }

    pub fn set_pre_auth_code(&self, appid: &str, code: &str, expires_at: i64) -> Result<()> {
        self.exec(
            "UPDATE components SET pre_auth_code = ?2, pre_auth_expires_at = ?3 WHERE appid = ?1",
            args![appid, code, expires_at],
        )?;
        Ok(())
    }

    /// Forget the stored pre-auth code: only if it is `code` when one is given.
    pub fn forget_pre_auth_code(&self, appid: &str, code: Option<&str>) -> Result<()> {
        self.exec(
            "UPDATE components SET pre_auth_code = NULL, pre_auth_expires_at = NULL
             WHERE appid = ?1 AND (?2 IS NULL OR pre_auth_code = ?2)",
            args![appid, code],
        )?;
        Ok(())
    }

    /// Count one `api_query_auth` call at `now`, if fewer than `per_minute` were counted in the
    /// 60 s up to it (after `now - 60`): a sliding window, so no 60 s, across a clock minute's
    /// edge or not, holds more. False when they are used up (or there is no such component).
    /// The times are one column, read and then replaced only if unchanged, so concurrent
    /// callers (other instances included) cannot both take the last call; one that keeps
    /// losing that race is refused.
    pub fn count_query_auth(&self, appid: &str, now: i64, per_minute: i64) -> Result<bool> {
        for _ in 0..QUERY_AUTH_TRIES {
            let Some(held) = self.row(
                "SELECT query_auth_times FROM components WHERE appid = ?1",
                args![appid],
                |r| r.get::<String>(0),
            )?
            else {
                return Ok(false);
            };
            let Some(next) = query_auth_times_with(&held, now, per_minute) else {
                return Ok(false);
            };
            if self.exec(
                "UPDATE components SET query_auth_times = ?3
                 WHERE appid = ?1 AND query_auth_times = ?2",
                args![appid, held.as_str(), next.as_str()],
            )? > 0
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Record an authorisation (new, renewed or re-granted after a revocation): the refresh
    /// token and the function scopes, in one statement.
    pub fn upsert_authorizer(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
        refresh_token: &str,
        func_info: &str,
        now: i64,
    ) -> Result<()> {
        let refresh_token = self.seal("authorizers.refresh_token", refresh_token)?;
        self.exec(
            "INSERT INTO authorizers (component_appid, authorizer_appid, refresh_token, func_info, authorized_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (component_appid, authorizer_appid) DO UPDATE SET
               refresh_token = ?3, func_info = ?4, authorized_at = ?5, revoked_at = NULL",
            args![component_appid, authorizer_appid, &refresh_token, func_info, now],
        )?;
        Ok(())
    }

    pub fn authorizer(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<Option<Authorizer>> {
        self.row(
            &format!(
                "SELECT {AUTHORIZER_COLUMNS} FROM authorizers
                 WHERE component_appid = ?1 AND authorizer_appid = ?2"
            ),
            args![component_appid, authorizer_appid],
            |r| self.authorizer_from_row(r),
        )
    }

    /// The authorisers of a component that have not revoked it, oldest first.
    pub fn list_authorizers(&self, component_appid: &str) -> Result<Vec<Authorizer>> {
        self.rows(
            &format!(
                "SELECT {AUTHORIZER_COLUMNS} FROM authorizers
                 WHERE component_appid = ?1 AND revoked_at IS NULL
                 ORDER BY authorized_at, authorizer_appid"
            ),
            args![component_appid],
            |r| self.authorizer_from_row(r),
        )
    }

    /// Store an authoriser's profile (`api_get_authorizer_info`'s `authorizer_info`, JSON).
    pub fn set_authorizer_info(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
        info: &str,
    ) -> Result<()> {
        self.exec(
            "UPDATE authorizers SET info = ?3 WHERE component_appid = ?1 AND authorizer_appid = ?2",
            args![component_appid, authorizer_appid, info],
        )?;
        Ok(())
    }

    /// Store a rotated refresh token (only for a live authorisation).
    pub fn set_refresh_token(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
        refresh_token: &str,
    ) -> Result<()> {
        let refresh_token = self.seal("authorizers.refresh_token", refresh_token)?;
        self.exec(
            "UPDATE authorizers SET refresh_token = ?3
             WHERE component_appid = ?1 AND authorizer_appid = ?2 AND revoked_at IS NULL",
            args![component_appid, authorizer_appid, &refresh_token],
        )?;
        Ok(())
    }

    /// Mark an authorisation revoked by an event made at `created`. False when there was no
    /// live one, or it was authorised after `created` (the same second still revokes).
    pub fn revoke_authorizer(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
        created: i64,
        now: i64,
    ) -> Result<bool> {
        Ok(self.exec(
            "UPDATE authorizers SET revoked_at = ?4
             WHERE component_appid = ?1 AND authorizer_appid = ?2 AND revoked_at IS NULL
               AND authorized_at <= ?3",
            args![component_appid, authorizer_appid, created, now],
        )? > 0)
    }
}

impl Change<'_, '_> {
    /// The component as it is inside the change.
    pub fn component(&self, appid: &str) -> Result<Option<Component>> {
        self.db.component_on(self.sql, appid)
    }

    /// Insert or update a component (the credentials it makes stale are the broker's to delete,
    /// in the same change).
    pub fn upsert_component(&self, c: &ComponentUpsert, now: i64) -> Result<()> {
        let (db, sql) = (self.db, self.sql);
        let secret = db.seal("components.secret", c.secret.expose())?;
        let token = db.seal("components.token", c.token.expose())?;
        let aes_key = db.seal("components.aes_key", c.aes_key.expose())?;
        let stored = db.component_on(sql, &c.appid)?;
        let prev = next_prev_aes_key(c.prev_aes_key.as_ref(), Some(&c.aes_key), stored.as_ref());
        let prev = db.seal_opt("components.prev_aes_key", prev.as_ref().map(Secret::expose))?;
        sql.exec(
            "INSERT INTO components (appid, secret, token, aes_key, prev_aes_key, redirect_uri, created_at, forward_url)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (appid) DO UPDATE SET secret = ?2, token = ?3,
               prev_aes_key = ?5,
               aes_key = ?4,
               redirect_uri = COALESCE(?6, redirect_uri),
               forward_url = COALESCE(?8, forward_url)",
            args![
                &c.appid,
                &secret,
                &token,
                &aes_key,
                prev.as_ref(),
                c.redirect_uri.as_ref(),
                now,
                c.forward_url.as_ref()
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::db;

    #[test]
    fn query_auth_calls_are_bounded_in_every_60_seconds() {
        let (_dir, db) = db();
        let c = ComponentUpsert {
            appid: "wxc".into(),
            secret: Secret::new("s"),
            token: Secret::new("t"),
            aes_key: Secret::new("k"),
            prev_aes_key: None,
            redirect_uri: None,
            forward_url: None,
        };
        db.change_accounts(|ch| ch.upsert_component(&c, 0)).unwrap();
        let allowed = |now| {
            (0..5)
                .filter(|_| db.count_query_auth("wxc", now, 3).unwrap())
                .count()
        };
        // The last second of a clock minute, then the first of the next: the bound is over
        // any 60 s, not per clock minute (which let twice the bound through across the edge).
        assert_eq!(allowed(659), 3);
        assert_eq!(allowed(660), 0, "a new clock minute, 1 s later");
        assert_eq!(allowed(718), 0, "59 s later");
        assert_eq!(allowed(719), 3, "60 s later");
        // One at a time: each leaves the window 60 s after it was made.
        let one = |now| db.count_query_auth("wxc", now, 3).unwrap();
        assert!(one(779) && one(790) && one(800) && !one(810));
        assert!(!one(838) && one(839) && !one(849) && one(850));
        assert!(!db.count_query_auth("wxnone", 660, 3).unwrap());
    }
}
