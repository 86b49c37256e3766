//! User and group names from `/etc/passwd` and `/etc/group`, for the configuration file.
//!
//! Read directly rather than through NSS: a daemon's policy should not depend on a directory
//! service answering at start-up. Numeric ids always work.

use std::path::Path;

/// The (name, id) entries of a colon-separated account file (`name:x:id:…`).
fn entries(file: &Path) -> Vec<(String, u32)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let id = fields.nth(1)?.parse().ok()?;
            Some((name.to_owned(), id))
        })
        .collect()
}

/// The id of `name` in the account file `file`.
fn lookup(file: &Path, name: &str) -> Option<u32> {
    entries(file)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, id)| id)
}

/// The name of the entry whose id is `id` in the account file `file`.
fn name_of(file: &Path, id: u32) -> Option<String> {
    entries(file)
        .into_iter()
        .find(|&(_, i)| i == id)
        .map(|(n, _)| n)
}

/// The name of user `uid`, for listings.
pub fn user_name(uid: u32) -> Option<String> {
    name_of(Path::new("/etc/passwd"), uid)
}

/// The name of group `gid`, for listings.
pub fn group_name(gid: u32) -> Option<String> {
    name_of(Path::new("/etc/group"), gid)
}

/// The uid of user `name`.
pub fn user_id(name: &str) -> Option<u32> {
    lookup(Path::new("/etc/passwd"), name)
}

/// The gid of group `name`.
pub fn group_id(name: &str) -> Option<u32> {
    lookup(Path::new("/etc/group"), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_root_and_not_strangers() {
        assert_eq!(user_id("root"), Some(0));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(user_id("no-such-user-berth"), None);
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(group_name(0).as_deref(), Some("root"));
    }
}
