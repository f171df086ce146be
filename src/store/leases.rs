//! The `leases` table: named claims with an owner and an expiry from the database's own clock
//! (CONTRACT §10), so that of several instances on one database exactly one refreshes a
//! credential (`credential::Broker`) however their host clocks differ. A claim is one
//! statement, so two instances cannot both win it; an owner that dies loses it at its expiry.

use super::sql::args;
use super::{Db, Result};

impl Db {
    /// Claim (or renew, for its owner) the lease `name` for `secs` seconds of the database's
    /// clock. True when `owner` holds it now; false while another owner's claim lasts.
    /// Under a crowd of claims MySQL may pick one as a deadlock's victim: that claim simply
    /// did not win (its caller tries again).
    pub fn claim_lease(&self, name: &str, owner: &str, secs: i64) -> Result<bool> {
        match self.try_claim_lease(name, owner, secs) {
            Err(e) if e.deadlock => Ok(false),
            claimed => claimed,
        }
    }

    fn try_claim_lease(&self, name: &str, owner: &str, secs: i64) -> Result<bool> {
        self.run(|c| {
            Ok(c.exec(
                "INSERT OR IGNORE INTO leases (name, owner, expires_at)
                 VALUES (?1, ?2, unixepoch() + ?3)",
                args![name, owner, secs],
            )? > 0
                || c.exec(
                    "UPDATE leases SET owner = ?2, expires_at = unixepoch() + ?3
                     WHERE name = ?1 AND (owner = ?2 OR expires_at <= unixepoch())",
                    args![name, owner, secs],
                )? > 0)
        })
    }

    /// Give the lease up, if `owner` still holds it.
    pub fn release_lease(&self, name: &str, owner: &str) -> Result<()> {
        self.exec(
            "DELETE FROM leases WHERE name = ?1 AND owner = ?2",
            args![name, owner],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::tests::db;

    #[test]
    fn a_lease_has_one_owner_until_it_expires_or_is_released() {
        let (_dir, db) = db();
        assert!(db.claim_lease("k", "a", 60).unwrap());
        assert!(!db.claim_lease("k", "b", 60).unwrap(), "held by a");
        assert!(db.claim_lease("k", "a", 60).unwrap(), "a renews");
        db.release_lease("k", "b").unwrap();
        assert!(
            !db.claim_lease("k", "b", 60).unwrap(),
            "only its owner releases it"
        );
        db.release_lease("k", "a").unwrap();
        assert!(db.claim_lease("k", "b", 60).unwrap());
        // A claim that has run out is anyone's.
        assert!(db.claim_lease("x", "a", -1).unwrap());
        assert!(db.claim_lease("x", "b", 60).unwrap());
        assert!(!db.claim_lease("x", "a", 60).unwrap());
    }
}
