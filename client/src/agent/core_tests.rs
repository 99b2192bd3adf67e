use super::*;
use crate::proto::{Rollout, TrafficShare};
use proptest::prelude::*;

fn deployment(generation: u64, split: &[(u64, u32)], shadows: &[u64]) -> Deployment {
    Deployment {
        endpoint: "reco-prod".into(),
        model: "reco".into(),
        generation,
        split: split
            .iter()
            .map(|&(version, percent)| TrafficShare { version, percent })
            .collect(),
        shadows: shadows.to_vec(),
        updated_at_ms: 1_000,
        ..Default::default()
    }
}

fn prepares(applied: &Applied) -> Vec<Action> {
    match applied {
        Applied::Changed { actions, .. } => actions.clone(),
        Applied::Stale { .. } => Vec::new(),
    }
}

#[test]
fn a_rollout_keeps_the_stable_version_warm_and_a_rollback_needs_nothing_loaded() {
    let mut core = AgentCore::new("reco-prod");
    assert_eq!(core.route(b"k"), Route::NotReady, "no deployment yet");
    let applied = core
        .on_deployment(deployment(1, &[(14, 100)], &[]), 1_010)
        .unwrap();
    assert_eq!(prepares(&applied), [Action::Prepare { version: 14 }]);
    assert_eq!(core.route(b"k"), Route::NotReady, "14 is not loaded yet");
    assert_eq!(core.prepared(14, 1_500), Some(490));

    // A rollout to 15: 5% canary, 14 is the stable version.
    let mut canary = deployment(2, &[(14, 95), (15, 5)], &[]);
    canary.stable = 14;
    canary.rollout = Some(Rollout::default());
    let applied = core.on_deployment(canary, 2_000).unwrap();
    assert_eq!(prepares(&applied), [Action::Prepare { version: 15 }]);
    // Until 15 is ready every request goes to 14, which is in the split.
    for i in 0..200u32 {
        assert_eq!(
            core.route(&i.to_le_bytes()),
            Route::Serve {
                version: 14,
                generation: 2
            }
        );
    }
    core.prepared(15, 2_100);
    let on_15 = (0..10_000u32)
        .filter(|i| {
            core.route(&i.to_le_bytes())
                == Route::Serve {
                    version: 15,
                    generation: 2,
                }
        })
        .count();
    assert!(
        (400..600).contains(&on_15),
        "{on_15} of 10000 keys on the canary"
    );

    // Rolled back: all to 14, already loaded; 15 stays until a later change drops it.
    let mut back = deployment(3, &[(14, 100)], &[]);
    back.previous = Some(15);
    back.updated_at_ms = 2_900;
    match core.on_deployment(back, 3_000).unwrap() {
        Applied::Changed {
            rollback,
            propagation_ms,
            actions,
            ..
        } => {
            assert!(rollback);
            assert_eq!(propagation_ms, 100);
            assert!(actions.is_empty(), "{actions:?}");
        }
        stale => panic!("{stale:?}"),
    }
    assert_eq!(
        core.route(b"any"),
        Route::Serve {
            version: 14,
            generation: 3
        }
    );
    // A replayed older change moves nothing.
    assert_eq!(
        core.on_deployment(deployment(2, &[(14, 95), (15, 5)], &[]), 3_100)
            .unwrap(),
        Applied::Stale { generation: 2 }
    );
    // Moving on to 16 drops 15 (neither in the split nor previous) and keeps 14 as previous.
    let mut next = deployment(4, &[(16, 100)], &[]);
    next.previous = Some(14);
    let actions = prepares(&core.on_deployment(next, 4_000).unwrap());
    assert_eq!(
        actions,
        [
            Action::Prepare { version: 16 },
            Action::Drop { version: 15 }
        ]
    );
    assert_eq!(
        core.route(b"k"),
        Route::NotReady,
        "16 is not loaded and 14 is not in the split"
    );
    assert_eq!(
        core.prepared(15, 4_100),
        None,
        "a dropped version is not taken back"
    );
}

