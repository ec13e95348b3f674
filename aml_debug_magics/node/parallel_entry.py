"""A parallel job's entry script, called the way Azure ML's parallel runner calls it.

Two uses, one way of calling the user's ``init()`` / ``run(mini_batch)`` / ``shutdown()``
(:class:`EntryScript`):

- **Run as a script** (the local target, under the bootstrap): the runner's loop on this
  machine. In: the entry script, its inputs (folders or files), the mini-batch size, the output
  action, the error threshold and, after ``--``, the program arguments. ``init()`` runs once
  with ``sys.argv`` holding the runner's flags and the program arguments (so an ``argparse``
  ``parse_known_args`` in it sees them, as on Azure ML), then ``run()`` once per mini-batch:
  a list of file paths (``--mini-batch-size`` files; each input partitioned on its own) or,
  for tabular inputs (files, or an MLTable folder read by the job's ``mltable`` where it has
  one), a pandas DataFrame of about ``--mini-batch-size`` bytes of rows (``1MB``,
  ``100KB``, a number of bytes) or, with ``--partition-keys``, one DataFrame per value of the
  keys (see :func:`partitioned_mini_batches`). Then ``shutdown()`` if it has one. Out:
  ``append_row`` writes what each ``run()`` returned, one element (or DataFrame row) per line,
  into ``OUTPUT/APPEND_ROW_FILE_NAME``; ``summary_only`` writes nothing. A ``run()`` that raises
  fails its whole mini-batch, and so does one that returns anything but a list or a pandas
  DataFrame (one line names the type, as Azure ML's runner refuses it); one that returns fewer
  elements than it was given fails the rest; past ``--error-threshold`` failed items (``-1``:
  never) the loop stops and exits 1. A mini-batch whose ``run()`` raises (or returns what the
  runner refuses) is tried again, up to ``--run-max-try`` tries in all; one whose last try
  failed is a failed mini-batch: past ``--allowed-failed-count`` of them (``-1``: never) the
  loop stops and exits 1, and at the end more than ``--allowed-failed-percent`` of the
  mini-batches failed exits 1 too.
  ``AML_DEBUG_MINI_BATCHES=N`` stops after N mini-batches.
- **Imported as the entry script** (on Azure ML, shipped as ``aml_debug_parallel_entry.py``
  and named as the step's entry script in the debug copy): when ``AML_DEBUG_LISTEN`` is set,
  debugpy starts in the worker process that imports it, ``init()`` waits for a debugger (until
  ``AML_DEBUG_TIMEOUT``), then the user's script (``AML_DEBUG_USER_SCRIPT``, relative to this
  file) is loaded and each call is handed to it.

Standard library and debugpy only; pandas is imported only for a tabular input, the job's
``mltable`` package only for an MLTable folder, azureml-core only for a partitioned dataset
consumed by name (``--input-name``).
"""

import argparse
import importlib.util
import json
import os
import re
import sys
import traceback
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List, Optional

DEFAULT_APPEND_ROW_FILE_NAME = "parallel_run_step.txt"
MINI_BATCHES_VARIABLE = "AML_DEBUG_MINI_BATCHES"
BATCH_OUTPUT_VARIABLE = "AZUREML_BI_OUTPUT_PATH"  # the output folder, as batch endpoints give it
TABULAR_SUFFIXES = (".csv", ".tsv", ".parquet")
MLTABLE_FILE = "MLTable"  # an mltable input's folder holds it
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024 ** 2, "mb": 1024 ** 2,
          "g": 1024 ** 3, "gb": 1024 ** 3}


def say(message: str) -> None:
    print(f"[aml-debug] {message}", flush=True)


