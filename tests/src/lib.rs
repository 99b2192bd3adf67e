//! Harness for end-to-end tests: real `quiver-node` processes on loopback,
//! driven through the real `quiver` CLI or the SDK.
//!
//! Binaries are passed in by the test files (`env!("CARGO_BIN_EXE_…")` only
//! exists there). Nothing here sleeps to synchronise: a node is ready when it
//! prints its `export QUIVER_ENDPOINT=` line, which is only printed after it
//! has become leader and bound its listener.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

/// The first admin's token of the cluster each endpoint belongs to, as its founding node (or
/// `up`) printed it: what [`quiver`] sends to that endpoint.
static TOKENS: std::sync::Mutex<std::collections::BTreeMap<String, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Remembers `token` as the admin token for `endpoint`.
pub fn remember_token(endpoint: &str, token: &str) {
    TOKENS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(endpoint.to_string(), token.to_string());
}

/// The admin token remembered for `endpoint`.
pub fn token_for(endpoint: &str) -> Option<String> {
    TOKENS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(endpoint)
        .cloned()
}

/// The cluster CA's certificate file of the cluster each endpoint belongs to, as its node (or
/// `up`) printed it: what [`quiver`] and [`connect`] verify that endpoint with.
static CAS: std::sync::Mutex<std::collections::BTreeMap<String, PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Remembers `ca_file` as the CA certificate to verify `endpoint` with.
pub fn remember_ca(endpoint: &str, ca_file: &Path) {
    CAS.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(endpoint.to_string(), ca_file.to_path_buf());
}

/// The CA certificate file remembered for `endpoint`.
pub fn ca_for(endpoint: &str) -> Option<PathBuf> {
    CAS.lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(endpoint)
        .cloned()
}

/// An SDK client of `endpoint`, verifying it with its cluster's CA, sending its cluster's
/// admin token.
pub async fn connect(endpoint: &str) -> anyhow::Result<quiver_client::Client> {
    let ca = ca_for(endpoint).with_context(|| format!("no CA remembered for {endpoint}"))?;
    let tls = quiver_client::sdk::ClientTls::load(Some(&ca), None, None)?;
    Ok(quiver_client::Client::connect_with(endpoint, tls)
        .await?
        .with_token(token_for(endpoint)))
}

/// A raw gRPC channel to `endpoint` over TLS, verifying it with its cluster's CA (for requests
/// the SDK would not send).
pub async fn channel(endpoint: &str) -> anyhow::Result<tonic::transport::Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let ca = ca_for(endpoint).with_context(|| format!("no CA remembered for {endpoint}"))?;
    let ca = std::fs::read_to_string(&ca).with_context(|| format!("read {}", ca.display()))?;
    Ok(Endpoint::from_shared(endpoint.to_string())?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name(quiver_client::sdk::NODE_TLS_NAME),
        )?
        .connect()
        .await?)
}

/// The token in a token file (its first line).
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

/// How long a node may take to print its endpoint.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node that stopped serving may take to exit.
pub const NODE_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A `quiver-node serve` process; killed when dropped.
pub struct NodeProcess {
    child: Child,
    pub endpoint: String,
    /// The Raft peer address (`serve` prints it; `up` does not).
    pub peer_addr: Option<String>,
    /// Where `serve --metrics-listen` serves `/metrics` (`host:port`), if it does.
    pub metrics_addr: Option<String>,
    pub data_dir: PathBuf,
    stderr_log: PathBuf,
    /// The node's stdout after the endpoint line; disconnected once the process has exited.
    stdout: mpsc::Receiver<String>,
}

