//! Unit tests of the state machine, by topic; the fixture and command builders are here.

mod access_cache;
mod apply;
mod audit;
mod deploy;
mod governance;
mod lineage;
mod logged_model;
mod properties;
mod query;
mod requests;
mod reviews;
mod snapshot;
mod watch;

use std::collections::BTreeMap;

use heed::{Env, RoTxn};
use quiver_raft::App;
use quiver_transfer::{ChunkRef, FileEntry, Hash, Manifest};

use super::RegistryApp;
use crate::command::{Command, InlineChunk, Op, RequestId, Response};
use crate::domain::*;

struct Fixture {
    _dir: tempfile::TempDir,
    env: Env,
    app: RegistryApp,
    index: u64,
}

pub(crate) fn actor(name: &str) -> Actor {
    Actor {
        name: name.into(),
        authenticated: false,
    }
}

/// The state's property-test configuration: a fixed seed, no failure files.
fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5157_4552),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .map_size(64 << 20)
            .max_dbs(RegistryApp::MAX_DBS)
            .open(dir.path())
            .unwrap()
    };
    let mut wtxn = env.write_txn().unwrap();
    let app = RegistryApp::open(&env, &mut wtxn).unwrap();
    wtxn.commit().unwrap();
    Fixture {
        _dir: dir,
        env,
        app,
        index: 0,
    }
}

impl Fixture {
    fn apply(&mut self, op: Op) -> Response {
        self.apply_request(None, op)
    }

    /// Applies at the next log index, as request `id`.
    fn apply_request(&mut self, id: Option<&str>, op: Op) -> Response {
        self.apply_full("alice", id, op)
    }

    /// Applies at the next log index, sent by `principal`.
    fn apply_as(&mut self, principal: &str, op: Op) -> Response {
        self.apply_full(principal, None, op)
    }

    fn apply_full(&mut self, principal: &str, id: Option<&str>, op: Op) -> Response {
        self.index += 1;
        let cmd = Command {
            actor: actor(principal),
            at_ms: 1_000 + self.index as i64,
            request_id: id.map(|id| RequestId(id.into())),
            op,
        };
        let mut wtxn = self.env.write_txn().unwrap();
        let r = self.app.apply(&mut wtxn, self.index, &cmd).unwrap();
        wtxn.commit().unwrap();
        r
    }

