//! The one reference syntax used everywhere (CLI, API, agent):
//! `name/3` (a version number), `name@champion` (an alias),
//! `name:production` (the version currently in a stage).
//!
//! Parsing lives in the contract crate because it is part of the public
//! contract; the node resolves a parsed reference against its state.

use std::fmt;
use std::str::FromStr;

use crate::proto::Stage;

/// What a reference selects within a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionSelector {
    Number(u64),
    Alias(String),
    Stage(Stage),
}

/// A parsed reference to one model version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub model: String,
    pub selector: VersionSelector,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseRefError {
    #[error(
        "invalid reference {0:?}: expected MODEL/NUMBER, MODEL@ALIAS or MODEL:STAGE \
         (for example reco-model/14, reco-model@champion, reco-model:production)"
    )]
    Syntax(String),
    #[error("invalid reference {input:?}: version {part:?} is not a positive number")]
    BadNumber { input: String, part: String },
    #[error(
        "invalid reference {input:?}: unknown stage {part:?} \
         (expected experimental, staging, production or archived)"
    )]
    BadStage { input: String, part: String },
}

/// Parses a stage name as users type it (`production`, `Production`, `STAGE_PRODUCTION`).
pub fn parse_stage(text: &str) -> Option<Stage> {
    let lower = text.trim().to_ascii_lowercase();
    let bare = lower.strip_prefix("stage_").unwrap_or(&lower);
    match bare {
        "experimental" => Some(Stage::Experimental),
        "staging" => Some(Stage::Staging),
        "production" => Some(Stage::Production),
        "archived" => Some(Stage::Archived),
        _ => None,
    }
}

/// The lowercase name of a stage, as printed and as parsed.
pub fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Unspecified => "unspecified",
        Stage::Experimental => "experimental",
        Stage::Staging => "staging",
        Stage::Production => "production",
        Stage::Archived => "archived",
    }
}

impl FromStr for Reference {
    type Err = ParseRefError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let syntax = || ParseRefError::Syntax(input.to_string());
        let split = input
            .char_indices()
            .find(|(_, c)| matches!(c, '/' | '@' | ':'))
            .ok_or_else(syntax)?;
        let (model, rest) = (&input[..split.0], &input[split.0 + 1..]);
        if model.is_empty() || rest.is_empty() {
            return Err(syntax());
        }
        let selector = match split.1 {
            '/' => {
                let number: u64 = rest.parse().map_err(|_| ParseRefError::BadNumber {
                    input: input.to_string(),
                    part: rest.to_string(),
                })?;
                if number == 0 {
                    return Err(ParseRefError::BadNumber {
                        input: input.to_string(),
                        part: rest.to_string(),
                    });
                }
                VersionSelector::Number(number)
            }
            '@' => VersionSelector::Alias(rest.to_string()),
            _ => VersionSelector::Stage(parse_stage(rest).ok_or_else(|| {
                ParseRefError::BadStage {
                    input: input.to_string(),
                    part: rest.to_string(),
                }
            })?),
        };
        Ok(Reference {
            model: model.to_string(),
            selector,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.selector {
            VersionSelector::Number(n) => write!(f, "{}/{}", self.model, n),
            VersionSelector::Alias(a) => write!(f, "{}@{}", self.model, a),
            VersionSelector::Stage(s) => write!(f, "{}:{}", self.model, stage_name(*s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_prints_them_back() {
        for text in [
            "reco-model/14",
            "reco-model@champion",
            "reco-model:production",
        ] {
            let parsed: Reference = text.parse().unwrap();
            assert_eq!(parsed.model, "reco-model");
            assert_eq!(parsed.to_string(), text);
        }
        let r: Reference = "m:Staging".parse().unwrap();
        assert_eq!(r.selector, VersionSelector::Stage(Stage::Staging));
    }

    #[test]
    fn rejects_malformed_references_with_a_named_reason() {
        assert!(matches!(
            "model".parse::<Reference>(),
            Err(ParseRefError::Syntax(_))
        ));
        assert!(matches!(
            "/3".parse::<Reference>(),
            Err(ParseRefError::Syntax(_))
        ));
        assert_eq!(
            "m/zero".parse::<Reference>(),
            Err(ParseRefError::BadNumber {
                input: "m/zero".into(),
                part: "zero".into()
            })
        );
        assert!(matches!(
            "m/0".parse::<Reference>(),
            Err(ParseRefError::BadNumber { .. })
        ));
        let err = "m:prod".parse::<Reference>().unwrap_err();
        assert!(err.to_string().contains("unknown stage \"prod\""), "{err}");
    }
}
