//! `quiver audit …`: list the audit log, verify a node's chain, export it as a signed bundle, and
//! verify a bundle offline with the cluster CA's certificate (decision 0019).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use quiver_audit::AuditRecord;

use super::commands::{consistency, print_one, Node};
use super::view::{table, time_text};
use super::{OutputArgs, ReadArgs};
use crate::audit_bundle::{record_from_proto, verify_bundle};
use crate::proto::ListAuditRequest;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit records, oldest first: the whole log (cluster-wide readers) or one model's
    /// (readers of its namespace).
    Log {
        /// Only the records about this model.
        #[arg(long)]
        model: Option<String>,
        /// Only the records from this time on: 2026-12-03, 2026-12-03T22:15:00Z, milliseconds
        /// since the epoch, or a span back from now (90d, 12h, 30m, 45s).
        #[arg(long, value_parser = parse_since)]
        since: Option<i64>,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Verify the chain stored on the node answering (each node holds its own copy): fails,
    /// naming the first altered, missing or unlinked record, if it is broken.
    Verify {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Write the answering node's whole chain to FILE, signed by the node's certificate key.
    Export {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Verify an exported bundle offline: its certificate chains to the CA, its signature, and
    /// its chain of records; fails naming the first bad record.
    VerifyBundle {
        file: PathBuf,
        /// The cluster CA's certificate (PEM).
        #[arg(long, value_name = "CA_PEM")]
        ca: PathBuf,
    },
}

/// `--since`: a date, a date and time (UTC), milliseconds since the epoch, or a span back from
/// now.
fn parse_since(text: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "{text:?}: give 2026-12-03, 2026-12-03T22:15:00Z, milliseconds since the epoch, or \
             a span back from now (90d, 12h, 30m, 45s)"
        )
    };
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    if let Some(unit) = text.chars().last().filter(|c| "dhms".contains(*c)) {
        let number: i64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
        let scale = match unit {
            'd' => 86_400_000,
            'h' => 3_600_000,
            'm' => 60_000,
            _ => 1_000,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        return number
            .checked_mul(scale)
            .map(|span| now.saturating_sub(span))
            .ok_or_else(bad);
    }
    let (date, clock) = text.split_once('T').unwrap_or((text, "00:00:00Z"));
    let clock = clock.strip_suffix('Z').unwrap_or(clock);
    let numbers = |s: &str, sep: char| -> Option<Vec<i64>> {
        s.split(sep).map(|p| p.parse::<i64>().ok()).collect()
    };
    let (Some(d), Some(c)) = (numbers(date, '-'), numbers(clock, ':')) else {
        return Err(bad());
    };
    let (&[y, mo, day], &[h, mi, ref rest @ ..]) = (d.as_slice(), c.as_slice()) else {
        return Err(bad());
    };
    let s = rest.first().copied().unwrap_or(0);
    let valid = (1..=12).contains(&mo)
        && (1..=31).contains(&day)
        && (0..24).contains(&h)
        && (0..60).contains(&mi)
        && (0..60).contains(&s)
        && rest.len() <= 1
        && (0..=9999).contains(&y);
    if !valid {
        return Err(bad());
    }
    Ok((days_from_civil(y, mo, day) * 86_400 + h * 3_600 + mi * 60 + s) * 1_000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn records_table(records: &[AuditRecord]) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.seq.to_string(),
                time_text(r.at_ms),
                if r.authenticated {
                    r.principal.clone()
                } else {
                    format!("{} (anonymous)", r.principal)
                },
                r.kind.clone(),
                r.subject.clone(),
                r.reason.clone(),
                r.detail.clone(),
            ]
        })
        .collect();
    table(
        &[
            "SEQ",
            "TIME",
            "PRINCIPAL",
            "ACTION",
            "OBJECT",
            "REASON",
            "DETAIL",
        ],
        &rows,
    )
}

pub async fn run(node: &Node, command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Log { model, since, read } => {
            let client = node.client().await?;
            let mut records = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_audit(ListAuditRequest {
                        model: model.clone().unwrap_or_default(),
                        since_ms: since.unwrap_or(i64::MIN),
                        page_size: 0,
                        page_token,
                        consistency: consistency(&read) as i32,
                    })
                    .await?;
                records.extend(page.records.into_iter().map(record_from_proto));
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            print_one(read.output, &records, |r| records_table(r))
        }
        AuditCommand::Verify { output } => {
            let verdict = node.client().await?.verify_audit().await?;
            if !verdict.ok {
                anyhow::bail!(
                    "the audit chain of node {} is broken at record {} ({}): {}",
                    verdict.node_id,
                    verdict.break_seq,
                    verdict.break_kind,
                    verdict.break_message
                );
            }
            #[derive(serde::Serialize)]
            struct View {
                node_id: u64,
                count: u64,
                head_hash: String,
            }
            let view = View {
                node_id: verdict.node_id,
                count: verdict.count,
                head_hash: verdict.head_hash,
            };
            print_one(output.output, &view, |v| {
                format!(
                    "audit chain of node {} intact: {} record(s), head {}\n",
                    v.node_id, v.count, v.head_hash
                )
            })
        }
        AuditCommand::Export { out } => {
            let client = node.client().await?;
            let partial = out.with_extension("partial");
            let file = std::fs::File::create(&partial)
                .with_context(|| format!("create {}", partial.display()))?;
            let mut writer = std::io::BufWriter::new(file);
            let summary = match client.export_audit(&mut writer).await {
                Ok(summary) => summary,
                Err(e) => {
                    drop(writer);
                    let _ = std::fs::remove_file(&partial);
                    return Err(e.into());
                }
            };
            let file = writer.into_inner().context("write the audit bundle")?;
            file.sync_all().context("sync the audit bundle")?;
            std::fs::rename(&partial, &out)
                .with_context(|| format!("rename the bundle to {}", out.display()))?;
            println!(
                "wrote {} audit record(s) signed by node {} to {} (head {})",
                summary.count,
                summary.node_id,
                out.display(),
                summary.head_hash
            );
            Ok(())
        }
        AuditCommand::VerifyBundle { file, ca } => {
            let ca_pem = std::fs::read_to_string(&ca)
                .with_context(|| format!("read the CA certificate {}", ca.display()))?;
            let input = std::fs::File::open(&file)
                .with_context(|| format!("open the bundle {}", file.display()))?;
            let verified = verify_bundle(&mut std::io::BufReader::new(input), &ca_pem)
                .with_context(|| format!("{} does not verify", file.display()))?;
            let h = verified.header;
            println!(
                "bundle verified: {} record(s) from node {} at {}, head {}, signed by a \
                 certificate of the CA in {}",
                h.count,
                h.node_id,
                time_text(h.exported_at_ms),
                h.head_hash,
                ca.display()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_dates_times_milliseconds_and_spans() {
        assert_eq!(parse_since("1970-01-01"), Ok(0));
        assert_eq!(parse_since("1970-01-02T00:00:01Z"), Ok(86_401_000));
        assert_eq!(parse_since("2000-03-01"), Ok(951_868_800_000));
        assert_eq!(parse_since("-5"), Ok(-5));
        assert!(parse_since("1h").unwrap() < parse_since("0s").unwrap());
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-12-03T25:00",
            "99999999999999999999d",
            "1x",
        ] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }
}
