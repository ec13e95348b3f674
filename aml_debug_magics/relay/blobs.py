"""The storage relay's blobs: made in the workspace's default datastore, signed for each side,
deleted when the relay ends, and swept by the next session when they outlived it.

In: the workspace (an SDK v1 ``Workspace`` or an SDK v2 ``MLClient``, through its seam's
``relay_account()``) and how long the relay may live (the attach window plus the run's time
limit). Out: :class:`RelayBlobs`, the blob-scoped SAS URLs of both sides and ``delete()``; and
:func:`sweep`, which deletes the folders earlier sessions left once their tokens have expired.

Tokens. The node gets two blob-scoped tokens: add-only (``a``) on each "up" blob and read-only
(``r``) on each "down" blob; only the notebook holds write on "down". Anyone who can read the
run's definition can read what the debugger sends and add bytes to "up", but cannot drive the
debuggee, and only until the tokens expire, with the attach window plus the run's time limit.
A token for an ``https`` endpoint travels over HTTPS only (``spr=https``); only a plain ``http``
endpoint (Azurite's) gets ``https,http``. A direction is a chain of blobs (``up``, ``up.1``...),
moved along well before an append blob's 50,000 appends (``node/relay_wire.py``: its naming, and
the chain's URLs space-separated in one variable); a blob-scoped token names one blob, so every
blob of both chains is made and signed here, before the submit.

Lifetime. A relay's blobs share one folder, ``aml-debug-relay/<expiry>-<random hex>-<step>/``,
whose name starts with its tokens' expiry (UTC, ``yyyymmddThhmmssZ``). Deleting never uses the
relay's own tokens, which may have expired: :meth:`RelayBlobs.delete` and :func:`sweep` sign
fresh ones living :data:`DELETE_TOKEN`, with the account key or a user delegation key asked for
then. What a killed kernel leaves stays until that expiry; then the next session's sweep deletes
it (a folder named without its expiry: once its blobs have been unchanged for longer than the
longest token). A sweep costs one List Blobs (5,000 names a page) and a Delete Blob per expired
blob.

Signing: with the datastore's account key when the user may list its secrets, else with a user
delegation key got with the user's own Azure AD identity; the string-to-sign is the one
documented for service version ``SAS_VERSION`` ("Create a service SAS", "Create a user
delegation SAS"), HMAC-SHA256 from the standard library. If neither key can be had, one line
names the role that is missing. Signatures never appear in what this module says.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime
import email.utils
import hashlib
import hmac
import http.client
import re
import secrets
import ssl
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.failures import first_line
from aml_debug_magics.node.options import RELAY_DOWN_VARIABLE, RELAY_UP_VARIABLE
from aml_debug_magics.node.relay_wire import CHAIN_LENGTH, AppendBlob, chain_names

SAS_VERSION = "2022-11-02"
CREATE_TOGETHER = 8  # blobs made at once (a relay has 16, a post-mortem's relay 16 more)
PREFIX = "aml-debug-relay"  # the folder of the datastore's container the relay's blobs go in
CLOCK_SKEW = datetime.timedelta(minutes=5)  # a token is valid from a little before now
DELETE_TOKEN = datetime.timedelta(minutes=10)  # the life of a token signed to delete or list
EXPIRY_IN_NAME = "%Y%m%dT%H%M%SZ"  # how a relay folder's name starts: its tokens' expiry
LIST_PAGE = 5000  # names per List Blobs answer (the service's most)
REQUEST_TIMEOUT = 30.0
STORAGE_SCOPE = "https://storage.azure.com/.default"
MISSING_ROLE = "Storage Blob Data Contributor"

# what each side may do: the node appends to up and reads down; the notebook reads up, makes
# and deletes both, and is the only one that writes down
NODE_UP, NODE_DOWN = "a", "r"
NOTEBOOK_UP, NOTEBOOK_DOWN = "rcd", "cwd"

# a relay folder's name: its tokens' expiry first; before that was in it, a random hex first
_DATED_FOLDER = re.compile(r"(?P<expiry>\d{8}T\d{6}Z)-[0-9a-f]{16}-[^/]+")
_UNDATED_FOLDER = re.compile(r"[0-9a-f]{16}-[^/]+")


class RelayUnavailable(DebugInputError):
    """The relay's blobs cannot be made here: ``reason`` says why, ``remedy`` what would allow
    it (a role, a blob datastore); the message is the line ``--via storage`` fails with."""

    def __init__(self, message: str, reason: str, remedy: str) -> None:
        super().__init__(message)
        self.reason, self.remedy = reason, remedy


@dataclass(frozen=True)
class UserDelegationKey:
    """A key Azure Storage hands the user's Azure AD identity to sign SAS tokens with."""

    signed_oid: str
    signed_tid: str
    signed_start: str
    signed_expiry: str
    signed_service: str
    signed_version: str
    value: str


