//! Enforce mode end to end: `berth run --enforce` against a root daemon in a private network
//! namespace, whose programs attach to a cgroup v2 subtree of the test's own (never the
//! hierarchy's root: the host's other processes are not policed by a test). Needs real root
//! (BPF; a user namespace cannot load cgroup programs); skipped with the reason otherwise. A
//! daemon that cannot enforce says why, for any user.

use super::*;

/// A cgroup v2 subtree of the test's own — in the hierarchy the host mounted, or in one the
/// test mounts — removed (and unmounted) when dropped.
struct Subtree {
    dir: PathBuf,
    mounted: Option<TempDir>,
}

impl Subtree {
    fn new(tag: &str) -> Subtree {
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
        let host = info.lines().find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split_whitespace().next()? == "cgroup2")
                .then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
        });
        let (root, mounted) = match host {
            Some(root) => (root, None),
            None => {
                let mount = tempfile::tempdir().expect("a mount point");
                ok(Command::new("mount")
                    .args(["-t", "cgroup2", "none"])
                    .arg(mount.path()));
                (mount.path().to_owned(), Some(mount))
            }
        };
        let dir = root.join(format!("berth-test-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("stranger")).expect("make the test's cgroups");
        Subtree { dir, mounted }
    }

    /// `python3 -c script` as a process of the cgroup `name` (below the subtree), in `ns`.
    fn python_in(&self, ns: &Netns, name: &str, script: &str) -> String {
        let cgroup = self.dir.join(name);
        ns.sh(&format!(
            "echo $$ > '{}/cgroup.procs' && exec /usr/bin/python3 -c '{script}'",
            cgroup.display()
        ))
    }
}

