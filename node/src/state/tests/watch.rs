//! The watch log through apply (decision 0024): each change an accepted command makes is one
//! event with the next revision; a rejected command records none; reads after a revision give
//! every matching event once, in order, however they are split; the oldest events beyond
//! `WATCH_EVENTS_KEPT` go, and a read from before them is told it is behind.

use proptest::prelude::*;

use super::*;
use crate::watch::{
    Change, WatchEvent, WatchFilter, WatchRead, WATCH_BATCH_EVENTS_MAX, WATCH_EVENTS_KEPT,
    WATCH_SCAN_EVENTS_MAX,
};

fn set_stage(model: &str, number: u64, stage: Stage) -> Op {
    Op::SetStage {
        model: model.into(),
        number,
        stage,
        reason: "test".into(),
        override_signature: false,
    }
}

fn read(f: &Fixture, filter: &WatchFilter, after: u64) -> WatchRead {
    f.read(|app, txn| app.watch_read(txn, filter, after).unwrap())
}

fn events(read: WatchRead) -> (Vec<WatchEvent>, u64) {
    match read {
        WatchRead::Events { events, through } => (events, through),
        other => panic!("expected events, got {other:?}"),
    }
}

fn changes(f: &Fixture, filter: &WatchFilter, after: u64) -> Vec<Change> {
    events(read(f, filter, after))
        .0
        .into_iter()
        .map(|e| e.change)
        .collect()
}

#[test]
fn every_change_serving_cares_about_is_one_event_with_the_next_revision() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(create_version("reco", b"one"));
    f.apply(create_version("reco", b"two"));
    f.apply(set_stage("reco", 1, Stage::Production));
    f.apply(set_stage("reco", 2, Stage::Production));
    f.apply(Op::SetAlias {
        model: "reco".into(),
        alias: "champion".into(),
        number: 2,
    });
    f.apply(Op::DeleteAlias {
        model: "reco".into(),
        alias: "champion".into(),
    });
    f.apply(Op::SetVersionStatus {
        model: "reco".into(),
        number: 2,
        status: VersionStatus::Failed,
    });
    let (all, through) = events(read(&f, &WatchFilter::All, 0));
    let revisions: Vec<u64> = all.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, (1..=9).collect::<Vec<_>>());
    assert_eq!(through, 9);
    assert_eq!(f.read(|app, txn| app.watch_revision(txn).unwrap()), 9);
    let stage = |number, from, to| Change::Stage {
        model: "reco".into(),
        number,
        from,
        to,
    };
    let kinds: Vec<&Change> = all.iter().map(|e| &e.change).collect();
    assert_eq!(
        kinds,
        [
            &Change::Model {
                model: "reco".into()
            },
            &Change::VersionCreated {
                model: "reco".into(),
                number: 1,
                status: VersionStatus::Ready
            },
            &Change::VersionCreated {
                model: "reco".into(),
                number: 2,
                status: VersionStatus::Ready
            },
            &stage(1, Stage::Experimental, Stage::Production),
            // A promotion that archives the previous Production version is two events.
            &stage(1, Stage::Production, Stage::Archived),
            &stage(2, Stage::Experimental, Stage::Production),
            &Change::AliasSet {
                model: "reco".into(),
                alias: "champion".into(),
                number: 2
            },
            &Change::AliasDeleted {
                model: "reco".into(),
                alias: "champion".into(),
                number: 2
            },
            &Change::VersionStatus {
                model: "reco".into(),
                number: 2,
                status: VersionStatus::Failed
            },
        ]
    );
    assert!(all.iter().all(|e| e.principal == "alice"));

    // The Production watcher of reco hears each version enter and leave Production.
    let production = WatchFilter::Stage {
        model: "reco".into(),
        stage: Stage::Production,
    };
    assert_eq!(
        changes(&f, &production, 0),
        [
            stage(1, Stage::Experimental, Stage::Production),
            stage(1, Stage::Production, Stage::Archived),
            stage(2, Stage::Experimental, Stage::Production),
        ]
    );
    let alias = WatchFilter::Alias {
        model: "reco".into(),
        alias: "champion".into(),
    };
    assert_eq!(changes(&f, &alias, 0).len(), 2);
    assert_eq!(
        changes(&f, &alias, 7).len(),
        1,
        "only what follows revision 7"
    );
    assert!(changes(&f, &WatchFilter::Model("other".into()), 0).is_empty());
}

#[test]
fn a_rejected_command_records_no_event_and_a_retried_request_no_second() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    let before = f.read(|app, txn| app.watch_revision(txn).unwrap());
    rejected(f.apply(create_model("reco")));
    rejected(f.apply(set_stage("reco", 9, Stage::Production)));
    rejected(f.apply(create_model("")));
    assert_eq!(f.read(|app, txn| app.watch_revision(txn).unwrap()), before);
    f.apply_request(Some("r-1"), create_version("reco", b"x"));
    f.apply_request(Some("r-1"), create_version("reco", b"x"));
    assert_eq!(
        f.read(|app, txn| app.watch_revision(txn).unwrap()),
        before + 1
    );
}

