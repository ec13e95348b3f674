import argparse
import pathlib

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float)
parser.add_argument("--out")
args = parser.parse_args()
weight = args.lr * 4
pathlib.Path(args.out, "weight.txt").write_text(str(weight))
print("trained", weight, "in", pathlib.Path.cwd().name, flush=True)
