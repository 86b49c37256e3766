//! The configuration file (`/etc/berth/berth.toml` for the system instance, or `--config`).
//!
//! ```toml
//! pool = "40000-49999"          # wildcard pool (default: the kernel's ephemeral range)
//! max_connections = 4096
//! admin_groups = ["berth-admin"] # administrators besides root and the daemon's user
//! grace_period_s = 10           # how long a restarted daemon holds runtime reservations
//! idle_timeout_s = 300          # close a silent connection that holds nothing (0: never)
//! portserver = "@unittest-portserver"  # the portpicker endpoint; false (or "off") for none
//! reserved_ports_config = ["/etc/sysctl.d"]  # where administrators list their own
//!                               # ip_local_reserved_ports entries (default: sysctl's places)
//! listed_ahead = 128            # pool ports kept listed ahead of grants (kernel sync on)
//! reuse_cool_down_s = 60        # wildcard picks pass by ports freed this recently
//! max_names_per_user = 64       # names whose block each user's memory keeps
//! forget_names_after_days = 90  # names not given for this long are forgotten
//!
//! [privileged]                  # who may reserve and bind ports below
//! allow_users = ["www-data", 1001]   # net.ipv4.ip_unprivileged_port_start (root always may)
//! allow_groups = ["web"]
//! ```
//!
//! Unknown keys are errors, so a typo never silently weakens a policy.

use std::path::{Path, PathBuf};

use berth_core::Pool;
use serde::Deserialize;
use thiserror::Error;

use crate::accounts;
use crate::config::Config;

/// The largest configuration file read; anything bigger is not a berth configuration.
const MAX_CONFIG_LEN: u64 = 1024 * 1024;

/// Why a configuration file was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// It could not be read.
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// It is not valid.
    #[error("invalid configuration {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line where known.
        message: String,
    },
}

/// A user or group: a name or a numeric id.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Account {
    Id(u32),
    Name(String),
}

/// The `[privileged]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Privileged {
    #[serde(default)]
    allow_users: Vec<Account>,
    #[serde(default)]
    allow_groups: Vec<Account>,
}

/// The `[quota]` table: limits per user (uid) on runtime reservations, and the part of the
/// ephemeral range non-administrators share.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaTable {
    max_reservations: Option<Limit>,
    max_ports: Option<Limit>,
    max_held_ports: Option<Limit>,
    /// Percent of the ephemeral range, or "off".
    ephemeral_share: Option<Limit>,
}

/// A limit: a number, or a word ("unlimited" for a quota, "off" for the share).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Limit {
    Number(i64),
    Word(String),
}

/// The file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The file's text, to name the line of a value `apply` refuses.
    #[serde(skip)]
    text: String,
    pool: Option<String>,
    max_connections: Option<usize>,
    /// Connections of one user at once (root and the daemon's own user are exempt).
    max_connections_per_uid: Option<usize>,
    /// Groups whose members administer the daemon (create/delete persistent reservations,
    /// release any reservation, see every owner).
    #[serde(default)]
    admin_groups: Vec<Account>,
    /// Seconds a restarted daemon holds the previous daemon's runtime reservations for their
    /// owners to re-claim.
    grace_period_s: Option<u64>,
    /// Seconds a connection that holds nothing may stay silent before it is closed; 0 for
    /// never.
    idle_timeout_s: Option<u64>,
    #[serde(default)]
    privileged: Privileged,
    /// Per-user limits on runtime reservations (administrators are exempt).
    quota: Option<QuotaTable>,
    /// "auto", "on" or "off": whether to keep net.ipv4.ip_local_reserved_ports.
    kernel_sync: Option<String>,
    /// Whether the daemon holds the ports of reservations acquired with hold.
    hold: Option<bool>,
    /// The portserver endpoint: an address (`@name` or a path), `true` for the default
    /// address, `false` or "off" for none.
    portserver: Option<PortserverKey>,
    /// The sysctl files and directories where administrators list their own
    /// `net.ipv4.ip_local_reserved_ports` entries (absolute paths; at most 64).
    reserved_ports_config: Option<Vec<PathBuf>>,
    /// Ports of the pool listed ahead of grants while kernel sync runs (0 for none).
    listed_ahead: Option<u32>,
    /// Seconds a freed port is passed by in wildcard picks while others fit (0 for none).
    reuse_cool_down_s: Option<u64>,
    /// Names whose block each user's memory keeps.
    max_names_per_user: Option<u64>,
    /// Days after which a name not given is forgotten.
    forget_names_after_days: Option<u64>,
    /// Whether enforce mode may be asked for (`false` forbids it).
    enforce: Option<bool>,
    /// The cgroup v2 directory enforce mode's programs attach to (absolute; default: the
    /// hierarchy's root).
    enforce_attach: Option<PathBuf>,
    /// Where `berth run --enforce` cgroups are made (absolute).
    enforce_cgroups: Option<PathBuf>,
    /// The BPF filesystem where enforce mode's programs are pinned (absolute).
    enforce_pins: Option<PathBuf>,
    /// Seconds the programs keep refusing binds after the daemon's last renewal.
    enforce_lease_s: Option<u64>,
    /// Whether an owner cgroup's `connect()` on an unbound socket is bound into its block.
    enforce_steer_connect: Option<bool>,
}

