"""Starts one worker process per shard, as a data-parallel preprocessing step does."""

import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("worker.py")


def main():
    shards = 1
    for shard in range(shards):
        subprocess.run([sys.executable, str(WORKER), str(shard)], check=True)
    print("workers done", flush=True)


if __name__ == "__main__":
    main()
