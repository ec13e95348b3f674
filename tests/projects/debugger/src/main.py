"""A small training loop: reads its options, trains for some epochs, writes a summary."""

import argparse
import json
import os


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output-dir", type=str, default="outputs")
    return parser.parse_args()


def train_epoch(epoch, weights):
    loss = 10.0 / (epoch + 1)
    weights["layers"][0]["bias"] += loss
    return loss


def main(args):
    weights = {"layers": [{"bias": 0.0, "shape": [4, 2]}], "name": "tiny"}
    history = list(range(10000))
    notes = "n" * 1_000_000
    losses = []
    for epoch in range(args.epochs):
        loss = train_epoch(epoch, weights)
        losses.append(loss)
        print(f"epoch {epoch} loss {loss:.3f}", flush=True)
    os.makedirs(args.output_dir, exist_ok=True)
    summary = {"losses": losses, "history": len(history), "notes": len(notes)}
    with open(os.path.join(args.output_dir, "summary.json"), "w") as out:
        json.dump(summary, out)
    print("wrote summary", flush=True)


if __name__ == "__main__":
    main(parse_args())
