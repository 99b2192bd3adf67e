//! Request-id deduplication (decision 0009): a write retried across a leader change may reach
//! the log twice; the second copy answers what the first did instead of applying again.

use heed::{RoTxn, RwTxn};
use serde::{Deserialize, Serialize};

use super::tables::{decode, encode};
use super::{AppError, AppResult, RegistryApp};
use crate::command::{RequestId, Response};
use crate::domain::{shown, DomainError};

/// How long a request id is remembered, in log entries: a retried copy of a write arrives within
/// the write timeout (5 s by default), i.e. a few thousand entries at most at full load, since
/// concurrent writes share entries. Deterministic (a log index, not a clock), so every node
/// forgets the same ids at the same point.
pub const REQUEST_IDS_KEPT_ENTRIES: u64 = 100_000;

/// Longest request id, in bytes. An id is a key of `requests` and, after an 8-byte log index, of
/// `request_log`, and LMDB refuses keys that are empty or over 511 bytes with an error that
/// would stop Raft; ids that cannot be keys are rejected first ([`check_request_id`]). Ids made
/// by `RequestId::random` are 32 bytes.
pub const REQUEST_ID_BYTES_MAX: usize = 128;
const _: () = assert!(8 + REQUEST_ID_BYTES_MAX <= 511);

/// Refuses a request id that cannot be remembered: empty or over [`REQUEST_ID_BYTES_MAX`].
pub(super) fn check_request_id(id: &RequestId) -> Result<(), DomainError> {
    if id.0.is_empty() || id.0.len() > REQUEST_ID_BYTES_MAX {
        return Err(DomainError::invalid(
            "request_id",
            format!(
                "{} is not a request id: use 1-{REQUEST_ID_BYTES_MAX} bytes",
                shown(&id.0)
            ),
        ));
    }
    Ok(())
}

/// What the `requests` table keeps of a request's answer: small answers whole, a version by name.
#[derive(Debug, Serialize, Deserialize)]
enum Remembered {
    Response(Response),
    Version { model: String, number: u64 },
}

impl RegistryApp {
    /// What request `id` answered, if a copy of it was applied within the last
    /// [`REQUEST_IDS_KEPT_ENTRIES`] log entries. A version is answered as it is now (what a
    /// read would return; its content never changes, its stage may have).
    pub(super) fn answered(&self, rtxn: &RoTxn<'_>, id: &RequestId) -> AppResult<Option<Response>> {
        let Some(bytes) = self.tables.requests.get(rtxn, id.0.as_bytes())? else {
            return Ok(None);
        };
        Ok(Some(match decode("request answer", bytes)? {
            Remembered::Response(response) => response,
            Remembered::Version { model, number } => match self.get_version(rtxn, &model, number) {
                Ok(version) => Response::Version(Box::new(version)),
                // Versions are never deleted; were one gone, say so rather than stop applying.
                Err(AppError::Domain(e)) => Response::Rejected(e),
                Err(e) => return Err(e),
            },
        }))
    }

    pub(super) fn remember(
        &self,
        wtxn: &mut RwTxn<'_>,
        log_index: u64,
        id: &RequestId,
        response: &Response,
    ) -> AppResult<()> {
        // A version can list thousands of files: remember its name, not a copy of it.
        let remembered = match response {
            Response::Version(v) => Remembered::Version {
                model: v.model.clone(),
                number: v.number,
            },
            other => Remembered::Response(other.clone()),
        };
        self.tables
            .requests
            .put(wtxn, id.0.as_bytes(), &encode(&remembered)?)?;
        let mut key = log_index.to_be_bytes().to_vec();
        key.extend_from_slice(id.0.as_bytes());
        self.tables.request_log.put(wtxn, &key, &[])?;
        Ok(())
    }

    /// Forgets request ids applied more than [`REQUEST_IDS_KEPT_ENTRIES`] entries before
    /// `log_index`.
    pub(super) fn forget_old_requests(
        &self,
        wtxn: &mut RwTxn<'_>,
        log_index: u64,
    ) -> AppResult<()> {
        let Some(cutoff) = log_index.checked_sub(REQUEST_IDS_KEPT_ENTRIES) else {
            return Ok(());
        };
        let mut old = Vec::new();
        for row in self.tables.request_log.iter(wtxn)? {
            let (key, _) = row?;
            let index = key
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if index >= cutoff {
                break;
            }
            old.push(key.to_vec());
        }
        for key in old {
            self.tables.request_log.delete(wtxn, &key)?;
            if let Some(id) = key.get(8..) {
                self.tables.requests.delete(wtxn, id)?;
            }
        }
        Ok(())
    }
}
