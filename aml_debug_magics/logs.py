"""Incremental log tailing: an Azure ML run's log files are blobs behind SAS URLs.

Only new bytes are read (HTTP ``Range`` from the last offset), so discovery costs about one
read of the log whatever its length, where the SDK's own streaming downloads the whole file at
every poll. Standard library only: this sits on the notebook's side of every poll.
"""

from __future__ import annotations

import dataclasses
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from aml_debug_magics.node.announce import (
    Announcement,
    AttachOutcome,
    Failure,
    LogReader,
    PortClosed,
    announcements_in_tags,
)
from aml_debug_magics.redaction import redact

# current runtime: user_logs/std_log.txt, std_log_process_M.txt (one per process, M its rank),
# std_log_node_N_process_M.txt (multi-node: process M of node N), indexes sometimes zero-padded;
# older runtime: azureml-logs/70_driver_log.txt, 70_driver_log_N.txt (one per node)
_CURRENT = re.compile(
    r"^user_logs/std_log(?:_node_(?P<node>\d+))?(?:_process_(?P<process>\d+))?\.txt$")
_OLDER = re.compile(r"^azureml-logs/70_driver_log(?:_(?P<process>\d+))?\.txt$")


def stdout_logs(log_files: dict[str, str] | list[str]) -> dict[str, int]:
    """The stdout logs among a run's ``logFiles``, each with the rank of the process it holds.

    The current layout wins where both are present (the older one then repeats it). On a
    multi-node job, process M of node N is rank N x P + M, P being the processes per node (one
    more than the highest process index listed).
    """
    for pattern in (_CURRENT, _OLDER):
        found = {name: match for name in log_files if (match := pattern.match(name))}
        if found:
            break
    else:
        return {}
    on_nodes = [int(m["process"] or 0) for m in found.values() if m.groupdict().get("node")]
    per_node = max(on_nodes, default=0) + 1
    ranks = {}
    for name, match in found.items():
        process = int(match["process"] or 0)
        node = match.groupdict().get("node")
        ranks[name] = int(node) * per_node + process if node is not None else process
    return ranks


class SasExpired(Exception):
    """The blob answered 403: fetch the run's details again for fresh URLs."""


class LogUnavailable(Exception):
    """The blob store kept failing (5xx, timeouts) after the bounded retries."""


Opener = Callable[..., object]


@dataclass
class BlobTail:
    """Reads one log blob incrementally and returns whole new lines.

    ``missing`` is True while the blob answers 404 (not uploaded yet). A partial last line is
    kept until its newline arrives.
    """

    url: str
    timeout: float = 10.0
    retries: int = 3
    retry_pause: float = 0.2
    opener: Opener = urllib.request.urlopen
    offset: int = 0
    bytes_read: int = 0
    requests: int = 0
    missing: bool = True
    _partial: bytes = b""

    def read_new(self) -> list[str]:
        """Whole lines appended since the last call (an empty list when nothing is new)."""
        data = self._fetch()
        if not data:
            return []
        self.offset += len(data)
        pieces = (self._partial + data).split(b"\n")
        self._partial = pieces.pop()
        return [p.rstrip(b"\r").decode("utf-8", "replace") for p in pieces]

    def _fetch(self) -> bytes:
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={self.offset}-"})
        for attempt in range(self.retries + 1):
            self.requests += 1
            try:
                with self.opener(request, timeout=self.timeout) as response:
                    body = response.read()
                    self.bytes_read += len(body)
                    self.missing = False
                    # a store that ignores Range answers 200 with the whole blob
                    return body if response.status == 206 else body[self.offset :]
            except urllib.error.HTTPError as error:
                error.close()
                if error.code == 416:  # nothing past the offset yet
                    self.missing = False
                    return b""
                if error.code == 404:
                    self.missing = True
                    return b""
                if error.code == 403:
                    raise SasExpired(redact(f"403 from {self.url}")) from None
                if error.code < 500 and error.code != 429:
                    raise LogUnavailable(redact(f"HTTP {error.code} from {self.url}")) from None
                failure = f"HTTP {error.code}"
            except (TimeoutError, urllib.error.URLError, ConnectionError) as error:
                failure = str(getattr(error, "reason", error))
            if attempt < self.retries:
                time.sleep(self.retry_pause * 2**attempt)
        raise LogUnavailable(redact(f"{failure} from {self.url} after {self.retries} retries"))


