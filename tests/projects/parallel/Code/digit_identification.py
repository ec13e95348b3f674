"""A file-dataset entry script: init() reads its arguments, run() labels each file."""

import argparse
import os


def init():
    global threshold
    parser = argparse.ArgumentParser(description="digit identification")
    parser.add_argument("--threshold", type=int, default=5)
    args, _ = parser.parse_known_args()
    threshold = args.threshold


def run(mini_batch):
    results = []
    for path in mini_batch:
        with open(path) as handle:
            digit = int(handle.read().strip())
        label = "big" if digit >= threshold else "small"
        results.append(f"{os.path.basename(path)}: {label}")
    return results
