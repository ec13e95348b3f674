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
    LogReader,
    PortClosed,
    announcements_in_tags,
)
from aml_debug_magics.redaction import redact

# current runtime: user_logs/std_log.txt, std_log_process_N.txt (one per process);
# older runtime: azureml-logs/70_driver_log.txt, 70_driver_log_N.txt (one per node)
_CURRENT = re.compile(r"^user_logs/std_log(?:_process)?(?:_(\d+))?\.txt$")
_OLDER = re.compile(r"^azureml-logs/70_driver_log(?:_(\d+))?\.txt$")


def driver_logs(log_files: dict[str, str]) -> dict[str, int]:
    """The stdout logs among a run's ``logFiles``, each with its node or process index.

    The current layout wins where both are present (the older one then repeats it).
    """
    for pattern in (_CURRENT, _OLDER):
        found = {
            name: int(match.group(1) or 0)
            for name in log_files
            if (match := pattern.match(name))
        }
        if found:
            return found
    return {}


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
    """Follows one Azure ML run: the stdout log of every node (or process), and its tags.

    ``run`` needs the SDK's ``get_details()`` (with ``logFiles``: name -> SAS URL) and
    ``get_tags()``. Each :meth:`poll` reads only what is new; URLs are refreshed from the details
    each time, and once more within a poll when a blob says its SAS expired.
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
        self.problem = ""  # the last failure to read, redacted, for the panel
        self._on_line = on_line
        self._on_news = on_news
        self._opener = opener
        self._readers: dict[str, LogReader] = {}
        self._told: set[tuple] = set()

    @property
    def bytes_read(self) -> int:
        return sum(t.bytes_read for t in self.tails.values())

    def describe(self) -> str:
        """Which logs are being read and how far, e.g. ``user_logs/std_log.txt (12 kB)``."""
        if not self.tails:
            return "no log file listed yet"
        return ", ".join(
            f"{name} ({'not uploaded yet' if t.missing else f'{t.offset / 1024:.0f} kB'})"
            for name, t in sorted(self.tails.items())
        )

    def poll(self) -> None:
        files = self._log_files()
        for name, node in driver_logs(files).items():
            tail = self.tails.setdefault(name, BlobTail(files[name], opener=self._opener))
            tail.url = files[name]
            self._readers.setdefault(name, LogReader())
            try:
                try:
                    lines = tail.read_new()
                except SasExpired:
                    tail.url = self._log_files().get(name, tail.url)
                    lines = tail.read_new()
            except (SasExpired, LogUnavailable) as error:
                self.problem = str(error)
                continue
            self.problem = ""
            for line in lines:
                self._on_line(line, node)
                for news in self._readers[name].feed(line):
                    if news.source == "guide":
                        news = dataclasses.replace(news, rank=node)
                    self._tell(news)
        for news in announcements_in_tags(self.run.get_tags() or {}):
            self._tell(news)

    def _log_files(self) -> dict[str, str]:
        return dict((self.run.get_details() or {}).get("logFiles") or {})

    def _tell(self, news: Announcement | AttachOutcome | PortClosed) -> None:
        if isinstance(news, Announcement):
            key = ("announce", news.rank, news.port, news.addresses[:1])
        elif isinstance(news, PortClosed):
            key = ("closed", news.rank, news.reason)
        else:
            key = ("outcome", news.rank, news.attached)
        if key not in self._told:
            self._told.add(key)
            self._on_news(news)