/// The `portserver` key.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PortserverKey {
    On(bool),
    Address(String),
}

impl ConfigFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_CONFIG_LEN {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: format!(
                    "{len} bytes is more than a configuration file may hold ({MAX_CONFIG_LEN})"
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let mut file: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        file.text = text;
        Ok(file)
    }

    /// The `kernel_sync` key, if given and valid (`apply` reports an invalid one).
    pub fn kernel_sync(&self) -> Option<crate::KernelSync> {
        self.kernel_sync.as_deref().and_then(|s| s.parse().ok())
    }

    /// Applies the file to `config`, resolving user and group names.
    pub fn apply(&self, config: &mut Config, path: &Path) -> Result<(), ConfigError> {
        // Names the line of `key` (every key is set once, and no two tables share a key name).
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message: match line_of(&self.text, key) {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            },
        };
        if let Some(pool) = &self.pool {
            config.pool = pool
                .parse::<Pool>()
                .map_err(|e| invalid("pool", format!("pool: {e}")))?;
            config.pool_follows_ephemeral = false;
        }
        if let Some(n) = self.max_connections {
            if n == 0 {
                return Err(invalid(
                    "max_connections",
                    "max_connections must be at least 1".into(),
                ));
            }
            config.max_connections = n;
        }
        if let Some(n) = self.max_connections_per_uid {
            if n == 0 {
                return Err(invalid(
                    "max_connections_per_uid",
                    "max_connections_per_uid must be at least 1".into(),
                ));
            }
            config.max_connections_per_uid = n;
        }
        if let Some(secs) = self.grace_period_s {
            if secs > 3600 {
                return Err(invalid(
                    "grace_period_s",
                    format!(
                        "grace_period_s = {secs} is more than an hour; owners re-claim within seconds"
                    ),
                ));
            }
            config.grace = std::time::Duration::from_secs(secs);
        }
        if let Some(secs) = self.idle_timeout_s {
            config.idle_timeout =
                idle_timeout(secs).map_err(|e| invalid("idle_timeout_s", e.to_string()))?;
        }
        if let Some(mode) = &self.kernel_sync {
            config.kernel_sync = mode.parse().map_err(|e: crate::kernel::UnknownMode| {
                invalid("kernel_sync", format!("kernel_sync: {e}"))
            })?;
        }
        if let Some(hold) = self.hold {
            config.hold = hold;
        }
        if let Some(enforce) = self.enforce {
            config.enforce.allowed = enforce;
        }
        if let Some(steer) = self.enforce_steer_connect {
            config.enforce.steer_connect = steer;
        }
        if let Some(secs) = self.enforce_lease_s {
            if !(1..=3600).contains(&secs) {
                return Err(invalid(
                    "enforce_lease_s",
                    format!("enforce_lease_s = {secs}: from 1 to 3600 seconds"),
                ));
            }
            config.enforce.lease = std::time::Duration::from_secs(secs);
        }
        for (key, value, slot) in [
            (
                "enforce_attach",
                &self.enforce_attach,
                &mut config.enforce.attach,
            ),
            (
                "enforce_cgroups",
                &self.enforce_cgroups,
                &mut config.enforce.cgroups,
            ),
            ("enforce_pins", &self.enforce_pins, &mut config.enforce.pins),
        ] {
            if let Some(dir) = value {
                if !dir.is_absolute() {
                    return Err(invalid(
                        key,
                        format!("{key}: {} is not an absolute path", dir.display()),
                    ));
                }
                *slot = Some(dir.clone());
            }
        }
        if let Some(places) = &self.reserved_ports_config {
            if places.len() > 64 {
                return Err(invalid(
                    "reserved_ports_config",
                    format!(
                        "reserved_ports_config lists {} places; at most 64",
                        places.len()
                    ),
                ));
            }
            if let Some(relative) = places.iter().find(|p| !p.is_absolute()) {
                return Err(invalid(
                    "reserved_ports_config",
                    format!(
                        "reserved_ports_config: {} is not an absolute path",
                        relative.display()
                    ),
                ));
            }
            config.configured_reserved_ports = places.clone();
        }
        if let Some(secs) = self.reuse_cool_down_s {
            if secs > 3600 {
                return Err(invalid(
                    "reuse_cool_down_s",
                    format!(
                        "reuse_cool_down_s = {secs} is more than an hour; TIME_WAIT lasts 60 s on Linux (0 for no cool-down)"
                    ),
                ));
            }
            config.reuse_cool_down = std::time::Duration::from_secs(secs);
        }
        if let Some(n) = self.max_names_per_user {
            config.max_names_per_user = usize::try_from(n)
                .ok()
                .filter(|&n| (1..=crate::config::MAX_NAMES_PER_USER).contains(&n))
                .ok_or_else(|| {
                    invalid(
                        "max_names_per_user",
                        format!(
                            "max_names_per_user = {n} is out of range; give 1 to {}",
                            crate::config::MAX_NAMES_PER_USER
                        ),
                    )
                })?;
        }
        if let Some(days) = self.forget_names_after_days {
            if !(1..=3650).contains(&days) {
                return Err(invalid(
                    "forget_names_after_days",
                    format!("forget_names_after_days = {days} is out of range; give 1 to 3650"),
                ));
            }
            config.forget_names_after = std::time::Duration::from_secs(days * 24 * 3600);
        }
        if let Some(ahead) = self.listed_ahead {
            config.listed_ahead = u16::try_from(ahead)
                .ok()
                .filter(|&n| n <= crate::config::MAX_LISTED_AHEAD)
                .ok_or_else(|| {
                    invalid(
                        "listed_ahead",
                        format!(
                            "listed_ahead = {ahead} is more than {}; list fewer ports ahead (0 for none)",
                            crate::config::MAX_LISTED_AHEAD
                        ),
                    )
                })?;
        }
        match &self.portserver {
            None => {}
            Some(PortserverKey::On(false)) => config.portserver = None,
            Some(PortserverKey::Address(off)) if off == "off" || off == "none" => {
                config.portserver = None;
            }
            Some(key) => {
                let address = match key {
                    PortserverKey::Address(a) => a.as_str(),
                    PortserverKey::On(_) => crate::portserver::DEFAULT_ADDRESS,
                };
                let address = address
                    .parse()
                    .map_err(|e: crate::portserver::AddressError| {
                        invalid("portserver", format!("portserver: {e}"))
                    })?;
                config.portserver = Some(crate::portserver::Endpoint::new(address));
            }
        }
        if let Some(q) = &self.quota {
            let quota = &mut config.quota;
            for (key, value, slot) in [
                (
                    "max_reservations",
                    &q.max_reservations,
                    &mut quota.max_reservations,
                ),
                ("max_ports", &q.max_ports, &mut quota.max_ports),
                (
                    "max_held_ports",
                    &q.max_held_ports,
                    &mut quota.max_held_ports,
                ),
            ] {
                if let Some(value) = value {
                    *slot = quota_limit(value)
                        .map_err(|e| invalid(key, format!("quota: {key} {e}")))?;
                }
            }
            if let Some(share) = &q.ephemeral_share {
                config.ephemeral_share = share_percent(share).map_err(|e| {
                    invalid("ephemeral_share", format!("quota: ephemeral_share {e}"))
                })?;
            }
        }
        for account in &self.admin_groups {
            let gid = match account {
                Account::Id(id) => *id,
                Account::Name(name) => accounts::group_id(name).ok_or_else(|| {
                    invalid(
                        "admin_groups",
                        format!("admin_groups: no group named {name:?} in /etc/group"),
                    )
                })?,
            };
            config.admin_groups.push(gid);
        }
        for account in &self.privileged.allow_users {
            let uid = match account {
                Account::Id(id) => *id,
                Account::Name(name) => accounts::user_id(name).ok_or_else(|| {
                    invalid(
                        "allow_users",
                        format!("privileged.allow_users: no user named {name:?} in /etc/passwd"),
                    )
                })?,
            };
            config.privileged.allow_users.push(uid);
        }
        for account in &self.privileged.allow_groups {
            let gid = match account {
                Account::Id(id) => *id,
                Account::Name(name) => accounts::group_id(name).ok_or_else(|| {
                    invalid(
                        "allow_groups",
                        format!("privileged.allow_groups: no group named {name:?} in /etc/group"),
                    )
                })?,
            };
            config.privileged.allow_groups.push(gid);
        }
        Ok(())
    }
}

