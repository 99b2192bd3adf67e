//! `quiver token …`, `quiver role …` and `quiver whoami`: who may do what.

use clap::Subcommand;
use serde::Serialize;

use super::args::{Output, UsageError};
use super::commands::{print_one, Node};
use super::view::{fields, table, time_text};
use super::OutputArgs;
use crate::sdk::access::{RoleGrant, Token};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token for a principal (admins only). The token is printed once: keep it.
    Create {
        /// Who the token acts as (a-z, 0-9, '-', '_', '.').
        #[arg(long)]
        principal: String,
        /// What the token is for (shown by `token list`).
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime: 90d (the default), 12h, 30m, 3600s, or `never`.
        #[arg(long, default_value = "90d", value_parser = parse_lifetime)]
        expires_in: Lifetime,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this principal's tokens.
        #[arg(long, default_value = "")]
        principal: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke a token by its id (as `token list` shows it); every node refuses it once it has
    /// applied the revocation.
    Revoke {
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Grant a role (reader, registrant, approver, admin) in a namespace or cluster-wide.
    Grant {
        principal: String,
        role: String,
        #[command(flatten)]
        scope: ScopeArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke the role a principal holds in a namespace or cluster-wide.
    Revoke {
        principal: String,
        #[command(flatten)]
        scope: ScopeArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List every grant, or one principal's.
    List {
        #[arg(long, default_value = "")]
        principal: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ScopeArgs {
    /// The namespace the role holds in.
    #[arg(long)]
    namespace: Option<String>,
    /// The role holds in every namespace and for the cluster itself.
    #[arg(long)]
    cluster: bool,
}

impl ScopeArgs {
    fn scope(&self) -> String {
        match &self.namespace {
            Some(namespace) if !self.cluster => namespace.clone(),
            _ => "*".into(),
        }
    }
}

/// A token's lifetime in seconds; `None`: it never expires.
pub type Lifetime = Option<u64>;

/// `90d`, `12h`, `30m`, `3600s` or `never`.
fn parse_lifetime(text: &str) -> Result<Lifetime, String> {
    if text == "never" {
        return Ok(None);
    }
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => {
            return Err(format!(
                "{text:?}: give a number and a unit (90d, 12h, 30m, 3600s) or `never`"
            ))
        }
    };
    let number: u64 = number.parse().map_err(|_| {
        format!("{text:?}: give a number and a unit (90d, 12h, 30m, 3600s) or `never`")
    })?;
    if number == 0 {
        return Err("a lifetime of 0 would expire at once".into());
    }
    number
        .checked_mul(scale)
        .map(Some)
        .ok_or_else(|| format!("{text:?} is too long a lifetime"))
}

#[derive(Serialize)]
struct TokenView {
    id: String,
    principal: String,
    description: String,
    created_by: String,
    created_at: String,
    expires_at: Option<String>,
    revoked_by: Option<String>,
    revoked_at: Option<String>,
}

impl TokenView {
    fn of(t: &Token) -> TokenView {
        TokenView {
            id: t.id.clone(),
            principal: t.principal.clone(),
            description: t.description.clone(),
            created_by: t.created_by.clone(),
            created_at: time_text(t.created_at_ms),
            expires_at: t.expires_at_ms.map(time_text),
            revoked_by: t.revoked_by.clone(),
            revoked_at: t.revoked_at_ms.map(time_text),
        }
    }

    fn state(&self) -> String {
        match (&self.revoked_by, &self.expires_at) {
            (Some(by), _) => format!("revoked by {by}"),
            (None, Some(at)) => format!("expires {at}"),
            (None, None) => "never expires".into(),
        }
    }
}

#[derive(Serialize)]
struct CreatedView {
    token: String,
    #[serde(flatten)]
    record: TokenView,
}

#[derive(Serialize)]
struct GrantView {
    principal: String,
    scope: String,
    role: String,
    granted_by: String,
    granted_at: String,
}

impl GrantView {
    fn of(g: &RoleGrant) -> GrantView {
        GrantView {
            principal: g.principal.clone(),
            scope: g.scope.clone(),
            role: g.role.clone(),
            granted_by: g.granted_by.clone(),
            granted_at: time_text(g.granted_at_ms),
        }
    }

    fn human(&self) -> String {
        fields(&[
            ("principal", self.principal.clone()),
            ("role", self.role.clone()),
            ("scope", self.scope.clone()),
            ("granted by", self.granted_by.clone()),
        ])
    }
}

fn grants_table(grants: &[GrantView]) -> String {
    let rows: Vec<Vec<String>> = grants
        .iter()
        .map(|g| {
            vec![
                g.principal.clone(),
                g.role.clone(),
                g.scope.clone(),
                g.granted_by.clone(),
                g.granted_at.clone(),
            ]
        })
        .collect();
    table(
        &["PRINCIPAL", "ROLE", "SCOPE", "GRANTED BY", "GRANTED AT"],
        &rows,
    )
}

pub async fn token(node: &Node, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            principal,
            description,
            expires_in,
            output,
        } => {
            let created = node
                .client()
                .await?
                .create_token(&principal, &description, expires_in)
                .await?;
            let record =
                created.token.as_ref().map(TokenView::of).ok_or_else(|| {
                    anyhow::anyhow!("the node answered without the token's record")
                })?;
            let view = CreatedView {
                token: created.secret_token,
                record,
            };
            if output.output == Output::Table {
                eprintln!(
                    "token {} for {} ({}): shown once, keep it (QUIVER_TOKEN or --token)",
                    view.record.id,
                    view.record.principal,
                    view.record.state()
                );
            }
            print_one(output.output, &view, |v| format!("{}\n", v.token))
        }
        TokenCommand::List { principal, output } => {
            let tokens = node.client().await?.list_tokens(&principal).await?;
            let views: Vec<TokenView> = tokens.iter().map(TokenView::of).collect();
            print_one(output.output, &views, |views| {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.principal.clone(),
                            t.state(),
                            t.created_by.clone(),
                            t.description.clone(),
                        ]
                    })
                    .collect();
                table(
                    &["ID", "PRINCIPAL", "STATE", "CREATED BY", "DESCRIPTION"],
                    &rows,
                )
            })
        }
        TokenCommand::Revoke { id, output } => {
            let token = node.client().await?.revoke_token(&id).await?;
            let view = TokenView::of(&token);
            print_one(output.output, &view, |v| {
                format!("token {} of {}: {}\n", v.id, v.principal, v.state())
            })
        }
    }
}

