//! The backend seam: one set of queries for SQLite and MySQL. Every query is written once, in
//! SQLite's words with numbered parameters (`?1`); [`mysql_dialect`] rewrites the few
//! constructs the dialects spell differently (numbered parameters, `ON CONFLICT … DO UPDATE`,
//! `excluded.`, `INSERT OR IGNORE`) for MySQL. What cannot be written once (the schema, the
//! migration bookkeeping, the health probe, what sealing does around its pass) is in `mod.rs` and
//! `mysql.rs`, each under a `match` on [`Conn`].

use super::{Error, Result};
use mysql::prelude::Queryable;
use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use std::borrow::Cow;
use std::cell::RefCell;

/// A parameter: borrowed, so that binding costs SQLite nothing.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Arg::Null => ValueRef::Null,
            Arg::Int(i) => ValueRef::Integer(i),
            Arg::Text(s) => ValueRef::Text(s.as_bytes()),
            Arg::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl From<Arg<'_>> for mysql::Value {
    fn from(a: Arg<'_>) -> mysql::Value {
        match a {
            Arg::Null => mysql::Value::NULL,
            Arg::Int(i) => mysql::Value::Int(i),
            Arg::Text(s) => mysql::Value::Bytes(s.as_bytes().to_vec()),
            Arg::Blob(b) => mysql::Value::Bytes(b.to_vec()),
        }
    }
}

impl From<i64> for Arg<'_> {
    fn from(i: i64) -> Self {
        Arg::Int(i)
    }
}

impl From<bool> for Arg<'_> {
    fn from(b: bool) -> Self {
        Arg::Int(i64::from(b))
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(s: &'a str) -> Self {
        Arg::Text(s)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(s: &'a String) -> Self {
        Arg::Text(s)
    }
}

impl<'a> From<&'a Cow<'a, str>> for Arg<'a> {
    fn from(s: &'a Cow<'a, str>) -> Self {
        Arg::Text(s)
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(b: &'a [u8]) -> Self {
        Arg::Blob(b)
    }
}

impl<'a, T: Into<Arg<'a>>> From<Option<T>> for Arg<'a> {
    fn from(o: Option<T>) -> Self {
        o.map_or(Arg::Null, Into::into)
    }
}

/// `args![a, b, …]`: the parameters of a query, each anything that converts into an [`Arg`].
macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$($crate::store::sql::Arg::from($a)),*][..] };
}
pub(crate) use args;

/// A column type both backends read.
pub trait Col: rusqlite::types::FromSql + mysql::prelude::FromValue {}
impl<T: rusqlite::types::FromSql + mysql::prelude::FromValue> Col for T {}

/// One row of an answer.
pub enum Row<'r, 's> {
    Lite(&'r rusqlite::Row<'s>),
    My(&'r mysql::Row),
}

impl Row<'_, '_> {
    pub fn get<T: Col>(&self, i: usize) -> Result<T> {
        match self {
            Row::Lite(r) => r.get(i).map_err(Error::from),
            Row::My(r) => match r.get_opt::<T, usize>(i) {
                Some(Ok(v)) => Ok(v),
                Some(Err(e)) => Err(Error::new(format!("column {i}: {e}"))),
                None => Err(Error::new(format!("no column {i}"))),
            },
        }
    }
}

/// A connection queries run on: SQLite's, or one taken from the MySQL pool for the duration
/// of one operation (a transaction's statements all go to the same one).
pub enum Sql<'c> {
    Lite(&'c rusqlite::Connection),
    My(RefCell<&'c mut mysql::PooledConn>),
}

impl Sql<'_> {
    /// Run a statement; how many rows it changed (for an `UPDATE`, how many matched: MySQL
    /// connections ask for found rows, as SQLite counts them).
    pub fn exec(&self, sql: &str, args: &[Arg]) -> Result<usize> {
        match self {
            Sql::Lite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(args))?),
            Sql::My(c) => {
                let (q, params) = mysql_dialect(sql, args);
                let mut c = c.borrow_mut();
                c.exec_drop(q.as_ref(), params)?;
                Ok(usize::try_from(c.affected_rows()).unwrap_or(usize::MAX))
            }
        }
    }

    /// The first row of the answer, mapped by `f`.
    pub fn row<T>(
        &self,
        sql: &str,
        args: &[Arg],
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<Option<T>> {
        match self {
            Sql::Lite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
                match rows.next()? {
                    Some(r) => f(&Row::Lite(r)).map(Some),
                    None => Ok(None),
                }
            }
            Sql::My(c) => {
                let (q, params) = mysql_dialect(sql, args);
                let row: Option<mysql::Row> = c.borrow_mut().exec_first(q.as_ref(), params)?;
                row.map(|r| f(&Row::My(&r))).transpose()
            }
        }
    }

    /// Every row of the answer, mapped by `f`.
    pub fn rows<T>(
        &self,
        sql: &str,
        args: &[Arg],
        mut f: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        match self {
            Sql::Lite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Lite(r))?);
                }
                Ok(out)
            }
            Sql::My(c) => {
                let (q, params) = mysql_dialect(sql, args);
                let rows: Vec<mysql::Row> = c.borrow_mut().exec(q.as_ref(), params)?;
                rows.iter().map(|r| f(&Row::My(r))).collect()
            }
        }
    }

    /// Run `f` in a write transaction on this connection (SQLite: `BEGIN IMMEDIATE`),
    /// committed when it answers `Ok(true)`, rolled back when it answers `Ok(false)` or an
    /// error. Answers what `f` did. On MySQL a transaction the server chose as a deadlock's
    /// victim is run again (up to [`DEADLOCK_TRIES`](super::DEADLOCK_TRIES) times in all).
    pub fn tx_or_undo(&self, mut f: impl FnMut(&Sql) -> Result<bool>) -> Result<bool> {
        let c = match self {
            Sql::Lite(c) => {
                let tx = rusqlite::Transaction::new_unchecked(
                    c,
                    rusqlite::TransactionBehavior::Immediate,
                )?;
                let keep = f(self)?;
                if keep {
                    tx.commit()?;
                }
                return Ok(keep);
            }
            Sql::My(c) => c,
        };
        let say = |q: &str| -> Result<()> { Ok(c.borrow_mut().query_drop(q)?) };
        let mut tries = 1;
        loop {
            say("START TRANSACTION")?;
            let keep = f(self).and_then(|keep| Ok(keep && say("COMMIT").map(|()| true)?));
            match keep {
                Ok(true) => return Ok(true),
                Err(e) if e.deadlock && tries < super::DEADLOCK_TRIES => {
                    let _ = say("ROLLBACK");
                    tries += 1;
                }
                other => {
                    let _ = say("ROLLBACK");
                    return other;
                }
            }
        }
    }

    /// Run statements without parameters, separated by `;` (a test's set-up).
    #[cfg(test)]
    pub fn batch(&self, sql: &str) -> Result<()> {
        match self {
            Sql::Lite(c) => Ok(c.execute_batch(sql)?),
            Sql::My(c) => {
                let mut c = c.borrow_mut();
                for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
                    c.query_drop(stmt)?;
                }
                Ok(())
            }
        }
    }
}

