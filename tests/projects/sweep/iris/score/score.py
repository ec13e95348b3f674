"""Read the model the tuning step wrote."""

import argparse
import os

parser = argparse.ArgumentParser()
parser.add_argument("--model", type=str)
args = parser.parse_args()
with open(os.path.join(args.model, "model.txt")) as handle:
    print("scoring with", handle.read().strip(), flush=True)