    fn read<T>(&self, f: impl FnOnce(&RegistryApp, &RoTxn<'_>) -> T) -> T {
        let rtxn = self.env.read_txn().unwrap();
        f(&self.app, &rtxn)
    }

    fn digest(&self) -> String {
        self.read(|app, txn| app.digest(txn).unwrap())
    }
}

fn create_model(name: &str) -> Op {
    Op::CreateModel {
        name: name.into(),
        namespace: "team".into(),
        description: String::new(),
        risk_tier: RiskTier::Low,
        tags: BTreeMap::new(),
    }
}

fn manifest(content: &[u8]) -> Manifest {
    Manifest {
        files: vec![FileEntry {
            path: "weights.bin".into(),
            size_bytes: content.len() as u64,
            mode: 0o644,
            chunks: vec![ChunkRef {
                hash: Hash::of(content),
                size_bytes: content.len() as u32,
            }],
        }],
    }
}

pub(crate) fn create_version(model: &str, content: &[u8]) -> Op {
    let manifest = manifest(content);
    Op::CreateVersion {
        model: model.into(),
        manifest_root: manifest.root().to_hex(),
        manifest,
        signature: Signature::default(),
        metadata: VersionMetadata {
            data_snapshot_id: "snap-47".into(),
            code_commit: "c0ffee".into(),
            pipeline_run_id: "run-1".into(),
            ..Default::default()
        },
        tags: BTreeMap::new(),
        status: VersionStatus::Ready,
        inline_chunks: Vec::new(),
    }
}

fn rejected(r: Response) -> DomainError {
    match r {
        Response::Rejected(e) => e,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn version(r: Response) -> Version {
    match r {
        Response::Version(v) => *v,
        other => panic!("expected a version, got {other:?}"),
    }
}

fn with_inline(mut op: Op, chunks: Vec<InlineChunk>) -> Op {
    if let Op::CreateVersion { inline_chunks, .. } = &mut op {
        *inline_chunks = chunks;
    }
    op
}

fn inline(content: &[u8]) -> InlineChunk {
    InlineChunk {
        hash: Hash::of(content),
        data: content.to_vec(),
    }
}

/// A small state with at least one row in every table (a model created under a request id,
/// an inline version, an alias, a node), built the same way by every layout of this module.
fn one_row_in_every_table() -> Fixture {
    let mut f = fixture();
    f.apply_request(Some("req-1"), create_model("reco"));
    f.apply(with_inline(
        create_version("reco", b"tiny"),
        vec![inline(b"tiny")],
    ));
    f.apply(Op::SetAlias {
        model: "reco".into(),
        alias: "champion".into(),
        number: 1,
    });
    f.apply(Op::UpsertNode(NodeInfo {
        node_id: 7,
        api_addr: "127.0.0.1:7001".into(),
        peer_addr: "127.0.0.1:7002".into(),
        quic_addr: "127.0.0.1:7003".into(),
        region: "eu-west".into(),
        zone: "eu-west-a".into(),
    }));
    f.apply(Op::CreateToken {
        id: "0123456789abcdef".into(),
        principal: "bob".into(),
        description: "ci".into(),
        secret_hash: blake3::hash(b"secret").to_hex().to_string(),
        expires_at_ms: Some(5_000),
    });
    f.apply(Op::GrantRole {
        principal: "bob".into(),
        scope: crate::auth::Scope::Namespace("search".into()),
        role: crate::auth::Role::Approver,
    });
    f.apply(Op::SetPolicy {
        scope: crate::governance::PolicyScope::Model("reco".into()),
        policy: Some(crate::governance::Policy {
            production: vec![crate::governance::Gate::Approvals {
                count: 1,
                role: crate::auth::Role::Approver,
            }],
            ..Default::default()
        }),
    });
    f.apply(Op::RecordEvaluation {
        model: "reco".into(),
        number: 1,
        kind: "offline".into(),
        metrics: BTreeMap::from([("auc".to_string(), 0.9)]),
        summary: String::new(),
    });
    // Waits for an approval: a review, open.
    let opened = f.apply(Op::SetStage {
        model: "reco".into(),
        number: 1,
        stage: Stage::Production,
        reason: "ship".into(),
        override_signature: false,
    });
    assert!(matches!(opened, Response::Review(_)), "{opened:?}");
    f.apply(Op::AddLineageEdge {
        from: crate::lineage::Entity::new(crate::lineage::EntityKind::Data, "snap-46"),
        to: crate::lineage::Entity::new(crate::lineage::EntityKind::Data, "snap-47"),
    });
    f.apply(Op::Quarantine {
        entity: crate::lineage::Entity::new(crate::lineage::EntityKind::Data, "snap-45"),
        reason: "retired".into(),
    });
    // A deployment (and its history) of another model, which no policy gates.
    f.apply(create_model("rank"));
    f.apply(create_version("rank", b"rank-one"));
    f.apply(Op::SetStage {
        model: "rank".into(),
        number: 1,
        stage: Stage::Production,
        reason: "ship".into(),
        override_signature: false,
    });
    let created = f.apply(Op::CreateDeployment {
        endpoint: "rank-prod".into(),
        model: "rank".into(),
        version: 1,
        reason: "launch".into(),
    });
    assert!(matches!(created, Response::Deployment(_)), "{created:?}");
    f.apply(Op::ReportServing {
        endpoint: "rank-prod".into(),
        model: "rank".into(),
        agent: "agent-1".into(),
        generation: 1,
        stats: vec![crate::deploy::VersionStats {
            version: 1,
            requests: 10,
            errors: 0,
            p99_ms: 3.5,
        }],
    });
    f
}

/// `model:stage`.
fn by_stage(model: &str, stage: Stage) -> VersionRef {
    VersionRef {
        model: model.into(),
        selector: VersionSelector::Stage(stage),
    }
}

/// `model@alias`.
fn by_alias(model: &str, alias: &str) -> VersionRef {
    VersionRef {
        model: model.into(),
        selector: VersionSelector::Alias(alias.into()),
    }
}
