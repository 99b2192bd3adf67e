//! Commands: what each one writes, and that a rejected one writes nothing.

use super::*;

#[test]
fn versions_are_numbered_at_apply_and_duplicates_are_detected() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    assert_eq!(version(f.apply(create_version("reco", b"one"))).number, 1);
    assert_eq!(version(f.apply(create_version("reco", b"two"))).number, 2);
    let before = f.digest();
    assert_eq!(
        rejected(f.apply(create_version("reco", b"one"))),
        DomainError::DuplicateBundle {
            model: "reco".into(),
            number: 1,
            root: manifest(b"one").root().to_hex()
        }
    );
    assert_eq!(f.digest(), before, "a rejected command must change nothing");
    assert_eq!(
        rejected(f.apply(create_model("reco"))),
        DomainError::ModelExists {
            name: "reco".into()
        }
    );
    assert_eq!(
        rejected(f.apply(create_version("nope", b"x"))),
        DomainError::ModelNotFound {
            name: "nope".into()
        }
    );
}

#[test]
fn a_small_version_keeps_its_chunks_in_the_state_and_bad_inline_chunks_are_refused() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    let root = manifest(b"tiny").root().to_hex();
    let v = version(f.apply(with_inline(
        create_version("reco", b"tiny"),
        vec![inline(b"tiny")],
    )));
    assert_eq!(v.number, 1);
    let kept = f.read(|app, txn| app.inline_chunks(txn, &root).unwrap());
    assert_eq!(kept, Some(vec![inline(b"tiny")]));
    assert_eq!(f.read(|app, txn| app.inline_bytes(txn).unwrap()), 4);
    // Repair leaves it alone (every node has it by applying it); a chunk-store version is listed.
    f.apply(create_version("reco", b"stored"));
    let roots: Vec<String> = f.read(|app, txn| {
        app.ready_manifest_roots(txn)
            .unwrap()
            .into_iter()
            .map(|(_, _, root)| root)
            .collect()
    });
    assert_eq!(roots, vec![manifest(b"stored").root().to_hex()]);
    assert_eq!(
        f.read(|app, txn| app.inline_chunks(txn, &roots[0]).unwrap()),
        None
    );

    let before = f.digest();
    let refused = |f: &mut Fixture, content: &[u8], chunks: Vec<InlineChunk>| {
        let e = rejected(f.apply(with_inline(create_version("reco", content), chunks)));
        match e {
            DomainError::Invalid { field, message } => {
                assert_eq!(field, "inline_chunks", "{message}");
                message
            }
            other => panic!("expected an invalid inline_chunks, got {other:?}"),
        }
    };
    // Bytes that do not hash to the chunk.
    let mut rotten = inline(b"abc");
    rotten.data = b"abd".to_vec();
    assert!(refused(&mut f, b"abc", vec![rotten]).contains("hash to"));
    // A chunk the manifest does not list, or one given twice.
    assert!(refused(&mut f, b"abc", vec![inline(b"xyz")]).contains("not in the manifest"));
    assert!(refused(&mut f, b"abc", vec![inline(b"abc"), inline(b"abc")]).contains("twice"));
    // Over the size limit.
    let big = vec![7u8; limits::INLINE_VERSION_BYTES_MAX + 1];
    assert!(refused(&mut f, &big, vec![inline(&big)]).contains("at most"));
    // Some of the manifest's chunks but not all.
    let mut two = manifest(b"first");
    two.files.insert(
        0,
        FileEntry {
            path: "second.bin".into(),
            size_bytes: 6,
            mode: 0o644,
            chunks: vec![ChunkRef {
                hash: Hash::of(b"second"),
                size_bytes: 6,
            }],
        },
    );
    let mut partial = with_inline(create_version("reco", b"first"), vec![inline(b"first")]);
    if let Op::CreateVersion {
        manifest,
        manifest_root,
        ..
    } = &mut partial
    {
        *manifest_root = two.root().to_hex();
        *manifest = two;
    }
    match rejected(f.apply(partial)) {
        DomainError::Invalid { field, message } => {
            assert_eq!(field, "inline_chunks");
            assert!(
                message.contains("1 of the manifest's 2 chunks"),
                "{message}"
            );
        }
        other => panic!("expected an invalid inline_chunks, got {other:?}"),
    }
    assert_eq!(f.digest(), before, "a refused command changes nothing");
    assert_eq!(f.read(|app, txn| app.inline_bytes(txn).unwrap()), 4);
}

