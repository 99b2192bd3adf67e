//! Property tests of `apply` over arbitrary sequences of hostile commands. Seeded
//! ([`proptest_config`]), so a failure reproduces; snapshot import's are in `snapshot.rs`.

use proptest::prelude::*;

use super::*;
use crate::domain::limits;

// ------------------------------------------------------------ hostile values

/// Strings every name, key and id field must survive: empty, over every limit (LMDB's 511-byte
/// key limit included), NUL, control characters, path-like (POSIX and `C:`-style), unicode,
/// format strings, '=', upper case, a leading dot, and anything at all.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(" ".to_owned()),
        Just("a".repeat(limits::NAME_BYTES_MAX + 1)),
        Just("a".repeat(600)),
        Just("x".repeat(limits::DESCRIPTION_BYTES_MAX + 1)),
        Just("bad\0name".to_owned()),
        Just("tab\tand\u{7}bell".to_owned()),
        Just("../x".to_owned()),
        Just("../../etc/passwd".to_owned()),
        Just("models/reco".to_owned()),
        Just("C:\\models\\reco".to_owned()),
        Just("c:evil".to_owned()),
        Just("модель-🚀".to_owned()),
        Just("%s%n{}".to_owned()),
        Just("k=v".to_owned()),
        Just("Reco".to_owned()),
        Just(".hidden".to_owned()),
        any::<String>(),
    ]
}

/// A model name: mostly from a small pool, so commands meet the models others created.
fn model_name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["reco", "m1", "search-ranking"]).prop_map(String::from),
        1 => hostile_string(),
    ]
}

fn alias_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["champion", "challenger"]).prop_map(String::from),
        1 => hostile_string(),
    ]
}

/// Free text (descriptions, reasons, tag values, ids): ordinary or hostile.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-z ]{0,12}", 1 => hostile_string()]
}

/// Version numbers: the few that exist, zero, and the extremes.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 1u64..4,
        1 => Just(0u64),
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

fn tags() -> impl Strategy<Value = BTreeMap<String, String>> {
    let key = prop_oneof![8 => "[a-z]{1,6}", 1 => hostile_string()];
    prop_oneof![
        8 => prop::collection::btree_map(key, text(), 0..3),
        1 => Just(
            (0..=limits::TAGS_MAX)
                .map(|i| (format!("k{i}"), "v".to_owned()))
                .collect()
        ),
    ]
}

fn tag_keys() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop_oneof!["[a-z]{1,6}", hostile_string()], 0..3)
}

fn stage() -> impl Strategy<Value = Stage> {
    prop::sample::select(vec![
        Stage::Experimental,
        Stage::Staging,
        Stage::Production,
        Stage::Archived,
    ])
}

fn status() -> impl Strategy<Value = VersionStatus> {
    prop::sample::select(vec![
        VersionStatus::Pending,
        VersionStatus::Ready,
        VersionStatus::Failed,
    ])
}

fn risk_tier() -> impl Strategy<Value = RiskTier> {
    prop::sample::select(vec![RiskTier::Low, RiskTier::Medium, RiskTier::High])
}

/// A manifest of one file per content: honest, or with a hostile path, a size that does not
/// add up, or no chunks for a non-empty file.
fn manifest_of(contents: &[Vec<u8>], path: &str, damage: u8) -> Manifest {
    let mut files: Vec<FileEntry> = contents
        .iter()
        .enumerate()
        .map(|(i, content)| FileEntry {
            path: format!("f{i}.bin"),
            size_bytes: content.len() as u64,
            mode: 0o644,
            chunks: if content.is_empty() {
                Vec::new()
            } else {
                vec![ChunkRef {
                    hash: Hash::of(content),
                    size_bytes: content.len() as u32,
                }]
            },
        })
        .collect();
    if let Some(first) = files.first_mut() {
        match damage {
            1 => first.path = path.to_owned(),
            2 => first.size_bytes = first.size_bytes.wrapping_add(1),
            3 => first.chunks.clear(),
            4 => first.size_bytes = u64::MAX,
            _ => {}
        }
    }
    Manifest { files }
}

