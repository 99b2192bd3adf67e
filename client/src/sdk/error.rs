//! The SDK's error type. Callers (the CLI, the serving agent, tests) must
//! tell a missing model from a refused promotion from a dead node, so the
//! gRPC code is kept; the Display form is what a user reads.

/// Everything an SDK call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node answered at the endpoint (refused, timed out, bad host).
    #[error(
        "cannot reach a Quiver node at {endpoint}: {detail}; start one with `quiver-node up`, \
         or point QUIVER_ENDPOINT (or --endpoint) at a running node"
    )]
    Unavailable { endpoint: String, detail: String },
    /// A node answered, but the TLS handshake failed: its certificate is not from the CA this
    /// client trusts (or the node refused this client's certificate).
    #[error(
        "the TLS handshake with {endpoint} failed: {detail}; point --ca or QUIVER_CA at the \
         cluster CA's certificate (a node's <data-dir>/tls/ca.pem, or .quiver/ca.pem beside \
         `quiver-node up`), and a client certificate, if any, at one issued by that CA"
    )]
    Untrusted { endpoint: String, detail: String },
    /// The node answered with a gRPC error; `message` is the node's own words.
    #[error("{}: {message}", code_name(*code))]
    Status { code: tonic::Code, message: String },
    /// A local file operation failed; `context` says what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Received bytes did not match their blake3 hash, or the stream broke
    /// the protocol. Nothing unverified is left behind.
    #[error("{0}")]
    Verify(String),
    /// The caller's input was rejected before anything was sent.
    #[error("{0}")]
    InvalidInput(String),
    /// A download found a symbolic link below its output directory where it would write: it
    /// never writes through one, so no file of a version lands outside that directory.
    #[error(
        "'{path}' is a symbolic link inside the output directory, and a download never writes \
         through one: remove the link, or download into a directory without links"
    )]
    SymlinkInOutput { path: String },
}

impl ClientError {
    /// The gRPC code behind this error: the node's code for `Status`,
    /// `Unavailable` for an unreachable node, `None` for local failures.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            ClientError::Unavailable { .. } | ClientError::Untrusted { .. } => {
                Some(tonic::Code::Unavailable)
            }
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClientError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        let message = if status.message().is_empty() {
            // A status without a message still deserves a sentence.
            status.code().description().to_string()
        } else {
            status.message().to_string()
        };
        ClientError::Status {
            code: status.code(),
            message,
        }
    }
}

/// The short lowercase name printed before a node's message.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Joins an error and its sources into one line. tonic's transport errors
/// say only "transport error" at the top; the useful part is underneath.
/// A source whose text the line already ends with is skipped, so errors
/// that print their source themselves (like `Io`) do not repeat it.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        let text = next.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = next.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_displays_a_short_code_name_and_the_node_message() {
        let error = ClientError::from(tonic::Status::not_found("model 'reco' does not exist"));
        assert_eq!(error.to_string(), "not found: model 'reco' does not exist");
        assert_eq!(error.code(), Some(tonic::Code::NotFound));

        let error = ClientError::from(tonic::Status::already_exists("model 'reco' exists"));
        assert_eq!(error.code(), Some(tonic::Code::AlreadyExists));
        assert!(error.to_string().starts_with("already exists: "));

        let error = ClientError::from(tonic::Status::failed_precondition("gate failed"));
        assert_eq!(error.to_string(), "failed precondition: gate failed");
        let error = ClientError::from(tonic::Status::invalid_argument("bad tag"));
        assert_eq!(error.to_string(), "invalid argument: bad tag");
    }

    #[test]
    fn empty_status_message_falls_back_to_the_code_description() {
        let error = ClientError::from(tonic::Status::new(tonic::Code::Internal, ""));
        assert!(error.to_string().starts_with("internal error: "), "{error}");
        assert!(error.to_string().len() > "internal error: ".len());
    }

    #[test]
    fn unavailable_names_the_endpoint_and_the_fix() {
        let error = ClientError::Unavailable {
            endpoint: "http://127.0.0.1:7400".into(),
            detail: "connection refused".into(),
        };
        let text = error.to_string();
        assert!(text.contains("http://127.0.0.1:7400"), "{text}");
        assert!(text.contains("quiver-node up"), "{text}");
        assert!(text.contains("QUIVER_ENDPOINT"), "{text}");
        assert_eq!(error.code(), Some(tonic::Code::Unavailable));
    }

    #[test]
    fn io_and_local_errors_have_no_grpc_code() {
        let error = ClientError::io(
            "read artifact 'w.bin'",
            std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        );
        assert_eq!(error.to_string(), "read artifact 'w.bin': gone");
        assert_eq!(error.code(), None);
        assert_eq!(ClientError::Verify("x".into()).code(), None);
    }

    #[test]
    fn error_chain_includes_sources_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Outer(#[source] std::io::Error);
        let outer = Outer(std::io::Error::other("connection refused"));
        assert_eq!(error_chain(&outer), "transport error: connection refused");

        let io = ClientError::io("connect", std::io::Error::other("refused"));
        assert_eq!(error_chain(&io), "connect: refused");
    }
}
