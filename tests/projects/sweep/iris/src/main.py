"""Train on the iris CSV with the learning rate and boosting a sweep trial is given."""

import argparse
import csv
import os

parser = argparse.ArgumentParser()
parser.add_argument("--iris-csv", type=str)
parser.add_argument("--learning-rate", type=float, default=0.1)
parser.add_argument("--boosting", type=str, default="gbdt")
parser.add_argument("--model-dir", type=str, default="outputs")
args = parser.parse_args()

with open(args.iris_csv, newline="") as handle:
    rows = list(csv.DictReader(handle))
score = args.learning_rate * len(rows)
os.makedirs(args.model_dir, exist_ok=True)
with open(os.path.join(args.model_dir, "model.txt"), "w") as handle:
    handle.write(f"{args.boosting} {score}\n")
print("trained", args.boosting, args.learning_rate, "rows", len(rows), flush=True)