#[test]
fn a_command_without_inline_chunks_encodes_as_before_and_decodes() {
    // Log entries written before the field existed have no `inline_chunks`: they decode
    // with none, and a command without any encodes without the field.
    let op = create_version("reco", b"one");
    let json = serde_json::to_string(&op).unwrap();
    assert!(!json.contains("inline_chunks"), "{json}");
    match serde_json::from_str::<Op>(&json).unwrap() {
        Op::CreateVersion { inline_chunks, .. } => assert!(inline_chunks.is_empty()),
        other => panic!("decoded {other:?}"),
    }
    let with = with_inline(op, vec![inline(b"one")]);
    let json = serde_json::to_string(&with).unwrap();
    assert!(json.contains("\"b25l\""), "bytes as base64: {json}");
    match serde_json::from_str::<Op>(&json).unwrap() {
        Op::CreateVersion { inline_chunks, .. } => {
            assert_eq!(inline_chunks, vec![inline(b"one")])
        }
        other => panic!("decoded {other:?}"),
    }
}

#[test]
fn a_manifest_root_that_does_not_match_is_rejected() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    let mut op = create_version("reco", b"one");
    if let Op::CreateVersion { manifest_root, .. } = &mut op {
        *manifest_root = Hash::of(b"other").to_hex();
    }
    let e = rejected(f.apply(op));
    assert!(
        matches!(e, DomainError::Invalid { ref field, .. } if field == "manifest_root"),
        "{e}"
    );
}

#[test]
fn production_holds_one_version_and_the_previous_is_archived() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(create_version("reco", b"one"));
    f.apply(create_version("reco", b"two"));
    let promote = |n| Op::SetStage {
        model: "reco".into(),
        number: n,
        stage: Stage::Production,
        reason: "eval passed".into(),
        override_signature: false,
    };
    f.apply(promote(1));
    let v2 = version(f.apply(promote(2)));
    assert_eq!(v2.stage, Stage::Production);
    let v1 = f.read(|app, txn| app.get_version(txn, "reco", 1).unwrap());
    assert_eq!(v1.stage, Stage::Archived);
    assert_eq!(
        v1.stage_history.last().unwrap().reason,
        "superseded by reco/2"
    );
    let prod = by_stage("reco", Stage::Production);
    assert_eq!(
        f.read(|app, txn| app.resolve(txn, &prod).unwrap().number),
        2
    );
    assert_eq!(
        rejected(f.apply(promote(2))),
        DomainError::SameStage {
            model: "reco".into(),
            number: 2,
            stage: "production".into()
        }
    );
    // Rollback: the archived version goes back to Production.
    f.apply(promote(1));
    assert_eq!(
        f.read(|app, txn| app.resolve(txn, &prod).unwrap().number),
        1
    );
    let staging = by_stage("reco", Stage::Staging);
    let err = f.read(|app, txn| app.resolve(txn, &staging).unwrap_err());
    assert_eq!(
        err.to_string(),
        "model 'reco' has no version in stage staging"
    );
}

#[test]
fn aliases_point_only_at_existing_versions() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(create_version("reco", b"one"));
    let set = |alias: &str, n| Op::SetAlias {
        model: "reco".into(),
        alias: alias.into(),
        number: n,
    };
    assert_eq!(
        rejected(f.apply(set("champion", 9))),
        DomainError::VersionNotFound {
            model: "reco".into(),
            number: 9,
            count: 1
        }
    );
    assert!(matches!(f.apply(set("champion", 1)), Response::Alias(_)));
    let r = by_alias("reco", "champion");
    assert_eq!(f.read(|app, txn| app.resolve(txn, &r).unwrap().number), 1);
    let missing = by_alias("reco", "challenger");
    let err = f.read(|app, txn| app.resolve(txn, &missing).unwrap_err());
    assert!(
        err.to_string()
            .starts_with("alias 'challenger' not found on model 'reco'"),
        "{err}"
    );
    assert!(matches!(
        rejected(f.apply(set("Bad Name", 1))),
        DomainError::Invalid { .. }
    ));
}

