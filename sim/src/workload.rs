//! What the simulated pipelines ask the registry to do.
//!
//! Pure: a [`Pipeline`] holds a seeded RNG and what it knows from its own acknowledgements (the
//! models it created, the versions it registered), and turns that into the next [`Op`]. The
//! client shell (`client.rs`) submits the op and reports back with [`Pipeline::learn`]. Each
//! pipeline owns its models, so its view is exact when every ack carries the applied response.
//!
//! Versions carry real artifacts: a seeded [`Corpus`] per registration (its own seed, so every
//! version has its own chunks and root), of [`ARTIFACT_LOGICAL_BYTES`] at the chunk store's
//! scale. The shell uploads it ([`Pipeline::take_artifact`]) before it proposes the version.
//! One registration in [`INLINE_ONE_IN`] is a small version instead (a few KiB, decision 0010):
//! its chunk travels inside the command, so there is nothing to upload.

use std::collections::BTreeMap;
use std::sync::Arc;

use quiver_node::auth::Role;
use quiver_node::command::{InlineChunk, Op, Response};
use quiver_node::domain::{
    DomainError, RiskTier, Signature, Stage, VersionMetadata, VersionStatus,
};
use quiver_node::governance::{Bound, Comparison, Gate, Policy, PolicyScope, ReviewState};
use quiver_transfer::{ChunkRef, FileEntry, Hash, Manifest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::check::Expect;
use crate::chunkstore::Corpus;

/// Models one pipeline creates at most.
pub const MODELS_PER_PIPELINE_MAX: usize = 3;
/// Versions a pipeline remembers (for stage changes and aliases); the oldest are forgotten.
pub const VERSIONS_REMEMBERED_MAX: usize = 64;
/// Logical size of a registered artifact, drawn from this range: 1 to 6 chunks of 4 MiB
/// (4 KiB of real bytes each, see `chunkstore`).
pub const ARTIFACT_LOGICAL_BYTES: (u64, u64) = (1 << 20, 24 << 20);
/// One registration in this many is a small version whose chunk rides in its command.
pub const INLINE_ONE_IN: u32 = 4;
/// Size of a small version's one file, drawn from this range (bytes).
pub const INLINE_ARTIFACT_BYTES: (usize, usize) = (1, 4096);
pub const ALIASES: [&str; 2] = ["champion", "challenger"];
/// The gated policy's bar for the registration's `auc` (drawn in 0.5..1.0: a fifth fall short).
pub const AUC_MIN: f64 = 0.6;
/// The evaluation a gated policy requires, and its bound on `dp_gap`.
pub const FAIRNESS: &str = "fairness";
pub const DP_GAP_MAX: f64 = 0.05;
const STAGES: [Stage; 4] = [
    Stage::Experimental,
    Stage::Staging,
    Stage::Production,
    Stage::Archived,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// Create models, register, promote, alias, in proportions a team might.
    Chaos,
    /// One model per pipeline; mostly registrations, some promotions: a steady write load.
    Failover,
}

impl Mix {
    /// Share of a pipeline's turns spent on a linearizable read instead of an op, in percent:
    /// failover keeps most of its turns for the steady write load its faults need.
    pub fn read_pct(self) -> usize {
        match self {
            Mix::Chaos => 40,
            Mix::Failover => 10,
        }
    }

    /// Share of a pipeline's turns spent on a hostile request ([`crate::hostile`]), in
    /// percent: none in failover, whose figures measure the steady load.
    pub fn hostile_pct(self) -> u32 {
        match self {
            Mix::Chaos => 5,
            Mix::Failover => 0,
        }
    }

    /// Pause between a pipeline's ops, in virtual ms.
    pub fn think_ms(self) -> (u64, u64) {
        match self {
            Mix::Chaos => (20, 200),
            Mix::Failover => (5, 50),
        }
    }
}

pub struct Pipeline {
    pub id: usize,
    pub actor: String,
    rng: StdRng,
    mix: Mix,
    models: Vec<String>,
    /// Per model, versions this pipeline registered (acked), oldest first.
    versions: BTreeMap<String, Vec<u64>>,
    /// Per model, acked registrations whose number the ack did not say (planted early acks):
    /// the pipeline guesses the next number.
    guessed: BTreeMap<String, u64>,
    /// The stage of each version as this pipeline's acks tell it, so that it does not ask for
    /// the stage a version already has (a rejection). A write that failed but was applied
    /// anyway can make it stale; then the registry rejects the op, which is harmless.
    stages: BTreeMap<(String, u64), Stage>,
    /// The artifact of the `CreateVersion` just returned by `next_op`, until the shell takes it.
    artifact: Option<Arc<Corpus>>,
    seq: u64,
    /// Whether this pipeline's namespace has a policy asking approvals for Production
    /// ([`Pipeline::policy`]; chaos only).
    pub gated: bool,
    /// Open reviews of this pipeline's versions, as its acks tell: id → (model, number).
    reviews: BTreeMap<u64, (String, u64)>,
    /// Who sends the op `next_op` just returned, when not this pipeline's own principal.
    actor_override: Option<String>,
    /// Versions this pipeline has posted a fairness evaluation of (gated pipelines only).
    evaluated: std::collections::BTreeSet<(String, u64)>,
}

impl Pipeline {
    /// The principal pipeline `id` acts as.
    pub fn principal(id: usize) -> String {
        format!("pipeline-{id}")
    }

    /// The under-privileged principal pipeline `id` also acts as: a reader, one step too low
    /// for any write ([`crate::hostile::intruder_op`]).
    pub fn intruder(id: usize) -> String {
        format!("{}{id}", crate::hostile::INTRUDER_PREFIX)
    }

    pub fn new(id: usize, seed: u64, mix: Mix) -> Self {
        Pipeline {
            id,
            actor: Pipeline::principal(id),
            rng: StdRng::seed_from_u64(seed),
            mix,
            models: Vec::new(),
            versions: BTreeMap::new(),
            guessed: BTreeMap::new(),
            stages: BTreeMap::new(),
            artifact: None,
            seq: 0,
            gated: mix == Mix::Chaos && Pipeline::gated(id),
            reviews: BTreeMap::new(),
            actor_override: None,
            evaluated: Default::default(),
        }
    }

    /// The approver pipeline `id`'s reviews are sent to.
    pub fn reviewer(id: usize) -> String {
        format!("reviewer-{id}")
    }

    /// Whether pipeline `id`'s namespace is governed by [`Pipeline::policy`] (chaos only).
    pub fn gated(id: usize) -> bool {
        id.is_multiple_of(2)
    }

    /// The policy of pipeline `id`'s namespace when it is gated, to enter Production: the
    /// registration's `auc` at least [`AUC_MIN`], a fairness evaluation whose `dp_gap` is at
    /// most [`DP_GAP_MAX`], and one approval (by an approver, never the registrant).
    pub fn policy(id: usize) -> Op {
        Op::SetPolicy {
            scope: PolicyScope::Namespace {
                namespace: format!("team-{id}"),
                tier: None,
            },
            policy: Some(Policy {
                production: vec![
                    Gate::Metric {
                        metric: "auc".into(),
                        op: Comparison::Ge,
                        value: Some(AUC_MIN),
                        production_delta: None,
                        tolerance: 0.0,
                    },
                    Gate::Evaluation {
                        eval_kind: FAIRNESS.into(),
                        bounds: vec![Bound {
                            metric: "dp_gap".into(),
                            op: Comparison::Le,
                            value: DP_GAP_MAX,
                        }],
                    },
                    Gate::Approvals {
                        count: 1,
                        role: Role::Approver,
                    },
                ],
                ..Policy::default()
            }),
        }
    }

    /// A fairness evaluation of `model`/`number` posted by this pipeline's evaluation step:
    /// `dp_gap` drawn so that four in five pass [`Pipeline::policy`]'s bound.
    fn evaluate(&mut self, model: String, number: u64, seq: u64) -> Op {
        Op::RecordEvaluation {
            model,
            number,
            kind: FAIRNESS.into(),
            metrics: [(
                "dp_gap".to_string(),
                self.rng.gen_range(0.0..1.25 * DP_GAP_MAX),
            )]
            .into(),
            summary: format!("{} op {seq}", self.actor),
        }
    }

    /// Who sends the op `next_op` just returned (`None`: this pipeline's principal).
    pub fn take_actor(&mut self) -> Option<String> {
        self.actor_override.take()
    }

    /// Learns from an applied response what `expect` cannot say: reviews opened and closed.
    pub fn learn_response(&mut self, op: &Op, response: &Response) {
        match (op, response) {
            (_, Response::Review(outcome)) => {
                let (review, version) = outcome.as_ref();
                match review.state {
                    ReviewState::Open => {
                        self.reviews
                            .insert(review.id, (review.model.clone(), review.number));
                    }
                    _ => {
                        self.reviews.remove(&review.id);
                    }
                }
                if review.state == ReviewState::Promoted {
                    self.learn(&Expect::Stage {
                        model: version.model.clone(),
                        number: version.number,
                        stage: version.stage,
                        reason: String::new(),
                    });
                }
            }
            (
                Op::DecideReview { id, .. },
                Response::Rejected(
                    DomainError::ReviewClosed { .. } | DomainError::ReviewNotFound { .. },
                ),
            ) => {
                self.reviews.remove(id);
            }
            _ => {}
        }
    }

    /// A decision on one of this pipeline's open reviews: its reviewer approves (most often) or
    /// rejects; half the time the pipeline itself, the versions' registrant, tries to approve,
    /// which four eyes must refuse.
    fn decide_review(&mut self) -> Op {
        let ids: Vec<u64> = self.reviews.keys().copied().collect();
        let id = ids[self.rng.gen_range(0..ids.len())];
        let (model, _) = self.reviews[&id].clone();
        let by_registrant = self.rng.gen_ratio(1, 2);
        let approve = by_registrant || self.rng.gen_ratio(9, 10);
        if !by_registrant {
            self.actor_override = Some(Pipeline::reviewer(self.id));
        }
        Op::DecideReview {
            model,
            id,
            approve,
            comment: format!("{} review {id}", self.actor),
        }
    }

    /// Draw a think time.
    pub fn think_ms(&mut self) -> u64 {
        let (lo, hi) = self.mix.think_ms();
        self.rng.gen_range(lo..=hi)
    }

    /// Whether this turn is a hostile request ([`Mix::hostile_pct`]); draws nothing when the
    /// mix sends none.
    pub fn hostile_now(&mut self) -> bool {
        let pct = self.mix.hostile_pct();
        pct > 0 && self.rng.gen_range(0..100) < pct
    }

    /// A hostile request against this pipeline's own models, with its label; `true` when it
    /// is a well-formed write by [`Pipeline::intruder`], which only its role forbids.
    pub fn hostile_op(&mut self) -> (String, Op, bool) {
        if !self.models.is_empty() && self.rng.gen_ratio(1, 3) {
            self.seq += 1;
            let (label, op) = crate::hostile::intruder_op(&mut self.rng, &self.models, self.seq);
            return (label, op, true);
        }
        let (label, op) = crate::hostile::hostile_op(&mut self.rng, &self.models);
        (label, op, false)
    }

    /// Whether this hostile turn is a catalog search (one in four).
    pub fn searches_now(&mut self) -> bool {
        self.rng.gen_ratio(1, 4)
    }

    /// A catalog search with hostile fields, over this pipeline's models.
    pub fn hostile_search(&mut self) -> (String, quiver_client::proto::SearchModelsRequest) {
        crate::hostile::hostile_search(&mut self.rng, &self.models)
    }

    /// Whether this turn is a read ([`Mix::read_pct`]).
    pub fn reads_now(&mut self) -> bool {
        self.rng.gen_range(0..100) < self.mix.read_pct()
    }

    /// Draw a number in `0..n` (for the shell's choices: which node to try first).
    pub fn pick(&mut self, n: usize) -> usize {
        self.rng.gen_range(0..n.max(1))
    }

    /// The next op and its sequence number.
    pub fn next_op(&mut self) -> (u64, Op) {
        self.seq += 1;
        let seq = self.seq;
        let models_max = match self.mix {
            Mix::Chaos => MODELS_PER_PIPELINE_MAX,
            Mix::Failover => 1,
        };
        let roll = self.rng.gen_range(0..100u32);
        let known: Vec<(String, u64)> = self
            .versions
            .iter()
            .flat_map(|(m, ns)| ns.iter().map(move |n| (m.clone(), *n)))
            .collect();
        let op = if self.models.is_empty() || (self.models.len() < models_max && roll < 8) {
            self.create_model()
        } else {
            let (create_below, stage_below) = match self.mix {
                Mix::Chaos => (55, 85),
                Mix::Failover => (80, 100),
            };
            if !self.reviews.is_empty() && self.rng.gen_ratio(1, 3) {
                self.decide_review()
            } else if roll < create_below || known.is_empty() {
                let model = self.models[self.rng.gen_range(0..self.models.len())].clone();
                self.create_version(model, seq)
            } else {
                let (model, number) = known[self.rng.gen_range(0..known.len())].clone();
                if roll < stage_below {
                    let current = self
                        .stages
                        .get(&(model.clone(), number))
                        .copied()
                        .unwrap_or(Stage::Experimental);
                    let others: Vec<Stage> =
                        STAGES.iter().copied().filter(|s| *s != current).collect();
                    // A gated pipeline asks for Production half the time: its reviews are what
                    // the approvals checker judges.
                    let to_production =
                        self.gated && current != Stage::Production && self.rng.gen_ratio(1, 2);
                    // Its evaluation step posts a fairness evaluation before the first request.
                    if to_production && self.evaluated.insert((model.clone(), number)) {
                        return (seq, self.evaluate(model, number, seq));
                    }
                    Op::SetStage {
                        model,
                        number,
                        stage: match to_production {
                            true => Stage::Production,
                            false => others[self.rng.gen_range(0..others.len())],
                        },
                        reason: format!("{} op {seq}", self.actor),
                        override_signature: false,
                    }
                } else {
                    Op::SetAlias {
                        model,
                        alias: ALIASES[self.rng.gen_range(0..ALIASES.len())].to_string(),
                        number,
                    }
                }
            }
        };
        (seq, op)
    }

    fn create_model(&mut self) -> Op {
        let name = format!("p{}-m{}", self.id, self.seq);
        Op::CreateModel {
            name,
            namespace: format!("team-{}", self.id),
            description: "simulated".into(),
            risk_tier: RiskTier::Low,
            tags: BTreeMap::new(),
        }
    }

    /// The artifact to upload for the `CreateVersion` `next_op` just returned.
    pub fn take_artifact(&mut self) -> Option<Arc<Corpus>> {
        self.artifact.take()
    }

    fn create_version(&mut self, model: String, seq: u64) -> Op {
        let label = format!("{}/{model}/{seq}", self.actor);
        let (manifest, inline_chunks) = if self.rng.gen_ratio(1, INLINE_ONE_IN) {
            self.artifact = None;
            small_artifact(&mut self.rng)
        } else {
            let (corpus, manifest) = artifact(&mut self.rng);
            self.artifact = Some(Arc::new(corpus));
            (manifest, Vec::new())
        };
        let mut metrics = BTreeMap::new();
        metrics.insert("auc".to_string(), self.rng.gen_range(0.5..1.0));
        Op::CreateVersion {
            model,
            manifest_root: manifest.root().to_hex(),
            manifest,
            signature: Signature::default(),
            metadata: VersionMetadata {
                data_snapshot_id: format!("snap-{}", self.rng.gen_range(1..100u32)),
                code_commit: blake3::hash(label.as_bytes()).to_hex()[..12].to_string(),
                pipeline_run_id: format!("run-{}-{seq}", self.id),
                hyperparameters: BTreeMap::new(),
                metrics,
            },
            tags: BTreeMap::new(),
            status: VersionStatus::Ready,
            inline_chunks,
        }
    }

    /// What an ack of `op` promises, given the applied response if the ack carried one. `None`
    /// for a rejection: the command was applied and changed nothing, so nothing must be visible.
    pub fn expect(op: &Op, response: Option<&Response>) -> Option<Expect> {
        if let Some(Response::Rejected(_)) = response {
            return None;
        }
        if let (Op::SetStage { .. }, Some(Response::Review(_))) = (op, response) {
            // The stage change waits for an approval: nothing moved.
            return None;
        }
        Some(match op {
            Op::CreateModel { name, .. } => Expect::Model { name: name.clone() },
            Op::CreateVersion {
                model,
                manifest_root,
                ..
            } => Expect::Version {
                model: model.clone(),
                number: match response {
                    Some(Response::Version(v)) => Some(v.number),
                    _ => None,
                },
                root: manifest_root.clone(),
            },
            Op::SetStage {
                model,
                number,
                stage,
                reason,
                ..
            } => Expect::Stage {
                model: model.clone(),
                number: *number,
                stage: *stage,
                reason: reason.clone(),
            },
            Op::SetAlias {
                model,
                alias,
                number,
            } => Expect::Alias {
                model: model.clone(),
                alias: alias.clone(),
                number: *number,
            },
            _ => return None,
        })
    }

    /// Remember what an acknowledged op created.
    pub fn learn(&mut self, expect: &Expect) {
        match expect {
            Expect::Model { name } => {
                if !self.models.contains(name) {
                    self.models.push(name.clone());
                }
            }
            Expect::Version { model, number, .. } => {
                let number = match number {
                    Some(n) => *n,
                    None => {
                        let guess = self.guessed.entry(model.clone()).or_insert(0);
                        *guess += 1;
                        *guess
                    }
                };
                let list = self.versions.entry(model.clone()).or_default();
                list.push(number);
                if list.len() > VERSIONS_REMEMBERED_MAX {
                    let forgotten = list.remove(0);
                    self.stages.remove(&(model.clone(), forgotten));
                }
            }
            Expect::Stage {
                model,
                number,
                stage,
                ..
            } => {
                if *stage == Stage::Production {
                    // The registry archives the version this one replaces, in the same command.
                    for ((m, _), s) in self.stages.iter_mut() {
                        if m == model && *s == Stage::Production {
                            *s = Stage::Archived;
                        }
                    }
                }
                self.stages.insert((model.clone(), *number), *stage);
            }
            Expect::Alias { .. } => {}
        }
    }
}

/// A seeded artifact and its manifest, drawn from `rng`.
pub fn artifact(rng: &mut impl Rng) -> (Corpus, Manifest) {
    let seed: u64 = rng.gen();
    let size = rng.gen_range(ARTIFACT_LOGICAL_BYTES.0..=ARTIFACT_LOGICAL_BYTES.1);
    let corpus = Corpus::synthesize(seed, size).expect("ARTIFACT_LOGICAL_BYTES fits a corpus");
    let manifest = corpus.manifest().expect("a corpus makes a valid manifest");
    (corpus, manifest)
}

/// A small version: one file of seeded bytes, its one chunk to send inline.
pub fn small_artifact(rng: &mut impl Rng) -> (Manifest, Vec<InlineChunk>) {
    let size = rng.gen_range(INLINE_ARTIFACT_BYTES.0..=INLINE_ARTIFACT_BYTES.1);
    let mut data = vec![0u8; size];
    rng.fill(&mut data[..]);
    let hash = Hash::of(&data);
    let manifest = Manifest {
        files: vec![FileEntry {
            path: "config.json".into(),
            size_bytes: size as u64,
            mode: 0o644,
            chunks: vec![ChunkRef {
                hash,
                size_bytes: size as u32,
            }],
        }],
    };
    (manifest, vec![InlineChunk { hash, data }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_valid_unique_and_sized_as_promised() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut roots = std::collections::BTreeSet::new();
        let mut chunk_counts = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let (corpus, m) = artifact(&mut rng);
            m.validate().expect("valid manifest");
            assert!(roots.insert(m.root()), "unique root");
            let logical = corpus.logical_bytes();
            assert!((ARTIFACT_LOGICAL_BYTES.0..=ARTIFACT_LOGICAL_BYTES.1).contains(&logical));
            assert_eq!(m.chunk_count(), corpus.chunks().len());
            chunk_counts.insert(m.chunk_count());
        }
        assert!(chunk_counts.len() > 5, "sizes vary: {chunk_counts:?}");
        let (m, inline) = small_artifact(&mut rng);
        m.validate().expect("valid small manifest");
        assert_eq!(inline.len(), 1);
        assert_eq!(Hash::of(&inline[0].data), m.files[0].chunks[0].hash);
    }

    #[test]
    fn a_pipeline_starts_with_a_model_then_uses_what_it_learned() {
        let mut p = Pipeline::new(2, 7, Mix::Chaos);
        let (seq, first) = p.next_op();
        assert_eq!(seq, 1);
        let Op::CreateModel { name, .. } = &first else {
            panic!("first op creates a model: {first:?}")
        };
        // Until the model is acknowledged the pipeline keeps trying to create one.
        assert!(matches!(p.next_op().1, Op::CreateModel { .. }));
        let expect = Pipeline::expect(&first, None).expect("not a rejection");
        p.learn(&expect);
        let mut kinds = BTreeMap::<&str, u32>::new();
        for _ in 0..300 {
            let (_, op) = p.next_op();
            if let Op::CreateVersion {
                model,
                manifest,
                manifest_root,
                inline_chunks,
                ..
            } = &op
            {
                assert!(p.models.contains(model), "versions go to known models");
                if inline_chunks.is_empty() {
                    let corpus = p.take_artifact().expect("an artifact to upload");
                    let m = corpus.manifest().expect("manifest");
                    assert_eq!(
                        &m.root().to_hex(),
                        manifest_root,
                        "the op names its artifact"
                    );
                } else {
                    *kinds.entry("inline_version").or_default() += 1;
                    assert_eq!(&manifest.root().to_hex(), manifest_root);
                }
                assert!(
                    p.take_artifact().is_none(),
                    "taken once, nothing for inline"
                );
                p.learn(&Pipeline::expect(&op, None).expect("expectation"));
            }
            if let Op::SetStage { model, number, .. } | Op::SetAlias { model, number, .. } = &op {
                assert!(p.versions[model].contains(number), "only known versions");
            }
            if let Op::SetStage {
                model,
                number,
                stage,
                ..
            } = &op
            {
                let known = p.stages.get(&(model.clone(), *number)).copied();
                assert_ne!(
                    known.unwrap_or(Stage::Experimental),
                    *stage,
                    "a real change"
                );
                p.learn(&Pipeline::expect(&op, None).expect("expectation"));
            }
            *kinds.entry(op.kind()).or_default() += 1;
        }
        assert!(p.models.contains(name));
        for kind in ["create_version", "set_stage", "set_alias"] {
            assert!(kinds.get(kind).copied().unwrap_or(0) > 10, "{kinds:?}");
        }
        assert!(
            kinds.get("inline_version").copied().unwrap_or(0) > 3,
            "{kinds:?}"
        );
    }

    #[test]
    fn rejections_promise_nothing_and_responses_name_the_number() {
        let op = Op::CreateVersion {
            model: "m".into(),
            manifest: Manifest::default(),
            manifest_root: "r".into(),
            signature: Signature::default(),
            metadata: VersionMetadata::default(),
            tags: BTreeMap::new(),
            status: VersionStatus::Ready,
            inline_chunks: Vec::new(),
        };
        let rejected = Response::Rejected(quiver_node::domain::DomainError::ModelNotFound {
            name: "m".into(),
        });
        assert_eq!(Pipeline::expect(&op, Some(&rejected)), None);
        assert!(matches!(
            Pipeline::expect(&op, None),
            Some(Expect::Version { number: None, .. })
        ));
    }
}
