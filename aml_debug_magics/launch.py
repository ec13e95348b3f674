"""VS Code attach configurations, and a safe merge into ``.vscode/launch.json``.

VS Code reads launch.json as JSON with comments and trailing commas. The merge edits the text in
place (it never re-serialises the user's file), so their comments, formatting and other
configurations survive; it writes atomically and keeps a backup of what was there.
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import json
import ntpath
import os
import posixpath
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from aml_debug_magics.node.announce import Announcement

UNROUTABLE_HOSTS = {"0.0.0.0", "::", ""}


class LaunchJsonError(Exception):
    """launch.json cannot be parsed or written; the message names the file and the line."""


def attach_config(
    announcement: Announcement,
    local_root: str | os.PathLike[str],
    *,
    script_in_root: str | None = None,
    name: str | None = None,
    step: str | None = None,
    host: str | None = None,
    just_my_code: bool | None = None,
) -> dict[str, Any]:
    """The launch.json configuration that attaches VS Code to the announced process.

    >>> a = Announcement(addresses=("10.0.0.4",), port=5678, script="/mnt/code/steps/train.py")
    >>> attach_config(a, "/home/me/src", script_in_root="steps/train.py")["connect"]
    {'host': '10.0.0.4', 'port': 5678}

    ``local_root`` is the user's source folder and ``script_in_root`` the script's path in it
    (see :func:`path_mapping`).

    ``step`` is the row's step: its name is then :func:`default_name`'s, one per row.
    ``host`` overrides the address (an SSH tunnel's ``localhost``, a container's published port).
    A listen-mode announcement gives ``connect``; a connect-mode one gives ``listen``, since there
    VS Code is the side that waits.
    """
    target_host = host or next(
        (a for a in announcement.addresses if a not in UNROUTABLE_HOSTS), "localhost"
    )
    if target_host in UNROUTABLE_HOSTS:
        raise ValueError(f"{target_host!r} is not an address a debugger can connect to")
    row_script = script_in_root if script_in_root and (
        Path(local_root) / script_in_root).is_file() else None  # a guess may not be a file
    label = name or default_name(announcement, step, row_script)
    endpoint = "connect" if announcement.mode == "listen" else "listen"
    config: dict[str, Any] = {
        "name": label,
        "type": "debugpy",
        "request": "attach",
        endpoint: {"host": target_host, "port": announcement.port},
        "justMyCode": announcement.just_my_code if just_my_code is None else just_my_code,
    }
    mapping = path_mapping(announcement, Path(local_root).resolve(), script_in_root)
    if mapping is not None:
        config["pathMappings"] = [{"localRoot": str(mapping[0]), "remoteRoot": mapping[1]}]
    return config


def path_mapping(
    announcement: Announcement, local_root: Path, script_in_root: str | None = None
) -> tuple[Path, str] | None:
    """The local folder and the node's folder that hold the same files, so a breakpoint set in
    ``local_root/steps/train.py`` reaches ``<snapshot>/steps/train.py`` whatever the depth.

    In order: the source root the node was told (a command that changes folder first); the
    announced script with ``script_in_root`` taken off its end (the snapshot's root: what Azure
    ML runs a step from); else the two scripts' own folders.

    >>> a = Announcement(("10.0.0.4",), 5678, script="/mnt/snap/steps/train.py")
    >>> path_mapping(a, Path("/home/me/src"), "steps/train.py")
    (PosixPath('/home/me/src'), '/mnt/snap')
    """
    script = announcement.script
    if not script:
        return None if announcement.cwd is None else (local_root, announcement.cwd)
    paths = ntpath if "\\" in script else posixpath
    script = paths.normpath(script)
    inside = PurePosixPath(script_in_root or PurePosixPath(script.replace("\\", "/")).name).parts
    remote_parts = script.split(paths.sep)
    if announcement.source_root:
        root = paths.normpath(announcement.source_root)
        # another program (mldesigner's console script) runs the root's files from elsewhere
        another_program = script_in_root is not None and inside[-1] != remote_parts[-1]
        if script.startswith(root.rstrip(paths.sep) + paths.sep) or another_program:
            return local_root, root
    if tuple(remote_parts[-len(inside):]) == inside and len(remote_parts) > len(inside):
        return local_root, paths.sep.join(remote_parts[:-len(inside)]) or paths.sep
    return local_root.joinpath(*inside[:-1]), paths.dirname(script)


def default_name(
    announcement: Announcement, step: str | None = None, script_in_root: str | None = None
) -> str:
    """The configuration's name in launch.json. With the row's ``step``, one per step and rank,
    and the same each time it runs (so a re-run replaces its entry): two steps running the same
    ``train.py`` get two entries. Without, the script and where it runs. The script is the
    row's when given (``script_in_root``, a file of the user's: the one named even where
    another program runs it, as a parallel step's runner calls its entry script), else the
    announced one.

    >>> a = Announcement(("10.0.0.4",), 5678, script="/mnt/snap/train.py", rank=1)
    >>> default_name(a, "second")
    'Attach: train.py (second) rank 1'
    """
    shown = script_in_root or announcement.script or "script"
    script = shown.replace("\\", "/").rsplit("/", 1)[-1]
    if step is not None:
        return f"Attach: {script} ({step}) rank {announcement.rank}"
    where = announcement.hostname or announcement.addresses[0]
    return f"Attach: {script} on {where} rank {announcement.rank}"


def compound(name: str, configs: list[dict[str, Any]]) -> dict[str, Any]:
    """A compound configuration that attaches to several ranks at once."""
    return {"name": name, "configurations": [c["name"] for c in configs]}


# ---------------------------------------------------------------------------------------------
# JSON with comments, read with the positions of what it holds


@dataclass
class Node:
    """A parsed value with its span in the text; objects keep (key, Node) pairs in order."""

    value: Any
    start: int
    end: int
    items: list[Any] | None = None  # object: [(key, Node)], array: [Node]


class _Reader:
    def __init__(self, text: str, path: Path) -> None:
        self.text, self.path, self.pos = text, path, 0

    def fail(self, what: str) -> LaunchJsonError:
        line = self.text.count("\n", 0, self.pos) + 1
        column = self.pos - (self.text.rfind("\n", 0, self.pos) + 1) + 1
        return LaunchJsonError(
            f"{self.path}: line {line}, column {column}: {what}; fix it in the editor "
            "(the file was left unchanged)"
        )

    def skip(self) -> None:
        text = self.text
        while self.pos < len(text):
            if text[self.pos] in " \t\r\n\ufeff":
                self.pos += 1
            elif text.startswith("//", self.pos):
                newline = text.find("\n", self.pos)
                self.pos = len(text) if newline < 0 else newline + 1
            elif text.startswith("/*", self.pos):
                close = text.find("*/", self.pos + 2)
                if close < 0:
                    raise self.fail("a /* comment is never closed")
                self.pos = close + 2
            else:
                return

    def value(self) -> Node:
        self.skip()
        if self.pos >= len(self.text):
            raise self.fail("the file ends where a value was expected")
        char = self.text[self.pos]
        if char == "{":
            return self.container("}", keyed=True)
        if char == "[":
            return self.container("]", keyed=False)
        if char == '"':
            start = self.pos
            return Node(self.string(), start, self.pos)
        return self.scalar()

    def string(self) -> str:
        decoder = json.JSONDecoder()
        try:
            parsed, end = decoder.raw_decode(self.text, self.pos)
        except ValueError:
            raise self.fail("a string is not closed or has a bad escape") from None
        self.pos = end
        return parsed

    def scalar(self) -> Node:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",]} \t\r\n/":
            self.pos += 1
        token = self.text[start : self.pos]
        try:
            return Node(json.loads(token), start, self.pos)
        except ValueError:
            self.pos = start
            raise self.fail(f"unexpected {token[:20]!r}") from None

    def container(self, closer: str, keyed: bool) -> Node:
        start = self.pos
        self.pos += 1
        items: list[Any] = []
        while True:
            self.skip()
            if self.text.startswith(closer, self.pos):
                self.pos += 1
                break
            if keyed:
                if not self.text.startswith('"', self.pos):
                    raise self.fail(f"expected a quoted key or '{closer}'")
                key = self.string()
                self.skip()
                if not self.text.startswith(":", self.pos):
                    raise self.fail("expected ':' after a key")
                self.pos += 1
                items.append((key, self.value()))
            else:
                items.append(self.value())
            self.skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith(closer, self.pos):
                raise self.fail(f"expected ',' or '{closer}'")
        if keyed:
            value = {key: node.value for key, node in items}
        else:
            value = [node.value for node in items]
        return Node(value, start, self.pos, items)


def parse_jsonc(text: str, path: Path = Path("launch.json")) -> Node:
    """Parse JSON with comments and trailing commas, keeping each value's position."""
    reader = _Reader(text, path)
    root = reader.value()
    reader.skip()
    if reader.pos != len(text):
        raise reader.fail("unexpected text after the end")
    return root


