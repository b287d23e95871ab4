"""The ServerApp: FedAvg over the three SuperNodes, every client trains and
evaluates each round (as fedsql's rounds do); the final weights and the
run's own duration go to the `result` file for the bench to score."""

import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedsql_flower.data import load

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context):
    started = time.perf_counter()
    rounds = int(context.run_config["num-server-rounds"])
    x, _ = load(context.run_config["data-dir"], None)
    initial = ArrayRecord([np.zeros((1, x.shape[1])), np.zeros(1)])
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=3,
                      min_evaluate_nodes=3, min_available_nodes=3)
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds)
    coef, intercept = result.arrays.to_numpy_ndarrays()
    with open(context.run_config["result"], "w") as f:
        json.dump({"coef": coef.tolist(), "intercept": intercept.tolist(),
                   "seconds": time.perf_counter() - started}, f)