#[test]
fn tags_change_beside_the_version_but_content_does_not() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    let v = version(f.apply(create_version("reco", b"one")));
    let tagged = version(f.apply(Op::SetVersionTags {
        model: "reco".into(),
        number: 1,
        set_tags: [("team".to_string(), "search".to_string())].into(),
        remove_tags: vec![],
    }));
    assert_eq!(tagged.tags.get("team").map(String::as_str), Some("search"));
    assert_eq!(tagged.manifest_root, v.manifest_root);
    assert_eq!(tagged.files, v.files);
    assert_eq!(tagged.metadata, v.metadata);
    assert_eq!(tagged.created_at_ms, v.created_at_ms);
}

/// Names a client controls become LMDB keys. An empty or over-long key is an LMDB error, which
/// inside apply would stop Raft on every node for good (and again at every restart's replay):
/// every command naming such a model (or alias) must be a rejection that changes nothing.
#[test]
fn hostile_names_are_rejected_in_apply_and_change_nothing() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(create_version("reco", b"one"));
    let before = f.digest();
    let long = "x".repeat(600);
    let hostile = [
        "",
        long.as_str(),
        "a\0b",
        "../etc/passwd",
        "C:\\models",
        "ünïcödé",
        "Reco",
        "-reco",
    ];
    for name in hostile {
        let ops = [
            Op::SetAlias {
                model: name.into(),
                alias: "champion".into(),
                number: 1,
            },
            Op::DeleteAlias {
                model: name.into(),
                alias: "champion".into(),
            },
            Op::SetStage {
                model: name.into(),
                number: 1,
                stage: Stage::Production,
                reason: "r".into(),
                override_signature: false,
            },
            Op::UpdateModel {
                name: name.into(),
                description: Some("d".into()),
                set_tags: BTreeMap::new(),
                remove_tags: Vec::new(),
            },
            Op::SetVersionTags {
                model: name.into(),
                number: 1,
                set_tags: BTreeMap::new(),
                remove_tags: Vec::new(),
            },
            Op::SetVersionStatus {
                model: name.into(),
                number: 1,
                status: VersionStatus::Failed,
            },
            create_model(name),
            create_version(name, b"two"),
        ];
        for op in ops {
            let kind = op.kind();
            match rejected(f.apply(op)) {
                DomainError::Invalid { field, .. } => {
                    assert_eq!(field, "model", "{kind} on {name:?}")
                }
                other => panic!("{kind} on {name:?}: {other:?}"),
            }
            assert_eq!(f.digest(), before, "{kind} on {name:?} changed the state");
        }
        let delete = Op::DeleteAlias {
            model: "reco".into(),
            alias: name.into(),
        };
        assert!(
            matches!(rejected(f.apply(delete)), DomainError::Invalid { ref field, .. } if field == "alias"),
            "delete alias {name:?}"
        );
        assert_eq!(f.digest(), before);
    }
}

