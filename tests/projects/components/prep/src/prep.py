import argparse
import pathlib

parser = argparse.ArgumentParser()
parser.add_argument("--raw")
parser.add_argument("--scale", type=int)
parser.add_argument("--out")
args = parser.parse_args()
numbers = [int(n) for n in pathlib.Path(args.raw, "numbers.txt").read_text().split()]
scaled = [n * args.scale for n in numbers]
pathlib.Path(args.out, "numbers.txt").write_text(" ".join(map(str, scaled)))
print("scaled", scaled, flush=True)