#[test]
fn shadows_get_copies_only_when_loaded_and_never_answer() {
    let mut core = AgentCore::new("reco-prod");
    core.on_deployment(deployment(1, &[(14, 100)], &[15]), 0)
        .unwrap();
    core.prepared(14, 1);
    assert!(core.shadows().is_empty());
    core.prepared(15, 2);
    assert_eq!(core.shadows(), [15]);
    for i in 0..1_000u32 {
        assert_eq!(
            core.route(&i.to_le_bytes()),
            Route::Serve {
                version: 14,
                generation: 1
            }
        );
    }
}

#[test]
fn a_failed_pull_is_retried_with_a_growing_pause() {
    let mut core = AgentCore::new("reco-prod");
    core.on_deployment(deployment(1, &[(14, 100)], &[]), 0)
        .unwrap();
    core.prepare_failed(14, "no node answered", 100);
    assert!(core.due_retries(599).is_empty());
    assert_eq!(core.next_retry_ms(), Some(600));
    assert_eq!(core.due_retries(600), [Action::Prepare { version: 14 }]);
    core.prepare_failed(14, "no node answered", 700);
    assert_eq!(core.next_retry_ms(), Some(1_700), "the pause doubled");
    for attempt in 0..40 {
        core.due_retries(i64::MAX);
        core.prepare_failed(14, "still down", attempt);
    }
    assert!(core.next_retry_ms().unwrap() <= 40 + RETRY_MS_MAX);
    let status = core.status();
    assert!(matches!(status.versions[&14], VersionState::Failed { .. }));
}

#[test]
fn an_offline_agent_keeps_serving_and_says_since_when() {
    let mut core = AgentCore::new("reco-prod");
    core.on_deployment(deployment(1, &[(14, 100)], &[]), 0)
        .unwrap();
    core.prepared(14, 1);
    core.registry_reachable(false, 50);
    core.registry_reachable(false, 90);
    assert_eq!(core.offline_since_ms(), Some(50));
    assert!(!core.status().registry_reachable);
    assert!(matches!(core.route(b"k"), Route::Serve { version: 14, .. }));
    core.registry_reachable(true, 100);
    assert_eq!(core.offline_since_ms(), None);
}

#[test]
fn another_endpoints_deployment_or_an_untrusted_split_changes_nothing() {
    let mut core = AgentCore::new("reco-prod");
    core.on_deployment(deployment(1, &[(14, 100)], &[]), 0)
        .unwrap();
    let mut other = deployment(2, &[(20, 100)], &[]);
    other.endpoint = "other".into();
    assert!(core.on_deployment(other, 1).is_err());
    assert!(core
        .on_deployment(deployment(3, &[(14, 50)], &[]), 1)
        .is_err());
    assert_eq!(core.generation(), 1);
    assert_eq!(core.status().split, [(14, 100)]);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever deployments arrive, in whatever order, and whichever versions become ready:
    /// a request is answered only by a ready version of the split in force, and the kept
    /// versions are exactly what the deployment in force wants.
    #[test]
    fn only_a_ready_version_of_the_split_in_force_answers(
        events in proptest::collection::vec(
            prop_oneof![
                (1u64..12, proptest::collection::vec((1u64..6, 0u32..101), 0..4), proptest::collection::vec(1u64..6, 0..2))
                    .prop_map(|(g, split, shadows)| (0u8, g, split, shadows)),
                (1u64..6).prop_map(|v| (1u8, v, Vec::new(), Vec::new())),
                (1u64..6).prop_map(|v| (2u8, v, Vec::new(), Vec::new())),
            ],
            1..40,
        ),
    ) {
        let mut core = AgentCore::new("reco-prod");
        for (now, (kind, n, split, shadows)) in events.into_iter().enumerate() {
            let now = now as i64;
            match kind {
                0 => { let _ = core.on_deployment(deployment(n, &split, &shadows), now); }
                1 => { core.prepared(n, now); }
                _ => core.prepare_failed(n, "x", now),
            }
            if let Some(d) = core.deployment().cloned() {
                let routing = Routing::from_deployment(&d).unwrap();
                let kept: BTreeSet<u64> = core.status().versions.keys().copied().collect();
                prop_assert_eq!(kept, wanted(&d, &routing));
                for key in 0..20u8 {
                    if let Route::Serve { version, generation } = core.route(&[key]) {
                        prop_assert_eq!(generation, d.generation);
                        prop_assert!(d.split.iter().any(|s| s.version == version));
                        prop_assert!(core.is_ready(version));
                    }
                }
            }
        }
    }
}