impl NodeProcess {
    /// Starts `quiver-node serve` on a free loopback port with its data in `data_dir`.
    pub fn start(node_bin: &str, data_dir: &Path) -> anyhow::Result<NodeProcess> {
        let dir = data_dir.display().to_string();
        let args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.as_str(),
        ];
        Self::spawn(node_bin, &args, data_dir)
    }

    /// Starts `quiver-node ARGS…` and waits for its endpoint line.
    pub fn spawn(node_bin: &str, args: &[&str], data_dir: &Path) -> anyhow::Result<NodeProcess> {
        std::fs::create_dir_all(data_dir)?;
        let stderr_log = data_dir.with_extension("stderr.log");
        let stderr = std::fs::File::create(&stderr_log)?;
        let mut child = Command::new(node_bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawn {node_bin}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        // `serve` prints its peer address (and a founding node its admin's token file) before
        // the endpoint line.
        let mut peer_addr = None;
        let mut metrics_addr = None;
        let mut token_file = None;
        let mut ca_file = None;
        let endpoint = loop {
            match rx.recv_timeout(NODE_START_TIMEOUT) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("peer_addr=") {
                        peer_addr = Some(addr.to_string());
                    } else if let Some(url) = line.strip_prefix("metrics=http://") {
                        metrics_addr = Some(url.trim_end_matches("/metrics").to_string());
                    } else if let Some(path) = line.strip_prefix("export QUIVER_TOKEN_FILE=") {
                        token_file = Some(PathBuf::from(path));
                    } else if let Some(path) = line.strip_prefix("export QUIVER_CA=") {
                        ca_file = Some(PathBuf::from(path));
                    } else if let Some(endpoint) = line.strip_prefix("export QUIVER_ENDPOINT=") {
                        break endpoint.to_string();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                    bail!("node did not print its endpoint in time; stderr:\n{log}");
                }
            }
        };
        if let Some(path) = &token_file {
            remember_token(&endpoint, &read_token(path)?);
        }
        if let Some(path) = &ca_file {
            remember_ca(&endpoint, path);
        }
        Ok(NodeProcess {
            child,
            endpoint,
            peer_addr,
            metrics_addr,
            data_dir: data_dir.to_path_buf(),
            stderr_log,
            stdout: rx,
        })
    }

    /// Starts node `node_id` joining the cluster whose founder keeps its CA in
    /// `founder_dir`: issues its certificate with `quiver-node cert issue`,
    /// then `serve --join`. Extra arguments are appended.
    pub fn join(
        node_bin: &str,
        founder_dir: &Path,
        founder_peer: &str,
        node_id: u64,
        data_dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<NodeProcess> {
        let tls = data_dir.join("tls");
        if !tls.join("node.key").exists() {
            let out = Command::new(node_bin)
                .args([
                    "cert",
                    "issue",
                    "--node-id",
                    &node_id.to_string(),
                    "--ca-dir",
                ])
                .arg(founder_dir.join("tls").join("ca"))
                .arg("--out")
                .arg(&tls)
                .output()?;
            if !out.status.success() {
                bail!(
                    "cert issue failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let dir = data_dir.display().to_string();
        let id = node_id.to_string();
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &dir,
            "--node-id",
            &id,
            "--join",
            founder_peer,
        ];
        args.extend_from_slice(extra);
        let node = Self::spawn(node_bin, &args, data_dir)?;
        if let Ok(token) = read_token(&founder_dir.join("admin.token")) {
            remember_token(&node.endpoint, &token);
        }
        Ok(node)
    }

    /// The admin token of this node's cluster (its founder's), if known.
    pub fn token(&self) -> Option<String> {
        token_for(&self.endpoint)
    }

    /// Sends a signal by name (STOP, CONT, TERM, KILL).
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{name} failed");
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let exit = self.child.wait()?;
        if !exit.success() {
            bail!(
                "node exited with {exit} after SIGTERM; stderr:\n{}",
                self.stderr()
            );
        }
        Ok(())
    }

    /// Peak resident memory of the node so far (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .ok_or_else(|| anyhow!("no VmHWM in /proc status"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow!("malformed VmHWM line"))?
            .parse()?;
        Ok(kib * 1024)
    }

    /// Waits for the process to exit on its own (its stdout closes), at most
    /// [`NODE_EXIT_TIMEOUT`]; returns its exit code (-1 if a signal ended it).
    pub fn wait_exit(&mut self) -> anyhow::Result<i32> {
        let deadline = std::time::Instant::now() + NODE_EXIT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("node did not exit within {NODE_EXIT_TIMEOUT:?}")
                }
            }
        }
        Ok(self.child.wait()?.code().unwrap_or(-1))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Result of one CLI run.
