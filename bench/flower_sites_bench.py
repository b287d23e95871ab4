"""fedsql sites vs Flower's deployment mode, one run, side by side.

Same data (the demo bank's transactions, one region per client), the same
model family (logistic regression), FedAvg, the same rounds, 3 clients as
separate processes on loopback, every client training and evaluating each
round:

    Flower 1.42: a SuperLink and three SuperNodes (`flower-superlink`,
    `flower-supernode --node-config region=…`), the app in
    bench/flower_app submitted with `flwr run` (scikit-learn
    LogisticRegression, one lbfgs iteration per round, warm-started).
    fedsql: a coordinator (`fedsql serve`) and three `fedsql site`
    processes, each reading its region's rows from its own PostgreSQL
    database; `TRAIN MODEL … FEDERATED ON SITES` over the Postgres wire.

Reported: wall time of the training (Flower: `flwr run` until the run
ends; fedsql: the TRAIN statement), accuracy over every row (Flower: the
final weights scored here; fedsql: EVALUATE MODEL … FEDERATED ON SITES),
and bytes on the wire per round per site, counted by a TCP proxy between
each client and its server (fedsql's weight exchange is a second
connection: its bytes come from `training_rounds`, which counts Flight
data bytes).

Called by bench/flower_sites.sh, which builds fedsql, starts PostgreSQL
with one database per region and exports the per-region CSVs.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg

REGIONS = ["apac", "eu", "us"]

SITE_QUERY = """SELECT ln(t.amount) AS log_amount, t.channel, t.merchant_category,
  CAST(date_part('hour', t.ts) < 5 AS INT) AS night, c.credit_score, t.is_fraud
  FROM bank.transactions t JOIN bank.customers c USING (customer_id)"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CountingProxy:
    """Forwards 127.0.0.1:port to target and counts the bytes each way."""

    def __init__(self, target_port):
        self.target = target_port
        self.up = 0  # client → server
        self.down = 0  # server → client
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self):
        with self.lock:
            self.up = self.down = 0

    def counts(self):
        with self.lock:
            return self.up, self.down

    def _accept(self):
        while True:
            client, _ = self.listener.accept()
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            for a, b, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(a, b, up), daemon=True).start()

    def _pump(self, source, sink, up):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                with self.lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def wait_for(predicate, what, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def write_encoding(data_dir):
    """Global statistics for Flower's clients: means, stds and categories
    over every region (what fedsql's federated preprocessing merges)."""
    import csv

    rows = []
    for r in REGIONS:
        with open(data_dir / f"{r}.csv", newline="") as f:
            rows.extend(csv.DictReader(f))
    numeric = ["log_amount", "night", "credit_score"]
    values = np.array([[float(r[c]) for c in numeric] for r in rows])
    encoding = {
        "regions": REGIONS,
        "numeric": numeric,
        "means": values.mean(axis=0).tolist(),
        "stds": values.std(axis=0).tolist(),
        "categories": {c: sorted({r[c] for r in rows}) for c in ["channel", "merchant_category"]},
    }
    (data_dir / "encoding.json").write_text(json.dumps(encoding))
    return len(rows)


def run_flower(work, data_dir, rounds, processes):
    """SuperLink + 3 SuperNodes (each through a counting proxy), `flwr run`."""
    sys.path.insert(0, str(Path(__file__).parent / "flower_app"))
    from fedsql_flower.data import load

    bin_dir = Path(sys.executable).parent
    # The SuperLink and SuperNodes start flower-superexec from PATH.
    env = dict(os.environ, FLWR_HOME=str(work / "flwr-home"),
               PATH=f"{bin_dir}:{os.environ.get('PATH', '')}")
    link_port = free_port()
    link_log = open(work / "superlink.log", "w")
    processes.append(subprocess.Popen(
        [bin_dir / "flower-superlink", "--insecure", "--port", str(link_port),
         "--database", str(work / "superlink.db")],
        stdout=link_log, stderr=subprocess.STDOUT, env=env, cwd=work))
    wait_for(lambda: port_open(link_port), "the SuperLink")
    proxies = []
    for region in REGIONS:
        proxy = CountingProxy(link_port)
        proxies.append(proxy)
        log = open(work / f"supernode-{region}.log", "w")
        processes.append(subprocess.Popen(
            [bin_dir / "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{proxy.port}",
             "--port", str(free_port()), "--node-config", f'region="{region}"'],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work))
    (work / "flwr-home").mkdir(exist_ok=True)
    (work / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{link_port}"\ninsecure = true\n')
    time.sleep(3)  # the SuperNodes register (fedsql's sites are online first, too)
    result = work / "flower-result.json"
    for p in proxies:
        p.reset()
    started = time.perf_counter()
    run = subprocess.run(
        [bin_dir / "flwr", "run", str(Path(__file__).parent / "flower_app"), "bench", "--stream",
         "--run-config",
         f'num-server-rounds={rounds} data-dir="{data_dir}" result="{result}"'],
        env=env, cwd=work, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if run.returncode != 0 or not result.exists():
        print(run.stdout[-4000:], run.stderr[-4000:], file=sys.stderr)
        raise SystemExit("flwr run failed; logs in " + str(work))
    out = json.loads(result.read_text())
    x, y = load(data_dir, None)
    coef, intercept = np.array(out["coef"]), np.array(out["intercept"])
    accuracy = float((((x @ coef.T + intercept).ravel() > 0) == y).mean())
    traffic = [p.counts() for p in proxies]
    parameters = coef.size + intercept.size
    return {
        "seconds": seconds,
        "app_seconds": out["seconds"],
        "accuracy": accuracy,
        "up": sum(u for u, _ in traffic) / len(traffic) / rounds,
        "down": sum(d for _, d in traffic) / len(traffic) / rounds,
        "parameter_bytes": parameters * 8,  # float64 ndarrays
    }


def run_fedsql(work, fedsql, pg_port, rounds, processes):
    """A coordinator and three sites (each through a counting proxy)."""
    tokens = {r: os.urandom(16).hex() for r in REGIONS}
    env = dict(os.environ, **{f"{r.upper()}_TOKEN": t for r, t in tokens.items()})
    (work / "coordinator.toml").write_text("".join(
        f'[[sites]]\nname = "{r}"\ntoken_env = "{r.upper()}_TOKEN"\n\n' for r in REGIONS))
    pg, flight = free_port(), free_port()
    log = open(work / "coordinator.log", "w")
    processes.append(subprocess.Popen(
        [fedsql, "serve", "--config", work / "coordinator.toml", "--data-dir",
         work / "coordinator", "--pg-listen", f"127.0.0.1:{pg}", "--flight-listen",
         f"127.0.0.1:{flight}", "--no-demo"],
        stdout=log, stderr=subprocess.STDOUT, env=env))
    wait_for(lambda: port_open(pg), "the coordinator")
    proxies = []
    for region in REGIONS:
        (work / f"site-{region}.toml").write_text(
            f'[[sources]]\nname = "bank"\ntype = "postgres"\n'
            f'url = "postgres://postgres@127.0.0.1:{pg_port}/site_{region}"\n\n'
            f'[site]\ntoken_env = "SITE_TOKEN"\ndatabase = "bank"\n'
            f'allow = ["bank.transactions", "bank.customers"]\n')
        proxy = CountingProxy(flight)
        proxies.append(proxy)
        log = open(work / f"site-{region}.log", "w")
        processes.append(subprocess.Popen(
            [fedsql, "site", "--name", region, "--coordinator", f"http://127.0.0.1:{proxy.port}",
             "--config", work / f"site-{region}.toml", "--data-dir", work / f"site-{region}",
             "--no-demo"],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, SITE_TOKEN=tokens[region])))
    with psycopg.connect(host="127.0.0.1", port=pg, user="fedsql", dbname="fedsql",
                         autocommit=True) as conn:
        def online():
            (n,) = conn.execute(
                "SELECT count(*) FROM fedsql.system.sites WHERE status = 'online'").fetchone()
            return n == len(REGIONS)
        wait_for(online, "three sites online")
        sites = ", ".join(f"'{r}'" for r in REGIONS)
        for p in proxies:
            p.reset()
        started = time.perf_counter()
        conn.execute(
            f"TRAIN MODEL bench_sites USING logistic_regression PREDICT is_fraud "
            f"FROM ({SITE_QUERY}) FEDERATED ON SITES ({sites}) "
            f"WITH (rounds = {rounds}, strategy = 'fedavg', learning_rate = 0.1, seed = 1)")
        seconds = time.perf_counter() - started
        traffic = [p.counts() for p in proxies]
        (exchange_up, exchange_down) = conn.execute(
            "SELECT sum(bytes_received), sum(bytes_sent) FROM fedsql.system.training_rounds "
            "WHERE model = 'bench_sites' AND phase = 'train' AND status = 'ok'").fetchone()
        evaluated = conn.execute(
            f"EVALUATE MODEL bench_sites ON ({SITE_QUERY}) FEDERATED ON SITES ({sites})")
        columns = [d.name for d in evaluated.description]
        overall = evaluated.fetchall()[0]
        accuracy = float(overall[columns.index("accuracy")])
        (weights,) = conn.execute(
            "SELECT parameters FROM fedsql.system.models WHERE model = 'bench_sites' AND active"
        ).fetchone()
    n = len(REGIONS) * rounds
    return {
        "seconds": seconds,
        "accuracy": accuracy,
        "up": (sum(u for u, _ in traffic) + int(exchange_up)) / n,
        "down": (sum(d for _, d in traffic) + int(exchange_down)) / n,
        "exchange_up": int(exchange_up) / n,
        "exchange_down": int(exchange_down) / n,
        "parameter_bytes": int(weights) * 4,  # float32
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fedsql", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--data-dir", required=True, help="the per-region CSVs")
    p.add_argument("--pg-port", type=int, required=True)
    p.add_argument("--rounds", type=int, default=10)
    a = p.parse_args()
    work, data_dir = Path(a.work), Path(a.data_dir)
    rows = write_encoding(data_dir)
    processes = []
    try:
        flower = run_flower(work, data_dir, a.rounds, processes)
        fedsql = run_fedsql(work, a.fedsql, a.pg_port, a.rounds, processes)
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    print(f"\n{rows:,} rows, 3 clients as processes on loopback (one region each), "
          f"{a.rounds} rounds of FedAvg, every client trains and evaluates each round\n")
    print(f"{'system':52} {'seconds':>8} {'accuracy':>9} {'time vs Flower':>15}")
    for name, r in [("Flower 1.42 deployment (SuperLink + 3 SuperNodes, flwr run)", flower),
                    ("fedsql sites (coordinator + 3 fedsql site, TRAIN)", fedsql)]:
        print(f"{name:52} {r['seconds']:8.2f} {r['accuracy']:9.4f} "
              f"{r['seconds'] / flower['seconds']:14.2f}x")
    print(f"  (Flower's ServerApp alone: {flower['app_seconds']:.2f} s)")
    print("\nbytes on the wire per site per round (client → server / server → client)")
    print(f"{'system':52} {'up':>9} {'down':>9} {'parameters':>11}")
    for name, r in [("Flower 1.42 deployment", flower), ("fedsql sites", fedsql)]:
        print(f"{name:52} {r['up']:9,.0f} {r['down']:9,.0f} {r['parameter_bytes']:11,}")
    print(f"  (fedsql's weight exchange alone: {fedsql['exchange_up']:,.0f} up / "
          f"{fedsql['exchange_down']:,.0f} down)")
    print("goal: fedsql <= 0.3x Flower's wall time at equal or better accuracy")


if __name__ == "__main__":
    main()
