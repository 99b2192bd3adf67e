#!/usr/bin/env python3
"""Registration throughput and alias-lookup latency over MLflow's REST API, the same load against
two servers in one run: a Quiver node (--quiver URL) and MLflow's own server (started here with
its embedded default, SQLite, unless --mlflow names one or says `none`).

Load: --clients processes (not threads: the GIL would cap the client, not the server), each with
one keep-alive connection, each creating its own registered model and then registering versions
(`model-versions/create` with an `s3://` source: a pointer version, no bytes) for --seconds.
Then one client sets an alias and looks it up --lookups times (`GET registered-models/alias`).
Prints versions/s and the lookup p50/p99 per server and the ratios; --output json for machines.

Needs only the Python standard library for the load; `--mlflow auto` needs the `mlflow` package
(the full one: its server) in this interpreter. Every request has a timeout, and the run stops by
itself after the phases' bounds.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

API = "/api/2.0/mlflow"
TIMEOUT_S = 30


class Conn:
    """One keep-alive HTTP connection to a server, speaking MLflow's REST API."""

    def __init__(self, url, token):
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme != "http":
            sys.exit(f"--quiver/--mlflow must be http://host:port URLs, not {url!r}")
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)

    def call(self, method, path, body=None, query=None):
        url = API + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body)
        for attempt in range(2):
            try:
                self.conn.request(method, url, body=data, headers=self.headers)
                response = self.conn.getresponse()
                text = response.read()
                break
            except (http.client.HTTPException, OSError):
                # A server may close a kept-alive connection: reconnect once.
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
                if attempt == 1:
                    raise
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {text[:300]!r}")
        return json.loads(text or b"{}")


def register_worker(args):
    url, token, prefix, index, seconds, start_at = args
    conn = Conn(url, token)
    name = f"{prefix}-{index}"
    conn.call("POST", "/registered-models/create", {"name": name})
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = start_at + seconds
    count = 0
    while time.time() < deadline:
        conn.call(
            "POST",
            "/model-versions/create",
            {"name": name, "source": f"s3://bench/{name}/{count}", "run_id": ""},
        )
        count += 1
    return count


def measure(url, token, clients, seconds, lookups):
    prefix = f"bench-{os.getpid()}-{int(time.time() * 1000)}"
    start_at = time.time() + 2.0 + 0.05 * clients
    with multiprocessing.Pool(clients) as pool:
        jobs = [(url, token, prefix, i, seconds, start_at) for i in range(clients)]
        counts = pool.map(register_worker, jobs, chunksize=1)
    registered = sum(counts)
    conn = Conn(url, token)
    name = f"{prefix}-0"
    conn.call("POST", "/registered-models/alias", {"name": name, "alias": "champion", "version": "1"})
    samples = []
    for _ in range(lookups):
        began = time.perf_counter()
        answer = conn.call("GET", "/registered-models/alias", query={"name": name, "alias": "champion"})
        samples.append((time.perf_counter() - began) * 1000.0)
        if answer.get("model_version", {}).get("version") != "1":
            raise RuntimeError(f"alias lookup answered {answer!r}")
    samples.sort()

    def pct(p):
        return samples[min(len(samples) - 1, max(0, int(round(p / 100.0 * len(samples))) - 1))]

    return {
        "versions_registered": registered,
        "versions_per_s": registered / seconds,
        "alias_lookup_p50_ms": pct(50),
        "alias_lookup_p99_ms": pct(99),
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow(workdir):
    port = free_port()
    db = os.path.join(workdir, "mlflow.db")
    log = open(os.path.join(workdir, "mlflow-server.log"), "w")
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
         "--default-artifact-root", os.path.join(workdir, "artifacts"),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
        # Its own process group: the server starts workers and job runners, all stopped at the end.
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"MLflow's server exited; its log is {log.name}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return server, url
        except OSError:
            pass
        time.sleep(0.2)
    stop(server)
    sys.exit("MLflow's server did not answer /health within 120 s")


def stop(server):
    """Stops the server's whole process group: SIGTERM, then SIGKILL after 30 s."""
    import signal
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except ProcessLookupError:
        pass
    try:
        # Workers left behind by the server itself.
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiver", required=True, help="a Quiver node's URL, e.g. http://127.0.0.1:7400")
    parser.add_argument("--quiver-token", default=os.environ.get("MLFLOW_TRACKING_TOKEN", ""),
                        help="a Quiver token (default: $MLFLOW_TRACKING_TOKEN)")
    parser.add_argument("--mlflow", default="auto",
                        help="MLflow's server URL; `auto` starts one (SQLite); `none` skips it")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--output", choices=["table", "json"], default="table")
    args = parser.parse_args()
    if not 1 <= args.clients <= 256:
        sys.exit("--clients must be between 1 and 256")
    if not 0 < args.seconds <= 600:
        sys.exit("--seconds must be above 0 and at most 600")
    if not 1 <= args.lookups <= 1_000_000:
        sys.exit("--lookups must be between 1 and 1000000")

    results = {"clients": args.clients, "seconds": args.seconds}
    results["quiver"] = measure(args.quiver, args.quiver_token, args.clients, args.seconds, args.lookups)
    server, workdir = None, None
    try:
        if args.mlflow != "none":
            url = args.mlflow
            if url == "auto":
                workdir = tempfile.mkdtemp(prefix="mlflow-bench-")
                server, url = start_mlflow(workdir)
            results["mlflow"] = measure(url, "", args.clients, args.seconds, args.lookups)
    finally:
        if server is not None:
            stop(server)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    if "mlflow" in results:
        q, m = results["quiver"], results["mlflow"]
        results["throughput_ratio"] = q["versions_per_s"] / max(m["versions_per_s"], 1e-9)
        results["alias_p50_ratio"] = m["alias_lookup_p50_ms"] / max(q["alias_lookup_p50_ms"], 1e-9)
    if args.output == "json":
        print(json.dumps(results, indent=2))
        return
    print(f"{args.clients} clients, {args.seconds:g} s of registrations each side")
    print(f"{'server':<8} {'versions/s':>11} {'alias p50 ms':>13} {'alias p99 ms':>13}")
    for side in ("quiver", "mlflow"):
        if side in results:
            r = results[side]
            print(f"{side:<8} {r['versions_per_s']:>11.1f} {r['alias_lookup_p50_ms']:>13.3f} "
                  f"{r['alias_lookup_p99_ms']:>13.3f}")
    if "throughput_ratio" in results:
        print(f"registration throughput: Quiver/MLflow = {results['throughput_ratio']:.1f}x")
        print(f"alias lookup p50: MLflow/Quiver = {results['alias_p50_ratio']:.1f}x")


if __name__ == "__main__":
    main()