/// A query in SQLite's words as MySQL says it, with its parameters in the order MySQL's
/// anonymous `?` takes them: `?N` becomes `?` (a repeated `?N` repeats the value),
/// `ON CONFLICT (…) DO UPDATE SET` becomes `ON DUPLICATE KEY UPDATE`, `excluded.c` becomes
/// `VALUES(c)`, `INSERT OR IGNORE` becomes `INSERT IGNORE` and `unixepoch()` (the database's
/// clock) becomes `UNIX_TIMESTAMP()`. Queries are wafer's own: no
/// string literal in them holds a `?`.
pub fn mysql_dialect<'s>(sql: &'s str, args: &[Arg]) -> (Cow<'s, str>, mysql::Params) {
    let mut out = String::with_capacity(sql.len());
    let mut values = Vec::with_capacity(args.len());
    let mut rest = sql;
    while let Some(i) = rest.find(['?', 'O', 'e', 'I', 'u']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix('?') {
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let n: usize = after[..digits].parse().unwrap_or(1);
            values.push(args.get(n - 1).copied().unwrap_or(Arg::Null).into());
            out.push('?');
            rest = &after[digits..];
        } else if let Some(after) = rest.strip_prefix("ON CONFLICT") {
            let set = after
                .find("DO UPDATE SET")
                .map_or(0, |j| j + "DO UPDATE SET".len());
            out.push_str("ON DUPLICATE KEY UPDATE");
            rest = &after[set..];
        } else if let Some(after) = rest.strip_prefix("excluded.") {
            let len = after
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            out.push_str("VALUES(");
            out.push_str(&after[..len]);
            out.push(')');
            rest = &after[len..];
        } else if let Some(after) = rest.strip_prefix("unixepoch()") {
            out.push_str("UNIX_TIMESTAMP()");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("INSERT OR IGNORE") {
            out.push_str("INSERT IGNORE");
            rest = after;
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out.push_str(rest);
    (Cow::Owned(out), mysql::Params::Positional(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_rewritten_for_mysql() {
        let (q, p) = mysql_dialect(
            "INSERT INTO t (`key`, v) VALUES (?1, ?2) ON CONFLICT (`key`) DO UPDATE SET v = ?2, w = excluded.w",
            args!["k", 7],
        );
        assert_eq!(
            q,
            "INSERT INTO t (`key`, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = ?, w = VALUES(w)"
        );
        let mysql::Params::Positional(p) = p else {
            panic!("positional")
        };
        assert_eq!(
            p,
            vec![
                mysql::Value::Bytes(b"k".to_vec()),
                mysql::Value::Int(7),
                mysql::Value::Int(7)
            ]
        );
        let (q, _) = mysql_dialect(
            "INSERT OR IGNORE INTO seen VALUES (?1, unixepoch() + 1) -- Ok",
            args!["x"],
        );
        assert_eq!(
            q,
            "INSERT IGNORE INTO seen VALUES (?, UNIX_TIMESTAMP() + 1) -- Ok"
        );
    }
}