# ---------------------------------------------------------------------------------------------
# The merge


@dataclass(frozen=True)
class MergeResult:
    path: Path
    backup: Path | None  # None when there was no file before
    replaced: list[str]
    added: list[str]


def _indent_of(text: str, pos: int) -> str:
    line_start = text.rfind("\n", 0, pos) + 1
    prefix = text[line_start:pos]
    return prefix if prefix.strip() == "" else ""


def _dump(value: Any, indent: str) -> str:
    return json.dumps(value, indent=4).replace("\n", "\n" + indent)


def _merge_list(text: str, array: Node, entries: list[dict[str, Any]], report: dict) -> str:
    """Replace same-named entries of ``array`` and append the others, editing ``text``."""
    by_name = {e["name"]: e for e in entries}
    edits: list[tuple[int, int, str]] = []
    for node in array.items or []:
        if isinstance(node.value, dict) and node.value.get("name") in by_name:
            entry = by_name.pop(node.value["name"])
            edits.append((node.start, node.end, _dump(entry, _indent_of(text, node.start))))
            report["replaced"].append(entry["name"])
    if by_name:
        if array.items:
            last = array.items[-1]
            indent = _indent_of(text, last.start)
            at = last.end
            insert = "".join(",\n" + indent + _dump(e, indent) for e in by_name.values())
        else:
            outer = _indent_of(text, array.start)
            indent = outer + "    "
            at = array.start + 1
            insert = "".join(
                ("" if i == 0 else ",") + "\n" + indent + _dump(e, indent)
                for i, e in enumerate(by_name.values())
            ) + "\n" + outer
        edits.append((at, at, insert))
        report["added"].extend(by_name)
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def merge_text(
    text: str,
    configurations: list[dict[str, Any]],
    compounds: list[dict[str, Any]] | None = None,
    path: Path = Path("launch.json"),
) -> tuple[str, dict[str, list[str]]]:
    """The launch.json ``text`` with ``configurations`` (and ``compounds``) merged in by name."""
    report: dict[str, list[str]] = {"replaced": [], "added": []}
    if not text.strip():
        document = {"version": "0.2.0", "configurations": configurations}
        if compounds:
            document["compounds"] = compounds
        report["added"] = [c["name"] for c in configurations]
        return json.dumps(document, indent=4) + "\n", report
    for key, entries in (("compounds", compounds or []), ("configurations", configurations)):
        if not entries:
            continue
        root = parse_jsonc(text, path)
        if not isinstance(root.value, dict):
            raise LaunchJsonError(f"{path}: the top level is not an object {{...}}; fix it first")
        members = dict(root.items or [])
        if key in members and not isinstance(members[key].value, list):
            raise LaunchJsonError(f"{path}: \"{key}\" is not a list [...]; fix it first")
        if key in members:
            text = _merge_list(text, members[key], entries, report)
            continue
        indent = _indent_of(text, root.items[-1][1].start) if root.items else "    "
        member = f'"{key}": ' + _dump(entries, indent)
        if root.items:
            at = root.items[-1][1].end
            text = text[:at] + ",\n" + indent + member + text[at:]
        else:
            text = text[: root.start + 1] + "\n" + indent + member + "\n" + text[root.start + 1 :]
        report["added"].extend(e["name"] for e in entries)
    return text, report