/// The line (from 1) on which `key` is set in `text`, if it is.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// The most an idle timeout may be, in seconds (a day).
pub const MAX_IDLE_TIMEOUT_S: u64 = 24 * 3600;

/// A value the configuration (or the command line) gives that is out of bounds. The quota and
/// share messages follow the key's name (`quota: max_ports = 0: …`), which the caller writes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BadValue {
    /// An idle timeout longer than [`MAX_IDLE_TIMEOUT_S`].
    #[error("idle_timeout_s = {0} is more than a day; use 0 to never close idle connections")]
    IdleTimeoutTooLong(u64),
    /// A quota above `u32::MAX`.
    #[error("= {0} is more than {max} (write \"unlimited\" for no limit)", max = u32::MAX)]
    QuotaTooLarge(i64),
    /// A quota below 1.
    #[error("= {0}: a quota must be at least 1 (write \"unlimited\" for no limit)")]
    QuotaTooSmall(i64),
    /// A quota given as a word other than "unlimited".
    #[error("= {0:?}: write a number of at least 1, or \"unlimited\"")]
    QuotaWord(String),
    /// An ephemeral share outside 0-100.
    #[error("= {0}: write a percentage from 0 to 100, or \"off\"")]
    ShareOutOfRange(i64),
    /// An ephemeral share given as a word other than "off".
    #[error("= {0:?}: write a percentage from 0 to 100, or \"off\"")]
    ShareWord(String),
}