fn create_version_op() -> impl Strategy<Value = Op> {
    let contents = prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec![b"one".to_vec(), b"two".to_vec(), b"tiny".to_vec()]),
            Just(Vec::new()),
            Just(vec![7u8; limits::INLINE_VERSION_BYTES_MAX + 1]),
        ],
        0..3,
    );
    let metadata = prop_oneof![
        6 => Just(VersionMetadata {
            data_snapshot_id: "snap-47".into(),
            code_commit: "c0ffee".into(),
            pipeline_run_id: "run-1".into(),
            ..Default::default()
        }),
        1 => (text(), text(), text(), tags(), any::<f64>(), hostile_string()).prop_map(
            |(data, code, run, hyperparameters, metric, key)| VersionMetadata {
                data_snapshot_id: data,
                code_commit: code,
                pipeline_run_id: run,
                hyperparameters,
                metrics: BTreeMap::from([(key, metric), ("nan".into(), f64::NAN)]),
            }
        ),
    ];
    let signature = prop_oneof![
        6 => Just(Signature::default()),
        1 => (hostile_string(), text(), prop::collection::vec(any::<i64>(), 0..20)).prop_map(
            |(name, dtype, shape)| Signature {
                inputs: vec![
                    TensorSpec { name: name.clone(), dtype, shape, optional: false },
                    TensorSpec {
                        name,
                        dtype: "float32".into(),
                        shape: vec![-1, i64::MAX],
                        optional: true,
                    },
                ],
                outputs: Vec::new(),
            }
        ),
    ];
    (
        model_name(),
        contents,
        (hostile_string(), 0u8..12),
        0u8..10,
        0u8..6,
        signature,
        metadata,
        tags(),
        status(),
    )
        .prop_map(
            |(
                model,
                contents,
                (path, damage),
                root_kind,
                inline_kind,
                signature,
                metadata,
                tags,
                status,
            )| {
                let manifest = manifest_of(&contents, &path, damage);
                let honest = || -> Vec<InlineChunk> {
                    let mut seen = std::collections::BTreeSet::new();
                    contents
                        .iter()
                        .filter(|c| !c.is_empty() && seen.insert(c.to_vec()))
                        .map(|c| inline(c))
                        .collect()
                };
                let inline_chunks = match inline_kind {
                    1 | 2 => honest(),
                    3 => honest().into_iter().chain(honest()).collect(),
                    4 => vec![InlineChunk {
                        hash: Hash::of(b"one"),
                        data: b"two".to_vec(),
                    }],
                    5 => vec![inline(b"not in the manifest")],
                    _ => Vec::new(),
                };
                let manifest_root = match root_kind {
                    1 => String::new(),
                    2 => "not-a-root".into(),
                    3 => manifest_of(&[b"other".to_vec()], "", 0).root().to_hex(),
                    _ => manifest.root().to_hex(),
                };
                Op::CreateVersion {
                    model,
                    manifest,
                    manifest_root,
                    signature,
                    metadata,
                    tags,
                    status,
                    inline_chunks,
                }
            },
        )
}

fn node_info() -> impl Strategy<Value = NodeInfo> {
    let addr = prop_oneof![
        3 => Just("127.0.0.1:7001".to_owned()),
        1 => Just("[::1]:0".to_owned()),
        1 => hostile_string(),
    ];
    let place = prop_oneof![3 => Just("eu-west".to_owned()), 1 => Just(String::new()), 1 => hostile_string()];
    (
        prop_oneof![Just(0u64), Just(7u64), Just(u64::MAX), any::<u64>()],
        addr.clone(),
        addr.clone(),
        addr,
        place.clone(),
        place,
    )
        .prop_map(
            |(node_id, api_addr, peer_addr, quic_addr, region, zone)| NodeInfo {
                node_id,
                api_addr,
                peer_addr,
                quic_addr,
                region,
                zone,
            },
        )
}