impl Drop for Subtree {
    fn drop(&mut self) {
        // Deepest first; each is empty once the test's processes ended.
        fn remove(dir: &Path) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        remove(&e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        remove(&self.dir);
        if let Some(mount) = &self.mounted {
            let _ = Command::new("umount").arg(mount.path()).status();
        }
    }
}

/// What an enforce test needs, as real root: a private network namespace, a cgroup subtree and
/// a BPF filesystem for pins of its own, and a work directory whose `berth.toml` attaches the
/// programs to that subtree. Dropped, the pins go first (unmounted), then the cgroups.
struct Setup {
    bpffs: Bpffs,
    subtree: Subtree,
    dir: TempDir,
    ns: Netns,
}

impl Setup {
    /// `None` (the skip said) where the test is not real root; `extra` configuration lines may
    /// name the subtree as `{sub}`.
    fn new(tag: &str, extra: &str) -> Option<Setup> {
        if !rustix::process::geteuid().is_root() {
            needs::skip(Need::Users, "enforce mode needs real root (BPF, cgroup v2)");
            return None;
        }
        let ns = Netns::new()?;
        if ns
            .held
            .as_ref()
            .is_some_and(|h| h.how().in_user_namespace())
        {
            needs::skip(Need::Namespaces, "needs a network namespace of root's own");
            return None;
        }
        let setup = Setup {
            bpffs: Bpffs(tempfile::tempdir().unwrap()),
            subtree: Subtree::new(tag),
            dir: workdir(),
            ns,
        };
        write_config(&setup.dir, &setup.subtree, &setup.bpffs, extra);
        Some(setup)
    }
}

/// Writes `berth.toml` in `dir`: the programs attached to `subtree`, pinned in `bpffs`, and
/// `extra` (which may name the subtree as `{sub}`).
fn write_config(dir: &TempDir, subtree: &Subtree, bpffs: &Bpffs, extra: &str) {
    let sub = subtree.dir.display().to_string();
    std::fs::write(
        dir.path().join("berth.toml"),
        format!(
            "enforce_attach = \"{sub}\"\nenforce_pins = \"{}\"\n{}",
            bpffs.0.path().display(),
            extra.replace("{sub}", &sub)
        ),
    )
    .unwrap();
}

/// A bind of `port` (0: any) for each protocol and family; prints "PROTO FAMILY PORT" or the
/// errno's name for each.
fn binds_script(tcp: u16, udp: u16) -> String {
    format!(
        "import socket, errno\n\
         for kind, name, port in ((socket.SOCK_STREAM, \"tcp\", {tcp}), (socket.SOCK_DGRAM, \"udp\", {udp})):\n\
         \x20   for family, address in ((socket.AF_INET, \"0.0.0.0\"), (socket.AF_INET6, \"::\")):\n\
         \x20       s = socket.socket(family, kind)\n\
         \x20       try:\n\
         \x20           s.bind((address, port)); print(name, family == socket.AF_INET6 and 6 or 4, s.getsockname()[1])\n\
         \x20       except OSError as e:\n\
         \x20           print(name, family == socket.AF_INET6 and 6 or 4, errno.errorcode[e.errno])\n"
    )
}

/// A daemonizing command: `berth run --enforce --tcp 1` whose launcher starts `script` (Python,
/// saved in `dir`) in the background and exits at once; the block's port.
fn daemonized_server(ns: &Netns, socket: &Path, dir: &TempDir, script: &str) -> u16 {
    let file = dir.path().join("server.py");
    std::fs::write(&file, script).unwrap();
    let launcher = format!(
        "/usr/bin/python3 {} </dev/null >/dev/null 2>&1 & echo $PORT",
        file.display()
    );
    ok(&mut ns.berth(
        socket,
        &[
            "run",
            "--enforce",
            "--tcp",
            "1",
            "--",
            "sh",
            "-c",
            &launcher,
        ],
    ))
    .trim()
    .parse()
    .unwrap()
}

/// The reservation of `list --json` starting at `start`, if any.
fn listed(ns: &Netns, socket: &Path, start: u16) -> Option<Value> {
    let text = ok(&mut ns.berth(socket, &["list", "--json"]));
    let rows: Vec<Value> = serde_json::from_str(&text).expect("list --json");
    rows.into_iter()
        .find(|r| r["start"].as_u64() == Some(u64::from(start)))
}

#[test]
fn an_enforced_run_draws_bind_zero_from_its_block_and_outlives_its_launcher() {
    // A short lease: renewed, and refusals logged, every second.
    let Some(setup) = Setup::new(
        "enforce",
        "enforce_cgroups = \"{sub}/runs\"\nenforce_lease_s = 6\n",
    ) else {
        return;
    };
    // Dropped in reverse: the pins (unmounted) first, then the cgroups, the directory, the
    // namespace.
    let Setup {
        ns,
        dir,
        subtree,
        bpffs: _bpffs,
    } = setup;
    let args = ["--kernel-sync", "off", "--pool", "41000-41099"];
    let daemon = Daemon::start(&ns, dir.path(), &args, None);
    let sock = daemon.socket.clone();

    // An unmodified program's bind(0) in the command's cgroup draws from the block: TCP and
    // UDP, IPv4 and IPv6.
    let script = format!(
        "import os\nports = os.environ[\"BERTH_TCP_PORTS\"] + \" \" + os.environ[\"BERTH_UDP_PORTS\"]\nprint(ports)\n{}",
        binds_script(0, 0)
    );
    let out = ok(&mut ns.berth(
        &sock,
        &[
            "run",
            "--enforce",
            "--tcp",
            "2",
            "--udp",
            "2",
            "--",
            "/usr/bin/python3",
            "-c",
            &script,
        ],
    ));
    let mut lines = out.lines();
    let block: Vec<String> = lines
        .next()
        .unwrap()
        .split([',', ' '])
        .map(str::to_owned)
        .collect();
    let (tcp, udp) = block.split_at(2);
    let mut seen = 0;
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let allowed = if fields[0] == "tcp" { tcp } else { udp };
        assert!(
            allowed.iter().any(|p| p == fields[2]),
            "{line}: not a port of the block {block:?}\n{out}"
        );
        seen += 1;
    }
    assert_eq!(seen, 4, "{out}");

