"""The storage relay's wire: debugger bytes carried through append blobs, one source of truth for
both ends (the node's ``relay.py`` and the notebook's ``aml_debug_magics/relay/end.py``).

What flows: TCP bytes in, frames out, appended to a blob; on the other side, new bytes read with
``Range: bytes=<offset>-`` from the last offset, frames parsed, TCP bytes out. Two directions,
each its own chain of append blobs:

* **up** (node -> notebook): the node holds an add-only SAS (``a``) on each of its blobs, the
  notebook a read SAS;
* **down** (notebook -> node): the notebook holds create/write/delete (``cwd``), the node read
  (``r``). Only the notebook can write what reaches the debugger.

**Rotation and naming.** An append blob takes at most 50,000 appends. Each direction is a chain
of blobs named ``<name>``, ``<name>.1``, ``<name>.2`` ... ``<name>.<K-1>`` (:func:`chain_names`),
every one signed with its own blob-scoped SAS (``sr=b``): a SAS is valid for one blob name only,
and the node's ``a`` token cannot create a blob. So the notebook creates all K append blobs of
both chains before it submits, and hands each side a *chain*: the K blob URLs (each with its SAS
query) in order, separated by single spaces - one string, the value of ``AML_DEBUG_RELAY_UP``
/ ``AML_DEBUG_RELAY_DOWN`` on the node and the ``up_url`` / ``down_url`` arguments of the
notebook's ``StorageRelay``. A chain of one URL is allowed (no rotation possible). A writer
moves on after :data:`APPENDS_PER_BLOB` appends (well before 50,000): it appends a ``ROTATE``
frame, then continues at offset 0 of the next blob; the reader follows the ``ROTATE`` frame.
With the default ``K = CHAIN_LENGTH = 8`` a direction holds 8 x 40,000 appends; at the
relay's batching that is days of stepping, and the SAS expires long before.

**Frames** multiplex several TCP connections (VS Code's main session and each child process's
``debugpyAttach`` session) in one stream: a 9-byte header (kind: 1 byte, channel: 4 bytes,
payload length: 4 bytes, big-endian), the payload, then a 32-byte tag. ``OPEN``, ``CLOSE``,
``ROTATE``, ``PING`` and ``BYE`` carry no payload; the notebook numbers channels from 1, one per
accepted connection. A child process's ``debugpyAttach`` event repeats the parent's attach
``connect`` (the notebook's port), so the child's session arrives as one more connection there.

**Keys.** Anyone who can read the run's definition holds the node's tokens, so a token proves
nothing about who wrote "up". Each end makes a Diffie-Hellman key pair (:class:`KeyPair`,
RFC 3526's 2048-bit group, ``pow`` from the standard library): the node's public value travels in
its announcement (the run's log, which only the node writes), the notebook's in a ``KEY`` frame,
the first on "down" (which only the notebook writes). Both derive one MAC key per direction, and
every frame's tag is HMAC-SHA256 over its number in the stream, its header and its payload
(:class:`FrameSeal`): a frame forged, altered, replayed, dropped or moved fails its check, and
the reader ends with :class:`StreamTampered`. Appends hold whole frames only, so a frame still
incomplete after :data:`PARTIAL_LIMIT` seconds was someone else's.

**Ends.** The notebook's end says ``PING`` every :data:`HEARTBEAT` seconds; the node's, once
keyed, detaches after :data:`SILENCE_LIMIT` seconds without a frame (:class:`NotebookSilent`),
so a dead kernel never leaves a debuggee paused. ``BYE`` ends a tunnel: the notebook's last
frame, answered by the node's once it has read everything (the notebook deletes "down" after
that answer, or :data:`BYE_WAIT` seconds). A 404 on a read means a blob was deleted
(:class:`BlobMissing`): the notebook makes every blob before the submit.

**Retries.** Every append carries ``x-ms-blob-condition-appendpos`` (the writer's own offset), so
an append retried after a dropped connection never lands twice: a 412 on a retry means the first
try landed. A 412 on a first try means someone else appended (anyone holding the node's add-only
token can): :class:`StreamTampered`. Reads are idempotent. A network failure is retried with a
growing pause until :data:`GIVE_UP_AFTER` seconds pass without one success.

**Cost.** Polling is adaptive (:class:`Backoff`): every 5 ms while bytes flow and for a second
after, then doubling to 1.2 s when idle; a side that just wrote polls fast again (an answer is
due), but not for a ``PING``. Writes batch: a write waits 2 ms for more (debugpy writes a
message's header and body apart), and whatever queued while the last append was in flight goes
in the next one. Idle, each end makes about 50 reads a minute (100 for both), and the notebook
3 appends a minute for its heartbeat. A tag costs 32 bytes and one HMAC per frame.

Failure kinds are small named exceptions; a signature never appears in a message
(:func:`redacted` gives a URL without its query). Standard library only, Python 3.8+: this file
travels into a run's snapshot as ``aml_debug_relay_wire.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import secrets
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

API_VERSION = "2021-08-06"
APPENDS_PER_BLOB = 40_000  # of the 50,000 an append blob takes: rotate well before
CHAIN_LENGTH = 8  # blobs per direction the notebook creates and signs
MAX_APPEND = 4 * 1024 * 1024  # one Append Block's limit
MAX_PAYLOAD = 1024 * 1024  # per frame; a larger write becomes several DATA frames
POLL_FASTEST = 0.005  # seconds between reads while bytes flow
POLL_HOT = 1.0  # ... and for this long after they last moved
POLL_SLOWEST = 1.2  # idle: about 50 reads a minute per end
LINGER = 0.002  # a write waits this long for more (debugpy writes a header, then its body)
GIVE_UP_AFTER = 120.0  # seconds without one successful request before a stream fails
REQUEST_TIMEOUT = 10.0
HEARTBEAT = 20.0  # the notebook's end says it is there this often (a PING), even when idle
SILENCE_LIMIT = 90.0  # the node's end, once keyed, detaches after this long without a frame
PARTIAL_LIMIT = 10.0  # a frame left incomplete this long was not appended by the other end
BYE_WAIT = 5.0  # the notebook waits this long for the node to read its BYE before deleting

OPEN, DATA, CLOSE, ROTATE, KEY, PING, BYE = 1, 2, 3, 4, 5, 6, 7
KINDS = (OPEN, DATA, CLOSE, ROTATE, KEY, PING, BYE)
_HEADER = struct.Struct(">BII")
HEADER_SIZE = _HEADER.size
TAG_SIZE = 32  # HMAC-SHA256 after each frame's payload


class RelayWireError(Exception):
    """The relay's storage failed; the message names the blob, never its signature."""


