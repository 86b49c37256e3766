#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

fn set(text: &str) -> PortSet {
    PortSet::parse(text).unwrap()
}

/// Runs one write the way the daemon does: plan, record, write.
fn sync(books: &mut ListBooks, kernel: &mut PortSet, ours: &PortSet, now_ms: u64) -> Plan {
    sync_within(books, kernel, ours, Extras::UNBOUNDED, now_ms)
}

/// [`sync`] with a bound on extras; checks that a replacing write fits one chunk.
fn sync_within(
    books: &mut ListBooks,
    kernel: &mut PortSet,
    ours: &PortSet,
    extras: Extras,
    now_ms: u64,
) -> Plan {
    let plan = books.plan(kernel, ours, extras, now_ms);
    match &plan.write {
        Write::Nothing => {}
        Write::Add(ports) => *kernel = kernel.union(ports),
        Write::Replace(value) => {
            assert!(
                text_len(value) <= ONE_CHUNK,
                "a replacing write fits one chunk"
            );
            *kernel = value.clone();
        }
    }
    assert_eq!(kernel, &plan.list);
    books.written(&plan, now_ms);
    plan
}

#[test]
fn a_short_list_is_written_exactly() {
    let exact = set("1000-1009,2000,3000-3001");
    let fitted = fit(
        &exact,
        ONE_CHUNK,
        Extras {
            costly: (1, 65535),
            max: 0,
        },
    );
    assert_eq!(fitted.list, exact);
    assert!(fitted.extras.is_empty());
    assert!(fitted.one_chunk);
    assert_eq!(text_len(&exact), "1000-1009,2000,3000-3001\n".len());
}

#[test]
fn scattered_ports_are_joined_at_their_smallest_gaps_to_fit() {
    // 2,000 single ports, every other one from 10,000: ~12 KB of text.
    let mut exact = PortSet::new();
    for port in (10_000u16..14_000).step_by(2) {
        exact.insert(port);
    }
    // One wider gap, which should be the last to fill.
    exact.insert(20_000);
    assert!(text_len(&exact) > ONE_CHUNK);
    let everywhere = |max| Extras {
        costly: (1, 65535),
        max,
    };
    let fitted = fit(&exact, ONE_CHUNK, everywhere(10_000));
    assert!(fitted.one_chunk);
    assert!(text_len(&fitted.list) <= ONE_CHUNK);
    assert_eq!(fitted.list.difference(&fitted.extras), exact);
    assert_eq!(fitted.cost, fitted.extras.len());
    assert!(!fitted.extras.contains(15_000), "the wide gap stays open");
    // Too few extras allowed: the exact list, marked as not fitting.
    let refused = fit(&exact, ONE_CHUNK, everywhere(10));
    assert!(!refused.one_chunk);
    assert_eq!(refused.list, exact);
    // Extras outside the costly range are free: gaps there are filled first.
    let outside = fit(
        &exact,
        ONE_CHUNK,
        Extras {
            costly: (13_000, 65535),
            max: 0,
        },
    );
    assert!(
        outside.one_chunk,
        "the ports below 13,000 can absorb the extras"
    );
    assert_eq!(outside.cost, 0);
    assert!(outside.extras.runs().iter().all(|&(_, hi)| hi < 13_000));
}

#[test]
fn a_stale_write_back_of_a_released_port_is_an_echo_and_goes_again() {
    let mut books = ListBooks::new(PortSet::new(), 0);
    let mut kernel = set("80");
    sync(&mut books, &mut kernel, &set("1000-1001"), 0);
    assert_eq!(kernel, set("80,1000-1001"));
    // Another tool reads the list…
    let stale = kernel.clone();
    // …berth releases 1001…
    sync(&mut books, &mut kernel, &set("1000"), 10);
    assert_eq!(kernel, set("80,1000"));
    // …and the tool writes back what it read, with its own entry added.
    kernel = stale.union(&set("9000"));
    let plan = sync(&mut books, &mut kernel, &set("1000"), 20);
    assert_eq!(plan.echoes, set("1001"));
    assert_eq!(
        kernel,
        set("80,1000,9000"),
        "the echo goes, the new entry stays"
    );
    assert_eq!(books.foreign(), &set("80,9000"));
    assert_eq!(books.figures().repaired, 1);
}

