"""The ClientApp each SuperNode runs: one lbfgs iteration of scikit-learn's
LogisticRegression per round, warm-started from the global weights (Flower's
scikit-learn example), and accuracy on its rows."""

import warnings

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from sklearn.linear_model import LogisticRegression

from fedsql_flower.data import load

app = ClientApp()


def partition(context):
    return load(context.run_config["data-dir"], context.node_config["region"])


def model_from(arrays):
    coef, intercept = arrays.to_numpy_ndarrays()
    model = LogisticRegression(max_iter=1, warm_start=True)
    model.classes_ = np.array([0, 1])
    model.coef_, model.intercept_ = coef, intercept
    return model


@app.train()
def train(msg: Message, context: Context):
    x, y = partition(context)
    model = model_from(msg.content["arrays"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y)
    content = RecordDict({
        "arrays": ArrayRecord([model.coef_, model.intercept_]),
        "metrics": MetricRecord({"num-examples": len(x)}),
    })
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    x, y = partition(context)
    model = model_from(msg.content["arrays"])
    accuracy = float((model.predict(x) == y).mean())
    content = RecordDict({
        "metrics": MetricRecord({"accuracy": accuracy, "num-examples": len(x)}),
    })
    return Message(content=content, reply_to=msg)
