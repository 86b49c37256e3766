//! Random sequences of store calls, reopening now and then, checked after every call against a
//! model: two maps keyed by token.

// clippy's test allowances cover `#[test]` functions, not the helpers.
use crate::common;

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::Path;

use berth_core::Protocol;
use berth_store::{
    runtime_journal_path, JournalOp, JournalRow, PersistentRow, RuntimeJournal, Store, StoreError,
};
use common::{journaled, persistent, token};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Action {
    Create {
        token: u64,
        udp: bool,
        start: u16,
        users: Vec<u32>,
    },
    Delete(u64),
    Journal(Vec<(bool, u64, u16)>),
    Clear,
    Reopen,
}

/// A few small tokens and a few at and above 2^63, so that collisions happen.
fn any_token() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..6, (1u64 << 63)..(1u64 << 63) + 3, Just(u64::MAX)]
}

fn any_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (any_token(), any::<bool>(), 1u16..60000, prop::collection::vec(0u32..4, 0..4))
            .prop_map(|(token, udp, start, users)| Action::Create { token, udp, start, users }),
        2 => any_token().prop_map(Action::Delete),
        4 => prop::collection::vec((any::<bool>(), any_token(), 1u16..60000), 0..6)
            .prop_map(Action::Journal),
        1 => Just(Action::Clear),
        1 => Just(Action::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    persistent: BTreeMap<u64, PersistentRow>,
    journal: BTreeMap<u64, JournalRow>,
}

/// The boot the tests claim to run in.
const BOOT: &str = "model-test-boot";

fn check(store: &Store, journal: &RuntimeJournal, model: &Model) {
    let (rows, legacy) = store.load().unwrap();
    assert!(legacy.is_empty());
    let journal = journal.rows();
    let mut want: Vec<_> = model.persistent.values().cloned().collect();
    want.sort_by_key(|r| (r.protocol, r.range.start(), r.token));
    assert_eq!(rows, want);
    let journal: BTreeMap<u64, JournalRow> =
        journal.into_iter().map(|r| (r.token.get(), r)).collect();
    assert_eq!(journal, model.journal);
}

fn run(path: &Path, actions: Vec<Action>) {
    let mut store = Store::open(path).unwrap();
    let journal_path = runtime_journal_path(path);
    let (mut journal, _) = RuntimeJournal::open(&journal_path, BOOT).unwrap();
    let mut model = Model::default();
    for action in actions {
        match action {
            Action::Create {
                token: t,
                udp,
                start,
                users,
            } => {
                let protocol = if udp { Protocol::Udp } else { Protocol::Tcp };
                let mut row = persistent(t, protocol, start, 1);
                row.allow_users = users;
                let result = store.create_persistent(&row);
                match model.persistent.entry(t) {
                    Entry::Occupied(_) => assert!(
                        matches!(result, Err(StoreError::Duplicate { .. })),
                        "{result:?}"
                    ),
                    Entry::Vacant(slot) => {
                        result.unwrap();
                        row.allow_users.sort_unstable();
                        row.allow_users.dedup();
                        slot.insert(row);
                    }
                }
            }
            Action::Delete(t) => {
                let deleted = store.delete_persistent(token(t)).unwrap();
                assert_eq!(deleted, model.persistent.remove(&t).is_some());
            }
            Action::Journal(ops) => {
                let ops: Vec<JournalOp> = ops
                    .into_iter()
                    .map(|(insert, t, start)| {
                        if insert {
                            let row = journaled(t, start, 1);
                            model.journal.insert(t, row.clone());
                            JournalOp::Insert(row)
                        } else {
                            model.journal.remove(&t);
                            JournalOp::Remove(token(t))
                        }
                    })
                    .collect();
                for op in &ops {
                    journal.apply(op).unwrap();
                }
            }
            Action::Clear => {
                journal.clear().unwrap();
                model.journal.clear();
            }
            Action::Reopen => {
                drop(store);
                drop(journal);
                store = Store::open(path).unwrap();
                let loaded;
                (journal, loaded) = RuntimeJournal::open(&journal_path, BOOT).unwrap();
                let rows: BTreeMap<u64, JournalRow> = loaded
                    .rows
                    .into_iter()
                    .map(|r| (r.token.get(), r))
                    .collect();
                assert_eq!(rows, model.journal, "what a reopened journal loads");
            }
        }
        check(&store, &journal, &model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_store_behaves_like_two_maps(actions in prop::collection::vec(any_action(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        run(&dir.path().join("berth.db"), actions);
    }
}