@dataclass(frozen=True)
class StorageAccount:
    """The container the relay's blobs go in, and what may sign for it.

    ``blob_endpoint`` is the account's blob service URL (``https://ACCOUNT.blob.core.windows.net``;
    Azurite's is ``http://127.0.0.1:PORT/devstoreaccount1``). One of ``account_key`` (from the
    datastore's secrets) or ``credential`` (an Azure AD token credential with ``get_token``)
    signs; ``why_no_key`` says why the account key could not be had.
    """

    account_name: str
    container: str
    blob_endpoint: str
    account_key: str | None = field(default=None, repr=False)
    credential: Any = field(default=None, repr=False)
    why_no_key: str = ""

    def blob_url(self, blob: str) -> str:
        return f"{self.blob_endpoint.rstrip('/')}/{self.container}/{urllib.parse.quote(blob)}"

    @property
    def where(self) -> str:
        """The account and container, as lines name them."""
        return f"{self.account_name}/{self.container}"


def allowed_protocols(endpoint: str) -> str:
    """The protocols a token for ``endpoint`` allows (``spr``): HTTPS only, but for a plain
    ``http`` endpoint (Azurite's), which HTTPS cannot reach.

    >>> allowed_protocols("https://acct.blob.core.windows.net")
    'https'
    >>> allowed_protocols("http://127.0.0.1:10000/devstoreaccount1")
    'https,http'
    """
    return "https,http" if urllib.parse.urlsplit(endpoint).scheme == "http" else "https"


def sas_token(
    account: StorageAccount, blob: str | None, permissions: str, expiry: datetime.datetime,
    *, start: datetime.datetime | None = None, key: UserDelegationKey | None = None,
) -> str:
    """A blob-scoped SAS query string (``sr=b``) for ``blob`` in the account's container, or a
    container-scoped one (``sr=c``) when ``blob`` is None; signed with the account key, or with
    ``key`` (a user delegation SAS) when given. It allows the endpoint's own protocol
    (:func:`allowed_protocols`).

    >>> account = StorageAccount("acct", "c", "https://acct.blob.core.windows.net",
    ...                          account_key=base64.b64encode(b"k" * 64).decode())
    >>> at = datetime.datetime(2026, 12, 2, tzinfo=datetime.timezone.utc)
    >>> sas_token(account, "up", "a", at, start=at).split("&")[:5]
    ['sv=2022-11-02', 'sp=a', 'st=2026-12-02T00:00:00Z', 'se=2026-12-02T00:00:00Z', 'spr=https']
    """
    scope = "c" if blob is None else "b"
    protocols = allowed_protocols(account.blob_endpoint)
    fields = {
        "sv": SAS_VERSION, "sp": permissions, "st": _iso(start) if start else "",
        "se": _iso(expiry), "spr": protocols, "sr": scope,
    }
    resource = f"/blob/{account.account_name}/{account.container}"
    if blob is not None:
        resource = f"{resource}/{blob}"
    if key is None:
        if not account.account_key:
            raise ValueError("an account key or a user delegation key signs a SAS")
        middle = [""]  # signedIdentifier: no stored access policy
        secret = account.account_key
    else:
        fields.update(skoid=key.signed_oid, sktid=key.signed_tid, skt=key.signed_start,
                      ske=key.signed_expiry, sks=key.signed_service, skv=key.signed_version)
        # the key's six fields, then the authorized / unauthorized object ids and correlation id
        middle = [key.signed_oid, key.signed_tid, key.signed_start, key.signed_expiry,
                  key.signed_service, key.signed_version, "", "", ""]
        secret = key.value
    string_to_sign = "\n".join([
        permissions, fields["st"], fields["se"], resource, *middle,
        "",  # signedIP
        protocols, SAS_VERSION, scope,
        "", "",  # snapshot time, encryption scope
        "", "", "", "", "",  # rscc, rscd, rsce, rscl, rsct
    ])
    digest = hmac.new(base64.b64decode(secret), string_to_sign.encode(), hashlib.sha256)
    fields["sig"] = base64.b64encode(digest.digest()).decode()
    return urllib.parse.urlencode({k: v for k, v in fields.items() if v}, safe=",:")