class EntryScript:
    """The user's entry script, loaded as a module of its own name from its own folder."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.module: Optional[ModuleType] = None

    def load(self) -> ModuleType:
        if self.module is None:
            folder = os.path.dirname(self.path)
            if folder not in sys.path:
                sys.path.insert(0, folder)
            name = os.path.splitext(os.path.basename(self.path))[0]
            spec = importlib.util.spec_from_file_location(name, self.path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            if not callable(getattr(module, "run", None)):
                raise SystemExit(f"{self.path} has no run(mini_batch) function")
            self.module = module
        return self.module

    def init(self) -> None:
        init = getattr(self.load(), "init", None)
        if callable(init):
            init()

    def run(self, mini_batch: Any) -> Any:
        return self.load().run(mini_batch)

    def shutdown(self) -> None:
        shutdown = getattr(self.load(), "shutdown", None)
        if callable(shutdown):
            shutdown()


class RunnerHelper:
    """What ``from azureml_user.parallel_run import EntryScript`` gives an entry script under
    Azure ML's runner, as this runner gives it here: one instance per process (``EntryScript()``
    is always the same object), ``logger`` (the ``ParallelRunStep`` logger, its lines in the
    step's output here), ``output_dir`` (the step's output folder, where ``append_row`` writes),
    ``log_dir`` and ``working_dir``, ``agent_name``. The folders without an output are temporary
    ones, never in the code folder."""

    _made: "Optional[RunnerHelper]" = None
    output: Optional[str] = None  # the step's output folder, set by main()

    def __new__(cls, *args: Any, **kwargs: Any) -> "RunnerHelper":
        if RunnerHelper._made is None:
            RunnerHelper._made = super().__new__(cls)
            RunnerHelper._made._folders = {}
        return RunnerHelper._made

    def __init__(self, logging_level: Any = None) -> None:
        self.logging_level = logging_level or "INFO"

    def __reduce__(self) -> Any:
        return (self.__class__, ())

    def _folder(self, kind: str) -> str:
        if kind not in self._folders:
            import tempfile

            self._folders[kind] = tempfile.mkdtemp(prefix=f"aml_debug_parallel_{kind}_")
        return self._folders[kind]

    @property
    def logger(self) -> Any:
        import logging

        logger = logging.getLogger("ParallelRunStep")
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter(
                "%(asctime)s|%(name)s|%(funcName)s()|%(levelname)s|%(message)s"))
            logger.addHandler(handler)
            logger.setLevel(self.logging_level)
        return logger

    @property
    def output_dir(self) -> str:
        return os.path.abspath(RunnerHelper.output) if RunnerHelper.output else \
            self._folder("output")

    @property
    def log_dir(self) -> str:
        return self._folder("logs")

    @property
    def working_dir(self) -> str:
        return os.getcwd()

    @property
    def agent_name(self) -> str:
        return "process000"  # one worker process here


def offer_runner_helper(output: Optional[str]) -> None:
    """Make ``azureml_user.parallel_run`` importable in this process, as Azure ML's runner does
    on a node, unless something of that name is importable already."""
    RunnerHelper.output = output
    if importlib.util.find_spec("azureml_user") is not None:
        return
    package, module = ModuleType("azureml_user"), ModuleType("azureml_user.parallel_run")
    package.__path__ = []  # a package, with the one module
    module.EntryScript = RunnerHelper  # type: ignore[attr-defined]
    package.parallel_run = module  # type: ignore[attr-defined]
    sys.modules["azureml_user"], sys.modules["azureml_user.parallel_run"] = package, module


# ---------------------------------------------------------------------------------------------
# Mini-batches, formed as the runner forms them


def files_under(path: str) -> List[str]:
    """Every file under ``path`` (or ``path`` itself), sorted, as a mounted file dataset lists."""
    if os.path.isfile(path):
        return [os.path.abspath(path)]
    found = []
    for folder, folders, names in os.walk(path):
        folders.sort()
        found.extend(os.path.abspath(os.path.join(folder, name)) for name in sorted(names))
    return found


def size_in_bytes(text: str) -> int:
    """A tabular mini-batch size: ``1MB``, ``100 kb``, ``1024`` (bytes).

    >>> size_in_bytes("1MB"), size_in_bytes("10kb"), size_in_bytes("512")
    (1048576, 10240, 512)
    """
    found = _SIZE.match(str(text))
    if not found:
        raise SystemExit(f"mini_batch_size {text!r} is not a size: give e.g. 1MB, 100KB or 1024")
    return max(1, int(float(found.group(1)) * _UNITS[found.group(2).lower()]))


def file_mini_batches(inputs: List[str], size: str) -> Iterator[List[str]]:
    try:
        count = int(size)
    except ValueError:
        raise SystemExit(
            f"mini_batch_size {size!r}: a file input takes a number of files"
        ) from None
    if count < 1:
        raise SystemExit(f"mini_batch_size {size!r}: give at least 1 file")
    for path in inputs:
        files = files_under(path)
        for start in range(0, len(files), count):
            yield files[start:start + count]


def _pandas() -> ModuleType:
    try:
        import pandas
    except ImportError:
        raise SystemExit("a tabular input is handed to run() as a pandas DataFrame: install "
                         "pandas in the step's environment") from None
    return pandas


def _read_table(path: str) -> Any:
    pandas = _pandas()
    if path.endswith(".parquet"):
        return pandas.read_parquet(path)
    return pandas.read_csv(path, sep="\t" if path.endswith(".tsv") else ",")


_mltables: Dict[str, Any] = {}  # each MLTable folder's rows, read once


def _mltable(folder: str) -> Any:
    """The rows of the MLTable file in ``folder``, read as Azure ML reads an ``mltable`` input:
    by the ``mltable`` package, with the file's own paths and transformations; None where the
    job's environment has no mltable (said once)."""
    if folder not in _mltables:
        try:
            import mltable
        except ImportError:
            say(f"{os.path.join(folder, MLTABLE_FILE)}: its paths and transformations were not "
                "applied, because the job's environment has no mltable package: its .csv, .tsv "
                "and .parquet files are read with pandas' defaults (declare mltable in the job's "
                "environment to read it as Azure ML does)")
            _mltables[folder] = None
        else:
            try:
                _mltables[folder] = mltable.load(folder).to_pandas_dataframe()
            except Exception as error:  # the file's own mistake, as Azure ML would meet it
                first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                raise SystemExit(f"{os.path.join(folder, MLTABLE_FILE)}: mltable cannot read "
                                 f"it: {first}") from None
    return _mltables[folder]