/// A lineage entity: the prefix's snapshot and versions, or any kind with a hostile id (stored
/// entities are structs, so a decoded command may hold ids no parser would give).
fn entity() -> impl Strategy<Value = crate::lineage::Entity> {
    use crate::lineage::{Entity, EntityKind};
    prop_oneof![
        4 => prop::sample::select(vec!["data:snap-47", "version:reco/1", "version:m1/1", "data:9"])
            .prop_map(|text| Entity::parse("entity", text).unwrap()),
        1 => (prop::sample::select(EntityKind::ALL.to_vec()), hostile_string())
            .prop_map(|(kind, id)| Entity::new(kind, id)),
        1 => (model_name(), number()).prop_map(|(model, number)| Entity::version(&model, number)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (model_name(), hostile_string(), text(), risk_tier(), tags()).prop_map(
            |(name, namespace, description, risk_tier, tags)| Op::CreateModel {
                name,
                // The namespace is a name too: valid half the time.
                namespace: if namespace.len() % 2 == 0 { "team".into() } else { namespace },
                description,
                risk_tier,
                tags,
            }
        ),
        1 => (model_name(), prop::option::of(text()), tags(), tag_keys()).prop_map(
            |(name, description, set_tags, remove_tags)| Op::UpdateModel {
                name,
                description,
                set_tags,
                remove_tags,
            }
        ),
        4 => create_version_op(),
        1 => (model_name(), number(), status()).prop_map(|(model, number, status)| {
            Op::SetVersionStatus { model, number, status }
        }),
        2 => (model_name(), number(), stage(), text()).prop_map(|(model, number, stage, reason)| {
            Op::SetStage { model, number, stage, reason, override_signature: false }
        }),
        2 => (model_name(), alias_name(), number()).prop_map(|(model, alias, number)| {
            Op::SetAlias { model, alias, number }
        }),
        1 => (model_name(), alias_name()).prop_map(|(model, alias)| Op::DeleteAlias { model, alias }),
        1 => (model_name(), number(), tags(), tag_keys()).prop_map(
            |(model, number, set_tags, remove_tags)| Op::SetVersionTags {
                model,
                number,
                set_tags,
                remove_tags,
            }
        ),
        1 => node_info().prop_map(Op::UpsertNode),
        2 => (entity(), entity()).prop_map(|(from, to)| Op::AddLineageEdge { from, to }),
        1 => (entity(), text()).prop_map(|(entity, reason)| Op::Quarantine { entity, reason }),
        1 => (entity(), text()).prop_map(|(entity, reason)| Op::LiftQuarantine { entity, reason }),
        1 => prop_oneof![Just(7u64), any::<u64>()].prop_map(|node_id| Op::RemoveNode { node_id }),
        3 => governance_op(),
        2 => logged_model_op(),
    ]
}

/// MLflow's logged models: a pool of two ids (so files and updates meet the models created), the
/// default experiment or another, hostile names, params and files whose paths escape or whose
/// chunks do not add up.
fn logged_model_op() -> BoxedStrategy<Op> {
    use crate::logged_model::LoggedModelStatus;
    let id = prop_oneof![
        4 => prop::sample::select(vec![
            "m-00000000000000000000000000000001",
            "m-00000000000000000000000000000002",
        ])
        .prop_map(String::from),
        1 => hostile_string(),
    ];
    let experiment = prop_oneof![3 => Just("0".to_owned()), 1 => hostile_string()];
    let status = prop::option::of(prop::sample::select(vec![
        LoggedModelStatus::Pending,
        LoggedModelStatus::Ready,
        LoggedModelStatus::UploadFailed,
    ]));
    let file = (
        prop_oneof![3 => Just("MLmodel".to_owned()), 1 => hostile_string()],
        prop::sample::select(vec![b"one".to_vec(), Vec::new()]),
        0u8..5,
    )
        .prop_map(|(path, content, damage)| {
            let mut files = manifest_of(&[content], &path, damage).files;
            files.remove(0)
        });
    prop_oneof![
        2 => (id.clone(), experiment, text(), text(), tags(), tags()).prop_map(
            |(id, experiment_id, name, source_run_id, params, tags)| Op::CreateLoggedModel {
                id,
                experiment_id,
                name,
                model_type: String::new(),
                source_run_id,
                params,
                tags,
            }
        ),
        2 => (id.clone(), status, tags(), tags(), tag_keys()).prop_map(
            |(id, status, set_params, set_tags, remove_tags)| Op::UpdateLoggedModel {
                id,
                status,
                set_params,
                set_tags,
                remove_tags,
            }
        ),
        3 => (id, file).prop_map(|(id, file)| Op::PutLoggedModelFile { id, file }),
    ]
    .boxed()
}

/// Policies with approvals and evaluation gates, evaluations, review decisions and grants, so
/// that reviews open, take approvals, get voided, promote and close.
fn governance_op() -> BoxedStrategy<Op> {
    use crate::auth::{Role, Scope};
    use crate::governance::{Gate, Policy, PolicyScope};
    let role = prop::sample::select(Role::ALL.to_vec());
    let gate = prop_oneof![
        2 => (0u32..4, role.clone()).prop_map(|(count, role)| Gate::Approvals { count, role }),
        1 => Just(Gate::Evaluation { eval_kind: "fairness".into(), bounds: Vec::new() }),
    ];
    let policy = (prop::collection::vec(gate, 0..3), any::<bool>()).prop_map(
        |(production, auto_promote)| Policy {
            staging: Vec::new(),
            production,
            auto_promote,
        },
    );
    let scope = prop_oneof![
        model_name().prop_map(PolicyScope::Model),
        Just(PolicyScope::Namespace {
            namespace: "team".into(),
            tier: None
        }),
    ];
    let principal = prop_oneof![
        3 => prop::sample::select(vec!["alice", "bob", "carol"]).prop_map(str::to_owned),
        1 => hostile_string(),
    ];
    prop_oneof![
        1 => (scope, prop::option::of(policy)).prop_map(|(scope, policy)| Op::SetPolicy { scope, policy }),
        1 => (model_name(), number(), prop_oneof![Just("fairness".to_owned()), hostile_string()], text())
            .prop_map(|(model, number, kind, summary)| Op::RecordEvaluation {
                model,
                number,
                kind,
                metrics: BTreeMap::from([("auc".to_string(), 0.9)]),
                summary,
            }),
        3 => (model_name(), prop_oneof![Just(1u64), Just(2u64), Just(0u64), any::<u64>()], any::<bool>(), text())
            .prop_map(|(model, id, approve, comment)| Op::DecideReview { model, id, approve, comment }),
        1 => (principal, role).prop_map(|(principal, role)| Op::GrantRole {
            principal,
            scope: Scope::Namespace("team".into()),
            role,
        }),
    ]
    .boxed()
}

fn command() -> impl Strategy<Value = Command> {
    let request_id = prop_oneof![
        6 => Just(None),
        2 => prop::sample::select(vec!["r1", "r2"]).prop_map(|id| Some(RequestId(id.into()))),
        1 => hostile_string().prop_map(|id| Some(RequestId(id))),
    ];
    (
        prop_oneof![3 => Just("alice".to_owned()), 2 => Just("bob".to_owned()), 1 => hostile_string()],
        any::<bool>(),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-1i64), any::<i64>()],
        request_id,
        op(),
    )
        .prop_map(|(name, authenticated, at_ms, request_id, op)| Command {
            actor: Actor {
                name,
                authenticated,
            },
            at_ms,
            request_id,
            op,
        })
}

