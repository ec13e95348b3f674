"""Scores a batch: a row with a missing feature raises, and nothing catches it."""

import argparse


def score(row):
    return row["feature"] * 2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2)
    args = parser.parse_args()
    rows = [{"feature": n} for n in range(args.rows)] + [{"other": 1}]
    for row in rows:
        print("scored", score(row), flush=True)


if __name__ == "__main__":
    main()