class RunLogs:
    """Follows one Azure ML run: the stdout log of every process (each tied to its rank), and
    its tags.

    Two costs, kept apart: the run's details (``logFiles``: name -> SAS URL) and tags come from
    Azure ML's control plane, which :meth:`take_details` and :meth:`take_tags` only receive;
    :meth:`read` reads only what is new in the listed blobs, from storage. :meth:`poll` does all
    three with ``run.get_details()`` and ``run.get_tags()``. A blob whose SAS expired is named in
    ``expired`` until fresh details arrive.
    """

    def __init__(
        self,
        run: object,
        on_line: Callable[[str, int], None],
        on_news: Callable[[Announcement | AttachOutcome], None],
        *,
        opener: Opener = urllib.request.urlopen,
    ) -> None:
        self.run = run
        self.tails: dict[str, BlobTail] = {}
        self.ranks: dict[str, int] = {}
        self.expired: set[str] = set()
        self.problem = ""  # the last failure to read, redacted, for the panel
        self._on_line = on_line
        self._on_news = on_news
        self._opener = opener
        self._readers: dict[str, LogReader] = {}
        self._told: set[tuple] = set()

    @property
    def bytes_read(self) -> int:
        return sum(t.bytes_read for t in self.tails.values())

    @property
    def listed(self) -> bool:
        """Whether the details listed a log to read yet."""
        return bool(self.tails)

    def describe(self) -> str:
        """Which logs are being read and how far, e.g. ``user_logs/std_log.txt (12 kB)``."""
        if not self.tails:
            return "no log file listed yet"
        return ", ".join(
            f"{name} ({'not uploaded yet' if t.missing else f'{t.offset / 1024:.0f} kB'})"
            for name, t in sorted(self.tails.items())
        )

    def poll(self) -> None:
        """Details, new bytes and tags, in one go; a blob whose SAS expired is read again with
        the URLs of fresh details."""
        self.take_details(self.run.get_details())
        self.read()
        if self.expired:
            self.take_details(self.run.get_details())
            self.read()
        self.take_tags(self.run.get_tags())

    def take_details(self, details: dict | None) -> bool:
        """The logs a run's details list (new ones start at their first byte); True when a log
        was listed for the first time."""
        files = dict((details or {}).get("logFiles") or {})
        ranks = stdout_logs(files)
        new = bool(set(ranks) - set(self.tails))
        for name, rank in ranks.items():
            tail = self.tails.setdefault(name, BlobTail(files[name], opener=self._opener))
            tail.url = files[name]
            self.ranks[name] = rank
            self._readers.setdefault(name, LogReader())
            self.expired.discard(name)
        return new

    def read(self) -> bool:
        """Read what is new in every listed log (storage only); True when a line came."""
        came = False
        for name, tail in list(self.tails.items()):
            if name in self.expired:
                continue
            try:
                lines = tail.read_new()
            except SasExpired as error:
                self.expired.add(name)
                self.problem = str(error)
                continue
            except LogUnavailable as error:
                self.problem = str(error)
                continue
            self.problem = ""
            rank = self.ranks[name]
            for line in lines:
                came = True
                self._on_line(line, rank)
                for news in self._readers[name].feed(line):
                    if news.source == "guide":
                        news = dataclasses.replace(news, rank=rank)
                    self._tell(news)
        return came

    def take_tags(self, tags: dict | None) -> None:
        """What the node wrote into the run's tags (they can arrive before a late log)."""
        for news in announcements_in_tags(tags or {}):
            self._tell(news)

    def _tell(self, news: Announcement | AttachOutcome | PortClosed | Failure) -> None:
        if isinstance(news, Announcement):
            key = ("announce", news.rank, news.port, news.addresses[:1])
        elif isinstance(news, PortClosed):
            key = ("closed", news.rank, news.reason)
        elif isinstance(news, Failure):
            key = ("failed", news.rank, news.pid, news.file, news.line)
        else:  # the post-mortem's outcome is another than the attach window's
            failed = any(told[:2] == ("failed", news.rank) for told in self._told)
            key = ("outcome", news.rank, news.attached, failed)
        if key not in self._told:
            self._told.add(key)
            self._on_news(news)
