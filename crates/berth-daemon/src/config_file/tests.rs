use super::*;

fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn base() -> Config {
    Config::new("/x".into(), "/y".into(), Pool::LINUX_DEFAULT)
}

#[test]
fn applies_pool_limits_and_accounts() {
    let (_d, path) = write(
        "pool = \"40000-40099\"\nmax_connections = 7\nadmin_groups = [\"root\", 5]\ngrace_period_s = 3\nhold = false\nidle_timeout_s = 42\n[privileged]\nallow_users = [\"root\", 1001]\nallow_groups = [33]\n",
    );
    let mut config = base();
    ConfigFile::load(&path)
        .unwrap()
        .apply(&mut config, &path)
        .unwrap();
    assert_eq!(config.pool, Pool::new(40000, 40099).unwrap());
    assert_eq!(config.max_connections, 7);
    assert_eq!(config.privileged.allow_users, vec![0, 1001]);
    assert_eq!(config.privileged.allow_groups, vec![33]);
    assert_eq!(config.admin_groups, vec![0, 5]);
    assert_eq!(config.grace, std::time::Duration::from_secs(3));
    assert!(!config.hold);
    assert_eq!(
        config.idle_timeout,
        Some(std::time::Duration::from_secs(42))
    );
}

#[test]
fn an_idle_timeout_of_zero_means_never_and_more_than_a_day_is_refused() {
    let (_d, path) = write("idle_timeout_s = 0\n");
    let mut config = base();
    ConfigFile::load(&path)
        .unwrap()
        .apply(&mut config, &path)
        .unwrap();
    assert_eq!(config.idle_timeout, None);
    let (_d, path) = write("idle_timeout_s = 86401\n");
    let err = ConfigFile::load(&path)
        .unwrap()
        .apply(&mut base(), &path)
        .unwrap_err();
    assert!(err.to_string().contains("idle_timeout_s"), "{err}");
    assert_eq!(
        base().idle_timeout,
        Some(crate::config::DEFAULT_IDLE_TIMEOUT)
    );
}

#[test]
fn quotas_have_safe_defaults_and_take_numbers_unlimited_and_off() {
    let config = base();
    assert_eq!(config.quota, crate::config::DEFAULT_QUOTA);
    assert_eq!(config.ephemeral_share, Some(50));
    let (_d, path) = write(
        "[quota]\nmax_reservations = 3\nmax_ports = \"unlimited\"\nmax_held_ports = 7\nephemeral_share = 25\n",
    );
    let mut config = base();
    ConfigFile::load(&path)
        .unwrap()
        .apply(&mut config, &path)
        .unwrap();
    assert_eq!(
        config.quota,
        berth_core::Quota {
            max_reservations: 3,
            max_ports: u32::MAX,
            max_held_ports: 7
        }
    );
    assert_eq!(config.ephemeral_share, Some(25));
    let (_d, path) = write("[quota]\nephemeral_share = \"off\"\n");
    let mut config = base();
    ConfigFile::load(&path)
        .unwrap()
        .apply(&mut config, &path)
        .unwrap();
    assert_eq!(config.ephemeral_share, None);
    assert_eq!(
        config.quota,
        crate::config::DEFAULT_QUOTA,
        "untouched keys keep their defaults"
    );
    for (text, key) in [
        (
            "[quota]\nephemeral_share = 101\n",
            "line 2: quota: ephemeral_share = 101",
        ),
        (
            "[quota]\nmax_held_ports = -1\n",
            "line 2: quota: max_held_ports = -1",
        ),
        ("[quota]\nmax_ports = \"lots\"\n", "max_ports = \"lots\""),
    ] {
        let (_d, path) = write(text);
        let err = ConfigFile::load(&path)
            .unwrap()
            .apply(&mut base(), &path)
            .unwrap_err();
        assert!(err.to_string().contains(key), "{text:?}: {err}");
    }
}

/// A value refused after parsing names its line, like a parse error does.
#[test]
fn a_refused_value_names_its_line() {
    let text = "pool = \"40000-40099\"\n\n# comment\ngrace_period_s = 7200\n";
    let (_d, path) = write(text);
    let err = ConfigFile::load(&path)
        .unwrap()
        .apply(&mut base(), &path)
        .unwrap_err();
    assert!(err.to_string().contains("line 4: grace_period_s"), "{err}");
    let (_d, path) = write("[quota]\nmax_ports = 5\n  max_reservations = 0\n");
    let err = ConfigFile::load(&path)
        .unwrap()
        .apply(&mut base(), &path)
        .unwrap_err();
    assert!(err.to_string().contains("line 3: quota"), "{err}");
    let (_d, path) = write("[privileged]\nallow_groups = [\"no-such-group-berth\"]\n");
    let err = ConfigFile::load(&path)
        .unwrap()
        .apply(&mut base(), &path)
        .unwrap_err();
    assert!(
        err.to_string().contains("line 2: privileged.allow_groups"),
        "{err}"
    );
}