def user_delegation_key(
    account: StorageAccount, start: datetime.datetime, expiry: datetime.datetime
) -> UserDelegationKey:
    """Ask the account's blob service for a user delegation key with the user's own Azure AD
    token ("Get User Delegation Key"). Raises ``PermissionError`` when the identity may not."""
    token = account.credential.get_token(STORAGE_SCOPE).token
    body = (f"<?xml version=\"1.0\" encoding=\"utf-8\"?><KeyInfo><Start>{_iso(start)}</Start>"
            f"<Expiry>{_iso(expiry)}</Expiry></KeyInfo>").encode()
    request = urllib.request.Request(
        f"{account.blob_endpoint.rstrip('/')}/?restype=service&comp=userdelegationkey",
        data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "x-ms-version": SAS_VERSION,
                 "Content-Type": "application/xml"},
    )
    try:
        # a context of its own: the machine's trust store as it is now (SSL_CERT_FILE included)
        context = ssl.create_default_context()
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT, context=context) as answer:
            found = ElementTree.fromstring(answer.read())
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise PermissionError(f"HTTP {error.code}") from None
        raise
    text = {child.tag: child.text or "" for child in found}
    return UserDelegationKey(
        text["SignedOid"], text["SignedTid"], text["SignedStart"], text["SignedExpiry"],
        text["SignedService"], text["SignedVersion"], text["Value"],
    )


@dataclass(frozen=True)
class BlobPair:
    """One side's URLs for one direction's blobs: the first, then the ones it moves on to."""

    urls: tuple[str, ...]

    @property
    def first(self) -> str:
        return self.urls[0]


@dataclass
class RelayBlobs:
    """The relay's blobs for one debugged step, signed for each side.

    ``node_up`` / ``node_down`` go into the node's environment (:meth:`node_environment`);
    ``notebook_up`` / ``notebook_down`` stay in the notebook, for ``end.StorageRelay``.
    ``account`` signs again to delete them; ``expiry`` is when their tokens expire.
    """

    names: tuple[str, ...]  # every blob made, for the log and for delete
    node_up: BlobPair = field(repr=False)
    node_down: BlobPair = field(repr=False)
    notebook_up: BlobPair = field(repr=False)
    notebook_down: BlobPair = field(repr=False)
    account: StorageAccount = field(repr=False)
    expiry: datetime.datetime
    left_behind: str = field(default="", init=False)  # what the last delete() could not delete

    @property
    def folder(self) -> str:
        return self.names[0].rsplit("/", 1)[0]

    def node_environment(self) -> dict[str, str]:
        """The variables the node's relay reads: each direction's blob URLs, space-separated
        (a URL holds no space), the first one first."""
        return {
            RELAY_UP_VARIABLE: " ".join(self.node_up.urls),
            RELAY_DOWN_VARIABLE: " ".join(self.node_down.urls),
        }

    def notebook_chains(self) -> tuple[str, str]:
        """The notebook's up and down chains, as ``end.StorageRelay`` takes them."""
        return " ".join(self.notebook_up.urls), " ".join(self.notebook_down.urls)

    def delete(self) -> tuple[str, ...]:
        """Delete every blob of the relay with tokens signed now (the relay's own may have
        expired). Best effort, never raises: returns the names still there, and
        :attr:`left_behind` says in one line what stays and until when ("" when nothing does).
        """
        try:
            left, reason = _delete_blobs(self.account, self.names, _fresh_key(self.account))
        except Exception as error:  # no key to sign with: the user's identity was refused
            left, reason = list(self.names), first_line(error)
        self.left_behind = "" if not left else (
            f"{len(left)} of the storage relay's {len(self.names)} blobs stay in "
            f"{self.account.where}/{self.folder}/ ({reason}): their tokens expire "
            f"{_iso(self.expiry)}, then the next session's sweep deletes them"
        )
        return tuple(left)