#[test]
fn an_entry_that_comes_back_after_the_window_is_someone_elses() {
    let mut books = ListBooks::new(PortSet::new(), 0);
    let mut kernel = PortSet::new();
    sync(&mut books, &mut kernel, &set("1000"), 0);
    sync(&mut books, &mut kernel, &PortSet::new(), 1);
    kernel = set("1000");
    let plan = sync(
        &mut books,
        &mut kernel,
        &PortSet::new(),
        1 + 2 * ECHO_WINDOW_MS,
    );
    assert!(plan.echoes.is_empty());
    assert_eq!(kernel, set("1000"));
}

#[test]
fn an_entry_another_rewrite_took_out_is_put_back() {
    let mut books = ListBooks::new(PortSet::new(), 0);
    let mut kernel = PortSet::new();
    sync(&mut books, &mut kernel, &set("1000-1002"), 0);
    // `sysctl -w` with another value replaces the list.
    kernel = set("7000");
    let plan = sync(&mut books, &mut kernel, &set("1000-1002"), 5);
    assert_eq!(plan.restored, set("1000-1002"));
    assert_eq!(kernel, set("1000-1002,7000"));
}

#[test]
fn a_configured_entry_survives_the_reservation_that_covered_it() {
    let mut books = ListBooks::new(PortSet::new(), 0);
    books.configure(set("1001"));
    let mut kernel = PortSet::new();
    sync(&mut books, &mut kernel, &set("1000-1002"), 0);
    // The administrator applies the file (`sysctl -p`): the list becomes its value.
    kernel = set("1001");
    sync(&mut books, &mut kernel, &set("1000-1002"), 5);
    assert_eq!(kernel, set("1000-1002"));
    // The reservation ends: the administrator's entry stays.
    sync(&mut books, &mut kernel, &PortSet::new(), 10);
    assert_eq!(kernel, set("1001"));
}

#[test]
fn after_a_restart_recorded_entries_are_berths_and_the_rest_others() {
    let mut kernel = set("80,1000-1001");
    let mut books = ListBooks::new(set("1000-1001"), 0);
    // Only 1000 is still reserved after the restore.
    let plan = sync(&mut books, &mut kernel, &set("1000"), 0);
    assert_eq!(kernel, set("80,1000"));
    assert_eq!(plan.foreign, set("80"));
    assert_eq!(books.narrowing(), Some(set("1000")));
}

#[test]
fn the_record_is_widened_before_a_write_and_narrowed_when_asked() {
    let mut books = ListBooks::new(PortSet::new(), 0);
    let kernel = PortSet::new();
    let plan = books.plan(&kernel, &set("1000"), Extras::UNBOUNDED, 0);
    assert_eq!(plan.record_first, Some(set("1000")));
    assert_eq!(plan.write, Write::Add(set("1000")), "an addition only adds");
    books.written(&plan, 0);
    let plan = books.plan(&set("1000"), &PortSet::new(), Extras::UNBOUNDED, 1);
    assert_eq!(plan.record_first, None, "a narrowing needs no record first");
    assert_eq!(
        plan.write,
        Write::Replace(PortSet::new()),
        "a removal replaces"
    );
    books.written(&plan, 1);
    assert_eq!(books.narrowing(), Some(PortSet::new()));
    books.narrowed(PortSet::new());
    assert_eq!(books.narrowing(), None);
}

proptest! {
    /// Whatever the exact set, the fitted list covers it, adds only ports between its runs,
    /// and fits one chunk whenever enough extras are allowed.
    #[test]
    fn fitting_covers_the_set_and_adds_only_gaps(
        ports in proptest::collection::btree_set(1u16..=65535, 0..3000),
        max_extras in prop_oneof![Just(u32::MAX), 0u32..5000],
        costly_from in 1u16..=65535,
    ) {
        let limit = Extras { costly: (costly_from, 65535), max: max_extras };
        let mut exact = PortSet::new();
        for &p in &ports {
            exact.insert(p);
        }
        let fitted = fit(&exact, ONE_CHUNK, limit);
        prop_assert_eq!(fitted.list.difference(&fitted.extras), exact.clone());
        prop_assert!(fitted.cost <= max_extras);
        let costly_extras = fitted.extras.runs().iter()
            .map(|&(a, b)| limit.cost(u32::from(a), u32::from(b)))
            .sum::<u32>();
        prop_assert_eq!(costly_extras, fitted.cost);
        if let (Some(&lo), Some(&hi)) = (ports.first(), ports.last()) {
            for (a, b) in fitted.extras.runs() {
                prop_assert!(a > lo && b < hi);
            }
        }
        if fitted.one_chunk {
            prop_assert!(text_len(&fitted.list) <= ONE_CHUNK);
        } else {
            prop_assert_eq!(fitted.list, exact);
        }
        if max_extras == u32::MAX {
            prop_assert!(fitted.one_chunk, "one run always fits");
        }
    }
}

