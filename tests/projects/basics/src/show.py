import argparse

parser = argparse.ArgumentParser()
parser.add_argument("--home")
args = parser.parse_args()
home = args.home
print("home is", home, flush=True)
