//! Serving agents end to end (issue 15, must-show 1): 3 real nodes and 5 agents in two regions
//! serving a real ONNX model. A new version is promoted to Staging and rolled out shadow → 5%;
//! during the canary every prediction of the new version fails (the agents' fault switch), the
//! agents' reports put it over its error bound, and the leader rolls it back by itself. Then
//! the version, fixed, is rolled out again to 100%. Throughout, a load of predictions checks
//! that no request is answered by a version outside the split in force (allowing
//! [`PROPAGATION_BOUND_MS`]); the agents' metrics are scraped and asserted; hostile requests
//! are refused and change nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_client::agent::onnx::example;
use quiver_client::agent::{builtin_runtimes, Agent, AgentConfig, Faults, Registry};
use quiver_client::proto::DeploymentRecord;
use quiver_client::sdk::ClientTls;
use quiver_tests::{ca_for, connect, quiver, start_cluster, token_for};

const NODE: &str = env!("CARGO_BIN_EXE_e2e-quiver-node");
const CLI: &str = env!("CARGO_BIN_EXE_e2e-quiver");
const DEADLINE: Duration = Duration::from_secs(60);
/// How long after a change's commit an agent may still answer by the split it replaced.
const PROPAGATION_BOUND_MS: i64 = 1_000;

/// One answered prediction: when, by which agent, under which generation, by which version.
#[derive(Clone, Debug)]
struct Answer {
    at_ms: i64,
    agent: usize,
    generation: u64,
    version: u64,
    status: u16,
}

fn now_ms() -> i64 {
    quiver_client::agent::serve::now_ms()
}

/// Registers `reco` version with weights `w` and bias `b` (an ONNX linear model with its
/// signature).
fn register_model(endpoint: &str, dir: &Path, n: u32, w: &[f32], b: f32) {
    let model_dir = dir.join(format!("model-{n}"));
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("model.onnx"), example::linear_model(w, b)).unwrap();
    let signature = dir.join(format!("signature-{n}.json"));
    std::fs::write(&signature, example::signature_json(w.len())).unwrap();
    quiver(
        CLI,
        endpoint,
        &[
            "version",
            "register",
            "reco",
            "--artifact",
            model_dir.to_str().unwrap(),
            "--signature",
            signature.to_str().unwrap(),
            "--data-snapshot",
            "snap-1",
            "--code-commit",
            "abc",
            "--run-id",
            "run-1",
        ],
    )
    .ok();
}

/// An agent of `reco-prod` named `name`, keeping its files in `dir`, reaching the registry
/// through `node`.
fn agent_config(name: &str, dir: &Path, node: &str, region: &str, report_ms: u64) -> AgentConfig {
    AgentConfig {
        name: name.into(),
        endpoint: "reco-prod".into(),
        dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        region: region.into(),
        zone: String::new(),
        report_every: Duration::from_millis(report_ms),
        registry: Registry {
            endpoints: vec![node.to_string()],
            tls: ClientTls::load(Some(&ca_for(node).unwrap()), None, None).unwrap(),
            token: token_for(node),
        },
        faults: Faults::default(),
    }
}

