//! Handlers for the registry commands. Each one calls the SDK and prints:
//! tables or JSON on stdout, progress and notes on stderr, so stdout stays
//! parseable (`ref=$(quiver version register …)`).

use crate::proto::{
    CreateModelRequest, QuarantineFilter, ReadConsistency, RiskTier, SearchModelsRequest,
    SetVersionTagsRequest, Stage, UpdateModelRequest, VersionMetadata,
};
use crate::sdk::collect_artifacts;
use crate::sdk::ClientTls;
use crate::{token_from_env, Client, Reference, RegisterOptions};
use serde::Serialize;

use super::args::{into_map, Output, UsageError};
use super::progress::bytes_bar;
use super::view::{AliasView, CatalogHitView, ModelView, StatusView, VersionView};
use super::{AliasCommand, ModelCommand, ReadArgs, RegisterArgs, StageCommand, VersionCommand};

/// Where and with which token to connect. Handlers check their local input first
/// and connect only then, so a typo is reported as a typo even when no node
/// is running.
pub struct Node {
    pub endpoint: String,
    /// `--token`; else the SDK's `token_from_env`.
    pub token: Option<String>,
    /// `--ca`, `--cert`, `--key` (or their variables); no CA: `.quiver/ca.pem` if it exists.
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl Node {
    pub async fn client(&self) -> anyhow::Result<Client> {
        let registry = self.registry()?;
        Ok(Client::connect_with(&self.endpoint, registry.tls)
            .await?
            .with_token(registry.token))
    }

    /// This node and the credentials to present to it (resolved now; connected by
    /// [`Node::client`], or later and again by a serving agent whenever the registry went
    /// away). A client certificate authenticates only when no token is sent: naming one says
    /// which credential to use, so a token found only in the environment is not sent.
    pub fn registry(&self) -> anyhow::Result<crate::agent::Registry> {
        // The insecure benchmark baseline's nodes serve plaintext (see the README's benchmarks).
        let plaintext_allowed = cfg!(feature = "insecure-benchmark-baseline");
        if let Some(rest) = self
            .endpoint
            .strip_prefix("http://")
            .filter(|_| !plaintext_allowed)
        {
            anyhow::bail!(
                "{} is plaintext, and Quiver nodes serve their API over TLS only: use \
                 https://{rest} (--endpoint or QUIVER_ENDPOINT)",
                self.endpoint
            );
        }
        let token = match (&self.cert, &self.token) {
            (Some(_), None) => None,
            (_, Some(token)) => Some(token.clone()),
            (None, None) => token_from_env()?,
        };
        Ok(crate::agent::Registry {
            endpoints: vec![self.endpoint.clone()],
            tls: ClientTls::load(
                self.ca.as_deref(),
                self.cert.as_deref(),
                self.key.as_deref(),
            )?,
            token,
        })
    }
}

/// Checks a reference's syntax locally (a usage error, not a node error).
fn check_reference(text: &str) -> Result<(), UsageError> {
    text.parse::<Reference>()
        .map(|_| ())
        .map_err(|error| UsageError(error.to_string()))
}

pub(super) fn consistency(read: &ReadArgs) -> ReadConsistency {
    if read.stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints one object as JSON or through its human form.
pub fn print_one<T: Serialize>(
    output: Output,
    view: &T,
    human: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(view),
        Output::Table => {
            out!("{}", human(view));
            Ok(())
        }
    }
}

pub async fn model(node: &Node, command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Create {
            name,
            namespace,
            description,
            risk_tier,
            tags,
            output,
        } => {
            let model = node
                .client()
                .await?
                .create_model(CreateModelRequest {
                    name,
                    namespace,
                    description,
                    risk_tier: risk_tier.map(RiskTier::from).unwrap_or_default().into(),
                    tags: into_map("--tag", tags)?.into_iter().collect(),
                })
                .await?;
            print_one(output.output, &ModelView::from(&model), ModelView::detail)
        }
        ModelCommand::List { prefix, tag, read } => {
            let models = node
                .client()
                .await?
                .list_all_models(&prefix, &tag, consistency(&read))
                .await?;
            let views: Vec<ModelView> = models.iter().map(ModelView::from).collect();
            match read.output {
                Output::Json => print_json(&views),
                Output::Table => {
                    out!("{}", ModelView::table(&views));
                    Ok(())
                }
            }
        }
        ModelCommand::Show { name, read } => {
            let model = node
                .client()
                .await?
                .get_model(&name, consistency(&read))
                .await?;
            print_one(read.output, &ModelView::from(&model), ModelView::detail)
        }
        ModelCommand::Search {
            query,
            namespace,
            risk_tier,
            stage,
            owner,
            metrics,
            quarantined,
            not_quarantined,
            page_size,
            page_token,
            read,
        } => {
            let quarantined = match (quarantined, not_quarantined) {
                (true, _) => QuarantineFilter::Only,
                (_, true) => QuarantineFilter::None,
                _ => QuarantineFilter::Any,
            };
            let page = node
                .client()
                .await?
                .search_models(SearchModelsRequest {
                    query: query.join(" "),
                    namespace: namespace.unwrap_or_default(),
                    risk_tier: risk_tier.map(RiskTier::from).unwrap_or_default().into(),
                    stage: stage.unwrap_or_default().into(),
                    owner: owner.unwrap_or_default(),
                    metrics,
                    quarantined: quarantined.into(),
                    page_size,
                    page_token,
                    consistency: consistency(&read).into(),
                })
                .await?;
            let hits: Vec<CatalogHitView> = page.hits.iter().map(CatalogHitView::from).collect();
            match read.output {
                Output::Json => print_json(&serde_json::json!({
                    "hits": hits,
                    "next_page_token": page.next_page_token,
                })),
                Output::Table => {
                    if hits.is_empty() {
                        outln!("no model matches");
                    } else {
                        out!("{}", CatalogHitView::table(&hits));
                    }
                    if !page.next_page_token.is_empty() {
                        outln!(
                            "more: repeat the command with --page-token {}",
                            page.next_page_token
                        );
                    }
                    Ok(())
                }
            }
        }
        ModelCommand::Update {
            name,
            description,
            tags,
            remove_tags,
            output,
        } => {
            if description.is_none() && tags.is_empty() && remove_tags.is_empty() {
                return Err(UsageError(
                    "nothing to update: give --description, --tag KEY=VALUE or --remove-tag KEY"
                        .into(),
                )
                .into());
            }
            let model = node
                .client()
                .await?
                .update_model(UpdateModelRequest {
                    name,
                    description,
                    set_tags: into_map("--tag", tags)?.into_iter().collect(),
                    remove_tags,
                })
                .await?;
            print_one(output.output, &ModelView::from(&model), ModelView::detail)
        }
    }
}

