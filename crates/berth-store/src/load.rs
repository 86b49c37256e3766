//! Reading everything back at start-up, validating each row.

use std::collections::HashMap;

use rusqlite::types::Value;
use rusqlite::Connection;

use crate::rows;
use crate::{JournalRow, NameRow, PersistentRow, Store, StoreError};

impl Store {
    pub(crate) fn load_persistent(&self) -> Result<Vec<PersistentRow>, StoreError> {
        let err = |e| self.fail("read the persistent reservations", e);
        let raw = query_all(
            &self.conn,
            "SELECT token, protocol, start, count, created_at_ms, created_by_uid, label, name
             FROM persistent ORDER BY protocol, start, token",
        )
        .map_err(err)?;
        let mut rows = Vec::with_capacity(raw.len());
        let mut index = HashMap::with_capacity(raw.len());
        for (key, v) in raw {
            let row = rows::persistent(key, &v).map_err(|p| self.bad_row("persistent", key, p))?;
            index.insert(key, rows.len());
            rows.push(row);
        }
        let allow = query_all(
            &self.conn,
            "SELECT token, kind, id FROM persistent_allow ORDER BY token, kind, id",
        )
        .map_err(err)?;
        for (key, v) in allow {
            let bad = |p| self.bad_row("persistent_allow", key, p);
            let row = index
                .get(&key)
                .and_then(|&i| rows.get_mut(i))
                .ok_or_else(|| bad("no persistent reservation has this token".to_owned()))?;
            match rows::allow(&v).map_err(bad)? {
                rows::Allow::User(id) => row.allow_users.push(id),
                rows::Allow::Group(id) => row.allow_groups.push(id),
            }
        }
        // SQLite sorted by the protocol's name; sort by `Protocol` itself to be independent of
        // collation.
        rows.sort_by_key(|r| (r.protocol, r.range.start(), r.token));
        Ok(rows)
    }

    pub(crate) fn load_journal(&self) -> Result<Vec<JournalRow>, StoreError> {
        let raw = query_all(
            &self.conn,
            "SELECT token, protocol, start, count, pid, uid, gid, start_time, command,
                    acquired_at_ms, process, held
             FROM runtime_journal ORDER BY acquired_at_ms, token",
        )
        .map_err(|e| self.fail("read the runtime journal", e))?;
        raw.into_iter()
            .map(|(key, v)| {
                rows::journal(key, &v).map_err(|p| self.bad_row("runtime_journal", key, p))
            })
            .collect()
    }
}

impl Store {
    /// The blocks remembered for runtime names, ordered by (uid, name, protocol). A row that is
    /// not valid is a [`StoreError::BadRow`] in table `names`, with the uid in place of a token.
    pub fn load_names(&self) -> Result<Vec<NameRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT uid, name, protocol, start, count, last_used_ms FROM names
                 ORDER BY uid, name, protocol",
            )
            .map_err(|e| self.fail("read the names", e))?;
        let columns = stmt.column_count();
        let raw = stmt
            .query_map([], |r| {
                (0..columns)
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.fail("read the names", e))?;
        raw.iter()
            .map(|v| {
                let uid = match v.first() {
                    Some(Value::Integer(i)) => *i,
                    _ => -1,
                };
                rows::name_row(v).map_err(|p| self.bad_row("names", uid, p))
            })
            .collect()
    }
}

/// Every row of `sql` as (token, all columns as dynamic values). The first column must be the
/// token, an `INTEGER PRIMARY KEY` (so always an integer).
fn query_all(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<(i64, Vec<Value>)>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let columns = stmt.column_count();
    let rows = stmt.query_map([], |r| {
        let values = (0..columns)
            .map(|i| r.get::<_, Value>(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((r.get::<_, i64>(0)?, values))
    })?;
    rows.collect()
}