def merge_into_launch_json(
    path: str | os.PathLike[str],
    configurations: list[dict[str, Any]],
    compounds: list[dict[str, Any]] | None = None,
    *,
    backup_tag: str | None = None,
) -> MergeResult:
    """Merge configurations into a launch.json: comments kept, atomic write, backup kept.

    A file that cannot be parsed is left byte for byte as it was, and the error names its line;
    a read-only one is refused. A symlink is written through to its target. The file's BOM,
    line endings and mode stay; a new file gets 0644 (under the umask). Merges are serialised
    by a lock on the folder, so concurrent writers lose nothing. With ``backup_tag`` (one per
    session) the first write keeps one backup, ``launch.json.TAG.bak``, and later writes of that
    session keep it; without, each write keeps a timestamped one.
    """
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(target.parent):
        return _merge_locked(target, configurations, compounds, backup_tag)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` itself: no lock file is left in the user's .vscode."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def _merge_locked(
    target: Path,
    configurations: list[dict[str, Any]],
    compounds: list[dict[str, Any]] | None,
    backup_tag: str | None,
) -> MergeResult:
    original = target.read_bytes() if target.exists() else None
    text, bom, crlf = "", False, False
    if original is not None:
        if not target.stat().st_mode & 0o222:  # checked by the mode: root may write anyway
            raise LaunchJsonError(f"{target} is read-only: make it writable (chmod u+w) first")
        try:
            text = original.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise LaunchJsonError(f"{target}: not UTF-8 text; fix or move it aside") from None
        bom, crlf = original.startswith(codecs.BOM_UTF8), "\r\n" in text
    merged, report = merge_text(text.replace("\r\n", "\n"), configurations, compounds, target)
    parse_jsonc(merged, target)  # never write what VS Code could not read
    backup = _backup(target, backup_tag) if original is not None else None
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as out:
            out.write(merged.replace("\n", "\r\n") if crlf else merged)
        if original is not None:
            shutil.copymode(target, temporary)
        else:
            os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return MergeResult(target, backup, report["replaced"], report["added"])


def _backup(target: Path, tag: str | None) -> Path:
    if tag is not None:
        backup = target.with_name(f"{target.name}.{tag}.bak")
        if not backup.exists():  # the state before this session's first write
            shutil.copy2(target, backup)
        return backup
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = target.with_name(f"{target.name}.{stamp}.bak")
    serial = 1
    while backup.exists():
        serial += 1
        backup = target.with_name(f"{target.name}.{stamp}-{serial}.bak")
    shutil.copy2(target, backup)
    return backup


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