pub struct CliRun {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// Panics with both streams unless the command succeeded.
    pub fn ok(self) -> CliRun {
        assert_eq!(
            self.status, 0,
            "command failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Panics unless the command failed; returns its stderr.
    pub fn err(self) -> String {
        assert_ne!(
            self.status, 0,
            "command unexpectedly succeeded\nstdout:\n{}",
            self.stdout
        );
        self.stderr
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs the `quiver` CLI against `endpoint` with the admin token of its cluster.
pub fn quiver(cli_bin: &str, endpoint: &str, args: &[&str]) -> CliRun {
    quiver_as(cli_bin, endpoint, token_for(endpoint).as_deref(), args)
}

/// Runs the `quiver` CLI against `endpoint` with `token` (none: no credentials at all).
pub fn quiver_as(cli_bin: &str, endpoint: &str, token: Option<&str>, args: &[&str]) -> CliRun {
    let mut command = Command::new(cli_bin);
    command
        .args(args)
        .env("QUIVER_ENDPOINT", endpoint)
        .env_remove("QUIVER_TOKEN")
        .env_remove("QUIVER_TOKEN_FILE")
        .env_remove("QUIVER_CERT")
        .env_remove("QUIVER_KEY")
        .env_remove("QUIVER_CA");
    if let Some(token) = token {
        command.env("QUIVER_TOKEN", token);
    }
    if let Some(ca) = ca_for(endpoint) {
        command.env("QUIVER_CA", ca);
    }
    let out: Output = command
        .output()
        .unwrap_or_else(|e| panic!("run {cli_bin}: {e}"));
    CliRun {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `quiver version register MODEL --artifact FILE…` with placeholder lineage (snapshot `snap-1`,
/// commit `abc`, run `run-1`), as the tests register versions.
pub fn register_version(cli_bin: &str, endpoint: &str, model: &str, artifacts: &[&Path]) -> CliRun {
    let paths: Vec<String> = artifacts.iter().map(|p| p.display().to_string()).collect();
    let mut args = vec!["version", "register", model];
    for path in &paths {
        args.extend(["--artifact", path.as_str()]);
    }
    args.extend([
        "--data-snapshot",
        "snap-1",
        "--code-commit",
        "abc",
        "--run-id",
        "run-1",
    ]);
    quiver(cli_bin, endpoint, &args)
}

/// `quiver version download REFERENCE --out OUT --no-nearest` through `endpoint`.
pub fn download_version(cli_bin: &str, endpoint: &str, reference: &str, out: &Path) -> CliRun {
    let o = out.display().to_string();
    quiver(
        cli_bin,
        endpoint,
        &[
            "version",
            "download",
            reference,
            "--out",
            &o,
            "--no-nearest",
        ],
    )
}

/// Writes `size_bytes` of seeded pseudo-random bytes to `path`, streaming.
pub fn write_random_file(path: &Path, size_bytes: u64, seed: u64) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size_bytes;
    while left > 0 {
        for word in buf.chunks_mut(8) {
            // xorshift64*: fast, seeded, good enough to defeat dedup.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// `GET path` over plain HTTP/1.0 to `addr` (a node's `/metrics`): (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

/// blake3 of a file, streaming.
pub fn hash_file(path: &Path) -> anyhow::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// The blake3 hashes of the chunks a node cuts `path` into (the same chunker as the node),
/// streaming.
pub fn chunk_hashes(path: &Path) -> anyhow::Result<Vec<quiver_transfer::Hash>> {
    Ok(chunks_of(path)?.into_iter().map(|c| c.hash).collect())
}

/// The hashes of those chunks of `path` (cut by the node's chunker, streaming) that a node's
/// chunk store keeps as files (`chunks/ab/cdef…`): every chunk larger than
/// `SMALL_CHUNK_BYTES_MAX` (smaller ones share the store's LMDB pack and have no path to look at).
pub fn file_chunk_hashes(path: &Path) -> anyhow::Result<Vec<quiver_transfer::Hash>> {
    Ok(chunks_of(path)?
        .into_iter()
        .filter(|c| c.size_bytes as usize > quiver_transfer::SMALL_CHUNK_BYTES_MAX)
        .map(|c| c.hash)
        .collect())
}

fn chunks_of(path: &Path) -> anyhow::Result<Vec<quiver_transfer::ChunkRef>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut chunker = quiver_transfer::Chunker::new();
    let mut hashes = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        chunker.push(&buf[..n], |c, _| {
            hashes.push(c);
            Ok::<(), std::convert::Infallible>(())
        })?;
    }
    chunker.finish(|c, _| {
        hashes.push(c);
        Ok::<(), std::convert::Infallible>(())
    })?;
    Ok(hashes)
}

/// A cluster of `size` node processes on loopback: node 1 founds it in `dir/node-1`, the others
/// join it from `dir/node-N`.
pub fn start_cluster(node_bin: &str, dir: &Path, size: u64) -> anyhow::Result<Vec<NodeProcess>> {
    start_cluster_with(node_bin, dir, size, &[])
}

/// [`start_cluster`], every node started with `extra` arguments appended to `serve` (such as
/// `--metrics-listen 127.0.0.1:0`, which gives each node its HTTP listener: `/metrics` and the
/// web UI).
pub fn start_cluster_with(
    node_bin: &str,
    dir: &Path,
    size: u64,
    extra: &[&str],
) -> anyhow::Result<Vec<NodeProcess>> {
    let founder_dir = dir.join("node-1");
    let d = founder_dir.display().to_string();
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", d.as_str()];
    args.extend_from_slice(extra);
    let founder = NodeProcess::spawn(node_bin, &args, &founder_dir)?;
    let founder_peer = founder
        .peer_addr
        .clone()
        .context("serve prints its peer address")?;
    let mut nodes = vec![founder];
    for id in 2..=size {
        let data = dir.join(format!("node-{id}"));
        nodes.push(NodeProcess::join(
            node_bin,
            &founder_dir,
            &founder_peer,
            id,
            &data,
            extra,
        )?);
    }
    Ok(nodes)
}

/// [`start_cluster`] with every node also serving its HTTP routes (`--metrics-listen` on a free
/// loopback port: `/metrics` and the MLflow-compatible API); `NodeProcess::metrics_addr` names
/// each one's address.
pub fn start_http_cluster(
    node_bin: &str,
    dir: &Path,
    size: u64,
) -> anyhow::Result<Vec<NodeProcess>> {
    start_cluster_with(node_bin, dir, size, &["--metrics-listen", "127.0.0.1:0"])
}

/// A token for `principal`, created with the admin token through `endpoint` (`expires_in`: a
/// span such as `90d`; none: the default).
pub fn create_token(
    cli_bin: &str,
    endpoint: &str,
    principal: &str,
    expires_in: Option<&str>,
) -> String {
    let mut args = vec![
        "token",
        "create",
        "--principal",
        principal,
        "--output",
        "json",
    ];
    if let Some(span) = expires_in {
        args.extend(["--expires-in", span]);
    }
    quiver(cli_bin, endpoint, &args).ok().json()["token"]
        .as_str()
        .expect("the token")
        .to_string()
}

/// Every node's state digest (equal once every node applied the same log).
pub fn state_digests(cli_bin: &str, nodes: &[NodeProcess]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| {
            quiver(cli_bin, &n.endpoint, &["status", "--output", "json"])
                .ok()
                .json()["state_digest"]
                .as_str()
                .expect("a digest")
                .to_string()
        })
        .collect()
}

/// `quiver-node audit verify --data-dir DIR` on a stopped node's store: its exit status and its
/// stderr.
pub fn offline_audit_verify(node_bin: &str, data_dir: &Path) -> (bool, String) {
    let out = Command::new(node_bin)
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap_or_else(|e| panic!("run {node_bin}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Replaces every occurrence of `from` by `to` (same length) in the state env files
/// (`data.mdb`) below `dir`; how many it replaced.
pub fn alter_state_files(dir: &Path, from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut replaced = 0;
    for entry in std::fs::read_dir(dir).expect("a data dir") {
        let path = entry.expect("a dir entry").path();
        if path.is_dir() {
            replaced += alter_state_files(&path, from, to);
        } else if path.file_name().is_some_and(|n| n == "data.mdb") {
            let mut bytes = std::fs::read(&path).expect("read data.mdb");
            let mut at = 0;
            while let Some(i) = bytes[at..].windows(from.len()).position(|w| w == from) {
                bytes[at + i..at + i + to.len()].copy_from_slice(to);
                at += i + to.len();
                replaced += 1;
            }
            std::fs::write(&path, bytes).expect("write data.mdb");
        }
    }
    replaced
}
