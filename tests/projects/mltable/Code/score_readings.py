"""A tabular entry script over an mltable input: run() gets a DataFrame of readings."""


def init():
    print("scoring readings", flush=True)


def run(mini_batch):
    columns = "|".join(map(str, mini_batch.columns))
    return [f"{columns}: " + "|".join(map(str, row))
            for row in mini_batch.itertuples(index=False)]
