//! The `users` and `sessions` tables: logins, session checks (the slide), revocation, user data
//! and the purge of expired sessions. Session writes take this process's turn
//! (`SESSION_WRITES`) before SQLite's lock.
//!
//! Slides are written behind on SQLite: a check's slide of `last_visit` is recorded in the
//! server's [`Slides`] (memory) and written with all the others pending in one transaction
//! ([`Db::flush_slides`], about every second, or at once when [`SLIDES_FLUSH_AT`] are pending),
//! so a million users coming back cost a commit a second, not one per check. A crash loses at
//! most the batch pending (a second of `last_visit` updates), never a session: the flush only
//! ever moves `last_visit` forward on a row still there, and the purge leaves a session idle
//! for less than [`SLIDE_GRACE_SECS`] past its window alone. On MySQL slides are written at
//! once: several instances share the database and must see each other's slides.

use super::sql::{args, Sql};
use super::{Db, Result, SESSION_WRITES};
use crate::secret::Secret;
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Pending slides that make the flusher write them at once rather than at its next tick.
pub const SLIDES_FLUSH_AT: usize = 16_384;
/// Pending slides held at most: past this (the flushes failing: the database locked or full),
/// new slides are dropped (the session's next check slides it again).
pub const SLIDES_MAX_PENDING: usize = 65_536;
/// How often the flusher writes what is pending.
pub const SLIDES_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Seconds past its idle window that a session is left alone by the purge: a slide still
/// pending in a server's memory (written within about a second) keeps it alive.
pub const SLIDE_GRACE_SECS: i64 = 10;

/// The slides of one server's connections not yet written: `last_visit` by skey hash. Shared by
/// every `Db` of the server ([`Db::share_slides`]); written by [`Db::flush_slides`].
#[derive(Default)]
pub struct Slides {
    state: Mutex<Pending>,
    /// [`SLIDES_FLUSH_AT`] are pending, or the slides were closed.
    due: Condvar,
}

#[derive(Default)]
struct Pending {
    /// By skey hash: the session's row id (`seq`) and the `last_visit` to write. (Unordered:
    /// the flush orders them by row id.)
    slides: HashMap<[u8; 32], (i64, i64)>,
    closed: bool,
}

impl Pending {
    /// Add a slide, or move a pending one forward; `false` when it was dropped
    /// ([`SLIDES_MAX_PENDING`]).
    fn merge(&mut self, hash: [u8; 32], seq: i64, at: i64) -> bool {
        let n = self.slides.len();
        match self.slides.get_mut(&hash) {
            Some((_, v)) => *v = (*v).max(at),
            None if n >= SLIDES_MAX_PENDING => return false,
            None => {
                self.slides.insert(hash, (seq, at));
            }
        }
        true
    }
}

impl Slides {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record a slide of session `seq` to `at`; `false` when it was dropped
    /// ([`SLIDES_MAX_PENDING`]).
    fn record(&self, hash: &[u8; 32], seq: i64, at: i64) -> bool {
        let mut st = self.lock();
        let recorded = st.merge(*hash, seq, at);
        if st.slides.len() == SLIDES_FLUSH_AT {
            self.due.notify_all();
        }
        recorded
    }

    fn get(&self, hash: &[u8; 32]) -> Option<i64> {
        self.lock().slides.get(hash).map(|&(_, at)| at)
    }

    fn forget(&self, hash: &[u8; 32]) {
        self.lock().slides.remove(hash);
    }

    fn take(&self) -> HashMap<[u8; 32], (i64, i64)> {
        std::mem::take(&mut self.lock().slides)
    }

    /// Slides a failed flush took, back among the pending (newer ones recorded since win),
    /// within [`SLIDES_MAX_PENDING`].
    fn put_back(&self, taken: HashMap<[u8; 32], (i64, i64)>) {
        let mut st = self.lock();
        for (hash, (seq, at)) in taken {
            st.merge(hash, seq, at);
        }
    }

    /// Slides pending now.
    pub fn pending(&self) -> usize {
        self.lock().slides.len()
    }