class BlobDenied(RelayWireError):
    """403: the SAS is wrong, expired, or lacks the permission (``a`` up, ``r`` down)."""


class BlobMissing(RelayWireError):
    """404: the blob is not there (the notebook makes every blob before the submit, so it was
    deleted)."""


class StorageUnreachable(RelayWireError):
    """No request succeeded for :data:`GIVE_UP_AFTER` seconds."""


class StreamTampered(RelayWireError):
    """A blob holds bytes this writer did not append, or bytes that are no frames."""


class ChainExhausted(RelayWireError):
    """The last blob of a chain is full; there is no next one to rotate to."""


class NotebookSilent(RelayWireError):
    """The node heard nothing from the notebook for :data:`SILENCE_LIMIT` seconds."""


class PeerEnded(RelayWireError):
    """The node's end said ``BYE`` while the notebook's still ran (its log says why)."""


def redacted(url: str) -> str:
    """``url`` without its query (the SAS): safe for logs, panels and errors.

    >>> redacted("https://a.blob.core.windows.net/c/up?sv=2021&sig=abc")
    'https://a.blob.core.windows.net/c/up'
    """
    return url.split("?", 1)[0]


def blob_name(url: str) -> str:
    """The blob's name as the node's log shows it: the last part of the path."""
    return urllib.parse.unquote(redacted(url).rstrip("/").rsplit("/", 1)[-1])


def chain_names(name: str, length: int = CHAIN_LENGTH) -> list[str]:
    """The blob names of one direction's chain, in the order a writer fills them.

    >>> chain_names("s1/up", 3)
    ['s1/up', 's1/up.1', 's1/up.2']
    """
    return [name] + [f"{name}.{index}" for index in range(1, length)]


