"""A many-models entry script: each run() gets the rows of one Store and Brand."""

mini_batches = 0


def init():
    global mini_batches
    mini_batches = 0


def run(mini_batch):
    global mini_batches
    mini_batches += 1
    return [f"{mini_batches} {row.Index} {row.Store} {row.Brand} {row.week} {row.quantity}"
            for row in mini_batch.itertuples()]
