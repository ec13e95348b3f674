"""The simulated cluster's stand-in for Azure ML's parallel runner (``driver/amlbi_main.py``,
which Azure ML places on the node and does not publish).

Run with the arguments a ``ParallelRunStep`` built (``--scoring_module_name``,
``--mini_batch_size``, ``--process_count_per_node``, ``--output``, ``--append_row_file_name``,
``--input_fds_N NAME``, and the user's arguments among them), in the step's snapshot. Each
input is found by name in ``AZUREML_DATAREFERENCE_NAME`` (where the cluster "mounted" it). It
starts ``--process_count_per_node`` worker processes; each imports the entry script by module
name, calls ``init()`` once, ``run()`` on its share of the mini-batches (lists of file paths),
appends what run() returns to the output file, and ``shutdown()`` if there is one. A run() that
raises fails its mini-batch's items, counted against ``--error_threshold`` as Azure ML documents
it (past it the job is aborted; -1 ignores every failure). Without
``--process_count_per_node`` there is one worker per core, as on Azure ML. Every process
prints which worker it is. Python 3.8+, standard library only.
"""

import argparse
import importlib
import os
import subprocess
import sys
import traceback


def options(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--scoring_module_name", required=True)
    parser.add_argument("--mini_batch_size", type=int, default=10)
    parser.add_argument("--process_count_per_node", type=int, default=os.cpu_count())
    parser.add_argument("--output")
    parser.add_argument("--append_row_file_name", default="parallel_run_step.txt")
    parser.add_argument("--error_threshold", type=int, default=-1)
    known, _ = parser.parse_known_args(argv)
    names = [argv[i + 1] for i, flag in enumerate(argv) if flag.startswith("--input_fds_")]
    return known, names


def mini_batches(names, size):
    for name in names:
        folder = os.environ["AZUREML_DATAREFERENCE_" + name]
        files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
        for start in range(0, len(files), size):
            yield files[start:start + size]


def worker(index, count, argv):
    known, names = options(argv)
    print(f"sim runner: worker {index} of {count}, pid {os.getpid()}", flush=True)
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(os.path.splitext(known.scoring_module_name)[0])
    module.init()
    failed = 0
    for number, batch in enumerate(mini_batches(names, known.mini_batch_size)):
        if number % count != index:
            continue
        try:
            result = module.run(batch)
        except Exception:
            traceback.print_exc()
            failed += len(batch)
            if 0 <= known.error_threshold < failed:
                print(f"sim runner: {failed} failed, past error_threshold", flush=True)
                sys.exit(1)
            continue
        if known.output:
            path = os.path.join(known.output, known.append_row_file_name)
            with open(path, "a") as output:
                output.writelines(f"{line}\n" for line in result)
    if hasattr(module, "shutdown"):
        module.shutdown()


def main(argv):
    known, _ = options(argv)
    count = known.process_count_per_node
    workers = [subprocess.Popen([sys.executable, "-u", __file__, "--sim-worker", str(i),
                                 str(count), *argv]) for i in range(count)]
    return max(process.wait() for process in workers)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sim-worker"]:
        worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
    else:
        sys.exit(main(sys.argv[1:]))
