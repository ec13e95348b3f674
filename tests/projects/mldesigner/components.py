"""Pipeline steps written as Python functions, made components by mldesigner."""

import os
from pathlib import Path

from mldesigner import Input, Output, command_component


@command_component(name="train_model", display_name="Train model",
                   environment="azureml:AzureML-sklearn-1.0-ubuntu20.04-py38-cpu@latest")
def train_model(
    training_data: Input(type="uri_folder"),
    max_epochs: int,
    learning_rate: Input(type="number", default=0.02),
    model_output: Output(type="uri_folder"),
):
    lines = Path(training_data, "train.csv").read_text().splitlines()
    steps = max_epochs * len(lines)
    Path(model_output, "model.txt").write_text(f"{steps} {learning_rate}\n")
    print("trained", steps, "steps at", learning_rate, "into", os.path.basename(model_output),
          flush=True)


@command_component(name="score_data", display_name="Score data")
def score_data(model_input: Input(type="uri_folder"), score_output: Output(type="uri_folder")):
    model = Path(model_input, "model.txt").read_text().split()
    Path(score_output, "score.txt").write_text(model[0])
    print("scored with", model, flush=True)