    // A daemonizing command: the launcher exits at once; its grandchild binds the block later.
    let go = dir.path().join("go");
    let done = dir.path().join("done");
    let result = dir.path().join("result");
    let server = format!(
        "import os, socket, time\n\
         deadline = time.time() + 30\n\
         while not os.path.exists(\"{go}\") and time.time() < deadline: time.sleep(0.02)\n\
         s = socket.socket(socket.AF_INET6)\n\
         s.bind((\"::\", int(os.environ[\"PORT\"]))); s.listen()\n\
         open(\"{result}\", \"w\").write(\"bound\")\n\
         while not os.path.exists(\"{done}\") and time.time() < deadline: time.sleep(0.02)\n",
        go = go.display(),
        done = done.display(),
        result = result.display(),
    );
    let port = daemonized_server(&ns, &sock, &dir, &server);
    // The launcher is gone; the block stays with its cgroup.
    let row = listed(&ns, &sock, port).expect("the block outlives its launcher");
    let cgroup = row["cgroup"].as_str().expect("a cgroup owner").to_owned();
    assert!(cgroup.contains("/runs/berth-run-"), "{row}");
    // Any other cgroup's explicit bind of it is refused with EADDRINUSE, on every address;
    // the other protocol's port of the same number is not reserved.
    let stranger = subtree.python_in(&ns, "stranger", &binds_script(port, port));
    assert!(stranger.contains("tcp 4 EADDRINUSE"), "{stranger}");
    assert!(stranger.contains("tcp 6 EADDRINUSE"), "{stranger}");
    assert!(stranger.contains(&format!("udp 4 {port}")), "{stranger}");
    // The refusals are counted and shown, with the process refused last and its cgroup.
    let why = ok(&mut ns.berth(&sock, &["why", "--tcp", &port.to_string()]));
    assert!(why.contains("kept by the kernel for its cgroup"), "{why}");
    assert!(why.contains("refused      2 binds in the kernel"), "{why}");
    assert!(why.contains("(python3, uid 0) in the cgroup /"), "{why}");
    assert!(why.contains("/stranger"), "{why}");
    let why: Value = serde_json::from_str(&ok(
        &mut ns.berth(&sock, &["why", "--tcp", &port.to_string(), "--json"])
    ))
    .unwrap();
    assert_eq!(why["refusals"]["count"], 2, "{why}");
    assert_eq!(why["reservation"]["cgroup"], cgroup.as_str(), "{why}");
    // The log says so too, at the next renewal of the lease.
    support::poll_until("the refusals are logged", || {
        daemon
            .log()
            .contains(&format!("enforce mode refused 2 binds of tcp {port}"))
            .then_some(())
    });
    // `status` says enforce mode is in force, and where.
    let status: Value =
        serde_json::from_str(&ok(&mut ns.berth(&sock, &["status", "--json"]))).unwrap();
    assert_eq!(status["mode"], "enforce", "{status}");
    assert_eq!(
        status["enforce"]["attached_at"],
        subtree.dir.display().to_string().as_str(),
        "{status}"
    );
    // The daemonized grandchild binds it.
    std::fs::write(&go, "").unwrap();
    support::poll_until("the grandchild binds its port", || {
        std::fs::read_to_string(&result)
            .ok()
            .filter(|r| r == "bound")
    });
    // The cgroup emptying releases the block, and the cgroup the daemon made is removed.
    std::fs::write(&done, "").unwrap();
    support::poll_until("the block is released once its cgroup is empty", || {
        listed(&ns, &sock, port).is_none().then_some(())
    });
    let made = subtree
        .dir
        .join("runs")
        .join(cgroup.rsplit('/').next().unwrap());
    support::poll_until("the daemon's cgroup is removed", || {
        (!made.exists()).then_some(())
    });
    // And the port is anyone's again; with no cgroup owning a reservation the programs are
    // detached.
    let after = subtree.python_in(&ns, "stranger", &binds_script(port, port));
    assert!(after.contains(&format!("tcp 4 {port}")), "{after}");
    let status: Value =
        serde_json::from_str(&ok(&mut ns.berth(&sock, &["status", "--json"]))).unwrap();
    assert_eq!(status["mode"], "hold", "{status}");
    assert_eq!(status["enforce"]["attached_at"], Value::Null, "{status}");
    assert_eq!(status["enforce"]["available"], true, "{status}");
}

