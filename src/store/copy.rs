//! `wafer db copy`: every row of one database into another (a SQLite file and a MySQL
//! database, either way), as stored: sealed values stay sealed under the same key (both
//! databases are opened with the one key of `storage.key_file`, and the source's
//! `meta.seal_key_id` comes along), and what the target then holds in clear is sealed with
//! that key before the copy ends. Read and written through the backend seam, so the one copy
//! serves every direction.

use super::sql::{args, Arg, Row};
use super::{store_error, Db, Result};
use std::collections::{HashMap, HashSet};

/// Every column of every table a copy carries, in the order they are copied (parents first).
/// A test checks these against the SQLite schema, so a new column cannot be left behind.
pub const COPIED: &[(&str, &[&str])] = &[
    (
        "apps",
        &[
            "id",
            "appid",
            "secret",
            "kind",
            "title",
            "login_days",
            "session_secs",
            "token",
            "aes_key",
            "prev_aes_key",
            "forward_url",
            "created_at",
        ],
    ),
    (
        "users",
        &[
            "id",
            "app",
            "openid",
            "unionid",
            "session_key",
            "user_info",
            "updated_at",
            "phone_info",
        ],
    ),
    (
        "sessions",
        &[
            "skey_hash",
            "user_id",
            "created",
            "expires_at",
            "idle_secs",
            "last_visit",
        ],
    ),
    (
        "credentials",
        &["`key`", "value", "expires_at", "updated_at"],
    ),
    (
        "upstream_quota",
        &[
            "`key`",
            "day",
            "calls",
            "forced",
            "last_forced",
            "blocked_until",
        ],
    ),
    (
        "work_agents",
        &[
            "corpid",
            "agentid",
            "secret",
            "remark",
            "token",
            "aes_key",
            "prev_aes_key",
            "forward_url",
            "created_at",
        ],
    ),
    (
        "components",
        &[
            "appid",
            "secret",
            "token",
            "aes_key",
            "prev_aes_key",
            "redirect_uri",
            "verify_ticket",
            "ticket_at",
            "created_at",
            "pre_auth_code",
            "pre_auth_expires_at",
            "query_auth_minute",
            "query_auth_calls",
            "forward_url",
            "query_auth_times",
        ],
    ),
    (
        "authorizers",
        &[
            "component_appid",
            "authorizer_appid",
            "refresh_token",
            "func_info",
            "authorized_at",
            "revoked_at",
            "info",
        ],
    ),
    ("callback_seen", &["`key`", "expires_at"]),
    ("meta", &["name", "value"]),
];

/// `meta` rows that describe one database rather than its data: not copied.
const OWN_META: &[&str] = &["schema_version", "accounts_generation"];

/// A stored value, whatever its column.
#[derive(Debug, Clone)]
enum Val {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl Val {
    fn arg(&self) -> Arg<'_> {
        match self {
            Val::Null => Arg::Null,
            Val::Int(i) => Arg::Int(*i),
            Val::Text(s) => Arg::Text(s),
            Val::Blob(b) => Arg::Blob(b),
        }
    }

    fn text(&self) -> &str {
        match self {
            Val::Text(s) => s,
            _ => "",
        }
    }
}

/// Column `i` of `r` as stored. `blob` says it is a binary column: MySQL hands every text and
/// binary value back as bytes, and SQLite compares a BLOB and a TEXT as different values.
fn val(r: &Row, i: usize, blob: bool) -> Result<Val> {
    if blob {
        return Ok(r.get::<Option<Vec<u8>>>(i)?.map_or(Val::Null, Val::Blob));
    }
    if let Ok(Some(n)) = r.get::<Option<i64>>(i) {
        // SQLite: an INTEGER; MySQL: a BIGINT (a text column holding digits reads as a
        // number too, and is written back as one: SQLite's TEXT affinity stores it as text).
        return Ok(Val::Int(n));
    }
    Ok(r.get::<Option<String>>(i)?.map_or(Val::Null, Val::Text))
}

/// What a copy did to one table: rows written, rows the target had already (kept).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    pub table: &'static str,
    pub written: usize,
    pub kept: usize,
}