def make_relay_blobs(
    account: StorageAccount, lifetime: float, step: str, *, chain_length: int = CHAIN_LENGTH,
    now: datetime.datetime | None = None,
) -> RelayBlobs:
    """Make the blobs of one step's relay in ``account`` and sign them for ``lifetime`` seconds.

    Raises ``DebugInputError`` naming the missing role when neither the account key nor a user
    delegation key can sign, or when the blobs cannot be made.
    """
    now = now or _now()
    start, expiry = now - CLOCK_SKEW, now + datetime.timedelta(seconds=lifetime)
    key = None
    if not account.account_key:
        key = _delegation_key(account, start, expiry)
    stamp = expiry.astimezone(datetime.timezone.utc).strftime(EXPIRY_IN_NAME)
    folder = f"{PREFIX}/{stamp}-{secrets.token_hex(8)}-{_safe(step)}"
    names_up = chain_names(f"{folder}/up", chain_length)
    names_down = chain_names(f"{folder}/down", chain_length)

    def pair(names: list[str], permissions: str) -> BlobPair:
        return BlobPair(tuple(
            f"{account.blob_url(name)}?"
            f"{sas_token(account, name, permissions, expiry, start=start, key=key)}"
            for name in names
        ))

    blobs = RelayBlobs(
        names=(*names_up, *names_down),
        node_up=pair(names_up, NODE_UP), node_down=pair(names_down, NODE_DOWN),
        notebook_up=pair(names_up, NOTEBOOK_UP), notebook_down=pair(names_down, NOTEBOOK_DOWN),
        account=account, expiry=expiry,
    )
    def create(url: str) -> None:
        blob = AppendBlob(url)
        try:
            blob.create()
        finally:
            blob.close()

    try:  # side by side: one round trip's time for all, not one each
        with concurrent.futures.ThreadPoolExecutor(max_workers=CREATE_TOGETHER) as pool:
            for _ in pool.map(create, (*blobs.notebook_up.urls, *blobs.notebook_down.urls)):
                pass
    except Exception as error:
        blobs.delete()
        reason = (f"cannot make the relay's blobs in {account.where} "
                  f"({first_line(error)})")
        raise RelayUnavailable(f"{reason}: {_role_needed(account)}", reason,
                               _role_needed(account)) from None
    return blobs


def sweep(
    account: StorageAccount, *, undated_after: float, now: datetime.datetime | None = None,
    page: int = LIST_PAGE,
) -> str:
    """Delete the blobs of every relay folder in ``account`` whose tokens have expired (what a
    killed kernel left); best effort, never raises: "" when done, else one line saying what
    stays.

    Only names under ``aml-debug-relay/`` are listed, and only folders named as
    :func:`make_relay_blobs` names them are deleted: ``<expiry>-<hex>-<step>`` once ``expiry``
    is :data:`CLOCK_SKEW` past (this machine's clock may run ahead); ``<hex>-<step>`` (named
    before the expiry was in the name) once none of its blobs has changed for ``undated_after``
    seconds, the longest its tokens lived. A live folder's tokens still work: it is kept.
    ``now`` is when expiry is judged (this machine's clock unless given); tokens are signed by
    the clock.
    """
    now = now or _now()
    try:
        key = _fresh_key(account)
        expired = _expired(_listed(account, key, page), now, undated_after)
        left, reason = _delete_blobs(account, expired, key)
    except Exception as error:
        return (f"the storage relay's expired blobs in {account.where} were not swept "
                f"({first_line(error)}); the next session tries again")
    if left:
        return (f"{len(left)} expired blobs of the storage relay stay in {account.where}/"
                f"{PREFIX}/ ({reason}); the next session tries again")
    return ""


def folder_expiry(
    folder: str, last_modified: datetime.datetime, undated_after: float
) -> datetime.datetime | None:
    """When a relay folder's tokens expire: from its name, or for a folder named without it,
    ``undated_after`` seconds after its blobs last changed; None for a name not the relay's.

    >>> at = datetime.datetime(2026, 12, 2, tzinfo=datetime.timezone.utc)
    >>> folder_expiry("20261202T120000Z-0123456789abcdef-train", at, 60).isoformat()
    '2026-12-02T12:00:00+00:00'
    >>> folder_expiry("0123456789abcdef-train", at, 60).isoformat()
    '2026-12-02T00:01:00+00:00'
    """
    dated = _DATED_FOLDER.fullmatch(folder)
    if dated:
        try:
            moment = datetime.datetime.strptime(dated["expiry"], EXPIRY_IN_NAME)
        except ValueError:
            return None
        return moment.replace(tzinfo=datetime.timezone.utc)
    if _UNDATED_FOLDER.fullmatch(folder):
        return last_modified + datetime.timedelta(seconds=undated_after)
    return None


