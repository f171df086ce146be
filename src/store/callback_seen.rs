//! The `callback_seen` table: callbacks already handled (`push::Claim` builds the keys), each
//! remembered until its expiry.

use super::sql::args;
use super::{Db, Result};

impl Db {
    // ---- callbacks already handled ----

    /// Remember every key until its expiry, all or none: true when none of them was remembered
    /// (an expired row counts as forgotten), false (and nothing written) when one was. On
    /// MySQL a claim of the same key on another instance waits for this transaction and then
    /// finds the key taken.
    pub fn claim_callback(&self, keys: &[(String, i64)], now: i64) -> Result<bool> {
        // Insert first, and only a key already there is looked at again (taken over if its
        // time has passed): on MySQL a claim that deleted before inserting would take gap locks
        // that two concurrent claims of one key deadlock on.
        self.tx_or_undo(|c| {
            for (key, expires_at) in keys {
                let fresh = c.exec(
                    "INSERT OR IGNORE INTO callback_seen (`key`, expires_at) VALUES (?1, ?2)",
                    args![key, *expires_at],
                )? > 0
                    || c.exec(
                        "UPDATE callback_seen SET expires_at = ?2 WHERE `key` = ?1 AND expires_at <= ?3",
                        args![key, *expires_at, now],
                    )? > 0;
                if !fresh {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    /// Forget keys claimed for a callback that was not handled after all.
    pub fn release_callback(&self, keys: &[(String, i64)]) -> Result<()> {
        self.run(|c| {
            for (key, expires_at) in keys {
                c.exec(
                    "DELETE FROM callback_seen WHERE `key` = ?1 AND expires_at = ?2",
                    args![key, *expires_at],
                )?;
            }
            Ok(())
        })
    }

    /// Delete the remembered callbacks whose time has passed. Returns how many went.
    pub fn purge_callback_seen(&self, now: i64) -> Result<usize> {
        self.exec(
            "DELETE FROM callback_seen WHERE expires_at <= ?1",
            args![now],
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::store::tests::{count, db};

    #[test]
    fn callbacks_are_claimed_all_or_none_and_forgotten_after_their_time() {
        let (_dir, db) = db();
        let k = |s: &str, at: i64| (s.to_string(), at);
        assert!(db.claim_callback(&[k("a", 100), k("b", 100)], 10).unwrap());
        assert_eq!(count(&db, "SELECT count(*) FROM callback_seen"), 2);
        // One key remembered: nothing claimed, nothing written.
        assert!(!db.claim_callback(&[k("c", 100), k("b", 100)], 10).unwrap());
        assert_eq!(count(&db, "SELECT count(*) FROM callback_seen"), 2);
        // Released keys can be claimed again; expired ones count as forgotten.
        db.release_callback(&[k("a", 100)]).unwrap();
        assert!(db.claim_callback(&[k("a", 100)], 10).unwrap());
        assert!(db.claim_callback(&[k("b", 200)], 100).unwrap());
        assert_eq!(db.purge_callback_seen(150).unwrap(), 1);
        assert_eq!(count(&db, "SELECT count(*) FROM callback_seen"), 1);
    }
}