impl Db {
    /// Does the database hold any account, user, credential or callback row?
    pub fn holds_data(&self) -> Result<bool> {
        for (table, _) in COPIED.iter().filter(|(t, _)| *t != "meta") {
            let any = self.row(&format!("SELECT 1 FROM {table} LIMIT 1"), &[], |_| Ok(()))?;
            if any.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Copy every row into `to`. Without `merge` the target must hold no data; with it, rows
    /// the target lacks are added and rows it has (the same key) are kept as they are: an app
    /// by `appid` (its users follow it to the target's numeric id), a user by `id` or by app
    /// and `openid` (then its sessions stay behind), every other row by its primary key. An
    /// app keeps its numeric id (the `/mina` dialect's `app_id`) when the target has it free.
    /// With a key (`to`'s), whatever the target holds in clear is then sealed with it.
    pub fn copy_into(&self, to: &Db, merge: bool) -> Result<Vec<Copied>> {
        if !merge && to.holds_data()? {
            return Err(store_error(
                "the target already holds data: copy into an empty database, or add --merge",
            ));
        }
        let mut report = Vec::new();
        let mut app_ids: HashMap<i64, i64> = HashMap::new();
        let mut users: HashSet<String> = HashSet::new();
        for (table, columns) in COPIED {
            let list = columns.join(", ");
            let blob: Vec<bool> = columns.iter().map(|c| *c == "skey_hash").collect();
            let order = if *table == "sessions" {
                " ORDER BY seq"
            } else {
                ""
            };
            let rows = self.rows(&format!("SELECT {list} FROM {table}{order}"), &[], |r| {
                (0..columns.len())
                    .map(|i| val(r, i, blob[i]))
                    .collect::<Result<Vec<Val>>>()
            })?;
            let marks: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
            let insert = format!(
                "INSERT OR IGNORE INTO {table} ({list}) VALUES ({})",
                marks.join(", ")
            );
            let mut done = Copied {
                table,
                ..Copied::default()
            };
            to.tx(|c| {
                done.written = 0;
                done.kept = 0;
                for row in &rows {
                    let mut row = row.clone();
                    let written = match *table {
                        "apps" => {
                            let Val::Int(old) = row[0] else {
                                return Err(store_error("an app without an id"));
                            };
                            let appid = row[1].text().to_string();
                            let id_taken = |c: &super::sql::Sql, id: i64| -> Result<bool> {
                                Ok(c.row("SELECT 1 FROM apps WHERE id = ?1", args![id], |_| Ok(()))?
                                    .is_some())
                            };
                            let target_id = |c: &super::sql::Sql| -> Result<Option<i64>> {
                                c.row("SELECT id FROM apps WHERE appid = ?1", args![&appid], |r| {
                                    r.get(0)
                                })
                            };
                            let written = match target_id(c)? {
                                Some(_) => false,
                                None if !id_taken(c, old)? => {
                                    let args: Vec<Arg> = row.iter().map(Val::arg).collect();
                                    c.exec(&insert, &args)? > 0
                                }
                                None => {
                                    let cols = &columns[1..];
                                    let marks: Vec<String> =
                                        (1..=cols.len()).map(|i| format!("?{i}")).collect();
                                    let args: Vec<Arg> = row[1..].iter().map(Val::arg).collect();
                                    c.exec(
                                        &format!(
                                            "INSERT INTO apps ({}) VALUES ({})",
                                            cols.join(", "),
                                            marks.join(", ")
                                        ),
                                        &args,
                                    )? > 0
                                }
                            };
                            let new = target_id(c)?
                                .ok_or_else(|| store_error("an app copied is not there"))?;
                            app_ids.insert(old, new);
                            written
                        }
                        "users" => {
                            if let Val::Int(old) = row[1] {
                                row[1] = Val::Int(*app_ids.get(&old).unwrap_or(&old));
                            }
                            let args: Vec<Arg> = row.iter().map(Val::arg).collect();
                            let written = c.exec(&insert, &args)? > 0;
                            // Its sessions follow only if the target's user is this one.
                            let same = c
                                .row(
                                    "SELECT 1 FROM users WHERE id = ?1 AND app = ?2 AND openid = ?3",
                                    &[row[0].arg(), row[1].arg(), row[2].arg()],
                                    |_| Ok(()),
                                )?
                                .is_some();
                            if same {
                                users.insert(row[0].text().to_string());
                            }
                            written
                        }
                        "sessions" if !users.contains(row[1].text()) => false,
                        "meta" if OWN_META.contains(&row[0].text()) => continue,
                        _ => {
                            let args: Vec<Arg> = row.iter().map(Val::arg).collect();
                            c.exec(&insert, &args)? > 0
                        }
                    };
                    if written {
                        done.written += 1;
                    } else {
                        done.kept += 1;
                    }
                }
                Ok(())
            })?;
            report.push(done);
        }
        // Rows copied in clear into a sealed target (or any target, with a key) are sealed now,
        // not at the next start of a server.
        to.seal_existing()?;
        // Serving instances on the target read the accounts again.
        to.bump_accounts_generation()?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::db;

    #[test]
    fn every_column_of_every_table_is_copied() {
        let (_dir, db) = db();
        let mut tables: Vec<String> = db
            .rows(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN ('leases')",
                &[],
                |r| r.get(0),
            )
            .unwrap();
        tables.sort();
        let mut copied: Vec<String> = COPIED.iter().map(|(t, _)| t.to_string()).collect();
        copied.sort();
        assert_eq!(tables, copied, "tables (leases are not data)");
        for (table, columns) in COPIED {
            let mut have: Vec<String> = db
                .rows(
                    &format!("SELECT name FROM pragma_table_info('{table}')"),
                    &[],
                    |r| r.get(0),
                )
                .unwrap();
            have.retain(|c| c != "seq");
            let mut want: Vec<String> = columns.iter().map(|c| c.replace('`', "")).collect();
            have.sort();
            want.sort();
            assert_eq!(have, want, "{table}");
        }
    }
}