// ------------------------------------------------------------ apply

/// blake3 over every table except the request-id bookkeeping: what a rejected command must not
/// change (it is remembered under its request id, and nothing else).
fn registry_digest(f: &Fixture) -> String {
    f.read(|app, txn| {
        let mut hasher = blake3::Hasher::new();
        for (name, table) in app.tables.all() {
            if matches!(name, "requests" | "request_log") {
                continue;
            }
            hasher.update(name.as_bytes());
            for row in table.iter(txn).unwrap() {
                let (k, v) = row.unwrap();
                hasher.update(&(k.len() as u64).to_le_bytes());
                hasher.update(k);
                hasher.update(&(v.len() as u64).to_le_bytes());
                hasher.update(v);
            }
        }
        hasher.finalize().to_hex().to_string()
    })
}

/// Valid commands that every sequence starts with, so that the arbitrary ones meet models,
/// a READY version and an alias, not only an empty state.
fn prefix() -> Vec<Command> {
    [
        create_model("reco"),
        create_version("reco", b"one"),
        Op::SetAlias {
            model: "reco".into(),
            alias: "champion".into(),
            number: 1,
        },
        create_model("m1"),
    ]
    .into_iter()
    .map(|op| Command {
        actor: actor("alice"),
        at_ms: 1_000,
        request_id: None,
        op,
    })
    .collect()
}