/// What happens to the list in the model test: berth's grants and releases, and the other
/// tools' writes.
#[derive(Debug, Clone)]
enum Step {
    Grant(u16),
    Release(u16),
    /// Another tool lists a port of its own (read, add, write at once).
    Add(u16),
    /// Another tool removes one of its entries.
    Remove(u16),
    /// A read-modify-write begins: the tool reads the list…
    StaleRead,
    /// …and writes back what it read, with a port of its own added.
    StaleWrite(u16),
    /// The administrator applies the configuration file (`sysctl -p`).
    ApplyConfig,
    /// Time passes.
    Tick(u64),
}

fn step() -> impl Strategy<Value = Step> {
    // berth's ports: 1000-1063 (some of them configured); others': 100-131.
    prop_oneof![
        3 => (1000u16..1064).prop_map(Step::Grant),
        3 => (1000u16..1064).prop_map(Step::Release),
        1 => (100u16..132).prop_map(Step::Add),
        1 => (100u16..132).prop_map(Step::Remove),
        2 => Just(Step::StaleRead),
        2 => (100u16..132).prop_map(Step::StaleWrite),
        1 => Just(Step::ApplyConfig),
        1 => (0u64..500).prop_map(Step::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After every write berth makes, the list is exactly the live reservations, the other
    /// tools' entries (none lost), and nothing else — however their read-modify-writes race
    /// berth's grants and releases (within the echo window).
    #[test]
    fn the_list_equals_reservations_and_others_entries(
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let configured = set("1010,1020-1021,120");
        let mut books = ListBooks::new(PortSet::new(), 0);
        books.configure(configured.clone());
        let mut kernel = PortSet::new();
        let mut ours = PortSet::new();
        // The entries others mean to have.
        let mut theirs = PortSet::new();
        let mut stale: Option<(PortSet, PortSet)> = None;
        let mut now = 0u64;
        for step in steps {
            match step {
                Step::Grant(p) => ours.insert(p),
                Step::Release(p) => ours.remove(p),
                Step::Add(p) => {
                    kernel.insert(p);
                    theirs.insert(p);
                }
                Step::Remove(p) => {
                    if !configured.contains(p) {
                        kernel.remove(p);
                        theirs.remove(p);
                    }
                }
                Step::StaleRead => stale = Some((kernel.clone(), theirs.clone())),
                Step::StaleWrite(p) => {
                    if let Some((read, theirs_then)) = stale.take() {
                        kernel = read.clone();
                        kernel.insert(p);
                        // Others' entries are now those the tool read (later changes are
                        // undone by its own doing), its own, and every configured port it
                        // wrote back.
                        theirs = theirs_then.union(&read.intersection(&configured));
                        theirs.insert(p);
                    }
                }
                Step::ApplyConfig => {
                    kernel = configured.clone();
                    theirs = configured.clone();
                }
                Step::Tick(ms) => now += ms,
            }
            sync(&mut books, &mut kernel, &ours, now);
            // A configured port in the list is the administrator's from then on, whoever
            // listed it: it is what their configuration asks for.
            theirs = theirs.union(&kernel.intersection(&configured));
            prop_assert_eq!(&kernel.difference(&ours), &theirs.difference(&ours),
                "listed beyond the reservations: exactly others' entries");
            prop_assert_eq!(&kernel.intersection(&ours), &ours, "every reservation listed");
            prop_assert!(theirs.difference(&kernel).is_empty(), "no entry of others lost");
        }
    }
}

#[test]
fn a_list_too_scattered_for_one_chunk_only_grows_until_it_fits() {
    // Others' scattered entries: 1,000 single ports, every 20th from 30,000 (~6 KB).
    let mut theirs = PortSet::new();
    for port in (30_000u16..50_000).step_by(20) {
        theirs.insert(port);
    }
    let tight = Extras {
        costly: (1, 65535),
        max: 100,
    };
    let mut books = ListBooks::new(PortSet::new(), 0);
    let mut kernel = theirs.clone();
    let plan = sync_within(&mut books, &mut kernel, &set("30001-30002"), tight, 0);
    assert!(!plan.one_chunk);
    assert!(matches!(plan.write, Write::Add(_)), "{:?}", plan.write);
    // A release: the port stays listed (a replace would leave a gap), counted as an extra.
    let plan = sync_within(&mut books, &mut kernel, &set("30001"), tight, 1);
    assert_eq!(plan.write, Write::Nothing);
    assert!(kernel.contains(30_002));
    assert_eq!(books.figures().extras, 1);
    // Others take most of theirs out: the exact list fits again, and the release is made.
    kernel = set("30000-30002");
    let plan = sync_within(&mut books, &mut kernel, &set("30001"), tight, 2);
    assert!(plan.one_chunk);
    assert_eq!(kernel, set("30000-30001"));
}

#[test]
fn released_ports_left_listed_never_cost_more_than_the_cheapest_fit() {
    // Others' scattered entries where every extra costs, a room of 10 extras: too little to
    // fit. Each grant of a new port and its release leave that port listed (only adding
    // leaves no gap) — until they would hide more ports than the cheapest one-chunk value,
    // which is then written instead.
    let mut theirs = PortSet::new();
    for port in (30_000u16..50_000).step_by(20) {
        theirs.insert(port);
    }
    let tight = Extras {
        costly: (1, 65535),
        max: 10,
    };
    let cheapest = fit(
        &theirs,
        ONE_CHUNK,
        Extras {
            max: u32::MAX,
            ..tight
        },
    );
    assert!(cheapest.one_chunk);
    let mut books = ListBooks::new(PortSet::new(), 0);
    let mut kernel = theirs.clone();
    let mut replaced = false;
    let mut most = 0;
    // Blocks of 50 ports, granted and released one after another above others' entries.
    for (i, port) in (50_001u16..64_000).step_by(51).enumerate() {
        let now = u64::try_from(i).unwrap();
        let block = set(&format!("{port}-{}", port + 49));
        sync_within(&mut books, &mut kernel, &block, tight, 2 * now);
        let plan = sync_within(&mut books, &mut kernel, &PortSet::new(), tight, 2 * now + 1);
        assert!(!plan.one_chunk);
        replaced |= matches!(plan.write, Write::Replace(_));
        let left = costly(&kernel.difference(&theirs), tight);
        assert!(
            left <= cheapest.cost,
            "{left} left listed, cheapest fit {}",
            cheapest.cost
        );
        most = most.max(left);
    }
    assert!(
        replaced,
        "the cheapest fit was written once the leftovers reached it"
    );
    assert!(most > 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// With others' entries too scattered to fit, the list never loses a reservation or an
    /// entry of others, every replacing write fits one chunk, and what berth keeps beyond its
    /// reservations is only ports it listed itself, never costing more than the room or the
    /// cheapest one-chunk value, whichever is larger.
    #[test]
    fn scattered_lists_never_leave_a_gap(
        theirs_step in 3u16..40,
        grants in proptest::collection::vec((31_000u16..33_000, any::<bool>()), 1..60),
        max in 0u32..3000,
    ) {
        let mut theirs = PortSet::new();
        for port in (30_000u16..60_000).step_by(usize::from(theirs_step)) {
            theirs.insert(port);
        }
        let limit = Extras { costly: (30_000, 60_999), max };
        let mut books = ListBooks::new(PortSet::new(), 0);
        let mut kernel = theirs.clone();
        let mut ours = PortSet::new();
        let mut ever = PortSet::new();
        for (i, (port, grant)) in grants.into_iter().enumerate() {
            if grant { ours.insert(port); ever.insert(port); } else { ours.remove(port); }
            let plan = sync_within(&mut books, &mut kernel, &ours, limit, i as u64);
            prop_assert!(kernel.intersection(&ours) == ours);
            prop_assert!(kernel.intersection(&theirs) == theirs);
            let beyond = kernel.difference(&theirs).difference(&ours);
            prop_assert!(beyond.difference(&plan.extras).is_empty());
            let exact = theirs.union(&ours);
            let cheapest = fit(&exact, ONE_CHUNK, Extras { max: u32::MAX, ..limit });
            prop_assert!(costly(&beyond, limit) <= max.max(cheapest.cost),
                "{} beyond the reservations where they cost; room {max}, cheapest fit {}",
                costly(&beyond, limit), cheapest.cost);
            if !plan.one_chunk && beyond.difference(&ever).is_empty() {
                // Deferred removals: kept only while cheaper than the cheapest fit.
                prop_assert!(costly(&beyond, limit) <= cheapest.cost);
            }
        }
    }
}

#[test]
fn the_stop_leaves_exactly_others_entries_and_what_it_keeps() {
    let mut theirs = PortSet::new();
    for port in (30_000u16..40_000).step_by(10) {
        theirs.insert(port);
    }
    let mut books = ListBooks::new(PortSet::new(), 0);
    let mut kernel = theirs.clone();
    sync(&mut books, &mut kernel, &set("35001"), 0);
    assert!(books.figures().extras > 0, "extras made it fit");
    // With nothing to keep, the stop writes exactly others' entries, however long.
    let plan = books
        .clone()
        .plan_stop(&kernel, &PortSet::new(), Extras::UNBOUNDED, 1);
    assert_eq!(plan.list, theirs);
    assert_eq!(plan.write, Write::Replace(plan.list.clone()));
    assert!(!plan.one_chunk);
    assert!(plan.mine.is_empty());
    // A port kept for a live owner: exactly others' entries and it would take more than one
    // chunk, whose later chunks could come after the kept port was unlisted by the first. The
    // stop writes one chunk instead, extras and all, recorded as berth's for the next daemon.
    let plan = books.plan_stop(&kernel, &set("35001"), Extras::UNBOUNDED, 1);
    // (The list holds that value already: the last write made it.)
    assert_eq!(plan.write, Write::Nothing);
    let value = &plan.list;
    assert!(text_len(value) <= ONE_CHUNK, "one chunk");
    assert!(value.contains(35_001));
    assert!(
        theirs.difference(value).is_empty(),
        "no entry of others lost"
    );
    assert!(plan.one_chunk);
    let record = plan
        .record_first
        .clone()
        .unwrap_or_else(|| books.recorded.clone());
    assert!(
        plan.mine.difference(&record).is_empty(),
        "every entry of berth's recorded"
    );
    // The same from a list another tool rewrote meanwhile (the scattered entries and one
    // port of berth's): a write that never unlists a port — one that only adds, in any number
    // of chunks, or a replacing one of one chunk.
    let kernel = theirs.union(&set("35001,35005"));
    let plan = books.plan_stop(&kernel, &set("35001"), Extras::UNBOUNDED, 2);
    match &plan.write {
        Write::Add(ports) => assert_eq!(kernel.union(ports), plan.list),
        Write::Replace(value) => assert!(text_len(value) <= ONE_CHUNK, "one chunk"),
        Write::Nothing => panic!("the list needs a write"),
    }
    assert!(plan.list.contains(35_001));
    assert!(
        theirs.difference(&plan.list).is_empty(),
        "no entry of others lost"
    );
    // Fitting one chunk: the stop writes it exactly.
    let mut short = ListBooks::new(PortSet::new(), 0);
    let mut kernel = set("80,443");
    sync(&mut short, &mut kernel, &set("35001-35002"), 0);
    let plan = short.plan_stop(&kernel, &set("35001"), Extras::UNBOUNDED, 1);
    assert_eq!(plan.list, set("80,443,35001"));
}

#[test]
fn ports_listed_ahead_need_no_write_to_grant_or_release_and_leave_at_the_stop() {
    let mut books = ListBooks::new(PortSet::new(), 0);
    let mut kernel = set("80");
    books.set_ahead(set("5000-5003"));
    let plan = sync(&mut books, &mut kernel, &PortSet::new(), 0);
    assert_eq!(kernel, set("80,5000-5003"));
    assert_eq!(
        plan.extras,
        set("5000-5003"),
        "free ports listed ahead are extras"
    );
    assert_eq!(plan.record_first, Some(set("5000-5003")));
    // A grant and a release inside the stripe change nothing in the list.
    let plan = sync(&mut books, &mut kernel, &set("5001"), 1);
    assert_eq!(plan.write, Write::Nothing);
    assert_eq!(books.figures().reserved, 1);
    assert_eq!(books.figures().extras, 3);
    let plan = sync(&mut books, &mut kernel, &PortSet::new(), 2);
    assert_eq!(plan.write, Write::Nothing);
    // Someone else's rewrite took the stripe out: put back, as berth's own.
    kernel = set("80");
    let plan = sync(&mut books, &mut kernel, &PortSet::new(), 3);
    assert_eq!(plan.restored, set("5000-5003"));
    assert_eq!(kernel, set("80,5000-5003"));
    // The stop keeps others' entries and what it is told to keep, never the stripe.
    let plan = books.plan_stop(&kernel, &set("5002"), Extras::UNBOUNDED, 4);
    assert_eq!(plan.list, set("80,5002"));
    // No stripe any more: its free ports go at the next write.
    books.set_ahead(PortSet::new());
    sync(&mut books, &mut kernel, &set("5002"), 5);
    assert_eq!(kernel, set("80,5002"));
}
