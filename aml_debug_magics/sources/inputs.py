"""External data on the local target: the user's stand-ins, else one download into a cache.

In: the ``ExternalInput`` records the steps read (DataReferences, File and Tabular datasets,
PipelineParameters holding a DataPath, SDK v2 inputs), the user's ``--input NAME=PATH`` (or
``--input STEP.NAME=PATH`` for one step's input of a name several steps read), and, when one is
configured, a workspace to download through. Out: one local path per step and input name,
which the local target hands to the step where Azure ML would hand the mounted or downloaded
data. A download goes to ``~/.cache/aml_debug_magics/`` (``AML_DEBUG_CACHE``), keyed by the
workspace (subscription, resource group, name) and the dataset's id and version or the
datastore path, and is reused by the next run. It is written under a temporary name and renamed
when complete, under a lock on the entry: a second kernel asking for the same data waits for the
first one's download and reuses it. Every line shown is redacted (a URL may carry a signature).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.failures import first_line
from aml_debug_magics.records import ExternalInput, StepSpec
from aml_debug_magics.redaction import redact

try:
    import fcntl
except ImportError:  # Windows: no lock; the rename alone keeps a download whole
    fcntl = None  # type: ignore[assignment]

PROGRESS_EVERY = 1.0  # seconds between two progress lines of a download


def cache_root() -> Path:
    return Path(os.environ.get("AML_DEBUG_CACHE", "~/.cache/aml_debug_magics")).expanduser()


def parse_stand_ins(values: Sequence[str], base: Path) -> dict[str, Path]:
    """``--input NAME=PATH`` (or ``STEP.NAME=PATH``) values as ``{NAME: absolute PATH}``; one
    line per mistake."""
    found: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise DebugInputError(
                f"--input takes NAME=PATH, like raw_data=./sample (got {value!r})"
            )
        where = (base / os.path.expanduser(path)).resolve()
        if not where.exists():
            raise DebugInputError(f"--input {name}: {where} does not exist")
        found[name] = where
    return found


def local_paths(
    specs: Sequence[StepSpec],
    input_options: Sequence[str],
    *,
    base: Path,
    workspace: Callable[[], Any],
    workspace_named: bool,
    progress: Callable[[str], None] = print,
) -> dict[str, Path]:
    """What a magic's ``--input`` options and the steps' external data come to on the local
    target, keyed ``STEP.NAME``: ``workspace()`` is asked for only when something must be
    downloaded and a workspace was named or a ``config.json`` is where
    ``Workspace.from_config()`` looks."""
    stand_ins = parse_stand_ins(input_options, base)
    missing = any(
        d.name not in stand_ins and f"{s.name}.{d.name}" not in stand_ins and d.downloadable
        for s in specs for d in s.external
    )
    found = None
    if missing and (workspace_named or _config_json_near(base)):
        found = workspace()
    return resolve(specs, stand_ins, workspace=found, progress=progress)


def _config_json_near(base: Path) -> bool:
    """Where ``Workspace.from_config()`` looks: this folder and its parents, also in .azureml."""
    return any(
        (folder / name).is_file()
        for folder in [base, *base.parents]
        for name in ("config.json", ".azureml/config.json")
    )


def resolve(
    specs: Sequence[StepSpec],
    stand_ins: Mapping[str, Path],
    *,
    workspace: Any = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Path]:
    """A local path for every external input of ``specs``, keyed ``STEP.NAME``.

    A stand-in named ``STEP.NAME`` serves that step's input only; one named ``NAME`` serves
    every step that reads an input of that name, unless they read different data (then each
    step needs its own, and the refusal names them). ``workspace`` (an ``SdkWorkspace``)
    downloads what has no stand-in; without one, the refusal names the step, the input, what it
    points to and the ``--input`` to add. A File dataset read as a mount or download gets a
    folder, as on Azure ML, also when its stand-in is one file.
    """
    readers = [(s.name, d) for s in specs for d in s.external]
    names = {d.name for _, d in readers}
    unknown = sorted(k for k in stand_ins if k not in names
                     and k not in {f"{step}.{d.name}" for step, d in readers})
    if unknown:
        known = ", ".join(sorted(names)) or "none"
        raise DebugInputError(
            f"--input {unknown[0]}: no step reads an input of that name; the inputs are: {known}"
        )
    paths: dict[str, Path] = {}
    fetched: dict[tuple[str, str], Path] = {}
    for step, data in readers:
        rivals = _rivals(readers, data.name, stand_ins)
        if f"{step}.{data.name}" in stand_ins:
            paths[f"{step}.{data.name}"] = _as_mode(data, stand_ins[f"{step}.{data.name}"])
        elif data.name in stand_ins and len(rivals) > 1:
            raise DebugInputError(
                f"--input {data.name}: steps {_and(rivals)} read different inputs named "
                f"{data.name!r} ({_and([d.points_to for d in rivals.values()])}): give each its "
                f"own, {' '.join(f'--input {s}.{data.name}=PATH' for s in rivals)}"
            )
        elif data.name in stand_ins:
            paths[f"{step}.{data.name}"] = _as_mode(data, stand_ins[data.name])
        elif not data.downloadable:  # an SDK v2 input: its copy is the user's to give
            option = data.name if len(rivals) < 2 else f"{step}.{data.name}"
            raise DebugInputError(
                f"step {step!r} reads the {data.kind} {data.name!r} ({data.points_to}), which "
                f"is not on this machine: add --input {option}=PATH with a local copy"
            )
        elif workspace is None:
            raise DebugInputError(
                f"step {step!r} reads the {data.kind} {data.name!r} ({data.points_to}), which "
                f"needs an Azure ML workspace to download: add --input {data.name}=PATH with a "
                "local copy, or --workspace VARIABLE (or a config.json) to download it once"
            )
        else:
            key = (data.kind, cache_key(data, workspace))
            if key not in fetched:
                fetched[key] = fetch(data, workspace, progress=progress)
            paths[f"{step}.{data.name}"] = fetched[key]
    return paths


def _rivals(
    readers: Sequence[tuple[str, ExternalInput]], name: str, stand_ins: Mapping[str, Path]
) -> dict[str, ExternalInput]:
    """The steps reading an input called ``name`` without a stand-in of their own, by step,
    when they read different data (else none)."""
    left = {step: d for step, d in readers if d.name == name and f"{step}.{name}" not in stand_ins}
    return left if len({(d.kind, d.points_to) for d in left.values()}) > 1 else {}


def _and(items: Sequence[str] | Mapping[str, Any]) -> str:
    words = [repr(i) if isinstance(items, Mapping) else str(i) for i in items]
    return ", ".join(words[:-1]) + f" and {words[-1]}" if len(words) > 1 else "".join(words)


def _as_mode(data: ExternalInput, path: Path) -> Path:
    """A File dataset mounted or downloaded is a folder on Azure ML: a lone file gets one (in
    the cache, holding a link to it)."""
    if data.kind != "FileDataset" or data.mode == "direct" or path.is_dir():
        return path
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    folder = cache_root() / "stand-ins" / digest
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / path.name
    if not link.is_symlink():
        link.symlink_to(path)
    return folder


def cache_key(data: ExternalInput, workspace: Any) -> str:
    """What identifies the data: the workspace it comes from, and a registered dataset's id
    and version, else what it points to (``workspaceblobstore/data`` is in every workspace)."""
    source = data.source
    identity = getattr(source, "id", None)
    version = getattr(source, "version", None)
    key = f"{data.kind}|{identity}|{version}" if identity else f"{data.kind}|{data.points_to}"
    key = f"{getattr(workspace, 'resource_id', '')}|{key}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def fetch(
    data: ExternalInput, workspace: Any, *, progress: Callable[[str], None] = print
) -> Path:
    """Download ``data`` once into the cache through ``workspace.download`` (which returns the
    path the step sees: the folder, or the file a DataReference points to); reuse it after.

    Another kernel downloading the same entry is waited for; a download cut short (a killed
    kernel) leaves only a temporary folder, removed by the next download of that entry.
    """
    say = _redacted(progress)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", data.name)
    folder = cache_root() / f"{safe}-{cache_key(data, workspace)}"
    complete = folder.with_name(folder.name + ".complete")  # beside it: the step lists the folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _entry_lock(folder, lambda: say(
        f"{data.name}: another kernel is downloading it; waiting for that download"
    )):
        if complete.is_file():  # holds the path the step sees, inside the folder
            seen = folder / complete.read_text()
            say(f"{data.name}: using the copy downloaded before, in {seen}")
            return seen
        for stale in folder.parent.glob(f"{folder.name}.partial-*"):  # cut short before
            shutil.rmtree(stale, ignore_errors=True)
        partial = Path(tempfile.mkdtemp(prefix=f"{folder.name}.partial-", dir=folder.parent))
        say(f"{data.name}: downloading the {data.kind} ({data.points_to}) into {folder}")
        done = threading.Event()
        reporter = threading.Thread(
            target=_report, args=(partial, data.name, done, say), daemon=True
        )
        reporter.start()
        try:
            seen = workspace.download(data, partial)
        except Exception as error:
            shutil.rmtree(partial, ignore_errors=True)
            raise DebugInputError(redact(
                f"cannot download {data.name!r} ({data.points_to}): {first_line(error)}; or give "
                f"a local copy with --input {data.name}=PATH"
            )) from None
        finally:
            done.set()
            reporter.join()
        inside = seen.relative_to(partial)
        shutil.rmtree(folder, ignore_errors=True)  # an entry of an older layout, never whole
        partial.rename(folder)
        written = complete.with_name(complete.name + f".{os.getpid()}")
        written.write_text(str(inside))
        written.replace(complete)
    seen = folder / inside
    files, size = _size(folder)
    say(f"{data.name}: downloaded {files} files, {size / 1e6:.1f} MB, into {seen}")
    return seen


def _redacted(progress: Callable[[str], None]) -> Callable[[str], None]:
    return lambda line: progress(redact(line))


@contextlib.contextmanager
def _entry_lock(folder: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold the cache entry ``folder`` for this process (an fcntl lock on a file beside it);
    ``on_wait`` runs once if another process holds it first."""
    if fcntl is None:
        yield
        return
    with open(folder.with_name(folder.name + ".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _report(folder: Path, name: str, done: threading.Event, progress: Callable) -> None:
    while not done.wait(PROGRESS_EVERY):
        files, size = _size(folder)
        progress(f"{name}: {files} files, {size / 1e6:.1f} MB so far")


def _size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)