pub async fn role(node: &Node, command: RoleCommand) -> anyhow::Result<()> {
    match command {
        RoleCommand::Grant {
            principal,
            role,
            scope,
            output,
        } => {
            if !["reader", "registrant", "approver", "admin"].contains(&role.as_str()) {
                return Err(UsageError(format!(
                    "{role:?} is not a role: use reader, registrant, approver or admin"
                ))
                .into());
            }
            let grant = node
                .client()
                .await?
                .grant_role(&principal, &scope.scope(), &role)
                .await?;
            print_one(output.output, &GrantView::of(&grant), GrantView::human)
        }
        RoleCommand::Revoke {
            principal,
            scope,
            output,
        } => {
            let grant = node
                .client()
                .await?
                .revoke_role(&principal, &scope.scope())
                .await?;
            print_one(output.output, &GrantView::of(&grant), |g| {
                format!("revoked {} for {} in {}\n", g.role, g.principal, g.scope)
            })
        }
        RoleCommand::List { principal, output } => {
            let grants = node.client().await?.list_roles(&principal).await?;
            let views: Vec<GrantView> = grants.iter().map(GrantView::of).collect();
            print_one(output.output, &views, |v| grants_table(v))
        }
    }
}

#[derive(Serialize)]
struct WhoAmIView {
    principal: String,
    authenticated: bool,
    roles: Vec<GrantView>,
}

pub async fn whoami(node: &Node, output: OutputArgs) -> anyhow::Result<()> {
    let me = node.client().await?.who_am_i().await?;
    let view = WhoAmIView {
        principal: me.principal,
        authenticated: me.authenticated,
        roles: me.grants.iter().map(GrantView::of).collect(),
    };
    print_one(output.output, &view, |v| {
        let mut text = format!(
            "{}{}\n",
            v.principal,
            if v.authenticated { "" } else { " (anonymous)" }
        );
        if v.roles.is_empty() {
            text.push_str("no roles\n");
        } else {
            text.push_str(&grants_table(&v.roles));
        }
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_with_their_unit_and_refuse_the_rest() {
        assert_eq!(parse_lifetime("90d"), Ok(Some(90 * 86_400)));
        assert_eq!(parse_lifetime("12h"), Ok(Some(12 * 3_600)));
        assert_eq!(parse_lifetime("30m"), Ok(Some(1_800)));
        assert_eq!(parse_lifetime("1s"), Ok(Some(1)));
        assert_eq!(parse_lifetime("never"), Ok(None));
        for bad in [
            "",
            "d",
            "0d",
            "-1d",
            "1y",
            "１d",
            "99999999999999999999d",
            "1.5h",
            "never ",
        ] {
            assert!(parse_lifetime(bad).is_err(), "{bad:?}");
        }
        assert!(parse_lifetime(&format!("{}d", u64::MAX / 10)).is_err());
    }
}
