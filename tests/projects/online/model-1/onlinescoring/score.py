"""Scores rows with a linear model: init() loads it once, run() answers each request."""

import json
import logging
import os
import pickle

model = None


def init():
    """Called once when the deployment starts: load the model from AZUREML_MODEL_DIR."""
    global model
    # Azure ML puts the registered model under AZUREML_MODEL_DIR, in a folder of its own name
    model_path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model/sklearn_regression_model.pkl")
    with open(model_path, "rb") as file:
        model = pickle.load(file)
    logging.info("model loaded from %s", model_path)


def run(raw_data):
    """Called for every request: {"data": [[x1, x2, ...], ...]} -> one prediction per row."""
    rows = json.loads(raw_data)["data"]
    scale = float(os.environ.get("PREDICTION_SCALE", "1"))
    predictions = [
        scale * (model["intercept"] + sum(model["coef"][i] * x for i, x in enumerate(row)))
        for row in rows
    ]
    logging.info("scored %d rows", len(rows))
    return predictions