    /// Wait until [`SLIDES_FLUSH_AT`] are pending, the slides are closed, or `deadline`; whether
    /// they are closed.
    pub fn wait_due(&self, deadline: Instant) -> bool {
        let mut st = self.lock();
        while !st.closed && st.slides.len() < SLIDES_FLUSH_AT {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            st = self
                .due
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.closed
    }

    /// Tell the flusher to write what is pending and end (the server is stopping, its last
    /// check answered).
    pub fn close(&self) {
        self.lock().closed = true;
        self.due.notify_all();
    }
}

/// The longest one purge transaction holds the write lock (logins wait at most about this).
pub const PURGE_SLICE: Duration = Duration::from_millis(50);

/// How many live sessions (devices) one user may hold; the oldest are evicted beyond it.
pub const MAX_SESSIONS_PER_USER: i64 = 10;

/// A session row joined with its user and app, as a session check sees it.
#[derive(Debug)]
pub struct SessionRow {
    pub user_id: String,
    pub app_pk: i64,
    pub appid: String,
    pub openid: String,
    pub unionid: Option<String>,
    pub session_key: Secret,
    pub user_info: Option<String>,
    /// `{phoneNumber, purePhoneNumber, countryCode}` once known (`Db::set_phone_info`).
    pub phone_info: Option<String>,
    pub created: i64,
    pub expires_at: i64,
    pub idle_secs: i64,
    pub last_visit: i64,
    /// The session's row id, by which a slide written behind finds the row.
    pub seq: i64,
}

/// A sealed JSON column of `users` written after the login.
#[derive(Clone, Copy)]
enum UserColumn {
    UserInfo,
    PhoneInfo,
}

/// What a login writes, in one transaction.
pub struct LoginWrite<'a> {
    pub app_pk: i64,
    pub openid: &'a str,
    pub unionid: Option<&'a str>,
    pub session_key: &'a str,
    /// New user data to store; `None` keeps what is stored.
    pub user_info: Option<&'a str>,
    pub new_user_id: &'a str,
    pub skey_hash: &'a [u8; 32],
    pub now: i64,
    pub expires_at: i64,
    pub idle_secs: i64,
}

pub struct LoginResult {
    pub user_id: String,
    pub is_new_user: bool,
    pub user_info: Option<String>,
}

/// A user moved in from another server (`wafer import wafer`) with its live sessions, written
/// as they were there: its `id`, each session's `skey` hash and both clocks.
pub struct ImportedUser<'a> {
    pub app_pk: i64,
    pub id: &'a str,
    pub openid: &'a str,
    pub session_key: &'a str,
    pub user_info: Option<&'a str>,
    pub now: i64,
    pub sessions: &'a [ImportedSession],
}

#[derive(Debug)]
pub struct ImportedSession {
    pub skey_hash: [u8; 32],
    pub created: i64,
    pub last_visit: i64,
    pub expires_at: i64,
    pub idle_secs: i64,
}

/// What [`Db::import_user`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Imported {
    /// The user and this many sessions were written.
    Added(usize),
    /// The app already has a user with this openid: nothing was written.
    OpenidKnown,
    /// Another user already has this id: nothing was written.
    IdTaken,
}

/// A slide: `last_visit` moves forward only, on a row that is there.
const TOUCH: &str = "UPDATE sessions SET last_visit = ?2 WHERE skey_hash = ?1 AND last_visit < ?2";
/// [`TOUCH`] by row id (`Db::flush_slides`).
const TOUCH_ROW: &str =
    "UPDATE sessions SET last_visit = ?3 WHERE seq = ?1 AND skey_hash = ?2 AND last_visit < ?3";

