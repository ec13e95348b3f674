import sys

greeting = sys.argv[1]
print("after says", greeting, flush=True)