/// Every field a client controls has a limit that needs no state to check. `check_fields` (run
/// by the proposing node, so such a request never reaches the log) refuses each one over it,
/// and apply refuses it again, changing nothing.
#[test]
fn fields_over_their_limits_are_refused_before_the_log_and_again_in_apply() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(create_version("reco", b"one"));
    let before = f.digest();
    let over = |limit: usize| "x".repeat(limit + 1);
    let tags = |count: usize, key_bytes: usize, value_bytes: usize| -> BTreeMap<String, String> {
        (0..count)
            .map(|i| (format!("{i:0key_bytes$}"), "v".repeat(value_bytes)))
            .collect()
    };
    let update = |description: Option<String>, set_tags, remove_tags| Op::UpdateModel {
        name: "reco".into(),
        description,
        set_tags,
        remove_tags,
    };
    let cases: Vec<(&str, Op)> = vec![
        (
            "description",
            update(
                Some(over(limits::DESCRIPTION_BYTES_MAX)),
                BTreeMap::new(),
                vec![],
            ),
        ),
        (
            "set_tags",
            update(None, tags(limits::TAGS_MAX + 1, 4, 1), vec![]),
        ),
        (
            "set_tags",
            update(None, tags(1, limits::TAG_KEY_BYTES_MAX + 1, 1), vec![]),
        ),
        (
            "set_tags.0",
            update(None, tags(1, 1, limits::TAG_VALUE_BYTES_MAX + 1), vec![]),
        ),
        (
            "remove_tags",
            update(
                None,
                BTreeMap::new(),
                vec!["k".into(); limits::TAGS_MAX + 1],
            ),
        ),
        (
            "remove_tags",
            update(None, BTreeMap::new(), vec![over(limits::TAG_KEY_BYTES_MAX)]),
        ),
        (
            "reason",
            Op::SetStage {
                model: "reco".into(),
                number: 1,
                stage: Stage::Staging,
                reason: over(limits::REASON_BYTES_MAX),
                override_signature: false,
            },
        ),
        (
            "alias",
            Op::SetAlias {
                model: "reco".into(),
                alias: String::new(),
                number: 1,
            },
        ),
        (
            "namespace",
            Op::CreateModel {
                name: "other".into(),
                namespace: "a/b".into(),
                description: String::new(),
                risk_tier: RiskTier::Low,
                tags: BTreeMap::new(),
            },
        ),
    ];
    for (field, op) in cases {
        let kind = op.kind();
        match op.check_fields() {
            Err(DomainError::Invalid { field: f, .. }) => assert_eq!(f, field, "{kind}"),
            other => panic!("{kind}: check_fields said {other:?}, not invalid {field}"),
        }
        match rejected(f.apply(op)) {
            DomainError::Invalid { field: f, .. } => assert_eq!(f, field, "{kind} in apply"),
            other => panic!("{kind}: apply said {other:?}"),
        }
        assert_eq!(
            f.digest(),
            before,
            "{kind} over its {field} limit changed the state"
        );
    }
    // At the limits, the same requests are fine.
    let at = update(
        Some("d".repeat(limits::DESCRIPTION_BYTES_MAX)),
        tags(
            limits::TAGS_MAX,
            limits::TAG_KEY_BYTES_MAX,
            limits::TAG_VALUE_BYTES_MAX,
        ),
        vec!["k".into(); limits::TAGS_MAX],
    );
    assert_eq!(at.check_fields(), Ok(()));
    assert!(matches!(f.apply(at), Response::Model(_)));
}

/// The largest registration a manifest allows (the most files, with the longest paths, and the
/// most chunks) fits one command: `quiver_raft::COMMAND_BYTES_MAX` never refuses a valid one.
#[test]
fn the_largest_valid_registration_fits_one_command() {
    use quiver_transfer::{
        CHUNKS_PER_MANIFEST_MAX, CHUNK_SIZE_BYTES_MAX, FILES_PER_MANIFEST_MAX, PATH_BYTES_MAX,
    };
    let chunks_per_file = CHUNKS_PER_MANIFEST_MAX / FILES_PER_MANIFEST_MAX;
    let mut spare = CHUNKS_PER_MANIFEST_MAX % FILES_PER_MANIFEST_MAX;
    let files = (0..FILES_PER_MANIFEST_MAX)
        .map(|i| {
            let extra = usize::from(spare > 0);
            spare -= extra;
            let chunks: Vec<ChunkRef> = (0..chunks_per_file + extra)
                .map(|c| ChunkRef {
                    hash: Hash::of(&[i.to_be_bytes(), c.to_be_bytes()].concat()),
                    size_bytes: CHUNK_SIZE_BYTES_MAX as u32,
                })
                .collect();
            let prefix = format!("{i:05}/");
            FileEntry {
                path: format!("{prefix}{}", "w".repeat(PATH_BYTES_MAX - prefix.len())),
                size_bytes: chunks.len() as u64 * CHUNK_SIZE_BYTES_MAX as u64,
                mode: 0o100_644,
                chunks,
            }
        })
        .collect();
    let manifest = Manifest { files };
    manifest.validate().expect("the largest valid manifest");
    let Op::CreateVersion { metadata, .. } = create_version("reco", b"one") else {
        unreachable!()
    };
    let op = Op::CreateVersion {
        model: "m".repeat(limits::NAME_BYTES_MAX),
        manifest_root: manifest.root().to_hex(),
        manifest,
        signature: Signature::default(),
        metadata,
        tags: BTreeMap::new(),
        status: VersionStatus::Ready,
        inline_chunks: Vec::new(),
    };
    assert_eq!(op.check_fields(), Ok(()));
    let command = Command {
        actor: actor("alice"),
        at_ms: 1,
        request_id: Some(RequestId("r".repeat(64))),
        op,
    };
    let bytes = serde_json::to_vec(&command).unwrap().len();
    assert!(
        bytes <= quiver_raft::COMMAND_BYTES_MAX,
        "{bytes} bytes > {}",
        quiver_raft::COMMAND_BYTES_MAX
    );
}