impl Db {
    /// Write an imported user and its sessions in one transaction, unless the openid (or the
    /// id) is already there: so an import run twice adds nothing the second time. A session
    /// whose skey hash is already stored is left out.
    pub fn import_user(&self, u: &ImportedUser) -> Result<Imported> {
        let session_key = self.seal("users.session_key", u.session_key)?;
        let user_info = self.seal_opt("users.user_info", u.user_info)?;
        self.session_write(self.write_wait, || {
            self.tx(|c| {
                let known = |sql: &str, args: &[super::sql::Arg]| -> Result<bool> {
                    Ok(c.row(sql, args, |_| Ok(()))?.is_some())
                };
                if known(
                    "SELECT 1 FROM users WHERE app = ?1 AND openid = ?2",
                    args![u.app_pk, u.openid],
                )? {
                    return Ok(Imported::OpenidKnown);
                }
                if known("SELECT 1 FROM users WHERE id = ?1", args![u.id])? {
                    return Ok(Imported::IdTaken);
                }
                c.exec(
                    "INSERT INTO users (id, app, openid, session_key, user_info, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    args![
                        u.id,
                        u.app_pk,
                        u.openid,
                        &session_key,
                        user_info.as_ref(),
                        u.now
                    ],
                )?;
                let mut added = 0;
                for s in u.sessions {
                    added += c.exec(
                        "INSERT OR IGNORE INTO sessions
                           (skey_hash, user_id, created, expires_at, idle_secs, last_visit)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        args![
                            &s.skey_hash[..],
                            u.id,
                            s.created,
                            s.expires_at,
                            s.idle_secs,
                            s.last_visit
                        ],
                    )?;
                }
                Ok(Imported::Added(added))
            })
        })
    }

    /// Record a login: upsert the user, insert the session, evict the oldest sessions beyond
    /// the cap. One transaction: either all of it is stored or none.
    /// Fails (busy) after this connection's write wait ([`BUSY_TIMEOUT`](super::BUSY_TIMEOUT)).
    pub fn record_login(&mut self, w: &LoginWrite) -> Result<LoginResult> {
        let session_key = self.seal("users.session_key", w.session_key)?;
        let user_info = self.seal_opt("users.user_info", w.user_info)?;
        let mut login = self.session_write(self.write_wait, || {
            self.tx(|c| Self::login_tx(c, w, &session_key, user_info.as_deref()))
        })?;
        // Stored user data is opened only when this login brought none.
        if w.user_info.is_none() {
            login.user_info = self.unseal_opt("users.user_info", login.user_info)?;
        }
        Ok(login)
    }

    /// The login's transaction, with `session_key` and `user_info` as they are stored (sealed
    /// or not). The answer's `user_info` is the one given, else the stored one as stored.
    fn login_tx(
        c: &Sql,
        w: &LoginWrite,
        session_key: &str,
        user_info: Option<&str>,
    ) -> Result<LoginResult> {
        // One upsert, then a read of the row: a new user's row is the one with the id this
        // login brought. (A read-then-insert would take gap locks on MySQL that concurrent
        // logins of new users deadlock on.)
        c.exec(
            "INSERT INTO users (id, app, openid, unionid, session_key, user_info, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (app, openid) DO UPDATE SET session_key = ?5,
               unionid = COALESCE(?4, unionid), user_info = COALESCE(?6, user_info),
               updated_at = ?7",
            args![
                w.new_user_id,
                w.app_pk,
                w.openid,
                w.unionid,
                session_key,
                user_info,
                w.now
            ],
        )?;
        let (user_id, stored): (String, Option<String>) = c
            .row(
                "SELECT id, user_info FROM users WHERE app = ?1 AND openid = ?2",
                args![w.app_pk, w.openid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .ok_or_else(|| super::store_error("the user just written is not there"))?;
        let is_new_user = user_id == w.new_user_id;
        // The answer's data: the one given (in clear), else the stored one as stored.
        let user_info = match w.user_info {
            Some(given) => Some(given.to_string()),
            None => stored,
        };
        c.exec(
            "INSERT INTO sessions (skey_hash, user_id, created, expires_at, idle_secs, last_visit)
             VALUES (?1, ?2, ?3, ?4, ?5, ?3)",
            args![&w.skey_hash[..], &user_id, w.now, w.expires_at, w.idle_secs],
        )?;
        // The user's newest sessions up to the cap stay: the cap-th newest is the oldest kept.
        // (Two statements: MySQL takes no LIMIT in a subquery of the table it deletes from.)
        let oldest_kept: Option<i64> = c.row(
            "SELECT seq FROM sessions WHERE user_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2",
            args![&user_id, MAX_SESSIONS_PER_USER - 1],
            |r| r.get(0),
        )?;
        if let Some(oldest_kept) = oldest_kept {
            c.exec(
                "DELETE FROM sessions WHERE user_id = ?1 AND seq < ?2",
                args![&user_id, oldest_kept],
            )?;
        }
        Ok(LoginResult {
            user_id,
            is_new_user,
            user_info,
        })
    }

    /// The session with this skey hash, if it belongs to user `id`. One indexed lookup.
    pub fn session(&self, id: &str, skey_hash: &[u8; 32]) -> Result<Option<SessionRow>> {
        self.row(
            "SELECT s.user_id, u.app, a.appid, u.openid, u.unionid, u.session_key, u.user_info,
                    s.created, s.expires_at, s.idle_secs, s.last_visit, u.phone_info, s.seq
             FROM sessions s JOIN users u ON u.id = s.user_id JOIN apps a ON a.id = u.app
             WHERE s.skey_hash = ?1 AND s.user_id = ?2",
            args![&skey_hash[..], id],
            |r| {
                Ok(SessionRow {
                    user_id: r.get(0)?,
                    app_pk: r.get(1)?,
                    appid: r.get(2)?,
                    openid: r.get(3)?,
                    unionid: r.get(4)?,
                    session_key: self.secret("users.session_key", r, 5)?,
                    user_info: self.unseal_opt("users.user_info", r.get(6)?)?,
                    phone_info: self.unseal_opt("users.phone_info", r.get(11)?)?,
                    created: r.get(7)?,
                    expires_at: r.get(8)?,
                    idle_secs: r.get(9)?,
                    last_visit: r.get(10)?,
                    seq: r.get(12)?,
                })
            },
        )
    }

    /// Record the slides of this `Db`'s session checks in `slides` (shared by one server's
    /// handles) to be written behind, rather than writing each at once. SQLite only: on MySQL,
    /// nothing (several instances must see each other's slides, so they are written at once).
    pub fn share_slides(&mut self, slides: &std::sync::Arc<Slides>) {
        if !self.is_mysql() {
            self.slides = Some(slides.clone());
        }
    }

    /// Slide a session's `last_visit` to `now`: recorded, to be written behind, when this `Db`
    /// shares a server's slides ([`Db::share_slides`]); otherwise written now if that can be
    /// done without waiting. `Ok(false)` when it was skipped (too many pending, or someone
    /// else writing): the next check slides again.
    pub fn slide_session(&self, skey_hash: &[u8; 32], seq: i64, now: i64) -> Result<bool> {
        match &self.slides {
            Some(s) => Ok(s.record(skey_hash, seq, now)),
            None => self.try_touch_session(skey_hash, now),
        }
    }

    /// The `last_visit` a slide not yet written gives this session, if one is pending.
    pub fn pending_slide(&self, skey_hash: &[u8; 32]) -> Option<i64> {
        self.slides.as_ref()?.get(skey_hash)
    }

    /// Write every pending slide in one transaction; how many sessions it moved. A slide only
    /// moves `last_visit` forward, on a row still there: a session revoked, evicted or purged
    /// meanwhile stays gone. On failure the slides go back among the pending (within
    /// [`SLIDES_MAX_PENDING`]) for the next flush.
    pub fn flush_slides(&self) -> Result<usize> {
        let Some(slides) = &self.slides else {
            return Ok(0);
        };
        let taken = slides.take();
        if taken.is_empty() {
            return Ok(0);
        }
        // In row order, by row id: each leaf of the table is read once and the index on
        // `skey_hash` not at all (a million sessions do not fit a connection's page cache); the
        // hash stays in the condition, so a row id taken since by another session is left alone.
        let mut rows: Vec<(i64, &[u8; 32], i64)> = taken
            .iter()
            .map(|(hash, &(seq, at))| (seq, hash, at))
            .collect();
        rows.sort_unstable_by_key(|&(seq, _, _)| seq);
        let written = self.session_write(self.write_wait, || {
            self.tx(|c| {
                let mut moved = 0;
                for &(seq, hash, at) in &rows {
                    moved += c.exec(TOUCH_ROW, args![seq, &hash[..], at])?;
                }
                Ok(moved)
            })
        });
        if written.is_err() {
            slides.put_back(taken);
        }
        written
    }

    /// Slide a session's `last_visit` if that can be done now: without waiting for the turn or
    /// for SQLite's lock. `Ok(false)` when someone else is writing (the slide is skipped; the
    /// next check tries again). On MySQL row locks are per session: the slide just runs.
    fn try_touch_session(&self, skey_hash: &[u8; 32], now: i64) -> Result<bool> {
        // A pooled `Db` holds one connection throughout, so the timeout is the statement's.
        self.pinned(|| {
            let Some(conn) = self.lite()? else {
                self.exec(TOUCH, args![&skey_hash[..], now])?;
                return Ok(true);
            };
            let Some(_turn) = SESSION_WRITES.try_take() else {
                return Ok(false);
            };
            conn.busy_timeout(Duration::ZERO)?;
            let touched = self.exec(TOUCH, args![&skey_hash[..], now]);
            conn.busy_timeout(self.write_wait)?;
            match touched {
                Ok(_) => Ok(true),
                Err(e) if e.is_busy() => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    pub fn revoke_session(&self, skey_hash: &[u8; 32]) -> Result<bool> {
        if let Some(s) = &self.slides {
            s.forget(skey_hash);
        }
        self.session_write(self.write_wait, || {
            Ok(self.exec(
                "DELETE FROM sessions WHERE skey_hash = ?1",
                args![&skey_hash[..]],
            )? > 0)
        })
    }

    /// Store a user's data (the decrypted JSON object), sealed.
    pub fn set_user_info(&self, user_id: &str, user_info: &str, now: i64) -> Result<()> {
        self.set_user_column(UserColumn::UserInfo, user_id, user_info, now)
    }

    /// Store a user's phone number (JSON), sealed.
    pub fn set_phone_info(&self, user_id: &str, phone_info: &str, now: i64) -> Result<()> {
        self.set_user_column(UserColumn::PhoneInfo, user_id, phone_info, now)
    }

    fn set_user_column(
        &self,
        column: UserColumn,
        user_id: &str,
        value: &str,
        now: i64,
    ) -> Result<()> {
        let (aad, update) = match column {
            UserColumn::UserInfo => (
                "users.user_info",
                "UPDATE users SET user_info = ?2, updated_at = ?3 WHERE id = ?1",
            ),
            UserColumn::PhoneInfo => (
                "users.phone_info",
                "UPDATE users SET phone_info = ?2, updated_at = ?3 WHERE id = ?1",
            ),
        };
        let value = self.seal(aad, value)?;
        self.session_write(self.write_wait, || {
            self.exec(update, args![user_id, &value, now])?;
            Ok(())
        })
    }

    /// Delete sessions past either clock (idle ones only once idle for [`SLIDE_GRACE_SECS`]
    /// more: a slide may be pending in a server's memory). Returns how many went.
    ///
    /// The sliding clock is not indexed, so finding them is a scan of the table (~150 ms at a
    /// million sessions). One `DELETE` would hold SQLite's write lock for the whole scan (and
    /// for all the deletions: 10.6 s for half a million), and every login and sliding check
    /// would wait. Instead the scan is a read (no write lock), and the deletions go in write
    /// transactions of at most [`PURGE_SLICE`] each, checking both clocks again (a session may
    /// have been used in between), so writers get their turn in between.
    pub fn purge_expired_sessions(&self, now: i64) -> Result<usize> {
        self.purge_in_slices(now, PURGE_SLICE)
    }

    fn purge_in_slices(&self, now: i64, slice: Duration) -> Result<usize> {
        let seqs: Vec<i64> = self.rows(
            "SELECT seq FROM sessions WHERE expires_at < ?1 OR last_visit + idle_secs + ?2 < ?1",
            args![now, SLIDE_GRACE_SECS],
            |r| r.get(0),
        )?;
        let mut purged = 0;
        let mut left = seqs.as_slice();
        while !left.is_empty() {
            purged += self.session_write(self.write_wait, || {
                self.tx(|c| {
                    let started = Instant::now();
                    let mut purged = 0;
                    while let Some((seq, rest)) = left.split_first() {
                        purged += c.exec(
                            "DELETE FROM sessions
                             WHERE seq = ?1
                               AND (expires_at < ?2 OR last_visit + idle_secs + ?3 < ?2)",
                            args![*seq, now, SLIDE_GRACE_SECS],
                        )?;
                        left = rest;
                        if started.elapsed() >= slice {
                            break;
                        }
                    }
                    Ok(purged)
                })
            })?;
        }
        Ok(purged)
    }

    /// Sessions not yet past either clock (for `/metrics`).
    pub fn count_live_sessions(&self, now: i64) -> Result<i64> {
        Ok(self
            .row(
                "SELECT count(*) FROM sessions WHERE expires_at >= ?1 AND last_visit + idle_secs >= ?1",
                args![now],
                |r| r.get(0),
            )?
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::store::tests::{batch, count, db};
    use crate::store::AppUpsert;

    #[test]
    fn purge_goes_in_slices_and_spares_the_live() {
        let (_d, db) = db();
        batch(
            &db,
            "INSERT INTO apps (id, appid, secret, created_at) VALUES (1, 'wx1', 's', 0);
             INSERT INTO users (id, app, openid, session_key, updated_at) VALUES ('u', 1, 'o', 'k', 0);",
        );
        // 2,500 sessions (over two batches): every third past the absolute clock, every third
        // idle past the sliding one, the rest live.
        let now = 1_000_000;
        for i in 0..2500i64 {
            let (expires_at, last_visit) = match i % 3 {
                0 => (now - 1, now),
                1 => (now + 100, now - 200),
                _ => (now + 100, now - 50),
            };
            db.exec(
                "INSERT INTO sessions (skey_hash, user_id, created, expires_at, idle_secs, last_visit)
                 VALUES (?1, 'u', 0, ?2, 100, ?3)",
                args![&crate::ids::skey_hash(&i.to_string())[..], expires_at, last_visit],
            )
            .unwrap();
        }
        let live = 2500 / 3;
        // A zero slice: one deletion per write transaction, so the slicing itself is exercised.
        assert_eq!(
            db.purge_in_slices(now, Duration::ZERO).unwrap(),
            2500 - live
        );
        let left: i64 = db
            .row(
                "SELECT count(*) FROM sessions WHERE expires_at > ?1 AND last_visit + idle_secs >= ?1",
                args![now],
                |r| r.get(0),
            )
            .unwrap()
            .unwrap();
        let all = count(&db, "SELECT count(*) FROM sessions");
        assert_eq!((left, all), (live as i64, live as i64));
        assert_eq!(db.purge_expired_sessions(now).unwrap(), 0);
    }

    /// A database with one user and `n` sessions (skey hashes of "0", "1", …), each last seen
    /// at 100, idle window 1000.
    fn with_sessions(n: i64) -> (tempfile::TempDir, Db) {
        let (d, db) = db();
        batch(
            &db,
            "INSERT INTO apps (id, appid, secret, created_at) VALUES (1, 'wx1', 's', 0);
             INSERT INTO users (id, app, openid, session_key, updated_at) VALUES ('u', 1, 'o', 'k', 0);",
        );
        for i in 0..n {
            db.exec(
                "INSERT INTO sessions (skey_hash, user_id, created, expires_at, idle_secs, last_visit)
                 VALUES (?1, 'u', 0, 1000000, 1000, 100)",
                args![&hash(i)[..]],
            )
            .unwrap();
        }
        (d, db)
    }

    fn hash(i: i64) -> [u8; 32] {
        crate::ids::skey_hash(&i.to_string())
    }

    #[test]
    fn slides_are_written_together_and_never_bring_a_session_back() {
        let (_d, mut db) = with_sessions(3);
        let slides = std::sync::Arc::new(Slides::default());
        db.share_slides(&slides);
        for i in 0..3 {
            assert!(db.slide_session(&hash(i), i + 1, 500).unwrap());
        }
        // An older slide never moves one back.
        assert!(db.slide_session(&hash(0), 1, 400).unwrap());
        assert_eq!(db.pending_slide(&hash(0)), Some(500));
        assert_eq!(
            count(&db, "SELECT count(*) FROM sessions WHERE last_visit = 100"),
            3,
            "nothing is written before the flush"
        );
        // One session deleted (evicted, purged, revoked by another process) while its slide
        // is pending: the flush does not bring it back.
        db.exec(
            "DELETE FROM sessions WHERE skey_hash = ?1",
            args![&hash(2)[..]],
        )
        .unwrap();
        assert_eq!(db.flush_slides().unwrap(), 2);
        assert_eq!(slides.pending(), 0);
        assert_eq!(db.pending_slide(&hash(0)), None);
        assert_eq!(
            count(&db, "SELECT count(*) FROM sessions WHERE last_visit = 500"),
            2
        );
        assert_eq!(count(&db, "SELECT count(*) FROM sessions"), 2);
        // A revocation here forgets the pending slide too.
        assert!(db.slide_session(&hash(1), 2, 600).unwrap());
        assert!(db.revoke_session(&hash(1)).unwrap());
        assert_eq!(db.pending_slide(&hash(1)), None);
        assert_eq!(db.flush_slides().unwrap(), 0);
        // A `Db` that shares no slides writes at once.
        let (_d2, plain) = with_sessions(1);
        assert!(plain.slide_session(&hash(0), 1, 700).unwrap());
        assert_eq!(plain.pending_slide(&hash(0)), None);
        assert_eq!(count(&plain, "SELECT last_visit FROM sessions"), 700);
    }

    #[test]
    fn a_slide_written_behind_leaves_another_session_on_its_row_id_alone() {
        let (_d, mut db) = with_sessions(1);
        let slides = std::sync::Arc::new(Slides::default());
        db.share_slides(&slides);
        assert!(db.slide_session(&hash(0), 1, 500).unwrap());
        // The session goes, and a new one is given its row id before the flush.
        db.exec("DELETE FROM sessions WHERE seq = 1", args![])
            .unwrap();
        db.exec(
            "INSERT INTO sessions (seq, skey_hash, user_id, created, expires_at, idle_secs, last_visit)
             VALUES (1, ?1, 'u', 0, 1000000, 1000, 100)",
            args![&hash(9)[..]],
        )
        .unwrap();
        assert_eq!(db.flush_slides().unwrap(), 0);
        assert_eq!(count(&db, "SELECT last_visit FROM sessions"), 100);
    }

    #[test]
    fn pending_slides_are_bounded() {
        let slides = Slides::default();
        for i in 0..SLIDES_MAX_PENDING as i64 {
            assert!(slides.record(&hash(i), i + 1, 1));
        }
        assert!(
            !slides.record(&hash(-1), 0, 1),
            "a slide past the bound is dropped"
        );
        assert!(slides.record(&hash(0), 1, 2), "a pending one still moves");
        assert_eq!(slides.get(&hash(0)), Some(2));
        // A failed flush's slides go back within the bound.
        let taken = slides.take();
        assert!(slides.record(&hash(-1), 0, 3));
        slides.put_back(taken);
        assert_eq!(slides.pending(), SLIDES_MAX_PENDING);
        assert_eq!(slides.get(&hash(-1)), Some(3));
    }

    #[test]
    fn the_purge_leaves_a_session_idle_within_the_grace() {
        let (_d, db) = with_sessions(2);
        db.exec(
            "UPDATE sessions SET last_visit = 50 WHERE skey_hash = ?1",
            args![&hash(1)[..]],
        )
        .unwrap();
        // At 1100 + grace, session 0 (last seen at 100, window 1000) is idle for exactly the
        // grace: kept; session 1 (last seen at 50) is past it.
        assert_eq!(
            db.purge_expired_sessions(1100 + SLIDE_GRACE_SECS).unwrap(),
            1
        );
        assert_eq!(count(&db, "SELECT count(*) FROM sessions"), 1);
        assert_eq!(
            db.purge_expired_sessions(1101 + SLIDE_GRACE_SECS).unwrap(),
            1
        );
    }

    #[test]
    fn login_caps_sessions_and_keeps_id() {
        let (_d, mut db) = db();
        let wx1 = AppUpsert {
            appid: "wx1".into(),
            secret: Secret::new("s"),
            ..Default::default()
        };
        let app = db.change_accounts(|ch| ch.upsert_app(&wx1, 0)).unwrap();
        let mut first_id = None;
        for i in 0..(MAX_SESSIONS_PER_USER + 3) {
            let hash = crate::ids::skey_hash(&format!("skey{i}"));
            let r = db
                .record_login(&LoginWrite {
                    app_pk: app.id,
                    openid: "o1",
                    unionid: None,
                    session_key: "k",
                    user_info: None,
                    new_user_id: &format!("{i:032x}"),
                    skey_hash: &hash,
                    now: 1000 + i,
                    expires_at: 100_000,
                    idle_secs: 100,
                })
                .unwrap();
            assert_eq!(r.is_new_user, i == 0);
            let id = first_id.get_or_insert(r.user_id.clone());
            assert_eq!(&r.user_id, id);
        }
        let id = first_id.unwrap();
        let n = count(&db, "SELECT count(*) FROM sessions");
        assert_eq!(n, MAX_SESSIONS_PER_USER);
        assert!(db
            .session(&id, &crate::ids::skey_hash("skey0"))
            .unwrap()
            .is_none());
        assert!(db
            .session(&id, &crate::ids::skey_hash("skey12"))
            .unwrap()
            .is_some());
        assert!(db.change_accounts(|ch| ch.remove_app("wx1")).unwrap());
        let n = count(&db, "SELECT count(*) FROM sessions");
        assert_eq!(n, 0);
    }
}
