import argparse
import pathlib

parser = argparse.ArgumentParser()
parser.add_argument("--data")
parser.add_argument("--lr", type=float)
parser.add_argument("--model")
args = parser.parse_args()
numbers = [int(n) for n in pathlib.Path(args.data, "numbers.txt").read_text().split()]
weight = sum(numbers) * args.lr
pathlib.Path(args.model, "weight.txt").write_text(str(weight))
print("trained", weight, flush=True)