#[test]
fn a_filter_that_matches_rarely_reports_progress_at_its_scan_limit() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    let many = WATCH_SCAN_EVENTS_MAX as u64 + 10;
    let mut wtxn = f.env.write_txn().unwrap();
    for i in 0..many {
        let cmd = Command {
            actor: actor("alice"),
            at_ms: 5_000,
            request_id: None,
            op: Op::UpdateModel {
                name: "reco".into(),
                description: Some(format!("d{i}")),
                set_tags: BTreeMap::new(),
                remove_tags: Vec::new(),
            },
        };
        f.app.apply(&mut wtxn, 2 + i, &cmd).unwrap();
    }
    wtxn.commit().unwrap();
    let none = WatchFilter::Endpoint("nowhere".into());
    let (found, through) = events(read(&f, &none, 0));
    assert!(found.is_empty());
    assert_eq!(through, WATCH_SCAN_EVENTS_MAX as u64);
    let (found, through) = events(read(&f, &none, through));
    assert!(found.is_empty());
    assert_eq!(through, 1 + many, "the rest, up to the latest");
    // A batch holds at most WATCH_BATCH_EVENTS_MAX events and says where it stopped.
    let (found, through) = events(read(&f, &WatchFilter::All, 0));
    assert_eq!(found.len(), WATCH_BATCH_EVENTS_MAX);
    assert_eq!(through, WATCH_BATCH_EVENTS_MAX as u64);
    // Beyond the latest, nothing (a node behind another catches up; the service refuses it).
    assert_eq!(
        events(read(&f, &WatchFilter::All, u64::MAX)),
        (Vec::new(), u64::MAX)
    );
}

#[test]
fn events_beyond_the_kept_number_go_and_a_watcher_from_before_them_is_told_it_is_behind() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    let mut wtxn = f.env.write_txn().unwrap();
    for i in 0..WATCH_EVENTS_KEPT + 5 {
        let cmd = Command {
            actor: actor("alice"),
            at_ms: 5_000,
            request_id: None,
            op: Op::UpdateModel {
                name: "reco".into(),
                description: None,
                set_tags: BTreeMap::new(),
                remove_tags: Vec::new(),
            },
        };
        f.app.apply(&mut wtxn, 2 + i, &cmd).unwrap();
    }
    wtxn.commit().unwrap();
    let latest = WATCH_EVENTS_KEPT + 6;
    let oldest_kept = latest - WATCH_EVENTS_KEPT + 1;
    assert_eq!(f.read(|app, txn| app.watch_revision(txn).unwrap()), latest);
    assert_eq!(
        f.read(|app, txn| app.tables.watch.len(txn).unwrap()),
        WATCH_EVENTS_KEPT
    );
    assert_eq!(
        read(&f, &WatchFilter::All, 0),
        WatchRead::Behind {
            oldest_kept,
            latest
        }
    );
    assert_eq!(
        read(&f, &WatchFilter::All, oldest_kept - 2),
        WatchRead::Behind {
            oldest_kept,
            latest
        }
    );
    let (found, _) = events(read(&f, &WatchFilter::All, oldest_kept - 1));
    assert_eq!(found[0].revision, oldest_kept);
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let model = prop_oneof![Just("reco"), Just("rank")];
    prop_oneof![
        model.clone().prop_map(create_model),
        (model.clone(), 0u8..4).prop_map(|(m, c)| create_version(m, &[c])),
        (model.clone(), 1u64..4, 0usize..4).prop_map(|(m, n, s)| set_stage(
            m,
            n,
            [
                Stage::Experimental,
                Stage::Staging,
                Stage::Production,
                Stage::Archived
            ][s]
        )),
        (model.clone(), 1u64..4, prop_oneof![Just("a"), Just("b")]).prop_map(|(m, n, a)| {
            Op::SetAlias {
                model: m.into(),
                alias: a.into(),
                number: n,
            }
        }),
        (model, prop_oneof![Just("a"), Just("b")]).prop_map(|(m, a)| Op::DeleteAlias {
            model: m.into(),
            alias: a.into(),
        }),
    ]
}

fn filter_strategy() -> impl Strategy<Value = WatchFilter> {
    prop_oneof![
        Just(WatchFilter::All),
        Just(WatchFilter::Model("reco".into())),
        Just(WatchFilter::Alias {
            model: "rank".into(),
            alias: "a".into()
        }),
        Just(WatchFilter::Stage {
            model: "reco".into(),
            stage: Stage::Production
        }),
    ]
}

proptest! {
    #![proptest_config(proptest_config(48))]

    /// A watcher that reads in pieces, resuming after each piece's `through`, sees exactly the
    /// events one whole read sees: each once, in revision order, all matching its filter.
    #[test]
    fn reads_resumed_in_pieces_see_every_matching_event_once_in_order(
        ops in proptest::collection::vec(op_strategy(), 1..40),
        cuts in proptest::collection::vec(0usize..40, 0..8),
        filter in filter_strategy(),
    ) {
        let mut f = fixture();
        let mut seen = Vec::new();
        let mut after = 0;
        for (i, op) in ops.into_iter().enumerate() {
            f.apply(op);
            if cuts.contains(&i) {
                let (found, through) = events(read(&f, &filter, after));
                seen.extend(found);
                after = through;
            }
        }
        let (rest, _) = events(read(&f, &filter, after));
        seen.extend(rest);
        let (whole, _) = events(read(&f, &filter, 0));
        prop_assert_eq!(&seen, &whole);
        prop_assert!(seen.windows(2).all(|w| w[0].revision < w[1].revision));
        prop_assert!(seen.iter().all(|e| filter.matches(&e.change)));
        // Nothing the filter matches is left out.
        let (every, _) = events(read(&f, &WatchFilter::All, 0));
        let matching: Vec<_> = every.into_iter().filter(|e| filter.matches(&e.change)).collect();
        prop_assert_eq!(seen, matching);
    }
}