/// `reco/1` (a linear model of `weights`) in Production, served by endpoint `reco-prod`.
fn deploy_one_version(endpoint: &str, dir: &Path, weights: &[f32], bias: f32) {
    quiver(CLI, endpoint, &["model", "create", "reco"]).ok();
    register_model(endpoint, dir, 1, weights, bias);
    quiver(
        CLI,
        endpoint,
        &["stage", "set", "reco/1", "production", "--reason", "t"],
    )
    .ok();
    quiver(
        CLI,
        endpoint,
        &["deploy", "create", "reco-prod", "--version", "reco/1"],
    )
    .ok();
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends predictions round robin over the agents until told to stop, recording each answer.
async fn load(
    http: reqwest::Client,
    addrs: Vec<String>,
    answers: Arc<Mutex<Vec<Answer>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut i = 0u64;
    while !*stop.borrow() {
        let agent = (i % addrs.len() as u64) as usize;
        let url = format!("http://{}/v1/endpoints/reco-prod/predict", addrs[agent]);
        let sent = http
            .post(&url)
            .header("x-request-key", format!("user-{i}"))
            .json(&serde_json::json!({"inputs": {"features": [[1.0, 2.0, 3.0]]}}))
            .send();
        tokio::select! {
            response = sent => {
                let response = response.unwrap();
                let status = response.status().as_u16();
                let body: serde_json::Value = response.json().await.unwrap();
                answers.lock().unwrap().push(Answer {
                    at_ms: now_ms(),
                    agent,
                    generation: body["generation"].as_u64().unwrap_or(0),
                    version: body["version"].as_u64().unwrap_or(0),
                    status,
                });
            }
            _ = stop.changed() => return,
        }
        i += 1;
    }
}

/// Checks every answer against the endpoint's history: its version is in the split of its
/// generation, and that generation was in force when it was answered or replaced at most
/// `PROPAGATION_BOUND_MS` before. Returns the number of answers checked.
fn check_answers(answers: &[Answer], history: &[DeploymentRecord]) -> usize {
    let by_generation: BTreeMap<u64, &DeploymentRecord> =
        history.iter().map(|r| (r.generation, r)).collect();
    let mut checked = 0;
    for a in answers.iter().filter(|a| a.version != 0) {
        let record = by_generation
            .get(&a.generation)
            .unwrap_or_else(|| panic!("{a:?}: generation not in the history"));
        assert!(
            record.split.iter().any(|s| s.version == a.version),
            "agent {}: {a:?} answered by a version outside generation {}'s split {}",
            a.agent,
            a.generation,
            record.traffic
        );
        if let Some(next) = by_generation.get(&(a.generation + 1)) {
            assert!(
                a.at_ms <= next.at_ms + PROPAGATION_BOUND_MS,
                "{a:?} answered by generation {} {} ms after generation {} ({}) replaced it",
                a.generation,
                a.at_ms - next.at_ms,
                next.generation,
                next.traffic
            );
        }
        checked += 1;
    }
    checked
}

/// The value of the first sample of `name` whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' '])
                && labels.iter().all(|x| l.contains(x))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_roll_a_failing_canary_back_by_themselves_and_never_answer_outside_the_split() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(NODE, dir.path(), 3).unwrap();
    let a = nodes[0].endpoint.clone();
    quiver(
        CLI,
        &a,
        &["model", "create", "reco", "--namespace", "search"],
    )
    .ok();
    register_model(&a, dir.path(), 1, &[1.0, 0.0, 0.0], 0.0); // score = x0
    register_model(&a, dir.path(), 2, &[0.0, 1.0, 0.0], 0.5); // score = x1 + 0.5
    quiver(
        CLI,
        &a,
        &["stage", "set", "reco/1", "production", "--reason", "t"],
    )
    .ok();
    quiver(
        CLI,
        &a,
        &["deploy", "create", "reco-prod", "--version", "reco/1"],
    )
    .ok();

    // Five agents, three in eu and two in us, each first reaching a different node.
    let mut agents = Vec::new();
    for i in 0..5usize {
        let node = &nodes[i % nodes.len()].endpoint;
        let region = if i < 3 { "eu" } else { "us" };
        let config = agent_config(
            &format!("agent-{i}"),
            &dir.path().join(format!("agent-{i}")),
            node,
            region,
            200,
        );
        agents.push(Agent::start(config, builtin_runtimes()).await.unwrap());
    }
    for agent in &agents {
        assert!(agent.wait_ready(1, DEADLINE).await, "{:?}", agent.status());
    }
    let addrs: Vec<String> = agents.iter().map(|a| a.addr().to_string()).collect();
    let http = reqwest::Client::new();

    // Predictions are the model's: reco/1 answers x0.
    let answer: serde_json::Value = http
        .post(format!(
            "http://{}/v1/endpoints/reco-prod/predict",
            addrs[0]
        ))
        .json(&serde_json::json!({"inputs": {"features": [[4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["predictions"],
        serde_json::json!([[4.0], [7.0]]),
        "{answer}"
    );
    assert_eq!(answer["version"], 1);

    let answers = Arc::new(Mutex::new(Vec::new()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let loader = tokio::spawn(load(
        http.clone(),
        addrs.clone(),
        Arc::clone(&answers),
        stopped,
    ));

    // The rollout: shadow for a second, then 5%; errors of reco/2 roll it back.
    quiver(
        CLI,
        &a,
        &["stage", "set", "reco/2", "staging", "--reason", "t"],
    )
    .ok();
    quiver(
        CLI,
        &nodes[1].endpoint,
        &[
            "deploy",
            "rollout",
            "reco-prod",
            "--version",
            "reco/2",
            "--plan",
            "shadow:1s,5%:30s,100%",
            "--max-error-rate",
            "1",
        ],
    )
    .ok();
    let client = connect(&a).await.unwrap();
    wait_until("the controller moves on to the 5% canary", async || {
        let d = client
            .get_deployment("reco-prod", Default::default())
            .await
            .unwrap();
        d.split.iter().any(|s| s.version == 2 && s.percent == 5)
    })
    .await;
    // The canary breaks: every prediction of reco/2 fails (the agents' fault switch).
    for agent in &agents {
        agent.set_faults(Faults {
            fail_versions: [2].into(),
        });
    }
    wait_until("the rollout is rolled back automatically", async || {
        let history = client
            .deployment_history("reco-prod", 0, Default::default())
            .await
            .unwrap();
        history.iter().any(|r| r.kind == "rollback")
    })
    .await;
    let history = client
        .deployment_history("reco-prod", 0, Default::default())
        .await
        .unwrap();
    let rollback = history.iter().find(|r| r.kind == "rollback").unwrap();
    assert!(
        rollback.reason.starts_with("automatic: reco/2"),
        "{rollback:?}"
    );
    // The agents' report rolled it back: it is recorded under their principal.
    assert_eq!(rollback.principal, "admin", "{rollback:?}");
    let kinds: Vec<&str> = history.iter().rev().map(|r| r.kind.as_str()).collect();
    assert!(
        kinds.starts_with(&["create", "rollout_start", "rollout_step", "rollback"]),
        "{kinds:?}"
    );
    // Every agent routes all traffic back to reco/1.
    for agent in &agents {
        assert!(agent.wait_ready(rollback.generation, DEADLINE).await);
        assert_eq!(agent.status().split, [(1, 100)]);
    }

    // Fixed, promoted, and rolled out again: it reaches 100% on every agent.
    for agent in &agents {
        agent.set_faults(Faults::default());
    }
    quiver(
        CLI,
        &a,
        &[
            "deploy",
            "rollout",
            "reco-prod",
            "--version",
            "reco/2",
            "--plan",
            "5%:1s,100%",
        ],
    )
    .ok();
    quiver(
        CLI,
        &a,
        &["stage", "set", "reco/2", "production", "--reason", "t"],
    )
    .ok();
    wait_until("reco/2 takes all traffic", async || {
        let d = client
            .get_deployment("reco-prod", Default::default())
            .await
            .unwrap();
        d.split.len() == 1 && d.split[0].version == 2
    })
    .await;
    let done = client
        .get_deployment("reco-prod", Default::default())
        .await
        .unwrap();
    for agent in &agents {
        assert!(agent.wait_ready(done.generation, DEADLINE).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // a few more answers under 100%
    let _ = stop.send(true);
    loader.await.unwrap();

    // No answer came from outside the split in force.
    let history = client
        .deployment_history("reco-prod", 0, Default::default())
        .await
        .unwrap();
    let answers = answers.lock().unwrap().clone();
    let checked = check_answers(&answers, &history);
    assert!(checked > 100, "only {checked} answers");
    let failed = answers.iter().filter(|a| a.status == 500).count();
    assert!(
        failed > 0,
        "the broken canary answered some requests (and failed)"
    );
    assert!(
        answers
            .iter()
            .all(|a| a.status == 200 || (a.status == 500 && a.version == 2)),
        "only the broken canary failed"
    );
    let last = answers.iter().rev().find(|a| a.status == 200).unwrap();
    assert_eq!(last.version, 2);

    // Metrics, scraped over HTTP.
    let mut rollbacks = 0.0;
    for addr in &addrs {
        let text = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metric(&text, "model_load_time_ms_count", &[]).unwrap() >= 2.0,
            "{text}"
        );
        assert_eq!(metric(&text, "version_count", &[]), Some(2.0), "{text}");
        assert_eq!(
            metric(&text, "quiver_agent_registry_reachable", &[]),
            Some(1.0)
        );
        assert_eq!(
            metric(&text, "quiver_agent_generation", &[]),
            Some(done.generation as f64)
        );
        assert!(metric(&text, "quiver_agent_requests_total", &["outcome=\"ok\""]).unwrap() > 0.0);
        assert!(text.contains("serving_error_rate_pct"), "{text}");
        let rollback_p = metric(&text, "rollback_time_ms_count", &[]).unwrap_or(0.0);
        rollbacks += rollback_p;
        if let Some(sum) = metric(&text, "rollback_time_ms_sum", &[]) {
            assert!(
                sum / rollback_p.max(1.0) < PROPAGATION_BOUND_MS as f64,
                "{text}"
            );
        }
    }
    assert_eq!(rollbacks, 5.0, "each agent routed by the rollback once");
    for agent in agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_by_name_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(NODE, dir.path(), 1).unwrap();
    let a = nodes[0].endpoint.clone();
    deploy_one_version(&a, dir.path(), &[1.0, 2.0, 3.0], 1.0);
    let config = agent_config("agent-0", &dir.path().join("agent"), &a, "", 100);
    let agent = Agent::start(config, builtin_runtimes()).await.unwrap();
    assert!(agent.wait_ready(1, DEADLINE).await);
    let http = reqwest::Client::new();
    let base = format!("http://{}", agent.addr());
    let post = |path: String, body: Vec<u8>| {
        let http = http.clone();
        async move {
            let r = http
                .post(path)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let url = format!("{base}/v1/endpoints/reco-prod/predict");
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"".to_vec(), 400, "MALFORMED_REQUEST"),
        (b"\0".to_vec(), 400, "MALFORMED_REQUEST"),
        (
            b"{\"inputs\": {\"features\": [[1, 2]]}}".to_vec(),
            400,
            "features",
        ),
        (
            b"{\"inputs\": {\"feature\\u0000s\": [[1, 2, 3]]}}".to_vec(),
            400,
            "INVALID_INPUT",
        ),
        (
            b"{\"inputs\": {\"features\": [[\"a\", 2, 3]]}}".to_vec(),
            400,
            "features",
        ),
        (
            b"{\"inputs\": {\"features\": [[1e308, 2, 3]]}}".to_vec(),
            400,
            "features",
        ),
        (
            b"{\"inputs\": {\"\xc3\xa9\": [[1, 2, 3]]}}".to_vec(),
            400,
            "INVALID_INPUT",
        ),
        (
            format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            400,
            "",
        ),
        (vec![b' '; 33 * 1024 * 1024], 413, ""),
    ];
    for (body, status, needle) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).to_string();
        let (got, text) = post(url.clone(), body).await;
        assert_eq!(got, status, "{shown}: {text}");
        assert!(text.contains(needle), "{shown}: {text}");
    }
    for endpoint in ["other", "..%2F..%2Fetc", "%00", "%C3%A9", &"x".repeat(5000)] {
        let (got, text) = post(
            format!("{base}/v1/endpoints/{endpoint}/predict"),
            b"{}".to_vec(),
        )
        .await;
        assert!(got == 404, "{endpoint}: {got} {text}");
    }
    // A seeded storm of bodies built from JSON fragments: each is answered 200 or refused 400,
    // never a failure of the agent or the model.
    let pieces: [&str; 16] = [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"inputs\"",
        "\"features\"",
        "\"instances\"",
        "1",
        "-1e309",
        "null",
        "\"\\u0000\"",
        "\"é/../\"",
        "[[1,2,3]]",
        "{\"inputs\":{\"features\":",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        let mut body = String::new();
        for _ in 0..(state % 12 + 1) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            body.push_str(pieces[(state % 16) as usize]);
        }
        let (got, text) = post(url.clone(), body.clone().into_bytes()).await;
        assert!(got == 200 || got == 400, "{body}: {got} {text}");
    }
    // A very long request key is fine; the agent still answers correctly.
    let r: serde_json::Value = http
        .post(&url)
        .header("x-request-key", "k".repeat(8000))
        .json(&serde_json::json!({"inputs": {"features": [[1.0, 1.0, 1.0]]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["predictions"], serde_json::json!([[7.0]]), "{r}");
    // Nothing changed: the agent serves the same generation, and the registry's endpoint too.
    assert_eq!(agent.status().generation, 1);
    let d = connect(&a)
        .await
        .unwrap()
        .get_deployment("reco-prod", Default::default())
        .await
        .unwrap();
    assert_eq!(d.generation, 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_keeps_serving_while_the_registry_is_down_even_after_its_own_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(NODE, dir.path(), 1).unwrap();
    let a = nodes[0].endpoint.clone();
    deploy_one_version(&a, dir.path(), &[2.0, 0.0, 0.0], 0.0);
    let config = agent_config("agent-0", &dir.path().join("agent"), &a, "", 100);
    let agent = Agent::start(config.clone(), builtin_runtimes())
        .await
        .unwrap();
    assert!(agent.wait_ready(1, DEADLINE).await);
    let http = reqwest::Client::new();
    let predict = |addr: std::net::SocketAddr| {
        let http = http.clone();
        async move {
            let r: serde_json::Value = http
                .post(format!("http://{addr}/v1/endpoints/reco-prod/predict"))
                .json(&serde_json::json!({"inputs": {"features": [[3.0, 0.0, 0.0]]}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["predictions"].clone()
        }
    };
    assert_eq!(predict(agent.addr()).await, serde_json::json!([[6.0]]));

    // The registry goes away: the agent says so and keeps answering.
    nodes.pop().unwrap().kill().unwrap();
    wait_until(
        "the agent notices the registry is unreachable",
        async || !agent.status().registry_reachable,
    )
    .await;
    assert_eq!(predict(agent.addr()).await, serde_json::json!([[6.0]]));
    let status: serde_json::Value = http
        .get(format!("http://{}/v1/status", agent.addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["registry_reachable"], false, "{status}");
    assert!(status["offline_since_ms"].as_i64().unwrap() > 0, "{status}");
    assert!(agent
        .metrics_text()
        .contains("quiver_agent_registry_reachable{endpoint=\"reco-prod\"} 0"));

    // Restarted with the registry still down, it serves what it kept on disk.
    agent.stop().await;
    let again = Agent::start(config, builtin_runtimes()).await.unwrap();
    assert!(again.wait_ready(1, DEADLINE).await, "{:?}", again.status());
    assert_eq!(predict(again.addr()).await, serde_json::json!([[6.0]]));
    wait_until(
        "the restarted agent says the registry is unreachable",
        async || !again.status().registry_reachable,
    )
    .await;
    again.stop().await;
}

/// `quiver agent` and `quiver example-model` refuse bad arguments by name before doing
/// anything: nothing is written, no agent starts.
#[test]
fn the_agent_commands_refuse_hostile_arguments_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let o = out.to_str().unwrap();
    let long = "x".repeat(5000);
    let many = vec!["1"; 5000].join(",");
    for (args, needle) in [
        (
            vec!["example-model", o, "--weights", "nan,1"],
            "not a finite number",
        ),
        (
            vec!["example-model", o, "--weights", "1e39"],
            "not a finite number",
        ),
        (
            vec!["example-model", o, "--weights", "1", "--bias=-inf"],
            "not a finite number",
        ),
        (
            vec!["example-model", o, "--weights", many.as_str()],
            "1 to 4096",
        ),
        (vec!["example-model", o, "--weights", "é"], "--weights"),
    ] {
        let refused = quiver(CLI, "https://127.0.0.1:1", &args).err();
        assert!(refused.contains(needle), "{args:?}: {refused}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    for (args, needle) in [
        (vec!["agent", ""], "ENDPOINT"),
        (vec!["agent", long.as_str()], "ENDPOINT"),
        (
            vec!["agent", "e", "--agent-name", "Bad Name"],
            "--agent-name",
        ),
        (vec!["agent", "e", "--agent-name", "../etc"], "--agent-name"),
        (vec!["agent", "e", "--agent-name", "é"], "--agent-name"),
        (
            vec!["agent", "e", "--agent-name", long.as_str()],
            "--agent-name",
        ),
        (
            vec!["agent", "e", "--report-every-ms", "0"],
            "--report-every-ms",
        ),
        (
            vec!["agent", "e", "--report-every-ms", "18446744073709551615"],
            "--report-every-ms",
        ),
        (vec!["agent", "e", "--listen", "not-an-address"], "--listen"),
    ] {
        let refused = quiver(CLI, "https://127.0.0.1:1", &args).err();
        assert!(refused.contains(needle), "{args:?}: {refused}");
    }
}
