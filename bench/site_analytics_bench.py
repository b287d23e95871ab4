"""Cross-site analytics, one run, side by side (driven by site_analytics.sh).

    fedsql: a coordinator (`fedsql serve`) and three `fedsql site`
        processes, each with its site's PostgreSQL database as its source
        and `bank.transactions` under the analytics policy `aggregates`.
        The query runs at the coordinator over `sites.bank.transactions`:
        each site computes its partial aggregates and only those leave it.
    pull + pandas: what a user would do without fedsql: read the needed
        columns of every site's table with psycopg (the three sites in
        parallel) and aggregate the union with pandas.

Bytes are counted by TCP proxies: between each site and the coordinator
for fedsql (both directions, the sites' polls included), between the
client and each site's PostgreSQL for the baseline. Both answers are
checked against each other before anything is printed.
"""

import argparse
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import psycopg

from flower_sites_bench import CountingProxy, free_port, port_open, wait_for

REGIONS = ["apac", "eu", "us"]

FEDSQL_QUERY = """SELECT merchant_category, count(*) AS n, sum(amount) AS total,
  avg(amount) AS mean_amount, avg(CASE WHEN is_fraud THEN 1.0 ELSE 0.0 END) AS fraud_rate
FROM sites.bank.transactions GROUP BY merchant_category ORDER BY merchant_category"""

PULL_QUERY = "SELECT merchant_category, amount, is_fraud FROM bank.transactions"


def run_fedsql(work, fedsql, pg_port, processes):
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
            f'allow = ["bank.transactions"]\n\n'
            f'[[site.analytics]]\ntable = "bank.transactions"\npolicy = "aggregates"\n'
            f'min_group_size = 10\n')
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
        # Warm-up: the sites' first query plans their sources' catalogs.
        conn.execute(FEDSQL_QUERY).fetchall()
        for p in proxies:
            p.reset()
        started = time.perf_counter()
        rows = conn.execute(FEDSQL_QUERY).fetchall()
        seconds = time.perf_counter() - started
        traffic = [p.counts() for p in proxies]
    return {
        "seconds": seconds,
        "bytes": sum(u + d for u, d in traffic),
        "rows": [(r[0], int(r[1]), float(r[2]), float(r[3]), float(r[4])) for r in rows],
    }


def run_pull(pg_port):
    proxy = CountingProxy(pg_port)

    def pull(region):
        with psycopg.connect(host="127.0.0.1", port=proxy.port, user="postgres",
                             dbname=f"site_{region}") as conn:
            rows = conn.execute(PULL_QUERY).fetchall()
        return pd.DataFrame(rows, columns=["merchant_category", "amount", "is_fraud"])

    started = time.perf_counter()
    with ThreadPoolExecutor(len(REGIONS)) as pool:
        frames = list(pool.map(pull, REGIONS))
    union = pd.concat(frames, ignore_index=True)
    union["fraud"] = union["is_fraud"].astype(float)
    grouped = union.groupby("merchant_category").agg(
        n=("amount", "size"), total=("amount", "sum"), mean_amount=("amount", "mean"),
        fraud_rate=("fraud", "mean")).sort_index()
    seconds = time.perf_counter() - started
    up, down = proxy.counts()
    return {
        "seconds": seconds,
        "bytes": up + down,
        "rows": [(c, int(r.n), float(r.total), float(r.mean_amount), float(r.fraud_rate))
                 for c, r in grouped.iterrows()],
    }


def same(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x[0] != y[0] or x[1] != y[1]:
            return False
        if any(abs(p - q) > 1e-9 * max(1.0, abs(q)) for p, q in zip(x[2:], y[2:])):
            return False
    return True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fedsql", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--pg-port", type=int, required=True)
    p.add_argument("--rows", type=int, required=True)
    a = p.parse_args()
    work = Path(a.work)
    processes = []
    try:
        fedsql = run_fedsql(work, a.fedsql, a.pg_port, processes)
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    pull = run_pull(a.pg_port)
    if not same(fedsql["rows"], pull["rows"]):
        raise SystemExit(f"answers differ:\nfedsql {fedsql['rows']}\npull   {pull['rows']}")

    print(f"\n{len(REGIONS)} sites x {a.rows:,} rows, GROUP BY merchant_category "
          f"({len(fedsql['rows'])} groups: count, sum, 2 x avg); answers equal")
    print(f"{'':34}{'seconds':>10}{'bytes moved':>16}")
    for name, r in [("fedsql sites (per-site partials)", fedsql),
                    ("psycopg pull + pandas", pull)]:
        print(f"{name:34}{r['seconds']:>10.3f}{r['bytes']:>16,}")
    print(f"fedsql / pull: time {fedsql['seconds'] / pull['seconds']:.3f}x, "
          f"bytes {fedsql['bytes'] / pull['bytes']:.5f}x "
          f"({pull['bytes'] / max(fedsql['bytes'], 1):,.0f}x fewer)")


if __name__ == "__main__":
    main()