def chain_urls(chain: str) -> list[str]:
    """The URLs of a chain string (space-separated, as the environment variables hold them)."""
    urls = chain.split()
    if not urls:
        raise RelayWireError("a relay chain needs at least one blob URL")
    return urls


# ---------------------------------------------------------------------------------------------
# Keys: only the two ends can seal a frame


# RFC 3526 group 14 (2048-bit MODP), generator 2
MODP_2048 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)
GENERATOR = 2
SECRET_BITS = 320  # a short exponent: well past the group's ~112-bit strength
PUBLIC_BYTES = 256


class KeyPair:
    """One end's Diffie-Hellman secret and the public value it shows the other end.

    >>> node, notebook = KeyPair(), KeyPair()
    >>> publics = {"node": node.public, "notebook": notebook.public}
    >>> node.frame_keys(notebook.public, **publics) == notebook.frame_keys(node.public, **publics)
    True
    """

    def __init__(self, secret: int | None = None) -> None:
        self.secret = secret if secret is not None else secrets.randbits(SECRET_BITS) | 1 << 64
        self.public = pow(GENERATOR, self.secret, MODP_2048)

    @property
    def encoded(self) -> str:
        """The public value as text (the node's announcement and the KEY frame carry it)."""
        return base64.b64encode(self.public.to_bytes(PUBLIC_BYTES, "big")).decode()

    def frame_keys(self, other: int, *, node: int, notebook: int) -> tuple[bytes, bytes]:
        """The MAC keys of the "up" and "down" streams, from the shared secret and both public
        values (so a key is bound to this pair of ends)."""
        shared = pow(other, self.secret, MODP_2048).to_bytes(PUBLIC_BYTES, "big")
        root = hashlib.sha256(shared + node.to_bytes(PUBLIC_BYTES, "big")
                              + notebook.to_bytes(PUBLIC_BYTES, "big")).digest()
        return (hmac.new(root, b"aml-debug relay up", hashlib.sha256).digest(),
                hmac.new(root, b"aml-debug relay down", hashlib.sha256).digest())


def decode_public(text: str | bytes) -> int:
    """A public value from its text; one line when it is not one (1 < value < p - 1)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raw = b""
    value = int.from_bytes(raw, "big")
    if len(raw) != PUBLIC_BYTES or not 1 < value < MODP_2048 - 1:
        raise StreamTampered("the other end's key is not a public value of the relay's group")
    return value


# ---------------------------------------------------------------------------------------------
# Frames


@dataclass(frozen=True)
class Frame:
    kind: int  # OPEN, DATA, CLOSE, ROTATE, KEY, PING or BYE
    channel: int
    payload: bytes = b""
    tag: bytes = b""


class FrameSeal:
    """HMAC-SHA256 over each frame of one direction, numbered in the order written, so a frame
    cannot be forged, changed, dropped, replayed or moved by anyone without the key."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._number = 0

    def _tag(self, kind: int, channel: int, payload: bytes) -> bytes:
        message = struct.pack(">Q", self._number) + _HEADER.pack(kind, channel, len(payload))
        self._number += 1
        return hmac.new(self._key, message + payload, hashlib.sha256).digest()

    def seal(self, kind: int, channel: int, payload: bytes = b"") -> bytes:
        """The frame's bytes: header, payload, tag."""
        if kind not in (DATA, KEY) and payload:
            raise ValueError("only DATA and KEY frames carry a payload")
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"a frame carries at most {MAX_PAYLOAD} bytes")
        return _HEADER.pack(kind, channel, len(payload)) + payload + self._tag(
            kind, channel, payload)

    def check(self, frame: Frame) -> None:
        """Raise :class:`StreamTampered` unless ``frame`` is the next one the other end sealed."""
        if not hmac.compare_digest(self._tag(frame.kind, frame.channel, frame.payload),
                                   frame.tag):
            raise StreamTampered("the relay's stream was tampered with (a frame that the other "
                                 "end did not seal)")