/// The idle timeout of `secs` seconds (0: never), or why it is refused.
pub fn idle_timeout(secs: u64) -> Result<Option<std::time::Duration>, BadValue> {
    match secs {
        0 => Ok(None),
        s if s > MAX_IDLE_TIMEOUT_S => Err(BadValue::IdleTimeoutTooLong(s)),
        s => Ok(Some(std::time::Duration::from_secs(s))),
    }
}

/// A `[quota]` limit: at least 1, or "unlimited".
fn quota_limit(value: &Limit) -> Result<u32, BadValue> {
    match value {
        Limit::Number(n) if *n >= 1 => u32::try_from(*n).map_err(|_| BadValue::QuotaTooLarge(*n)),
        Limit::Number(n) => Err(BadValue::QuotaTooSmall(*n)),
        Limit::Word(word) if word == "unlimited" => Ok(u32::MAX),
        Limit::Word(word) => Err(BadValue::QuotaWord(word.clone())),
    }
}

/// The ephemeral share: a percentage from 0 to 100, or "off" (no share is kept back).
fn share_percent(value: &Limit) -> Result<Option<u8>, BadValue> {
    match value {
        Limit::Number(n) => u8::try_from(*n)
            .ok()
            .filter(|p| *p <= 100)
            .map(Some)
            .ok_or(BadValue::ShareOutOfRange(*n)),
        Limit::Word(word) if word == "off" => Ok(None),
        Limit::Word(word) => Err(BadValue::ShareWord(word.clone())),
    }
}

#[cfg(test)]
mod tests;
