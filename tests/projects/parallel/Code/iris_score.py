"""A tabular-dataset entry script: run() gets a DataFrame and returns its rows scored."""


def init():
    global cut
    cut = 2.5


def run(input_df):
    scored = input_df.copy()
    scored["species"] = ["virginica" if width > cut else "setosa"
                         for width in scored["petal_length"]]
    return scored[["sepal_length", "species"]]


def shutdown():
    print("iris scoring done", flush=True)