def pieces(payload: bytes) -> list[bytes]:
    """``payload`` cut into DATA payloads of at most :data:`MAX_PAYLOAD` bytes."""
    return [payload[i : i + MAX_PAYLOAD] for i in range(0, len(payload), MAX_PAYLOAD)] or [b""]


class FrameReader:
    """Whole frames out of a byte stream that arrives in arbitrary pieces."""

    def __init__(self) -> None:
        self._pending = b""
        self.partial_since: float | None = None  # when an incomplete frame was first seen

    def feed(self, data: bytes) -> list[Frame]:
        self._pending += data
        frames = []
        while len(self._pending) >= HEADER_SIZE:
            kind, channel, size = _HEADER.unpack_from(self._pending)
            if kind not in KINDS or size > MAX_PAYLOAD:
                raise StreamTampered(f"the relay's stream was tampered with (not a frame: kind "
                                     f"{kind}, length {size})")
            end = HEADER_SIZE + size + TAG_SIZE
            if len(self._pending) < end:
                break
            frames.append(Frame(kind, channel, self._pending[HEADER_SIZE : HEADER_SIZE + size],
                                self._pending[HEADER_SIZE + size : end]))
            self._pending = self._pending[end:]
        if not self._pending:
            self.partial_since = None
        elif frames or self.partial_since is None:
            self.partial_since = time.monotonic()
        return frames


# ---------------------------------------------------------------------------------------------
# One append blob over HTTP(S), by its SAS URL