def _expired(
    listed: Iterator[tuple[str, datetime.datetime]], now: datetime.datetime, undated_after: float
) -> list[str]:
    """The names of every blob of the listed relay folders whose tokens have expired."""
    folders: dict[str, list[tuple[str, datetime.datetime]]] = {}
    for name, modified in listed:
        parts = name.split("/")
        if len(parts) >= 3 and parts[0] == PREFIX:  # a folder's blob, never one beside them
            folders.setdefault(parts[1], []).append((name, modified))
    expired = []
    for folder, blobs in folders.items():
        expiry = folder_expiry(folder, max(modified for _, modified in blobs), undated_after)
        if expiry is not None and expiry + CLOCK_SKEW <= now:
            expired.extend(name for name, _ in blobs)
    return expired


def _listed(
    account: StorageAccount, key: UserDelegationKey | None, page: int
) -> Iterator[tuple[str, datetime.datetime]]:
    """Each blob under ``aml-debug-relay/`` and when it last changed ("List Blobs", with a
    container token that may list only)."""
    now = _now()
    token = sas_token(account, None, "l", now + DELETE_TOKEN, start=now - CLOCK_SKEW, key=key)
    container = f"{account.blob_endpoint.rstrip('/')}/{account.container}"
    marker = ""
    with _Connection(account) as connection:
        while True:
            query = urllib.parse.urlencode({
                "restype": "container", "comp": "list", "prefix": f"{PREFIX}/",
                "maxresults": page, **({"marker": marker} if marker else {}),
            })
            status, body = connection.send("GET", f"{container}?{query}&{token}")
            if status != 200:
                raise OSError(f"listing {PREFIX}/ answered HTTP {status}")
            answer = ElementTree.fromstring(body)
            for blob in answer.iter("Blob"):
                modified = blob.findtext("Properties/Last-Modified") or ""
                yield blob.findtext("Name") or "", email.utils.parsedate_to_datetime(modified)
            marker = answer.findtext("NextMarker") or ""
            if not marker:
                return


def _delete_blobs(
    account: StorageAccount, names: tuple[str, ...] | list[str], key: UserDelegationKey | None
) -> tuple[list[str], str]:
    """Delete ``names``, each with a delete-only token signed now; the names still there and
    why (a blob already gone counts as deleted). A network failure leaves the rest."""
    now = _now()
    start, expiry = now - CLOCK_SKEW, now + DELETE_TOKEN
    left: list[str] = []
    reason = ""
    with _Connection(account) as connection:
        for done, name in enumerate(names):
            token = sas_token(account, name, "d", expiry, start=start, key=key)
            try:
                status = connection.send("DELETE", f"{account.blob_url(name)}?{token}")[0]
            except OSError as error:
                return [*left, *names[done:]], reason or first_line(error)
            if status not in (202, 404):
                left.append(name)
                reason = reason or f"storage answered HTTP {status}"
    return left, reason


class _Connection:
    """Requests to the account's blob service on one kept-alive connection, each authorized by
    the SAS in its URL; a network failure raises OSError."""

    def __init__(self, account: StorageAccount) -> None:
        parts = urllib.parse.urlsplit(account.blob_endpoint)
        if parts.scheme == "https":
            # a context of its own: the machine's trust store as it is now (SSL_CERT_FILE too)
            self._connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.netloc, timeout=REQUEST_TIMEOUT, context=ssl.create_default_context())
        else:
            self._connection = http.client.HTTPConnection(parts.netloc, timeout=REQUEST_TIMEOUT)

    def send(self, method: str, url: str) -> tuple[int, bytes]:
        """One idempotent request (GET, DELETE): its status and body."""
        parts = urllib.parse.urlsplit(url)
        target = f"{parts.path}?{parts.query}"
        try:
            return self._once(method, target)
        except (ConnectionResetError, BrokenPipeError):
            self._connection.close()  # the service closed the kept-alive connection: once more
            return self._once(method, target)

    def _once(self, method: str, target: str) -> tuple[int, bytes]:
        try:
            self._connection.request(method, target, headers={"x-ms-version": SAS_VERSION})
            response = self._connection.getresponse()
            return response.status, response.read()
        except http.client.RemoteDisconnected:  # a ConnectionResetError too
            raise
        except http.client.HTTPException as error:
            self._connection.close()
            raise OSError(f"{method}: {type(error).__name__}") from None

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exception: object) -> None:
        self._connection.close()