#[test]
fn refuses_typos_unknown_names_and_bad_values() {
    let (_d, path) = write("[privileged]\nallow_user = [1]\n");
    let err = ConfigFile::load(&path).unwrap_err();
    assert!(err.to_string().contains("allow_user"), "{err}");

    let (_d, path) = write("[privileged]\nallow_users = [\"no-such-user-berth\"]\n");
    let err = ConfigFile::load(&path)
        .unwrap()
        .apply(&mut base(), &path)
        .unwrap_err();
    assert!(err.to_string().contains("no-such-user-berth"), "{err}");

    let (_d, path) = write("pool = \"9-1\"\n");
    let err = ConfigFile::load(&path)
        .unwrap()
        .apply(&mut base(), &path)
        .unwrap_err();
    assert!(err.to_string().contains("pool"), "{err}");
}

#[test]
fn the_portserver_key_turns_the_endpoint_on_moves_it_or_turns_it_off() {
    use crate::portserver::{Address, Endpoint, DEFAULT_ADDRESS};
    let default_on = || {
        let mut c = base();
        c.portserver = Some(Endpoint {
            optional: true,
            ..Endpoint::new(DEFAULT_ADDRESS.parse().unwrap())
        });
        c
    };
    let applied = |text: &str| {
        let (_d, path) = write(text);
        let mut config = default_on();
        ConfigFile::load(&path)?.apply(&mut config, &path)?;
        Ok::<_, ConfigError>(config.portserver)
    };
    for off in ["portserver = false\n", "portserver = \"off\"\n"] {
        assert!(applied(off).unwrap().is_none(), "{off}");
    }
    let moved = applied("portserver = \"/run/ps.sock\"\n").unwrap().unwrap();
    assert_eq!(moved.address, Address::Path("/run/ps.sock".into()));
    assert!(!moved.optional, "asked for explicitly, so required");
    let on = applied("portserver = true\n").unwrap().unwrap();
    assert_eq!(on.address.to_string(), DEFAULT_ADDRESS);
    // Nothing said: the default stays.
    assert!(applied("").unwrap().unwrap().optional);
    let err = applied("portserver = \"@\"\n").unwrap_err();
    assert!(err.to_string().contains("portserver"), "{err}");
}

#[test]
fn a_missing_file_says_which() {
    let err = ConfigFile::load(Path::new("/nonexistent/berth.toml")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/berth.toml"), "{err}");
}

#[test]
fn bad_values_read_as_the_strings_did() {
    assert_eq!(
        idle_timeout(86_401).unwrap_err().to_string(),
        "idle_timeout_s = 86401 is more than a day; use 0 to never close idle connections"
    );
    let quota = |value| quota_limit(&value).unwrap_err().to_string();
    assert_eq!(
        quota(Limit::Number(5_000_000_000)),
        "= 5000000000 is more than 4294967295 (write \"unlimited\" for no limit)"
    );
    assert_eq!(
        quota(Limit::Number(0)),
        "= 0: a quota must be at least 1 (write \"unlimited\" for no limit)"
    );
    assert_eq!(
        quota(Limit::Word("lots".into())),
        "= \"lots\": write a number of at least 1, or \"unlimited\""
    );
    let share = |value| share_percent(&value).unwrap_err().to_string();
    assert_eq!(
        share(Limit::Number(101)),
        "= 101: write a percentage from 0 to 100, or \"off\""
    );
    assert_eq!(
        share(Limit::Word("on".into())),
        "= \"on\": write a percentage from 0 to 100, or \"off\""
    );
}

#[test]
fn listed_ahead_is_read_and_bounded() {
    assert_eq!(base().listed_ahead, crate::config::DEFAULT_LISTED_AHEAD);
    let (_d, path) = write("listed_ahead = 0\n");
    let mut config = base();
    ConfigFile::load(&path)
        .unwrap()
        .apply(&mut config, &path)
        .unwrap();
    assert_eq!(config.listed_ahead, 0);
    for text in ["listed_ahead = 1025\n", "listed_ahead = 70000\n"] {
        let (_d, path) = write(text);
        let err = ConfigFile::load(&path)
            .unwrap()
            .apply(&mut base(), &path)
            .unwrap_err();
        assert!(
            err.to_string().contains("line 1: listed_ahead =")
                && err.to_string().contains("more than 1024"),
            "{text:?}: {err}"
        );
    }
}

#[test]
fn reuse_cool_down_is_read_and_bounded() {
    assert_eq!(
        base().reuse_cool_down,
        crate::config::DEFAULT_REUSE_COOL_DOWN
    );
    let (_d, path) = write("reuse_cool_down_s = 0\n");
    let mut config = base();
    ConfigFile::load(&path)
        .unwrap()
        .apply(&mut config, &path)
        .unwrap();
    assert_eq!(config.reuse_cool_down, std::time::Duration::ZERO);
    let (_d, path) = write("reuse_cool_down_s = 3601\n");
    let err = ConfigFile::load(&path)
        .unwrap()
        .apply(&mut base(), &path)
        .unwrap_err();
    assert!(
        err.to_string().contains("line 1: reuse_cool_down_s = 3601"),
        "{err}"
    );
}
