"""A tiny training loop to practise attaching on: put a breakpoint on the `loss =` line."""

import argparse
import time

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--learning-rate", type=float, default=0.1)
args = parser.parse_args()

weight = 0.0
for epoch in range(args.epochs):
    loss = (weight - 3.0) ** 2
    weight -= args.learning_rate * 2 * (weight - 3.0)
    print(f"epoch {epoch}: loss {loss:.4f} weight {weight:.4f}", flush=True)
    time.sleep(0.2)
print("done: weight", round(weight, 4))