#[test]
fn a_daemon_that_cannot_enforce_refuses_with_its_reason() {
    let Some(ns) = Netns::new() else { return };
    let dir = workdir();
    std::fs::write(dir.path().join("berth.toml"), "enforce = false\n").unwrap();
    let args = ["--kernel-sync", "off", "--pool", "41100-41199"];
    let daemon = Daemon::start(&ns, dir.path(), &args, None);
    let out = run(&mut ns.berth(
        &daemon.socket,
        &["run", "--enforce", "--tcp", "1", "--", "true"],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Not-supported (exit 11), naming the reason; nothing was reserved.
    assert_eq!(out.status.code(), Some(11), "{stderr}");
    assert!(stderr.contains("enforce = false"), "{stderr}");
    assert!(listed(&ns, &daemon.socket, 41100).is_none());
    // `status` says so too.
    let status: Value =
        serde_json::from_str(&ok(&mut ns.berth(&daemon.socket, &["status", "--json"]))).unwrap();
    assert_eq!(status["enforce"]["available"], false, "{status}");
    let because = status["enforce"]["unavailable_because"].as_str().unwrap();
    assert!(because.contains("enforce = false"), "{status}");
}

/// An attach point that is not there is said at once: `status` says enforcement is not
/// available and why, and a request is refused with not-supported naming it.
#[test]
fn a_missing_attach_point_is_said_before_any_request() {
    let Some(setup) = Setup::new("attachmissing", "") else {
        return;
    };
    let Setup {
        ns,
        dir,
        subtree,
        bpffs,
    } = setup;
    let missing = subtree.dir.join("not-there");
    std::fs::write(
        dir.path().join("berth.toml"),
        format!(
            "enforce_attach = \"{}\"\nenforce_pins = \"{}\"\n",
            missing.display(),
            bpffs.0.path().display()
        ),
    )
    .unwrap();
    let args = ["--kernel-sync", "off", "--pool", "41700-41799"];
    let daemon = Daemon::start(&ns, dir.path(), &args, None);
    let status: Value =
        serde_json::from_str(&ok(&mut ns.berth(&daemon.socket, &["status", "--json"]))).unwrap();
    assert_eq!(status["enforce"]["available"], false, "{status}");
    let because = status["enforce"]["unavailable_because"].as_str().unwrap();
    assert!(
        because.contains("not-there") && because.contains("enforce_attach"),
        "{status}"
    );
    let out = run(&mut ns.berth(
        &daemon.socket,
        &["run", "--enforce", "--tcp", "1", "--", "true"],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{stderr}");
    assert!(stderr.contains("not-there"), "{stderr}");
    assert!(listed(&ns, &daemon.socket, 41700).is_none());
}

/// A request whose programs cannot be attached (here: their pins cannot be made) fails saying
/// why, and `status` keeps saying it until an attach works or an administrator's
/// `berth enforce on`.
#[test]
fn a_failed_attach_is_refused_with_its_cause_and_status_says_it() {
    let Some(setup) = Setup::new("attachfail", "") else {
        return;
    };
    let Setup {
        ns,
        dir,
        subtree,
        bpffs: _bpffs,
    } = setup;
    // No directory can be made in /proc: the BPF filesystem for the pins cannot be had.
    let pins = "/proc/berth-test-no-pins";
    std::fs::write(
        dir.path().join("berth.toml"),
        format!(
            "enforce_attach = \"{}\"\nenforce_pins = \"{pins}\"\n",
            subtree.dir.display()
        ),
    )
    .unwrap();
    let args = ["--kernel-sync", "off", "--pool", "41800-41899"];
    let daemon = Daemon::start(&ns, dir.path(), &args, None);
    let status_now = |ns: &Netns| -> Value {
        serde_json::from_str(&ok(&mut ns.berth(&daemon.socket, &["status", "--json"]))).unwrap()
    };
    assert_eq!(status_now(&ns)["enforce"]["available"], true);
    let out = run(&mut ns.berth(
        &daemon.socket,
        &["run", "--enforce", "--tcp", "1", "--", "true"],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(pins), "{stderr}");
    assert!(listed(&ns, &daemon.socket, 41800).is_none());
    let status = status_now(&ns);
    assert_eq!(status["enforce"]["available"], false, "{status}");
    let because = status["enforce"]["unavailable_because"].as_str().unwrap();
    assert!(
        because.contains("the last attempt to attach the programs failed")
            && because.contains(pins),
        "{status}"
    );
    assert_eq!(status["mode"], "hold", "{status}");
    // An administrator's `enforce on` starts afresh: the failure is no longer reported.
    ok(&mut ns.berth(&daemon.socket, &["enforce", "on"]));
    assert_eq!(status_now(&ns)["enforce"]["available"], true);
}

#[test]
fn an_ordinary_user_s_daemon_refuses_enforcement_saying_why() {
    let Some((ns, user)) = Netns::for_an_unprivileged_daemon() else {
        return;
    };
    let dir = workdir();
    let args = ["--kernel-sync", "off", "--pool", "41200-41299"];
    let daemon = Daemon::start(&ns, dir.path(), &args, user);
    let out = run(&mut ns.berth_as(
        user,
        &daemon.socket,
        &["run", "--enforce", "--tcp", "1", "--", "true"],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{stderr}");
    assert!(stderr.contains("does not run as root"), "{stderr}");
    // Nothing ran weaker: nothing is reserved.
    let list = ok(&mut ns.berth_as(user, &daemon.socket, &["list", "--json"]));
    assert_eq!(list.trim(), "[]");
}

/// A BPF filesystem the daemon mounts for its pins; unmounted (its pins, and the programs they
/// keep, gone) when dropped.
struct Bpffs(TempDir);

impl Drop for Bpffs {
    fn drop(&mut self) {
        // Not mounted when the daemon never attached: nothing to say then.
        let _ = Command::new("umount")
            .arg(self.0.path())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn enforcement_survives_a_restart_and_fails_open_past_the_lease() {
    let Some(setup) = Setup::new("restart", "") else {
        return;
    };
    // Dropped in reverse: the pins (unmounted) first, then the cgroups, the directory, the
    // namespace.
    let Setup {
        ns,
        dir,
        subtree,
        bpffs,
    } = setup;
    let config = |lease_s: u32| {
        write_config(
            &dir,
            &subtree,
            &bpffs,
            &format!("enforce_cgroups = \"{{sub}}/runs\"\nenforce_lease_s = {lease_s}\n"),
        )
    };
    config(30);
    let args = ["--kernel-sync", "off", "--pool", "41300-41399"];
    let mut daemon = Daemon::start(&ns, dir.path(), &args, None);
    let sock = daemon.socket.clone();
    // A daemonized server that lives until told to end.
    let done = dir.path().join("done");
    let keeper = format!(
        "import os, time\ndeadline = time.time() + 60\nwhile not os.path.exists(\"{}\") and time.time() < deadline: time.sleep(0.02)\n",
        done.display()
    );
    let port = daemonized_server(&ns, &sock, &dir, &keeper);
    let refused = || {
        subtree
            .python_in(&ns, "stranger", &binds_script(port, port))
            .contains("tcp 4 EADDRINUSE")
    };
    assert!(refused());

    // Stopped: the pinned programs go on refusing (within their lease).
    daemon.stop();
    assert!(refused(), "between the daemons; log:\n{}", daemon.log());
    // The next daemon takes the reservation back with its cgroup, and keeps refusing.
    let mut daemon = Daemon::start(&ns, dir.path(), &args, None);
    let row = listed(&ns, &sock, port)
        .unwrap_or_else(|| panic!("not restored with its cgroup; log:\n{}", daemon.log()));
    assert!(
        row["cgroup"]
            .as_str()
            .is_some_and(|c| c.contains("/runs/berth-run-")),
        "{row}"
    );
    assert!(refused(), "after the restart; log:\n{}", daemon.log());

    // A daemon gone for good: past its lease nothing is refused, though its programs stay
    // pinned.
    daemon.stop();
    config(1);
    let mut daemon = Daemon::start(&ns, dir.path(), &args, None);
    assert!(refused());
    daemon.kill9();
    support::poll_until("the lease runs out and the port is anyone's", || {
        (!refused()).then_some(())
    });

    std::fs::write(&done, "").unwrap();
    let runs = subtree.dir.join("runs");
    support::poll_until("the keeper has exited", || {
        let busy = std::fs::read_dir(&runs).ok()?.flatten().any(|e| {
            std::fs::read_to_string(e.path().join("cgroup.procs"))
                .is_ok_and(|procs| !procs.trim().is_empty())
        });
        (!busy).then_some(())
    });
}

#[test]
fn an_administrator_reserves_for_an_existing_cgroup_and_switches_enforcement_off_and_on() {
    let Some(setup) = Setup::new("existing", "enforce_cgroups = \"{sub}/runs\"\n") else {
        return;
    };
    // Dropped in reverse: the pins (unmounted) first, then the cgroups, the directory, the
    // namespace.
    let Setup {
        ns,
        dir,
        subtree,
        bpffs: _bpffs,
    } = setup;
    let service = subtree.dir.join("service");
    std::fs::create_dir(&service).unwrap();
    let args = ["--kernel-sync", "off", "--pool", "41400-41499"];
    let daemon = Daemon::start(&ns, dir.path(), &args, None);
    let sock = daemon.socket.clone();
    let mount_relative = |dir: &Path| {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = text
            .lines()
            .filter_map(|line| {
                let (before, after) = line.split_once(" - ")?;
                (after.split_whitespace().next()? == "cgroup2")
                    .then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
            })
            .find(|m| dir.starts_with(m))
            .unwrap();
        format!("/{}", dir.strip_prefix(root).unwrap().display())
    };
    let path = mount_relative(&service);

    // An empty cgroup is refused: its reservation would end at once.
    let out = run(&mut ns.berth(
        &sock,
        &["enforce", "reserve", "--cgroup", &path, "--tcp", "1"],
    ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no process"));
    // A service's process in it.
    let done = dir.path().join("done");
    let mut service_process = ns
        .command("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > '{}/cgroup.procs' && exec /usr/bin/python3 -c 'import os, time\nwhile not os.path.exists(\"{}\"): time.sleep(0.02)'",
            service.display(),
            done.display()
        ))
        .spawn()
        .unwrap();
    support::poll_until("the service runs in its cgroup", || {
        std::fs::read_to_string(service.join("cgroup.procs"))
            .ok()
            .filter(|p| !p.trim().is_empty())
    });
    let out = ok(&mut ns.berth(
        &sock,
        &[
            "enforce", "reserve", "--cgroup", &path, "--tcp", "1", "--json",
        ],
    ));
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    let port = u16::try_from(rows[0]["start"].as_u64().unwrap()).unwrap();
    assert_eq!(rows[0]["cgroup"], path.as_str());
    let refused = || {
        subtree
            .python_in(&ns, "stranger", &binds_script(port, port))
            .contains("tcp 4 EADDRINUSE")
    };
    assert!(refused());

    // Off: detached at once, the reservation stays, --enforce is refused saying why.
    ok(&mut ns.berth(&sock, &["enforce", "off"]));
    assert!(!refused());
    assert!(listed(&ns, &sock, port).is_some());
    let out = run(&mut ns.berth(&sock, &["run", "--enforce", "--tcp", "1", "--", "true"]));
    assert_eq!(out.status.code(), Some(11));
    assert!(String::from_utf8_lossy(&out.stderr).contains("berth enforce on"));
    // On again: kept for the cgroup again.
    ok(&mut ns.berth(&sock, &["enforce", "on"]));
    assert!(refused());

    std::fs::write(&done, "").unwrap();
    wait(&mut service_process, "the service process");
    support::poll_until("released once the service's cgroup is empty", || {
        listed(&ns, &sock, port).is_none().then_some(())
    });
    // An existing cgroup is the administrator's: the daemon does not remove it.
    assert!(service.exists());
}

/// A port an owner's socket bound while the programs were detached (`berth enforce off`, then
/// `on`) is claimed for that socket when they come back: the owner's `bind(0)` is not steered
/// onto it (it would fail with EADDRINUSE) but, its one-port block being taken, gets the
/// kernel's pick.
#[test]
fn after_enforce_off_and_on_an_owner_s_bind_zero_is_not_steered_onto_its_own_bound_port() {
    let Some(setup) = Setup::new("offon", "enforce_cgroups = \"{sub}/runs\"\n") else {
        return;
    };
    let Setup {
        ns,
        dir,
        subtree: _subtree,
        bpffs: _bpffs,
    } = setup;
    let args = ["--kernel-sync", "off", "--pool", "41900-41999"];
    let daemon = Daemon::start(&ns, dir.path(), &args, None);
    let sock = daemon.socket.clone();
    let (go, done) = (dir.path().join("go"), dir.path().join("done"));
    let (bound, result) = (dir.path().join("bound"), dir.path().join("result"));
    let server = format!(
        "import os, socket, time, errno\n\
         deadline = time.time() + 30\n\
         s = socket.socket()\n\
         s.bind((\"127.0.0.1\", int(os.environ[\"PORT\"]))); s.listen()\n\
         open(\"{bound}\", \"w\").write(\"bound\")\n\
         while not os.path.exists(\"{go}\") and time.time() < deadline: time.sleep(0.02)\n\
         t = socket.socket()\n\
         try:\n\
         \x20   t.bind((\"127.0.0.1\", 0)); said = \"port %d\" % t.getsockname()[1]\n\
         except OSError as e:\n\
         \x20   said = errno.errorcode[e.errno]\n\
         open(\"{result}\", \"w\").write(said)\n\
         while not os.path.exists(\"{done}\") and time.time() < deadline: time.sleep(0.02)\n",
        bound = bound.display(),
        go = go.display(),
        result = result.display(),
        done = done.display(),
    );
    let port = daemonized_server(&ns, &sock, &dir, &server);
    support::poll_until("the owner's server has bound its port", || {
        bound.exists().then_some(())
    });
    ok(&mut ns.berth(&sock, &["enforce", "off"]));
    ok(&mut ns.berth(&sock, &["enforce", "on"]));
    std::fs::write(&go, "").unwrap();
    let said = support::poll_until("the owner's bind(0) is done", || {
        std::fs::read_to_string(&result)
            .ok()
            .filter(|s| !s.is_empty())
    });
    std::fs::write(&done, "").unwrap();
    let got: u16 = said
        .strip_prefix("port ")
        .unwrap_or_else(|| panic!("bind(0) failed: {said}"))
        .parse()
        .unwrap();
    assert_ne!(got, port, "steered onto the port its own server holds");
    support::poll_until("the block is released once the server exits", || {
        listed(&ns, &sock, port).is_none().then_some(())
    });
}

#[test]
fn with_connect_steering_an_outgoing_connection_binds_into_the_block() {
    let Some(setup) = Setup::new(
        "connect",
        "enforce_cgroups = \"{sub}/runs\"\nenforce_steer_connect = true\n",
    ) else {
        return;
    };
    // Dropped in reverse: the pins (unmounted) first, then the cgroups, the directory, the
    // namespace.
    let Setup {
        ns,
        dir,
        subtree: _subtree,
        bpffs: _bpffs,
    } = setup;
    // A pool outside the ephemeral range: the kernel's own picks never land in it.
    let args = ["--kernel-sync", "off", "--pool", "21500-21599"];
    let daemon = Daemon::start(&ns, dir.path(), &args, None);
    // The listener binds a port by number (outside the block); the client socket is unbound.
    let script = "import os, socket\n\
                  l = socket.socket(); l.bind((\"127.0.0.1\", 21590)); l.listen()\n\
                  c = socket.create_connection((\"127.0.0.1\", 21590))\n\
                  print(os.environ[\"BERTH_TCP_PORTS\"], c.getsockname()[1])";
    let out = ok(&mut ns.berth(
        &daemon.socket,
        &[
            "run",
            "--enforce",
            "--tcp",
            "2",
            "--",
            "/usr/bin/python3",
            "-c",
            script,
        ],
    ));
    let (block, local) = out.trim().rsplit_once(' ').unwrap();
    assert!(block.split(',').any(|p| p == local), "{out}");
}

#[test]
fn an_enforced_command_stays_inside_its_own_cgroup_and_outsiders_are_refused() {
    // No enforce_cgroups: a command's cgroup is made inside the one it runs in.
    let Some(setup) = Setup::new("placement", "") else {
        return;
    };
    // Dropped in reverse: the pins (unmounted) first, then the cgroups, the directory, the
    // namespace.
    let Setup {
        ns,
        dir,
        subtree,
        bpffs: _bpffs,
    } = setup;
    let user = subtree.dir.join("user");
    std::fs::create_dir(&user).unwrap();
    let args = ["--kernel-sync", "off", "--pool", "41600-41699"];
    let daemon = Daemon::start(&ns, dir.path(), &args, None);
    let run_from = |cgroup: Option<&Path>| {
        let enter = cgroup
            .map(|c| format!("echo $$ > '{}/cgroup.procs' && ", c.display()))
            .unwrap_or_default();
        let mut command = ns.command("sh");
        command
            .arg("-c")
            .arg(format!(
                "{enter}exec '{BERTH}' run --enforce --tcp 1 -- tail -1 /proc/self/cgroup"
            ))
            .env("BERTH_SOCKET", &daemon.socket);
        run(&mut command)
    };
    // From a cgroup of the policed subtree: a cgroup below it, which keeps its limits.
    let inside = run_from(Some(&user));
    let text = String::from_utf8_lossy(&inside.stdout);
    assert!(
        inside.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&inside.stderr)
    );
    assert!(text.contains("/user/berth-run-"), "{text}");
    // From outside it (the test's own cgroup): refused, saying why; nothing moved.
    let outside = run_from(None);
    let stderr = String::from_utf8_lossy(&outside.stderr);
    assert_eq!(outside.status.code(), Some(11), "{stderr}");
    assert!(stderr.contains("outside the cgroup subtree"), "{stderr}");
}
