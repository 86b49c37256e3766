//! The rows the store keeps, and how their values map to SQLite columns.
//!
//! SQLite integers are signed 64-bit. Tokens, timestamps and process start times are `u64`;
//! they are stored as the `i64` with the same 64 bits (`to_sql`) and read back the same way
//! (`from_sql`), so every value round-trips, including tokens >= 2^63, which the sqlite3 tool
//! shows as negative numbers (`printf('0x%016x', token)` prints them as berth does). Ports,
//! counts and ids are stored as their plain values.

use berth_core::{Label, Name, Owner, PortRange, Protocol, Token};
use rusqlite::types::Value;

/// A persistent reservation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistentRow {
    /// Its token, stable across restarts.
    pub token: Token,
    /// Which port space it lives in.
    pub protocol: Protocol,
    /// The reserved ports.
    pub range: PortRange,
    /// Users (uids) besides administrators who may use it. Stored as a set: [`crate::Store::load`]
    /// returns it sorted and without duplicates.
    pub allow_users: Vec<u32>,
    /// Groups (gids) whose members may use it; a set, like `allow_users`.
    pub allow_groups: Vec<u32>,
    /// When it was created, in milliseconds since the Unix epoch (for listings).
    pub created_at_ms: u64,
    /// The administrator who created it (for listings and audits).
    pub created_by_uid: u32,
    /// What it is for (column `label`, NULL for none).
    pub label: Option<Label>,
    /// Its host-wide name (column `name`, NULL for none).
    pub name: Option<Name>,
}

/// The block a user's runtime name was last given (table `names`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRow {
    /// The user whose name it is.
    pub uid: u32,
    /// The name.
    pub name: Name,
    /// Which port space.
    pub protocol: Protocol,
    /// The block it was last given.
    pub range: PortRange,
    /// When it was last given or used, in milliseconds since the Unix epoch.
    pub last_used_ms: u64,
}

/// A runtime reservation as journaled, so that a restarted daemon can hold it for its owner
/// until the owner re-claims it (or is found dead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRow {
    /// Its token; the client library re-claims the reservation with it.
    pub token: Token,
    /// Which port space it lives in.
    pub protocol: Protocol,
    /// The reserved ports.
    pub range: PortRange,
    /// The owning process: after a restart, a reservation whose owner (pid *and* start time)
    /// no longer runs is freed.
    pub owner: Owner,
    /// When it was acquired, in milliseconds since the Unix epoch.
    pub acquired_at_ms: u64,
    /// Whether it lives as long as its owner process (it was handed to that process), rather
    /// than as long as the owner's connection: such a reservation needs no re-claim after a
    /// restart.
    pub process: bool,
    /// Whether the daemon holds its ports.
    pub held: bool,
    /// What it is for, in its owner's words.
    pub label: Option<Label>,
    /// Its name (unique among its user's runtime reservations of its protocol).
    pub name: Option<Name>,
    /// The cgroup (v2, by id) it lives as long as (enforce mode), instead of its owner process
    /// or connection; `process` is then false.
    pub cgroup: Option<u64>,
}

/// One change to the runtime journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalOp {
    /// A runtime reservation now exists. Journaling a token that is journaled already replaces
    /// its row, so replaying an operation is harmless.
    Insert(JournalRow),
    /// The runtime reservation is gone. Removing a token that is not journaled does nothing.
    Remove(Token),
}

/// The `i64` with the same bits as `value` (see the module docs).
pub(crate) fn to_sql(value: u64) -> i64 {
    value.cast_signed()
}

/// The `u64` with the same bits as `value`: the inverse of [`to_sql`].
pub(crate) fn from_sql(value: i64) -> u64 {
    value.cast_unsigned()
}

/// A token's column value.
pub(crate) fn token_to_sql(token: Token) -> i64 {
    to_sql(token.get())
}

/// What is wrong with a stored value, phrased for [`crate::StoreError::BadRow`].
pub(crate) type Problem = String;