/// Applies `commands` one per log entry to a fresh state, as `apply_sync` does: an error is what
/// stops Raft, so it fails the property; a rejection must change no registry table.
fn apply_all(commands: &[Command]) -> Result<(Fixture, Vec<String>), TestCaseError> {
    let mut f = fixture();
    let mut responses = Vec::new();
    for (i, cmd) in prefix().iter().chain(commands).enumerate() {
        let index = i as u64 + 1;
        let before = registry_digest(&f);
        let mut wtxn = f.env.write_txn().unwrap();
        let response = match f.app.apply(&mut wtxn, index, cmd) {
            Ok(response) => response,
            Err(error) => {
                return Err(TestCaseError::fail(format!(
                    "apply of command {i} returned an error, which would stop Raft: {error:#}\n\
                     command: {cmd:?}"
                )))
            }
        };
        wtxn.commit().unwrap();
        f.index = index;
        if matches!(response, Response::Rejected(_)) {
            prop_assert_eq!(
                registry_digest(&f),
                before,
                "rejected command {} changed a table: {:?}",
                i,
                cmd
            );
        }
        responses.push(serde_json::to_string(&response).unwrap());
    }
    Ok((f, responses))
}

proptest! {
    #![proptest_config(proptest_config(48))]

    #[test]
    fn apply_never_fails_and_replays_to_the_same_digest(
        commands in prop::collection::vec(command(), 1..32),
    ) {
        let (first, responses) = apply_all(&commands)?;
        let (second, replayed) = apply_all(&commands)?;
        prop_assert_eq!(first.digest(), second.digest());
        prop_assert_eq!(responses, replayed);
    }
}

/// Every catalog entry, by model name.
fn catalog_rows(f: &Fixture) -> Vec<(Vec<u8>, Vec<u8>)> {
    f.read(|app, txn| {
        let t = &app.tables;
        [&t.catalog, &t.catalog_index]
            .iter()
            .flat_map(|table| table.iter(txn).unwrap())
            .map(|row| {
                let (k, v) = row.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(proptest_config(48))]

    /// The catalog that apply keeps, entry by entry as commands arrive, is the one rebuilt from
    /// the models and versions afterwards (what a store written before the catalog gets).
    #[test]
    fn the_catalog_kept_by_apply_equals_the_one_rebuilt(
        commands in prop::collection::vec(command(), 1..32),
    ) {
        let (f, _) = apply_all(&commands)?;
        let kept = catalog_rows(&f);
        let mut wtxn = f.env.write_txn().unwrap();
        f.app.tables.catalog.clear(&mut wtxn).unwrap();
        f.app.tables.catalog_index.put(&mut wtxn, b"stale", &[]).unwrap();
        f.app.fill_catalog_if_missing(&mut wtxn).unwrap();
        wtxn.commit().unwrap();
        prop_assert_eq!(catalog_rows(&f), kept);
    }
}
