#!/usr/bin/env python3
"""What TLS and access checks cost on the client API: `quiver bench registry` against two local
clusters, in alternating runs.

- "secure": the release build as shipped (TLS, tokens, roles);
- "baseline": the same source built with the `insecure-benchmark-baseline` feature, whose
  client API is plaintext gRPC and checks no credentials (every request acts as the admin).

Both clusters run at once on loopback (3 nodes each, `quiver-node up`) and stay idle while the
other is measured; the order alternates every round (AB, BA, AB, ...). Prints each round's
figures, the medians, and the secure build's overhead over the baseline in percent.

Usage (from the repository root):
    python3 tests/bench/access_overhead.py [--rounds 5] [--duration 10] [--clients 1]

Builds both (the baseline into target/insecure-baseline unless QUIVER_BASELINE_TARGET_DIR says
where) unless --skip-build. Every run is bounded in time; the clusters are stopped at the end.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

FEATURES = (
    "quiver-node-cli/insecure-benchmark-baseline,quiver-client/insecure-benchmark-baseline"
)
# The figures compared: (operation, consistency) as `quiver bench registry --output json`
# names them.
FIGURES = [
    ("register (1 KiB)", "-"),
    ("get alias", "linearizable"),
    ("get alias", "stale"),
    ("get version", "linearizable"),
]
START_TIMEOUT_S = 180


def build(root, target_dir, features):
    command = ["cargo", "build", "--release", "--locked", "-p", "quiver-node-cli", "-p", "quiver-client"]
    if features:
        command += ["--features", features]
    env = dict(os.environ, CARGO_TARGET_DIR=target_dir)
    subprocess.run(command, cwd=root, env=env, check=True)


class Cluster:
    """`quiver-node up` in a temporary directory; the CLI run there finds its CA and token."""

    def __init__(self, name, bin_dir, port, scheme):
        self.name = name
        self.bin_dir = bin_dir
        self.dir = tempfile.mkdtemp(prefix=f"quiver-access-{name}-")
        self.endpoint = f"{scheme}://127.0.0.1:{port}"
        self.log = open(os.path.join(self.dir, "up.log"), "w+")
        self.process = subprocess.Popen(
            [os.path.join(bin_dir, "quiver-node"), "up", "--data-dir", ".quiver", "--port", str(port)],
            cwd=self.dir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self):
        """Until `up` prints the endpoint to export (it does once every node serves)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"{self.name}: quiver-node up exited:\n{self.output()}")
            if "export QUIVER_ENDPOINT" in self.output():
                return
            time.sleep(0.2)
        sys.exit(f"{self.name}: not ready after {START_TIMEOUT_S} s:\n{self.output()}")

    def output(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def bench(self, clients, duration):
        command = [
            os.path.join(self.bin_dir, "quiver"), "bench", "registry",
            "--endpoint", self.endpoint, "--clients", str(clients),
            "--duration", str(duration), "--output", "json",
        ]
        done = subprocess.run(
            command, cwd=self.dir, capture_output=True, text=True, timeout=duration * 8 + 60
        )
        if done.returncode != 0:
            sys.exit(f"{self.name}: {' '.join(command)} failed:\n{done.stderr}")
        report = json.loads(done.stdout)
        found = {(f["operation"], f["consistency"]): f["latency_ms_p50"] for f in report["figures"]}
        return [found[key] for key in FIGURES]

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds per phase")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 50 or not 1 <= args.duration <= 120:
        sys.exit("--rounds must be 1 to 50 and --duration 1 to 120")

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    secure_target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    baseline_target = os.environ.get(
        "QUIVER_BASELINE_TARGET_DIR", os.path.join(root, "target", "insecure-baseline")
    )
    if not args.skip_build:
        build(root, secure_target, None)
        build(root, baseline_target, FEATURES)

    clusters = {
        "secure": Cluster("secure", os.path.join(secure_target, "release"), 17400, "https"),
        "baseline": Cluster("baseline", os.path.join(baseline_target, "release"), 17800, "http"),
    }
    results = {name: [] for name in clusters}
    try:
        for cluster in clusters.values():
            cluster.wait_ready()
        for round_index in range(args.rounds):
            order = ["secure", "baseline"] if round_index % 2 == 0 else ["baseline", "secure"]
            for name in order:
                figures = clusters[name].bench(args.clients, args.duration)
                results[name].append(figures)
                shown = "  ".join(f"{v:.3f}" for v in figures)
                print(f"round {round_index + 1} {name:8} p50 ms: {shown}", flush=True)
    finally:
        for cluster in clusters.values():
            cluster.stop()

    print()
    print(f"{args.clients} client(s), {args.duration} s per phase, {args.rounds} alternating rounds; "
          "medians of the rounds' p50s")
    print("(pairs: each round's secure p50 minus its baseline p50; the median of those, and in how")
    print(" many rounds the secure build was the slower)")
    print(f"{'figure':34} {'secure ms':>10} {'baseline ms':>12} {'overhead':>9} "
          f"{'pair median':>12} {'slower':>7}")
    for index, (operation, consistency) in enumerate(FIGURES):
        secure = statistics.median(r[index] for r in results["secure"])
        baseline = statistics.median(r[index] for r in results["baseline"])
        overhead = (secure / baseline - 1.0) * 100.0 if baseline > 0 else float("nan")
        pairs = [s[index] - b[index] for s, b in zip(results["secure"], results["baseline"])]
        pair_us = statistics.median(pairs) * 1000.0
        slower = sum(1 for d in pairs if d > 0)
        label = f"{operation} ({consistency})" if consistency != "-" else operation
        print(f"{label:34} {secure:10.3f} {baseline:12.3f} {overhead:8.1f}% "
              f"{pair_us:+9.1f} µs {slower:3}/{len(pairs)}")


if __name__ == "__main__":
    main()