/// The integer in `column`, or why the column does not hold one.
pub(crate) fn integer(column: &str, value: &Value) -> Result<i64, Problem> {
    match value {
        Value::Integer(i) => Ok(*i),
        other => Err(format!(
            "column {column} holds {} instead of an integer",
            describe(other)
        )),
    }
}

/// The text in `column`, or why the column does not hold text.
pub(crate) fn text<'a>(column: &str, value: &'a Value) -> Result<&'a str, Problem> {
    match value {
        Value::Text(s) => Ok(s),
        other => Err(format!(
            "column {column} holds {} instead of text",
            describe(other)
        )),
    }
}

/// The token a row's key names; 0 is never a token.
pub(crate) fn token(raw: i64) -> Result<Token, Problem> {
    Token::new(from_sql(raw)).ok_or_else(|| "token 0 is never a valid token".to_owned())
}

/// A protocol name as stored (`'tcp'` or `'udp'`).
pub(crate) fn protocol(column: &str, value: &Value) -> Result<Protocol, Problem> {
    let name = text(column, value)?;
    name.parse()
        .map_err(|_| format!("column {column} names unknown protocol {name:?}"))
}

/// A `(start, count)` pair as stored.
pub(crate) fn range(start: &Value, count: &Value) -> Result<PortRange, Problem> {
    let start = integer("start", start)?;
    let count = integer("count", count)?;
    let bad = || format!("start {start}, count {count} is not a valid port range");
    let (Ok(s), Ok(c)) = (u16::try_from(start), u16::try_from(count)) else {
        return Err(bad());
    };
    PortRange::new(s, c).map_err(|e| format!("{}: {e}", bad()))
}

/// A 32-bit id (uid, gid, pid) as stored.
pub(crate) fn id32(column: &str, value: &Value) -> Result<u32, Problem> {
    let raw = integer(column, value)?;
    u32::try_from(raw).map_err(|_| format!("column {column} holds {raw}, not a 32-bit id"))
}

/// A `u64` stored bit for bit (timestamps, start times).
pub(crate) fn u64_bits(column: &str, value: &Value) -> Result<u64, Problem> {
    integer(column, value).map(from_sql)
}

/// A `persistent` row (token, protocol, start, count, created_at_ms, created_by_uid, label,
/// name), with empty allow lists (they come from `persistent_allow`).
pub(crate) fn persistent(key: i64, values: &[Value]) -> Result<PersistentRow, Problem> {
    let [_, protocol_, start, count, created_at_ms, created_by_uid, label_, name_] = values else {
        return Err(columns(values));
    };
    Ok(PersistentRow {
        token: token(key)?,
        protocol: protocol("protocol", protocol_)?,
        range: range(start, count)?,
        allow_users: Vec::new(),
        allow_groups: Vec::new(),
        created_at_ms: u64_bits("created_at_ms", created_at_ms)?,
        created_by_uid: id32("created_by_uid", created_by_uid)?,
        label: label("label", label_)?,
        name: match name_ {
            Value::Null => None,
            other => Some(name("name", other)?),
        },
    })
}

/// A name as stored: text that is a valid, non-empty name.
pub(crate) fn name(column: &str, value: &Value) -> Result<Name, Problem> {
    Name::parse(text(column, value)?)
        .map_err(|e| format!("column {column}: {e}"))?
        .ok_or_else(|| format!("column {column} holds an empty name"))
}

/// A `names` row (uid, name, protocol, start, count, last_used_ms).
pub(crate) fn name_row(values: &[Value]) -> Result<NameRow, Problem> {
    let [uid, name_, protocol_, start, count, last_used_ms] = values else {
        return Err(columns(values));
    };
    Ok(NameRow {
        uid: id32("uid", uid)?,
        name: name("name", name_)?,
        protocol: protocol("protocol", protocol_)?,
        range: range(start, count)?,
        last_used_ms: u64_bits("last_used_ms", last_used_ms)?,
    })
}