def _tables(path: str) -> Iterator["tuple[Any, int]"]:
    """Each table of an input with its size in bytes: an MLTable folder's rows as one table
    (:func:`_mltable`), else each .csv, .tsv or .parquet file under ``path``."""
    if os.path.isfile(os.path.join(path, MLTABLE_FILE)):
        table = _mltable(path)
        if table is not None:
            yield table, sum(os.path.getsize(found) for found in files_under(path))
            return
    for table_file in files_under(path):
        if table_file.endswith(TABULAR_SUFFIXES):
            yield _read_table(table_file), os.path.getsize(table_file)


def tabular_mini_batches(inputs: List[str], size: str) -> Iterator[Any]:
    """DataFrames of about ``size`` bytes of each input table's rows (one row at least)."""
    wanted = size_in_bytes(size)
    for path in inputs:
        for table, table_bytes in _tables(path):
            row_bytes = table_bytes / max(1, len(table))
            rows = max(1, int(wanted // max(1.0, row_bytes)))
            for start in range(0, len(table), rows):
                yield table.iloc[start:start + rows]


def count_mini_batches(inputs: List[str], size: str, kind: str) -> int:
    forming = tabular_mini_batches if kind == "tabular" else file_mini_batches
    return sum(1 for _ in forming(inputs, size))


def _partitioned_table(path: str, name: Optional[str], keys: List[str]) -> Any:
    """The input's rows, with the partition keys among its columns.

    A dataset consumed by ``name`` is the step's run context's (``Run.get_context()
    .input_datasets[name]``, the SDK's ``TabularDataset``): its keys must be among its
    ``partition_keys``, which its ``partition_format`` extracts from its files' paths, as Azure
    ML requires. Any other input (or any, without azureml-core in the job's environment) is
    read as a table whose columns hold the keys.
    """
    dataset = None
    if name:
        try:
            from azureml.core import Run
        except ImportError:  # no run context without azureml-core: read as a table below
            pass
        else:
            given = getattr(Run.get_context(), "input_datasets", None) or {}  # offline: none
            dataset = given.get(name)
    if hasattr(dataset, "to_pandas_dataframe"):
        known = list(getattr(dataset, "partition_keys", None) or [])
        missing = [key for key in keys if key not in known]
        if missing:
            raise SystemExit(
                f"partition_keys {keys}: {', '.join(missing)} not among the partition keys of the "
                f"input {name!r} ({', '.join(known) or 'none'}): Azure ML requires them among "
                "its partition_format's keys"
            )
        return dataset.to_pandas_dataframe()
    tables = [table for table, _ in _tables(path)]
    if not tables:
        raise SystemExit(f"partition_keys {keys}: no table (.csv, .tsv, .parquet) under {path}")
    table = _pandas().concat(tables, ignore_index=True)
    missing = [key for key in keys if key not in table.columns]
    if missing:
        raise SystemExit(f"partition_keys {keys}: {', '.join(missing)} not among the columns of "
                         f"{path} ({', '.join(map(str, table.columns))})")
    return table


def _partitioned_files(path: str, name: Optional[str], keys: List[str]) -> List[List[str]]:
    """The files of a partitioned file input, one list per value of ``keys``: the dataset
    consumed by ``name`` (the run context's ``FileDataset``) lists its files with the values its
    ``partition_format`` takes from their paths, read by the SDK's own reader; the values in
    the order of their first file, each list's files in the dataset's order."""
    dataset = None
    if name:
        try:
            from azureml.core import Run
        except ImportError:
            pass
        else:
            dataset = (getattr(Run.get_context(), "input_datasets", None) or {}).get(name)
    known = list(getattr(dataset, "partition_keys", None) or [])
    missing = [key for key in keys if key not in known]
    if dataset is None or missing:
        raise SystemExit(
            f"partition_keys {keys}: the file input {name or path!r} must be a dataset whose "
            f"partition_format holds {', '.join(missing or keys)} (its keys: "
            f"{', '.join(known) or 'none'}), as Azure ML requires")
    listed = dataset._dataflow.to_pandas_dataframe()  # Path, and a column per partition key
    groups: Dict[tuple, List[str]] = {}
    for _, row in listed.iterrows():
        local = str(row["Path"])
        local = local[len("file://"):] if local.startswith("file://") else local
        groups.setdefault(tuple(str(row[key]) for key in keys), []).append(local)
    return list(groups.values())


def partitioned_mini_batches(
    inputs: List[str], names: List[str], keys: List[str], kind: str = "tabular"
) -> List[Any]:
    """One DataFrame per value of ``keys`` in each input (``names``: each input's name in the
    run context, where it has one), as Azure ML's runner forms mini-batches with
    ``partition_keys``: every row of one value together, the keys' columns included, indexed
    from 0. Azure ML does not say in which order the runner hands them out: here the values
    come in the order of their first row, and each mini-batch's rows in the table's order.
    A file input (``kind`` "files"): one list of file paths per value (:func:`_partitioned_files`).
    """
    mini_batches: List[Any] = []
    for position, path in enumerate(inputs):
        name = names[position] if position < len(names) else None
        if kind != "tabular":
            mini_batches += _partitioned_files(path, name, keys)
            continue
        table = _partitioned_table(path, name, keys)
        for _, rows in table.groupby(keys, sort=False, dropna=False):
            mini_batches.append(rows.reset_index(drop=True))
    return mini_batches


# ---------------------------------------------------------------------------------------------
# The runner's loop


def is_dataframe(value: Any) -> bool:
    """Whether ``value`` is a pandas DataFrame (without importing pandas: none was made if the
    worker never imported it)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.DataFrame)


def wrong_return(result: Any) -> Optional[str]:
    """Why ``run()``'s ``result`` fails its mini-batch, or None for a list or a DataFrame.

    Azure ML's runner fails the mini-batch on anything else, None included: its error reads
    "The run() method in the entry script should return a list or a pandas DataFrame ... The
    actual type of output is NoneType" (a job's log, quoted in microsoft/MLOpsPython#328; "...
    is str" for a str). A tuple, which that error does not name, is refused too.

    >>> wrong_return(["a.txt: ok"]) is None, wrong_return(3).split(":")[0]
    (True, 'run() returned int')
    """
    if isinstance(result, list) or is_dataframe(result):
        return None
    return (f"run() returned {type(result).__name__}: return a list or a pandas DataFrame "
            "(one item per successful input)")


def _append_rows(path: str, result: Any) -> None:
    with open(path, "a", encoding="utf-8") as output:
        if is_dataframe(result):  # its rows, space-separated, no header
            output.write(result.to_csv(sep=" ", header=False, index=False))
        else:
            for element in result:
                output.write(f"{element}\n")


def _try_mini_batch(
    entry: EntryScript, mini_batch: Any, number: int, run_max_try: int,
    on_error: Callable[[BaseException], None],
) -> Any:
    """What ``run()`` returned for the mini-batch, tried up to ``run_max_try`` times while it
    raises or returns what the runner refuses; None when its last try failed."""
    for attempt in range(1, run_max_try + 1):
        try:
            result = entry.run(mini_batch)
        except Exception as error:
            on_error(error)
        else:
            refusal = wrong_return(result)
            if refusal is None:
                return result
            say(refusal)
        if attempt < run_max_try:
            say(f"mini-batch {number} failed (try {attempt} of {run_max_try}, run_max_try): "
                "it is tried again, as Azure ML's runner tries it again")
    return None


def run_mini_batches(
    entry: EntryScript,
    mini_batches: Iterator[Any],
    *,
    error_threshold: int,
    output_file: Optional[str],
    limit: Optional[int] = None,
    on_error: Callable[[BaseException], None] = lambda error: traceback.print_exc(),
    run_max_try: int = 1,
    allowed_failed_count: int = -1,
    allowed_failed_percent: float = 100.0,
) -> int:
    """``init()``, ``run()`` per mini-batch (at most ``limit``; each tried up to
    ``run_max_try`` times), ``shutdown()``; the exit status: 1 when more items failed than
    ``error_threshold`` allows, more mini-batches than ``allowed_failed_count`` (``-1``: any
    number for either), or more than ``allowed_failed_percent`` of them."""
    entry.init()
    done = succeeded = failed = failed_batches = 0
    try:
        for mini_batch in mini_batches:
            if limit is not None and done >= limit:
                say(f"stopping after {limit} mini-batch(es) (--mini-batches)")
                break
            done += 1
            items = len(mini_batch)
            result = _try_mini_batch(entry, mini_batch, done, max(1, run_max_try), on_error)
            if result is None:
                failed += items
                failed_batches += 1
            else:
                succeeded += min(items, len(result))
                failed += max(0, items - len(result))
                if output_file is not None:
                    _append_rows(output_file, result)
            if 0 <= error_threshold < failed:
                say(f"{failed} item(s) failed, more than error_threshold {error_threshold}: "
                    "the job stops, as Azure ML stops it")
                return 1
            if 0 <= allowed_failed_count < failed_batches:
                say(f"{failed_batches} mini-batch(es) failed, more than allowed "
                    f"{allowed_failed_count}: the job stops, as Azure ML stops it")
                return 1
    finally:
        entry.shutdown()
    say(f"parallel run done: {done} mini-batch(es), {succeeded} item(s) succeeded, "
        f"{failed} failed")
    if done and failed_batches * 100.0 / done > allowed_failed_percent:
        say(f"{failed_batches} of {done} mini-batch(es) failed, more than "
            f"allowed_failed_percent {allowed_failed_percent:g}: the job fails, as on Azure ML")
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parallel_entry.py", description=__doc__.split("\n")[0])
    parser.add_argument("--entry-script", required=True)
    parser.add_argument("--input", action="append", default=[], dest="inputs")
    parser.add_argument("--input-name", action="append", default=[], dest="input_names")
    parser.add_argument("--partition-keys", type=json.loads, default=None)
    parser.add_argument("--input-kind", choices=("files", "tabular"), default="files")
    parser.add_argument("--mini-batch-size", default=None)
    parser.add_argument("--error-threshold", type=int, default=-1)
    parser.add_argument("--run-max-try", type=int, default=1)
    parser.add_argument("--allowed-failed-count", type=int, default=-1)
    parser.add_argument("--allowed-failed-percent", type=float, default=100.0)
    parser.add_argument("--output-action", choices=("append_row", "summary_only"),
                        default="append_row")
    parser.add_argument("--append-row-file-name", default=DEFAULT_APPEND_ROW_FILE_NAME)
    parser.add_argument("--output", default=None)
    parser.add_argument("program_arguments", nargs=argparse.REMAINDER)
    return parser


def runner_flags(options: argparse.Namespace) -> List[str]:
    """The runner's own flags, as Azure ML's runner has them in the worker's ``sys.argv``."""
    flags = ["--scoring_module_name", os.path.basename(options.entry_script),
             "--mini_batch_size", str(options.mini_batch_size),
             "--error_threshold", str(options.error_threshold),
             "--output_action", options.output_action]
    if options.output_action == "append_row":
        flags += ["--append_row_file_name", options.append_row_file_name]
    if options.output:
        flags += ["--output", options.output]
    if options.partition_keys:
        flags += ["--partition_keys", json.dumps(options.partition_keys)]
    return flags


def parse_options(argv: List[str]) -> argparse.Namespace:
    options = _parser().parse_args(argv)
    if options.program_arguments[:1] == ["--"]:
        options.program_arguments = options.program_arguments[1:]
    if options.mini_batch_size is None:  # the SDK's defaults
        options.mini_batch_size = "1MB" if options.input_kind == "tabular" else "10"
    return options


def describe(argv: List[str], limit: Optional[int] = None,
             mini_batches: Optional[int] = None) -> str:
    """What the run is, e.g. ``parallel: 3 mini-batch(es) of 2 files, ...``: ``mini_batches``
    is the count the node formed; without it file inputs are counted here, tabular ones only
    where pandas is, and neither an MLTable folder (read by mltable on the node) nor a
    partitioned input."""
    options = parse_options(argv)
    tabular = options.input_kind == "tabular"
    size = str(options.mini_batch_size)
    unknown = options.partition_keys or (tabular and (
        "pandas" not in sys.modules
        or any(os.path.isfile(os.path.join(path, MLTABLE_FILE)) for path in options.inputs)))
    if mini_batches is not None:
        count = f"{mini_batches} "
    elif unknown:
        count = ""
    else:
        count = f"{count_mini_batches(options.inputs, size, options.input_kind)} "
    if options.partition_keys:
        keys = " and ".join(options.partition_keys)
        what = f"mini-batch(es), one per value of the partition keys {keys}"
    else:
        what = "mini-batch(es) of " + (
            f"about {size + ' bytes' if size.isdigit() else size} of rows" if tabular
            else f"{size} files")
    shown = f", the first {limit} run (--mini-batches)" if limit is not None else ""
    return (f"parallel: {count}{what}, one worker process: init() once, "
            f"run() per mini-batch, shutdown(){shown}")


def _told(error: BaseException) -> None:
    """A ``run()`` that raised: its traceback, as the runner logs it; then, where the bootstrap
    runs this runner with a post-mortem, the first one waits there for a debugger (once per
    worker: the bootstrap's ``caught_failure``) before the mini-batch fails and the runner goes
    on."""
    traceback.print_exception(type(error), error, error.__traceback__)
    sys.stderr.flush()
    script = sys.modules.get("aml_debug_magics.node.script") or sys.modules.get("aml_debug_script")
    hook = getattr(script, "caught_failure", None)
    if hook is not None:
        hook(error)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = parse_options(argv)
    program_arguments, kind = options.program_arguments, options.input_kind
    limit_text = os.environ.get(MINI_BATCHES_VARIABLE)
    limit = int(limit_text) if limit_text else None
    if kind == "tabular":
        _pandas()  # said now if missing, before anything is read
    mini_batches: Iterator[Any]
    if options.partition_keys:
        formed = partitioned_mini_batches(options.inputs, options.input_names,
                                          options.partition_keys, kind)
        say(describe(argv, limit, len(formed)))
        mini_batches = iter(formed)
    else:
        counted = (count_mini_batches(options.inputs, options.mini_batch_size, kind)
                   if kind == "tabular" else None)
        say(describe(argv, limit, counted))
        forming = tabular_mini_batches if kind == "tabular" else file_mini_batches
        mini_batches = forming(options.inputs, options.mini_batch_size)
    output_file = None
    if options.output_action == "append_row":
        if not options.output:
            raise SystemExit("output_action append_row needs an output folder")
        os.makedirs(options.output, exist_ok=True)
        output_file = os.path.join(options.output, options.append_row_file_name)
    if options.output:  # where a batch deployment's script writes files of its own
        os.environ.setdefault(BATCH_OUTPUT_VARIABLE, os.path.abspath(options.output))
    sys.argv = [os.path.abspath(options.entry_script), *runner_flags(options), *program_arguments]
    offer_runner_helper(options.output)
    return run_mini_batches(
        EntryScript(options.entry_script), mini_batches, on_error=_told,
        error_threshold=options.error_threshold, output_file=output_file, limit=limit,
        run_max_try=options.run_max_try, allowed_failed_count=options.allowed_failed_count,
        allowed_failed_percent=options.allowed_failed_percent,
    )


# ---------------------------------------------------------------------------------------------
# Imported by Azure ML's runner in place of the user's entry script


_told_once: List[bool] = []


def _tell_first_failure(error: BaseException) -> None:
    """The worker's first ``run()`` failure under Azure ML's runner: its snapshot, the
    ``failed`` line and the post-mortem's wait on the worker's port (``AML_DEBUG_POST_MORTEM``
    seconds, else the attach window), then the runner goes on. Never raises: the runner's own
    handling comes next."""
    if _told_once:
        return
    _told_once.append(True)
    given = os.environ.get("AML_DEBUG_POST_MORTEM", "")
    try:
        window = (0.0 if given == "off" else float(given) if given
                  else float(os.environ.get("AML_DEBUG_TIMEOUT", "300")))
        _bootstrap().post_mortem_in_this_process(error, window)
    except Exception as failed:
        say(f"could not tell run()'s failure: {type(failed).__name__}: {failed}")


def _bootstrap() -> ModuleType:
    try:
        from aml_debug_magics.node import bootstrap
    except ImportError:  # shipped next to aml_debug_bootstrap.py
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import aml_debug_bootstrap as bootstrap  # type: ignore[no-redef]
    return bootstrap


def _debugged_worker() -> "tuple[Callable[[], bool], EntryScript]":
    """Start debugpy in this worker (the user's script is not loaded yet); returns the wait
    for a debugger and the user's entry script."""
    here = os.path.dirname(os.path.abspath(__file__))
    bootstrap = _bootstrap()
    script = os.path.join(here, os.environ["AML_DEBUG_USER_SCRIPT"])
    say("debug copy of a parallel step: one node, one worker process; init() waits for a "
        "debugger")
    wait = bootstrap.debug_in_this_process(
        os.environ["AML_DEBUG_LISTEN"],
        script,
        float(os.environ.get("AML_DEBUG_TIMEOUT", "300")),
        just_my_code=os.environ.get("AML_DEBUG_JUST_MY_CODE", "1") == "1",
        source_root=os.environ.get(bootstrap.SOURCE_ROOT_VARIABLE) or here,
        allow=os.environ.get("AML_DEBUG_ALLOW", "any"),  # who may attach, as for any step
    )
    return wait, EntryScript(script)


if __name__ == "__main__":
    sys.exit(main())
elif __name__ != "aml_debug_magics.node.parallel_entry" and os.environ.get("AML_DEBUG_LISTEN"):
    # imported by Azure ML's runner as the step's entry script (never as part of this package)
    _wait_for_debugger, _user_entry = _debugged_worker()

    def init() -> None:
        _wait_for_debugger()
        _user_entry.init()

    def run(mini_batch: Any) -> Any:
        try:
            return _user_entry.run(mini_batch)
        except Exception as error:  # Azure ML's runner fails the mini-batch and goes on
            _tell_first_failure(error)
            raise

    def shutdown() -> None:
        _user_entry.shutdown()