pub async fn version(node: &Node, command: VersionCommand) -> anyhow::Result<()> {
    match command {
        VersionCommand::Register(args) => register(node, args).await,
        VersionCommand::List {
            model,
            stage,
            tag,
            read,
        } => {
            let versions = node
                .client()
                .await?
                .list_all_versions(
                    &model,
                    stage.unwrap_or(Stage::Unspecified),
                    &tag,
                    consistency(&read),
                )
                .await?;
            let views: Vec<VersionView> = versions.iter().map(VersionView::from).collect();
            match read.output {
                Output::Json => print_json(&views),
                Output::Table => {
                    out!("{}", VersionView::table(&views));
                    Ok(())
                }
            }
        }
        VersionCommand::Show {
            reference,
            lineage,
            read,
        } => {
            check_reference(&reference)?;
            let client = node.client().await?;
            let version = client.get_version(&reference, consistency(&read)).await?;
            let view = VersionView::from(&version);
            if !lineage {
                return print_one(read.output, &view, VersionView::detail);
            }
            // The version the reference named when it was read, even if the stage or alias
            // moves meanwhile.
            let exact = format!("{}/{}", version.model, version.version);
            let graph = client.lineage_upstream(&exact, consistency(&read)).await?;
            let graph = super::lineage::GraphView::from(&graph);
            match read.output {
                Output::Json => print_json(&serde_json::json!({
                    "version": view,
                    "lineage": graph,
                })),
                Output::Table => {
                    out!("{}", view.detail());
                    outln!("\nlineage (upstream of {exact}):");
                    out!("{}", graph.text("<- "));
                    Ok(())
                }
            }
        }
        VersionCommand::Download {
            reference,
            out,
            region,
            zone,
            no_nearest,
        } => {
            check_reference(&reference)?;
            let mut client = node.client().await?;
            if !no_nearest {
                client = client.nearest(&region, &zone).await?.0;
            }
            if client.endpoint() != node.endpoint {
                eprintln!("pulling from the nearest node, {}", client.endpoint());
            }
            let bar = bytes_bar(0, "downloading");
            let first = std::sync::Once::new();
            let summary = client
                .download_version(&reference, &out, &|done, total| {
                    first.call_once(|| {
                        if done > 0 {
                            eprintln!(
                                "resuming an interrupted download: {} of {} already here and \
                                 verified",
                                indicatif::HumanBytes(done),
                                indicatif::HumanBytes(total)
                            );
                        }
                    });
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .await;
            bar.finish_and_clear();
            let summary = summary?;
            outln!(
                "downloaded {}/{} ({} files, {}) into {}",
                summary.version.model,
                summary.version.version,
                summary.file_count,
                indicatif::HumanBytes(summary.total_size_bytes),
                out.display()
            );
            Ok(())
        }
        VersionCommand::Eval(args) => {
            check_reference(&args.reference)?;
            super::governance::eval(node, args).await
        }
        VersionCommand::Evaluations { reference, read } => {
            check_reference(&reference)?;
            super::governance::evaluations(node, &reference, read).await
        }
        VersionCommand::Tag {
            reference,
            set,
            remove,
            output,
        } => {
            if set.is_empty() && remove.is_empty() {
                return Err(UsageError(
                    "nothing to change: give --set KEY=VALUE or --remove KEY".into(),
                )
                .into());
            }
            check_reference(&reference)?;
            let version = node
                .client()
                .await?
                .set_version_tags(SetVersionTagsRequest {
                    reference,
                    set_tags: into_map("--set", set)?.into_iter().collect(),
                    remove_tags: remove,
                })
                .await?;
            print_one(
                output.output,
                &VersionView::from(&version),
                VersionView::detail,
            )
        }
    }
}

async fn register(node: &Node, args: RegisterArgs) -> anyhow::Result<()> {
    let signature = match &args.signature {
        Some(path) => Some(read_signature(path)?),
        None => None,
    };
    let options = RegisterOptions {
        signature,
        metadata: VersionMetadata {
            data_snapshot_id: args.data_snapshot,
            code_commit: args.code_commit,
            pipeline_run_id: args.run_id,
            hyperparameters: into_map("--param", args.params)?.into_iter().collect(),
            metrics: into_map("--metric", args.metrics)?.into_iter().collect(),
        },
        tags: into_map("--tag", args.tags)?,
    };
    let files = collect_artifacts(&args.artifacts)?;
    let total_bytes: u64 = files.iter().map(|file| file.size_bytes).sum();
    let client = node.client().await?;
    let bar = bytes_bar(total_bytes, "uploading");
    let version = client
        .register_artifacts(&args.model, &files, options, &|sent| bar.set_position(sent))
        .await;
    bar.finish_and_clear();
    let version = version?;
    let view = VersionView::from(&version);
    eprintln!(
        "registered {}: {} files, {}, manifest root {}",
        view.reference,
        view.files.len(),
        indicatif::HumanBytes(view.total_size_bytes),
        view.manifest_root
    );
    match args.output.output {
        Output::Json => print_json(&view),
        Output::Table => {
            outln!("{}", view.reference);
            Ok(())
        }
    }
}

/// Reads and checks a signature file (JSON or MLmodel); errors name the
/// file and the field.
fn read_signature(path: &std::path::Path) -> anyhow::Result<crate::proto::Signature> {
    Ok(super::signature::read_signature_file(path)?.to_proto())
}

pub async fn stage(node: &Node, command: StageCommand) -> anyhow::Result<()> {
    let (reference, stage, reason, override_signature, output) = match command {
        StageCommand::Set {
            reference,
            stage,
            reason,
            override_signature,
            output,
        } => (reference, stage, reason, override_signature, output),
        StageCommand::Check {
            reference,
            stage,
            output,
        } => {
            check_reference(&reference)?;
            return super::governance::check(node, &reference, stage, output).await;
        }
    };
    if reason.trim().is_empty() {
        return Err(UsageError("--reason is empty: say why the version moves".into()).into());
    }
    check_reference(&reference)?;
    let version = node
        .client()
        .await?
        .set_stage_overriding(&reference, stage, &reason, override_signature)
        .await?;
    let view = VersionView::from(&version);
    match output.output {
        Output::Json => print_json(&view),
        Output::Table => {
            match &view.pending_review {
                Some(r) if view.stage != r.stage => outln!(
                    "{} stays {}: its move to {} waits for approvals in review #{} (`quiver \
                     review show {}`; an approver runs `quiver review approve {}`)",
                    view.reference,
                    view.stage,
                    r.stage,
                    r.id,
                    r.id,
                    r.id
                ),
                _ => outln!("{} is now {}", view.reference, view.stage),
            }
            Ok(())
        }
    }
}

pub async fn alias(node: &Node, command: AliasCommand) -> anyhow::Result<()> {
    let (alias, output) = match command {
        AliasCommand::Set {
            model,
            alias,
            version,
            output,
        } => (
            node.client()
                .await?
                .set_alias(&model, &alias, version)
                .await?,
            output.output,
        ),
        AliasCommand::Get { model, alias, read } => (
            node.client()
                .await?
                .get_alias(&model, &alias, consistency(&read))
                .await?,
            read.output,
        ),
        AliasCommand::Delete {
            model,
            alias,
            output,
        } => {
            let deleted = node.client().await?.delete_alias(&model, &alias).await?;
            if output.output == Output::Table {
                outln!(
                    "deleted {}@{} (was version {})",
                    deleted.model,
                    deleted.alias,
                    deleted.version
                );
                return Ok(());
            }
            (deleted, output.output)
        }
    };
    print_one(output, &AliasView::from(&alias), AliasView::detail)
}

pub async fn status(node: &Node, output: Output) -> anyhow::Result<()> {
    let client = node.client().await?;
    let status = client.node_status().await?;
    let mut view = StatusView::from(&status);
    view.quarantined_in_production = super::lineage::quarantined_in_production(&client).await;
    print_one(output, &view, StatusView::detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_file_errors_name_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sig.json");
        std::fs::write(
            &path,
            r#"{"inputs":[{"name":"x","dtype":"float32","shape":[-1,128],"optional":false}],"outputs":[]}"#,
        )
        .unwrap();
        let signature = read_signature(&path).unwrap();
        assert_eq!(signature.inputs[0].shape, vec![-1, 128]);

        std::fs::write(
            &path,
            r#"{"inputs":[{"name":"x","dtype":"f32","shape":[]}]}"#,
        )
        .unwrap();
        let error = super::super::describe(&read_signature(&path).unwrap_err());
        assert!(
            error.starts_with(&format!("signature file '{}'", path.display())),
            "{error}"
        );
        assert!(error.contains("inputs[0].dtype"), "{error}");

        let error =
            super::super::describe(&read_signature(&dir.path().join("no.json")).unwrap_err());
        assert!(error.contains("no.json"), "{error}");
    }
}
