"""Register the best model HyperDrive picked, from the tuning step's outputs."""

import argparse
import os

parser = argparse.ArgumentParser()
parser.add_argument("--metrics", type=str)
args = parser.parse_args()
print("metrics files", sorted(os.listdir(args.metrics)), flush=True)
