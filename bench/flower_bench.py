"""fedsql vs Flower on the same federated logistic regression, one run.

Both train the fraud model of the README on the demo's transactions, with
each region a client (3 clients), 10 rounds of FedAvg, and report wall time
and the final model's accuracy over every row.

    Flower 1.42: the legacy gRPC server (flwr.compat start_server) and three
    client processes (flwr.compat start_client) with scikit-learn's
    LogisticRegression (one lbfgs iteration per round, warm-started — the
    Flower scikit-learn example), no Ray.
    fedsql: TRAIN MODEL … FEDERATED BY region over the Postgres wire.

Called by bench/flower.sh, which starts fedsql and exports the rows.
"""

import argparse
import csv
import multiprocessing
import socket
import time

import numpy as np
import psycopg

FEATURES_SQL = """SELECT ln(t.amount) AS log_amount, t.channel, t.merchant_category,
  CAST(date_part('hour', t.ts) < 5 AS INT) AS night, c.credit_score, c.region, t.is_fraud
  FROM bank.transactions t JOIN bank.customers c USING (customer_id)"""


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    channels = sorted({r["channel"] for r in rows})
    categories = sorted({r["merchant_category"] for r in rows})
    numeric = np.array([[float(r["log_amount"]), float(r["night"]), float(r["credit_score"])]
                        for r in rows])
    numeric = (numeric - numeric.mean(axis=0)) / numeric.std(axis=0)
    onehot = np.array([[r["channel"] == c for c in channels]
                       + [r["merchant_category"] == c for c in categories] for r in rows],
                      dtype=float)
    x = np.hstack([numeric, onehot])
    y = np.array([r["is_fraud"] in ("true", "t", "1") for r in rows], dtype=int)
    regions = np.array([r["region"] for r in rows])
    return x, y, regions


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_client(address, path, region, rounds_done):
    from flwr.client import NumPyClient
    from flwr.compat.client.app import start_client
    from sklearn.linear_model import LogisticRegression

    x, y, regions = load(path)
    mine = regions == region
    x, y = x[mine], y[mine]

    class Client(NumPyClient):
        def __init__(self):
            self.model = LogisticRegression(max_iter=1, warm_start=True)
            self.model.classes_ = np.array([0, 1])
            self.model.coef_ = np.zeros((1, x.shape[1]))
            self.model.intercept_ = np.zeros(1)

        def get_parameters(self, config):
            return [self.model.coef_, self.model.intercept_]

        def fit(self, parameters, config):
            self.model.coef_, self.model.intercept_ = parameters
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model.fit(x, y)
            return [self.model.coef_, self.model.intercept_], len(x), {}

        def evaluate(self, parameters, config):
            return 0.0, len(x), {}

    start_client(server_address=address, client=Client().to_client(), insecure=True)


def run_flower(path, rounds):
    import flwr.common
    from flwr.compat.server.app import start_server
    from flwr.server import ServerConfig
    from flwr.server.strategy import FedAvg

    x, y, _ = load(path)
    final = {}

    class Capture(FedAvg):
        def aggregate_fit(self, server_round, results, failures):
            params, metrics = super().aggregate_fit(server_round, results, failures)
            final["params"] = flwr.common.parameters_to_ndarrays(params)
            return params, metrics

    port = free_port()
    address = f"127.0.0.1:{port}"
    initial = flwr.common.ndarrays_to_parameters([np.zeros((1, x.shape[1])), np.zeros(1)])
    strategy = Capture(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=3,
                       min_available_clients=3, initial_parameters=initial)
    start = time.perf_counter()
    clients = [multiprocessing.Process(target=flower_client, args=(address, path, r, None))
               for r in sorted(set(load(path)[2]))]
    for c in clients:
        c.start()
    start_server(server_address=address, config=ServerConfig(num_rounds=rounds),
                 strategy=strategy)
    seconds = time.perf_counter() - start
    for c in clients:
        c.join(timeout=30)
    coef, intercept = final["params"]
    predicted = (x @ coef.T + intercept).ravel() > 0
    return seconds, float((predicted == y).mean())


def run_fedsql(port, rounds):
    with psycopg.connect(host="127.0.0.1", port=port, user="fedsql", dbname="demo",
                         autocommit=True) as conn:
        conn.execute("DROP MODEL IF EXISTS bench_fraud")
        start = time.perf_counter()
        conn.execute(
            f"TRAIN MODEL bench_fraud USING logistic_regression PREDICT is_fraud "
            f"FROM ({FEATURES_SQL}) FEDERATED BY region "
            f"WITH (rounds = {rounds}, strategy = 'fedavg', learning_rate = 0.1, seed = 1)")
        seconds = time.perf_counter() - start
        # Local training throughput: each client trains on one core.
        (rows_per_second,) = conn.execute(
            "SELECT sum(num_examples) / (sum(duration_ms) / 1000.0) "
            "FROM fedsql.system.training_rounds "
            "WHERE model = 'bench_fraud' AND phase = 'train' AND status = 'ok'"
        ).fetchone()
        (accuracy,) = conn.execute(
            "SELECT avg(CASE WHEN predict('bench_fraud', log_amount, channel, merchant_category, "
            f"night, credit_score) = is_fraud THEN 1.0 ELSE 0.0 END) FROM ({FEATURES_SQL}) AS f"
        ).fetchone()
    return seconds, float(accuracy), float(rows_per_second)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--csv", required=True)
    p.add_argument("--fedsql-port", type=int, required=True)
    p.add_argument("--rounds", type=int, default=10)
    a = p.parse_args()
    rows = sum(1 for _ in open(a.csv)) - 1
    flower = run_flower(a.csv, a.rounds)
    *fedsql, rows_per_second = run_fedsql(a.fedsql_port, a.rounds)
    print(f"\n{rows:,} rows, 3 clients (regions), {a.rounds} rounds of FedAvg, "
          "accuracy over every row\n")
    print(f"{'system':44} {'seconds':>8} {'accuracy':>9} {'time vs Flower':>15}")
    for name, (seconds, accuracy) in [
        ("Flower 1.42 (compat gRPC, scikit-learn)", flower),
        ("fedsql TRAIN MODEL (Burn, Flight exchange)", fedsql),
    ]:
        print(f"{name:44} {seconds:8.2f} {accuracy:9.4f} {seconds / flower[0]:14.2f}x")
    print(f"\nfedsql local training: {rows_per_second:,.0f} rows/s per client (one core each;"
          " one epoch, batch 32, including the weight exchange)")
    print("goal: fedsql <= 0.2x Flower's wall time at equal or better accuracy")


if __name__ == "__main__":
    main()
