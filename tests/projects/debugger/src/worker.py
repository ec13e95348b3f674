"""One worker: processes its shard."""

import sys


def process(shard):
    total = sum(range(shard * 10, shard * 10 + 10))
    return total


if __name__ == "__main__":
    shard = int(sys.argv[1])
    result = process(shard)
    print(f"worker {shard} result {result}", flush=True)