/// A label as stored: NULL for none, else text that is a valid label, or was one for an
/// earlier release ([`Label::from_stored`]).
pub(crate) fn label(column: &str, value: &Value) -> Result<Option<Label>, Problem> {
    match value {
        Value::Null => Ok(None),
        other => {
            Label::from_stored(text(column, other)?).map_err(|e| format!("column {column}: {e}"))
        }
    }
}

/// A `runtime_journal` row (token, protocol, start, count, pid, uid, gid, start_time, command,
/// acquired_at_ms). A command longer than [`berth_core::owner::MAX_COMMAND_LEN`] is cut.
pub(crate) fn journal(key: i64, values: &[Value]) -> Result<JournalRow, Problem> {
    let [_, protocol_, start, count, pid, uid, gid, start_time, command, acquired_at_ms, process, held] =
        values
    else {
        return Err(columns(values));
    };
    Ok(JournalRow {
        token: token(key)?,
        protocol: protocol("protocol", protocol_)?,
        range: range(start, count)?,
        owner: Owner {
            pid: id32("pid", pid)?,
            uid: id32("uid", uid)?,
            gid: id32("gid", gid)?,
            start_time: u64_bits("start_time", start_time)?,
            command: Owner::printable_command(text("command", command)?).into(),
        },
        acquired_at_ms: u64_bits("acquired_at_ms", acquired_at_ms)?,
        process: u64_bits("process", process)? != 0,
        held: u64_bits("held", held)? != 0,
        label: None,
        name: None,
        cgroup: None,
    })
}

/// One entry of an allow list.
pub(crate) enum Allow {
    /// A uid.
    User(u32),
    /// A gid.
    Group(u32),
}

/// A `persistent_allow` row (token, kind, id).
pub(crate) fn allow(values: &[Value]) -> Result<Allow, Problem> {
    let [_, kind, id] = values else {
        return Err(columns(values));
    };
    let id = id32("id", id)?;
    match text("kind", kind)? {
        "user" => Ok(Allow::User(id)),
        "group" => Ok(Allow::Group(id)),
        other => Err(format!("column kind holds unknown kind {other:?}")),
    }
}

fn columns(values: &[Value]) -> Problem {
    format!("the query returned {} columns", values.len())
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "NULL",
        Value::Integer(_) => "an integer",
        Value::Real(_) => "a real number",
        Value::Text(_) => "text",
        Value::Blob(_) => "a blob",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_cast_round_trips_the_extremes() {
        for v in [1, u64::MAX, 1 << 63, (1 << 63) - 1, (1 << 63) + 1] {
            assert_eq!(from_sql(to_sql(v)), v);
        }
        assert_eq!(to_sql(u64::MAX), -1);
        assert_eq!(to_sql(1 << 63), i64::MIN);
    }

    #[test]
    fn range_rejects_what_port_range_rejects() {
        let ok = range(&Value::Integer(8080), &Value::Integer(2));
        assert_eq!(ok, PortRange::new(8080, 2).map_err(|e| e.to_string()));
        for (s, c) in [(0, 1), (1, 0), (65535, 2), (-1, 1), (70000, 1), (1, 70000)] {
            assert!(
                range(&Value::Integer(s), &Value::Integer(c)).is_err(),
                "{s},{c}"
            );
        }
        assert!(range(&Value::Text("80".into()), &Value::Integer(1)).is_err());
    }

    #[test]
    fn protocol_and_ids() {
        assert_eq!(
            protocol("protocol", &Value::Text("udp".into())),
            Ok(Protocol::Udp)
        );
        assert!(protocol("protocol", &Value::Text("sctp".into())).is_err());
        assert!(protocol("protocol", &Value::Integer(6)).is_err());
        assert_eq!(id32("uid", &Value::Integer(4_294_967_295)), Ok(u32::MAX));
        assert!(id32("uid", &Value::Integer(4_294_967_296)).is_err());
        assert!(id32("uid", &Value::Integer(-1)).is_err());
        assert!(token(0).is_err());
        assert_eq!(token(-1).map(Token::get), Ok(u64::MAX));
    }
}