def _fresh_key(account: StorageAccount) -> UserDelegationKey | None:
    """What signs a token made now to delete or list: the account key (None), else a user
    delegation key asked for now; raises when neither can be had."""
    now = _now()
    if account.account_key:
        return None
    if account.credential is None:
        raise PermissionError(f"{account.why_no_key or 'no account key'}, and no Azure AD "
                              "identity to sign with")
    return user_delegation_key(account, now - CLOCK_SKEW, now + DELETE_TOKEN)


def _delegation_key(
    account: StorageAccount, start: datetime.datetime, expiry: datetime.datetime
) -> UserDelegationKey:
    """The user delegation key, or one line naming the role that is missing."""
    if account.credential is None:
        reason = (f"cannot sign for {account.account_name}: "
                  f"{account.why_no_key or 'no account key'}, and no Azure AD identity to ask "
                  "for a user delegation key")
        raise RelayUnavailable(f"--via storage {reason}; {_role_needed(account)}", reason,
                               _role_needed(account))
    try:
        return user_delegation_key(account, start, expiry)
    except Exception as error:
        reason = (f"cannot sign for {account.account_name}: "
                  f"{account.why_no_key or 'no account key'}, and no user delegation key "
                  f"({first_line(error)})")
        raise RelayUnavailable(f"--via storage {reason}; {_role_needed(account)}", reason,
                               _role_needed(account)) from None


def _role_needed(account: StorageAccount) -> str:
    return (f"ask for the {MISSING_ROLE} role on storage account {account.account_name} "
            "(or the right to list the workspace's datastore secrets)")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _safe(step: str) -> str:
    """A step's name as a blob name part: letters, digits, ``-`` and ``_`` only."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in step)[:40] or "step"

# ---------------------------------------------------------------------------------------------
# The workspace's default datastore, by SDK


def account_of_v1(workspace: Any) -> StorageAccount:
    """The default datastore of an SDK v1 ``Workspace``, with its account key when the user may
    list its secrets, else the user's Azure AD identity (``azure.identity``, when installed)."""
    datastore = workspace.get_default_datastore()
    _check_blob(datastore, getattr(datastore, "datastore_type", None))
    key = getattr(datastore, "account_key", None)
    return StorageAccount(
        account_name=datastore.account_name,
        container=datastore.container_name,
        blob_endpoint=_endpoint(datastore),
        account_key=key or None,
        credential=None if key else _default_credential(),
        why_no_key="" if key else "the default datastore gave no account key",
    )


def account_of_v2(ml_client: Any) -> StorageAccount:
    """The default datastore of an SDK v2 ``MLClient``: ``get_default(include_secrets=True)``
    when the user may list its secrets, else the client's own credential signs."""
    datastores = ml_client.datastores
    why = ""
    try:
        datastore = datastores.get_default(include_secrets=True)
    except Exception as error:
        datastore = datastores.get_default()
        why = f"its secrets could not be listed ({first_line(error)})"
    _check_blob(datastore, getattr(datastore, "type", None))
    key = getattr(getattr(datastore, "credentials", None), "account_key", None)
    return StorageAccount(
        account_name=datastore.account_name,
        container=datastore.container_name,
        blob_endpoint=_endpoint(datastore),
        account_key=key or None,
        credential=None if key else getattr(ml_client, "_credential", None),
        why_no_key="" if key else why or "the default datastore gave no account key",
    )


def _check_blob(datastore: Any, kind: Any) -> None:
    """The relay's append blobs need a blob container: one line when the default datastore is
    another kind (a file share, a data lake). Both SDKs name a blob datastore's kind
    ``AzureBlob`` (SDK v2's as an enum's value)."""
    kind = str(getattr(kind, "value", kind) or "AzureBlob")
    if kind != "AzureBlob":
        name = getattr(datastore, "name", "") or "the default datastore"
        reason = f"the workspace's default datastore {name} is {kind}, not blob storage"
        remedy = ("make a blob datastore the workspace's default (workspaceblobstore is one) "
                  "for the storage relay")
        raise RelayUnavailable(f"--via storage cannot relay: {reason}; {remedy}", reason, remedy)


def _endpoint(datastore: Any) -> str:
    protocol = getattr(datastore, "protocol", None) or "https"
    suffix = getattr(datastore, "endpoint", None) or "core.windows.net"
    return f"{protocol}://{datastore.account_name}.blob.{suffix}"


def _default_credential() -> Any:
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        return None
    return DefaultAzureCredential()
