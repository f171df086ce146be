//! The `credentials` and `upstream_quota` tables: hosted tokens and tickets with their expiry
//! (written only by `credential::Broker`), and the daily accounting of upstream calls.

use super::sql::{args, Sql};
use super::{Change, Db, Result};
use crate::secret::Secret;

/// A stored credential: value and expiry from one row.
#[derive(Debug, Clone)]
pub struct StoredCredential {
    pub value: Secret,
    pub expires_at: i64,
    pub updated_at: i64,
}

/// Today's upstream accounting for one credential key.
#[derive(Debug, Clone, Default)]
pub struct Quota {
    pub calls: i64,
    pub forced: i64,
    pub last_forced: i64,
    pub blocked_until: i64,
}

impl Db {
    pub fn credential(&self, key: &str) -> Result<Option<StoredCredential>> {
        self.row(
            "SELECT value, expires_at, updated_at FROM credentials WHERE `key` = ?1",
            args![key],
            |r| {
                Ok(StoredCredential {
                    value: self.secret("credentials.value", r, 0)?,
                    expires_at: r.get(1)?,
                    updated_at: r.get(2)?,
                })
            },
        )
    }

    /// Every stored credential with its key (the elected refresher takes them in).
    pub fn list_credentials(&self) -> Result<Vec<(String, StoredCredential)>> {
        self.rows(
            "SELECT `key`, value, expires_at, updated_at FROM credentials ORDER BY `key`",
            &[],
            |r| {
                Ok((
                    r.get(0)?,
                    StoredCredential {
                        value: self.secret("credentials.value", r, 1)?,
                        expires_at: r.get(2)?,
                        updated_at: r.get(3)?,
                    },
                ))
            },
        )
    }

    pub fn put_credential(&self, key: &str, value: &str, expires_at: i64, now: i64) -> Result<()> {
        let value = self.seal("credentials.value", value)?;
        self.exec(
            "INSERT INTO credentials (`key`, value, expires_at, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (`key`) DO UPDATE SET value = ?2, expires_at = ?3, updated_at = ?4",
            args![key, &value, expires_at, now],
        )?;
        Ok(())
    }

    pub fn delete_credentials_with_prefix(&self, prefix: &str) -> Result<usize> {
        self.run(|c| delete_with_prefix_on(c, prefix))
    }

    pub fn quota(&self, key: &str, day: &str) -> Result<Quota> {
        Ok(self
            .row(
                "SELECT calls, forced, last_forced, blocked_until FROM upstream_quota
                 WHERE `key` = ?1 AND day = ?2",
                args![key, day],
                |r| {
                    Ok(Quota {
                        calls: r.get(0)?,
                        forced: r.get(1)?,
                        last_forced: r.get(2)?,
                        blocked_until: r.get(3)?,
                    })
                },
            )?
            .unwrap_or_default())
    }

    /// Count one upstream call (and a forced one when `forced`).
    pub fn count_upstream(&self, key: &str, day: &str, forced: bool, now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO upstream_quota (`key`, day, calls, forced, last_forced) VALUES (?1, ?2, 1, ?3, ?4)
             ON CONFLICT (`key`, day) DO UPDATE SET calls = calls + 1, forced = forced + ?3,
               last_forced = CASE WHEN ?3 = 1 THEN ?4 ELSE last_forced END",
            args![key, day, forced, if forced { now } else { 0 }],
        )?;
        Ok(())
    }

    /// After 45009: no calls for this key before `until`.
    pub fn block_upstream(&self, key: &str, day: &str, until: i64) -> Result<()> {
        self.exec(
            "INSERT INTO upstream_quota (`key`, day, blocked_until) VALUES (?1, ?2, ?3)
             ON CONFLICT (`key`, day) DO UPDATE SET blocked_until = ?3",
            args![key, day, until],
        )?;
        Ok(())
    }
}

/// The UTC calendar day of a unix time, `YYYY-MM-DD` (WeChat's quotas reset daily).
pub fn utc_day(unix: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = unix.div_euclid(86400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

impl Change<'_, '_> {
    /// Delete the credentials under `prefix` inside the change (the broker's
    /// `forget_stored`, for the account the change rewrites or removes).
    pub fn delete_credentials_with_prefix(&self, prefix: &str) -> Result<usize> {
        delete_with_prefix_on(self.sql, prefix)
    }
}

fn delete_with_prefix_on(c: &Sql, prefix: &str) -> Result<usize> {
    // An empty prefix would be every credential: never what a caller means.
    if prefix.is_empty() {
        return Ok(0);
    }
    c.exec(
        "DELETE FROM credentials WHERE substr(`key`, 1, length(?1)) = ?1",
        args![prefix],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_days() {
        for (t, d) in [
            (0, "1970-01-01"),
            (951_782_400, "2000-02-29"),
            (1_795_305_600, "2026-11-22"),
            (-1, "1969-12-31"),
        ] {
            assert_eq!(utc_day(t), d, "{t}");
        }
    }
}