class AppendBlob:
    """One append blob reached by its SAS URL, on one kept-alive connection (one thread each).

    >>> blob = AppendBlob("http://127.0.0.1:10000/devstoreaccount1/relay/s1/down?sv=...")
    >>> blob.append(b"...")   # doctest: +SKIP
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = blob_name(url)
        parts = urllib.parse.urlsplit(url)
        self._secure = parts.scheme == "https"
        self._host = parts.netloc
        self._path, self._sas = parts.path, parts.query
        self._connection: http.client.HTTPConnection | None = None
        self.requests = 0  # every request sent, for the cost figures
        self.position = 0  # bytes this writer has appended (a writer starts on an empty blob)

    def _request(
        self, method: str, headers: dict[str, str], body: bytes = b"", query: str = ""
    ) -> tuple[int, dict[str, str], bytes]:
        """One request (``query`` goes before the SAS); a network failure closes the connection
        and raises OSError."""
        connection = self._connection  # close() from another thread may clear the attribute
        if connection is None:
            kind = http.client.HTTPSConnection if self._secure else http.client.HTTPConnection
            connection = self._connection = kind(self._host, timeout=REQUEST_TIMEOUT)
        headers = {"x-ms-version": API_VERSION, "Content-Length": str(len(body)), **headers}
        self.requests += 1
        try:
            target = f"{self._path}?{'&'.join(filter(None, (query, self._sas)))}"
            connection.request(method, target, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            self.close()
            raise OSError(f"{method} {self.name}: {type(error).__name__}") from None
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def _fail(self, status: int, action: str) -> RelayWireError:
        if status == 403:
            return BlobDenied(f"storage refused to {action} {self.name} (403: SAS expired, "
                              "wrong, or without that permission)")
        if status == 404:
            return BlobMissing(f"{self.name} does not exist (404): the notebook creates it")
        return RelayWireError(f"storage answered {status} to {action} {self.name}")

    def create(self) -> None:
        """Make (or empty) this append blob: needs ``c`` or ``w`` (the notebook's token)."""
        status, _, _ = self._request("PUT", {"x-ms-blob-type": "AppendBlob"})
        if status != 201:
            raise self._fail(status, "create")

    def append(self, data: bytes) -> int:
        """Append ``data`` at :attr:`position` (this writer's own count of the blob's bytes),
        retried through network failures; return the appends the blob now holds (-1: unknown).

        A 412 on a retry means the first try landed; on a first try, that someone else wrote.
        """

        def attempt(number: int) -> int:
            status, headers, _ = self._request(
                "PUT", {"x-ms-blob-condition-appendpos": str(self.position)}, data,
                query="comp=appendblock",
            )
            if status == 201:
                return int(headers.get("x-ms-blob-committed-block-count", "-1"))
            if status == 412 and number > 0:
                return -1
            if status == 412:
                raise StreamTampered(f"{self.name} holds bytes this relay did not append")
            raise self._fail(status, "append to")

        count = _retrying(attempt, f"appending to {self.name}")
        self.position += len(data)
        return count

    def read_from(self, offset: int) -> bytes:
        """The bytes past ``offset``; empty when there are none yet (416). A 404 is
        :class:`BlobMissing`: the notebook made every blob before the submit, so it was
        deleted."""
        status, _, data = self._request("GET", {"Range": f"bytes={offset}-"})
        if status in (200, 206):
            return data if status == 206 or offset == 0 else data[offset:]
        if status == 416:
            return b""
        if status == 404:
            raise BlobMissing(f"{self.name} was deleted (404)")
        raise self._fail(status, "read")

    def delete(self) -> None:
        """Delete the blob; a blob already gone is fine."""
        status, _, _ = self._request("DELETE", {})
        if status not in (202, 404):
            raise self._fail(status, "delete")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _retrying(action: Callable[[int], T], what: str) -> T:
    """Run ``action(attempt number)`` until it does not raise OSError, pausing longer each
    time; give up (StorageUnreachable) after :data:`GIVE_UP_AFTER` seconds of failures."""
    started, attempt, pause = time.monotonic(), 0, 0.05
    while True:
        try:
            return action(attempt)
        except OSError as error:
            if time.monotonic() - started > GIVE_UP_AFTER:
                raise StorageUnreachable(f"{what}: no answer from storage for "
                                         f"{GIVE_UP_AFTER:g} s ({error})") from None
            time.sleep(pause)
            attempt, pause = attempt + 1, min(pause * 2, 1.0)


# ---------------------------------------------------------------------------------------------
# One direction: a chain of blobs, written by one side and read by the other


class StreamWriter:
    """Seals frames and appends them to a chain of blobs, whole frames in each append, rotating
    after ``appends_per_blob`` appends. ``seal`` is set once the keys are known."""

    def __init__(self, chain: str, *, appends_per_blob: int = APPENDS_PER_BLOB,
                 seal: FrameSeal | None = None) -> None:
        self._blobs = [AppendBlob(url) for url in chain_urls(chain)]
        self._index = 0
        self._appends = 0
        self._appends_per_blob = appends_per_blob
        self.blobs_used = 1
        self.seal = seal

    @property
    def blob(self) -> AppendBlob:
        return self._blobs[self._index]

    @property
    def requests(self) -> int:
        return sum(blob.requests for blob in self._blobs)

    def write(self, frames: list[tuple[int, int, bytes]]) -> None:
        """Seal and append ``frames`` (kind, channel, payload) in as few appends of at most 4 MiB
        as whole frames allow; a ``ROTATE`` comes first where the blob has no room left."""
        if self.seal is None:
            raise RelayWireError("the relay has no key yet: the other end's KEY comes first")
        batch: list[tuple[int, int, bytes]] = []
        size = 0
        for frame in frames:
            length = HEADER_SIZE + len(frame[2]) + TAG_SIZE
            if batch and size + length > MAX_APPEND:
                self._append_batch(batch)
                batch, size = [], 0
            batch.append(frame)
            size += length
        if batch:
            self._append_batch(batch)

    def _append_batch(self, batch: list[tuple[int, int, bytes]]) -> None:
        assert self.seal is not None
        if self._appends + 1 >= self._appends_per_blob:  # keep one for ROTATE
            self._append(self.seal.seal(ROTATE, 0))
            if self._index + 1 >= len(self._blobs):
                raise ChainExhausted(f"{self.blob.name} is full and is the chain's last blob")
            self.blob.close()
            self._index, self._appends = self._index + 1, 0
            self.blobs_used += 1
        self._append(b"".join(self.seal.seal(*frame) for frame in batch))

    def _append(self, data: bytes) -> None:
        self._appends = max(self._appends + 1, self.blob.append(data))

    def close(self) -> None:
        for blob in self._blobs:
            blob.close()


class StreamReader:
    """Reads new frames from a chain of blobs, checks each one's seal, follows ``ROTATE``.

    Until ``seal`` is known the stream must start with the other end's ``KEY`` frame:
    ``on_key(its payload)`` gives the seal that checks it and every frame after.
    """

    def __init__(self, chain: str, *, seal: FrameSeal | None = None,
                 on_key: Callable[[bytes], FrameSeal] | None = None) -> None:
        self._blobs = [AppendBlob(url) for url in chain_urls(chain)]
        self._index = 0
        self._offset = 0
        self._frames = FrameReader()
        self.seal = seal
        self._on_key = on_key

    @property
    def blob(self) -> AppendBlob:
        return self._blobs[self._index]

    @property
    def requests(self) -> int:
        return sum(blob.requests for blob in self._blobs)

    def poll(self) -> list[Frame]:
        """The frames appended since the last poll (one read; more after a rotation)."""
        found: list[Frame] = []
        while True:
            data = _retrying(lambda _: self.blob.read_from(self._offset),
                             f"reading {self.blob.name}")
            self._offset += len(data)
            frames = self._frames.feed(data)
            since = self._frames.partial_since
            if since is not None and time.monotonic() - since > PARTIAL_LIMIT:
                raise StreamTampered(f"the relay's stream was tampered with (a frame on "
                                     f"{self.blob.name} never completed)")
            for index, frame in enumerate(frames):
                self._check(frame)
                if frame.kind == ROTATE:
                    found += frames[:index]
                    break
            else:
                return found + frames
            if self._index + 1 >= len(self._blobs):
                raise ChainExhausted(f"{self.blob.name} rotated past the chain's last blob")
            self.blob.close()
            self._index, self._offset, self._frames = self._index + 1, 0, FrameReader()

    def _check(self, frame: Frame) -> None:
        if self.seal is None:
            if frame.kind != KEY or self._on_key is None:
                raise StreamTampered("the relay's stream was tampered with (it does not start "
                                     "with the other end's key)")
            self.seal = self._on_key(frame.payload)
        self.seal.check(frame)

    def close(self) -> None:
        for blob in self._blobs:
            blob.close()


class Backoff:
    """How long to wait before the next poll: ``fastest`` for ``hot`` seconds after bytes last
    moved (an answer takes a few requests' time to come), then doubling up to ``slowest``."""

    def __init__(
        self, fastest: float = POLL_FASTEST, slowest: float = POLL_SLOWEST, hot: float = POLL_HOT
    ) -> None:
        self.fastest, self.slowest, self.hot = fastest, slowest, hot
        self.pause = fastest
        self._busy_at = float("-inf")  # idle until bytes first move

    def busy(self) -> None:
        """Bytes moved (or an answer is due): poll fast again."""
        self.pause = self.fastest
        self._busy_at = time.monotonic()

    def idle(self) -> float:
        """Nothing new: the pause to wait now; once no longer hot, the next one is longer."""
        if time.monotonic() - self._busy_at < self.hot:
            return self.fastest
        pause = self.pause
        self.pause = min(self.pause * 2, self.slowest)
        return pause


# ---------------------------------------------------------------------------------------------
# Both ends: TCP connections on this side, one chain to write and one to read between


class Tunnel:
    """Carries TCP connections over two chains: each connection's bytes become sealed frames
    on ``write_chain``; frames read (and checked) from ``read_chain`` go to the connection of
    their channel.

    **Keys.** ``keys`` is this end's :class:`KeyPair`. The notebook knows the node's public
    value (from the node's announcement, which only the node writes): it passes ``peer``,
    derives both streams' keys at once and writes its own public value first, in a ``KEY``
    frame on "down" (which only the notebook can write). The node passes no ``peer``: its
    stream starts with that ``KEY``. Every frame after, both ways, is sealed (:class:`FrameSeal`);
    one that fails its check ends the tunnel (:class:`StreamTampered`).

    **Ends.** The notebook adds the connections it accepts (:meth:`add`, which sends ``OPEN``);
    the node answers an ``OPEN`` with ``on_open(channel)``, a connected socket or None (then
    ``CLOSE``). The notebook sends a ``PING`` every ``heartbeat`` seconds; the node, once keyed,
    gives up after ``silence`` seconds without a frame (:class:`NotebookSilent`), so a notebook
    that died never leaves the debuggee paused. ``BYE`` ends the tunnel: the notebook says it
    last (:meth:`close`), the node answers with its own once it has read everything.
    ``screen(channel, payload)`` (the notebook's) returns what reaches the local connection and
    what goes back to the other end instead.

    Threads: one writer (batching whatever queued during the last append), one reader
    (:meth:`run_until`, adaptive polling), one per connection.
    """

    def __init__(
        self,
        write_chain: str,
        read_chain: str,
        *,
        keys: KeyPair,
        peer: int | None = None,
        on_open: Callable[[int], socket.socket | None] | None = None,
        heartbeat: float | None = None,
        silence: float | None = None,
        screen: Callable[[int, bytes], tuple[bytes, bytes]] | None = None,
    ) -> None:
        self._keys = keys
        self._is_node = peer is None
        self._said_bye = False
        self.writer = StreamWriter(write_chain)
        self.reader = StreamReader(read_chain, on_key=self._keyed)
        self.backoff = Backoff()
        self.error: RelayWireError | None = None
        self.bye_heard = threading.Event()  # the other end said BYE
        self._on_open = on_open
        self._heartbeat, self._silence, self._screen = heartbeat, silence, screen
        self._sockets: dict[int, socket.socket] = {}
        self._outbox: list[tuple[int, int, bytes]] = []
        self._lock = threading.Condition()
        self._closing = False
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._heard_at = self._sent_at = time.monotonic()
        if peer is not None:  # the notebook's end: both keys now, its public value first
            up, down = keys.frame_keys(peer, node=peer, notebook=keys.public)
            self.writer.seal, self.reader.seal = FrameSeal(down), FrameSeal(up)
            self._outbox.append((KEY, 0, keys.encoded.encode()))
        self._writer_thread = threading.Thread(target=self._write_loop, name="relay-writer",
                                               daemon=True)
        self._writer_thread.start()

    @property
    def channels(self) -> int:
        """Connections open now."""
        with self._lock:
            return len(self._sockets)

    @property
    def requests(self) -> int:
        """Storage requests made so far, both chains."""
        return self.writer.requests + self.reader.requests

    def add(self, channel: int, connection: socket.socket) -> None:
        """Carry ``connection`` as ``channel``: the other end gets ``OPEN``, then its bytes."""
        with self._lock:
            self._sockets[channel] = connection
        self._send(OPEN, channel)
        self._pump(channel, connection)

    def wake(self) -> None:
        """Poll now (something the reader waits for may have happened)."""
        self._wake.set()

    def run_until(self, done: Callable[[], bool]) -> None:
        """Read and deliver frames until ``done()``, the other end's ``BYE`` or a failure
        (kept in ``error``)."""
        while not self._stopped.is_set() and not done():
            try:
                frames = self.reader.poll()
            except RelayWireError as error:
                self._fail(error)
                return
            now = time.monotonic()
            if frames:
                self._heard_at = now
            if any(frame.kind != PING for frame in frames):
                self.backoff.busy()
            for frame in frames:
                self._deliver(frame)
            if self._silence is not None and self.reader.seal is not None \
                    and now - self._heard_at > self._silence:
                self._fail(NotebookSilent(f"nothing from the notebook for {self._silence:g} s"))
                return
            if self._heartbeat is not None and now - self._sent_at > self._heartbeat:
                self._send(PING, 0)
            if self._wake.wait(self.backoff.idle()):
                self._wake.clear()

    def close(self, *, wait_for_bye: float = 0.0, timeout: float = 10.0) -> None:
        """Close every connection (the other end gets ``CLOSE``), say ``BYE``, send what is
        queued and stop; with ``wait_for_bye``, first wait that long for the other end's
        ``BYE`` (it has read everything), while :meth:`run_until` still reads."""
        with self._lock:
            channels = list(self._sockets.items())
            self._sockets.clear()
        for channel, connection in channels:
            self._send(CLOSE, channel)
            _close(connection)
        if self.error is None and self.writer.seal is not None:
            self._send(BYE, 0)
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._writer_thread.join(timeout)
        if wait_for_bye and self.error is None and self.writer.seal is not None:
            self.backoff.busy()
            self.wake()
            self.bye_heard.wait(wait_for_bye)
        self._stopped.set()
        self.writer.close()
        self.reader.close()

    def _keyed(self, payload: bytes) -> FrameSeal:
        """The node's end: the notebook's KEY arrived; both streams' keys from it."""
        notebook = decode_public(payload)
        up, down = self._keys.frame_keys(notebook, node=self._keys.public, notebook=notebook)
        self.writer.seal = FrameSeal(up)
        self._heard_at = time.monotonic()
        return FrameSeal(down)

    def _deliver(self, frame: Frame) -> None:
        if frame.kind == BYE:
            self.bye_heard.set()
            if self._is_node:  # the notebook ended: detach, answer, done
                self._end_all()
                self._send(BYE, 0)
                self._stopped.set()
            elif not self._closing:
                self._fail(PeerEnded("the node's end of the relay ended (the node's log says "
                                     "why)"))
            return
        with self._lock:
            connection = self._sockets.get(frame.channel)
        if frame.kind == OPEN and connection is None and self._on_open is not None:
            opened = self._on_open(frame.channel)
            if opened is None:
                self._send(CLOSE, frame.channel)
                return
            with self._lock:
                self._sockets[frame.channel] = opened
            self._pump(frame.channel, opened)
        elif frame.kind == DATA and connection is not None:
            payload, answer = (self._screen(frame.channel, frame.payload)
                               if self._screen is not None else (frame.payload, b""))
            if answer:
                self._send_data(frame.channel, answer)
            try:
                connection.sendall(payload)
            except OSError:
                self._forget(frame.channel, tell=True)
        elif frame.kind == CLOSE and connection is not None:
            self._forget(frame.channel, tell=False)

    def _pump(self, channel: int, connection: socket.socket) -> None:
        def pump() -> None:
            while True:
                try:
                    data = connection.recv(MAX_PAYLOAD)
                except OSError:
                    data = b""
                if not data:
                    self._forget(channel, tell=True)
                    return
                self._send_data(channel, data)

        threading.Thread(target=pump, name=f"relay-channel-{channel}", daemon=True).start()

    def _forget(self, channel: int, *, tell: bool) -> None:
        with self._lock:
            connection = self._sockets.pop(channel, None)
        if connection is None:
            return
        if tell:
            self._send(CLOSE, channel)
        _close(connection)
        self.wake()

    def _end_all(self) -> None:
        """Close every local connection without telling the other end (it has ended)."""
        with self._lock:
            channels = list(self._sockets.values())
            self._sockets.clear()
        for connection in channels:
            _close(connection)

    def _send_data(self, channel: int, data: bytes) -> None:
        for payload in pieces(data):
            self._send(DATA, channel, payload)

    def _send(self, kind: int, channel: int, payload: bytes = b"") -> None:
        with self._lock:
            if kind == BYE:
                if self._said_bye:
                    return
                self._said_bye = True
            self._outbox.append((kind, channel, payload))
            self._sent_at = time.monotonic()
            self._lock.notify_all()

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._outbox and not self._closing:
                    self._lock.wait()
                if not self._outbox:
                    return
                if not self._closing:
                    self._lock.wait(LINGER)  # releases the lock: more may queue meanwhile
                frames, self._outbox = self._outbox, []
            try:
                self.writer.write(frames)
            except RelayWireError as error:
                self._fail(error)
                return
            if any(kind != PING for kind, _, _ in frames):
                self.backoff.busy()  # an answer is due: read fast again
                self.wake()

    def _fail(self, error: RelayWireError) -> None:
        """Stop on ``error``: every local connection closes (a debugger detaches, a debuggee
        runs on) and, where the writer still works, the other end is told (CLOSE, BYE)."""
        self.error = self.error or error
        self._stopped.set()
        with self._lock:
            channels = list(self._sockets.items())
            self._sockets.clear()
            if self.writer.seal is not None and not self._closing and not self._said_bye:
                self._outbox += [(CLOSE, channel, b"") for channel, _ in channels]
                self._outbox.append((BYE, 0, b""))
                self._said_bye = True
            self._closing = True
            self._lock.notify_all()
        for _, connection in channels:
            _close(connection)
        self.wake()


def _close(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()
