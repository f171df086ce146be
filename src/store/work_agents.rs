//! The `work_agents` table: WeCom agents, with their secrets and callback keys.

use super::sql::{args, Row, Sql};
use super::{next_prev_aes_key, Change, Db, Result};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct WorkAgent {
    pub corpid: String,
    pub agentid: String,
    pub secret: Secret,
    pub remark: String,
    pub token: Option<Secret>,
    pub aes_key: Option<Secret>,
    pub prev_aes_key: Option<Secret>,
    pub forward_url: Option<String>,
}

const AGENT_COLUMNS: &str =
    "corpid, agentid, secret, remark, token, aes_key, prev_aes_key, forward_url";

impl Db {
    fn agent_from_row(&self, r: &Row) -> Result<WorkAgent> {
        Ok(WorkAgent {
            corpid: r.get(0)?,
            agentid: r.get(1)?,
            secret: self.secret("work_agents.secret", r, 2)?,
            remark: r.get(3)?,
            token: self.secret_opt("work_agents.token", r, 4)?,
            aes_key: self.secret_opt("work_agents.aes_key", r, 5)?,
            prev_aes_key: self.secret_opt("work_agents.prev_aes_key", r, 6)?,
            forward_url: r.get(7)?,
        })
    }

    pub fn work_agent(&self, corpid: &str, agentid: &str) -> Result<Option<WorkAgent>> {
        self.run(|c| self.work_agent_on(c, corpid, agentid))
    }

    fn work_agent_on(&self, c: &Sql, corpid: &str, agentid: &str) -> Result<Option<WorkAgent>> {
        c.row(
            &format!("SELECT {AGENT_COLUMNS} FROM work_agents WHERE corpid = ?1 AND agentid = ?2"),
            args![corpid, agentid],
            |r| self.agent_from_row(r),
        )
    }

    pub fn list_work_agents(&self) -> Result<Vec<WorkAgent>> {
        self.rows(
            &format!("SELECT {AGENT_COLUMNS} FROM work_agents ORDER BY corpid, agentid"),
            &[],
            |r| self.agent_from_row(r),
        )
    }
}

impl Change<'_, '_> {
    /// The WeCom agent as it is inside the change.
    pub fn work_agent(&self, corpid: &str, agentid: &str) -> Result<Option<WorkAgent>> {
        self.db.work_agent_on(self.sql, corpid, agentid)
    }

    /// Insert or update a WeCom agent (the credentials it makes stale are the broker's to delete,
    /// in the same change).
    pub fn upsert_work_agent(&self, a: &WorkAgent, now: i64) -> Result<()> {
        let (db, c) = (self.db, self.sql);
        let secret = db.seal("work_agents.secret", a.secret.expose())?;
        let token = db.seal_opt("work_agents.token", a.token.as_ref().map(Secret::expose))?;
        let aes_key = db.seal_opt(
            "work_agents.aes_key",
            a.aes_key.as_ref().map(Secret::expose),
        )?;
        let stored = db.work_agent_on(c, &a.corpid, &a.agentid)?;
        let prev = next_prev_aes_key(a.prev_aes_key.as_ref(), a.aes_key.as_ref(), stored.as_ref());
        let prev = db.seal_opt(
            "work_agents.prev_aes_key",
            prev.as_ref().map(Secret::expose),
        )?;
        c.exec(
            "INSERT INTO work_agents (corpid, agentid, secret, remark, token, aes_key, forward_url, created_at, prev_aes_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (corpid, agentid) DO UPDATE SET secret = ?3, remark = ?4,
               token = COALESCE(?5, token),
               prev_aes_key = ?9,
               aes_key = COALESCE(?6, aes_key),
               forward_url = COALESCE(?7, forward_url)",
            args![
                &a.corpid,
                &a.agentid,
                &secret,
                &a.remark,
                token.as_ref(),
                aes_key.as_ref(),
                a.forward_url.as_ref(),
                now,
                prev.as_ref(),
            ],
        )?;
        Ok(())
    }

    /// Remove a WeCom agent. False when there was no such agent.
    pub fn remove_work_agent(&self, corpid: &str, agentid: &str) -> Result<bool> {
        Ok(self.sql.exec(
            "DELETE FROM work_agents WHERE corpid = ?1 AND agentid = ?2",
            args![corpid, agentid],
        )? > 0)
    }
}
