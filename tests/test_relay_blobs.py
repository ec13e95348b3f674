"""The storage relay's blobs and tokens, against Azurite, which checks SAS signatures,
permissions, expiry and protocol (``spr``: a token for Azurite's plain ``http`` endpoint says
``https,http``; one for an ``https`` endpoint, ``https``, and Azurite refuses it over HTTP).

Signing is ours (standard library HMAC, ``relay/blobs.py``); what a token may do is
checked with azure-storage-blob's own clients, and the folders a sweep finds are planted and
counted with them, so the test does not agree with the code by construction. The workspace's
control plane (the default datastore and its secrets) is the only stand-in: small objects with
the SDKs' attribute names.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import secrets
import shutil
import socket
import subprocess
import time
import types
import urllib.parse
from pathlib import Path

import pytest
from azurite import ACCOUNT, KEY
from conftest import wait_for

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.records import StepSpec
from aml_debug_magics.relay import blobs
from aml_debug_magics.relay import paths as relay_paths
from aml_debug_magics.relay.blobs import (
    CLOCK_SKEW,
    StorageAccount,
    folder_expiry,
    make_relay_blobs,
    sas_token,
    sweep,
)
from aml_debug_magics.relay.paths import LONGEST_TOKEN, RelayPaths

blob_sdk = pytest.importorskip("azure.storage.blob", reason="azure-storage-blob is a test "
                               "dependency")
from azure.core.exceptions import HttpResponseError  # noqa: E402


def account_of(azurite, **changes) -> StorageAccount:
    base = StorageAccount(ACCOUNT, "azureml", azurite.endpoint, account_key=KEY)
    return StorageAccount(**{**vars(base), **changes})


def blob(url: str):
    return blob_sdk.BlobClient.from_blob_url(url)


def refused(call) -> int:
    """The HTTP status Azurite refused ``call`` with (the test fails if it was allowed)."""
    with pytest.raises(HttpResponseError) as refusal:
        call()
    return refusal.value.status_code


@pytest.fixture
def relay(azurite):
    made = make_relay_blobs(account_of(azurite), lifetime=600, step="train", chain_length=3)
    yield made
    made.delete()


def test_the_node_appends_to_up_and_reads_down_and_nothing_else(azurite, relay):
    node_up, node_down = blob(relay.node_up.first), blob(relay.node_down.first)
    notebook_up, notebook_down = blob(relay.notebook_up.first), blob(relay.notebook_down.first)

    node_up.append_block(b"Content-Length: 2\r\n\r\n{}")
    notebook_down.append_block(b"from the notebook")

    assert notebook_up.download_blob().readall() == b"Content-Length: 2\r\n\r\n{}"
    assert node_down.download_blob().readall() == b"from the notebook"
    assert refused(lambda: node_up.download_blob().readall()) == 403  # cannot read what it sent
    assert refused(lambda: node_down.append_block(b"step in")) == 403  # cannot drive itself
    assert refused(lambda: node_down.delete_blob()) == 403
    assert refused(lambda: node_up.delete_blob()) == 403
    assert refused(lambda: node_up.upload_blob(b"x", overwrite=True)) == 403
    assert refused(lambda: notebook_up.append_block(b"x")) == 403  # up is the node's to write


def test_every_blob_a_direction_moves_on_to_is_made_and_signed_for_it_alone(azurite, relay):
    assert len(relay.node_up.urls) == len(relay.node_down.urls) == 3
    for up, down in zip(relay.node_up.urls[1:], relay.node_down.urls[1:], strict=True):
        blob(up).append_block(b"later")
        assert blob(down).download_blob().readall() == b""
    # a token names one blob: the first up blob's signature does not open the next one
    first_query = relay.node_up.first.partition("?")[2]
    second_path = relay.node_up.urls[1].partition("?")[0]
    assert refused(lambda: blob(f"{second_path}?{first_query}").append_block(b"x")) == 403
    names = [urllib.parse.unquote(u.partition("?")[0].rsplit("/azureml/", 1)[1])
             for u in relay.notebook_up.urls]
    assert names[0].endswith("-train/up") and names[1].endswith("/up.1")
    assert set(names) <= set(relay.names)


def test_a_changed_signature_or_an_expired_token_is_refused(azurite, relay):
    url = relay.node_up.first
    forged = url.replace("sp=a", "sp=racwd")
    assert refused(lambda: blob(forged).download_blob().readall()) == 403
    account = account_of(azurite)
    name = relay.names[0]
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
    expired = f"{account.blob_url(name)}?{sas_token(account, name, 'a', past)}"
    assert refused(lambda: blob(expired).append_block(b"x")) == 403


def test_delete_removes_every_blob(azurite):
    made = make_relay_blobs(account_of(azurite), lifetime=600, step="prep", chain_length=2)
    container = azurite.container
    folder = made.names[0].rsplit("/", 1)[0]
    assert sorted(b.name for b in container.list_blobs(name_starts_with=folder)) == sorted(
        made.names)
    made.delete()
    assert list(container.list_blobs(name_starts_with=folder)) == []
    made.delete()  # again: nothing left, nothing said


def test_the_node_environment_holds_each_directions_urls_in_order(relay):
    environment = relay.node_environment()
    assert environment["AML_DEBUG_RELAY_UP"].split(" ") == list(relay.node_up.urls)
    assert environment["AML_DEBUG_RELAY_DOWN"].split(" ") == list(relay.node_down.urls)


class RefusingCredential:
    """A user's Azure AD identity as a token credential: Azurite without OAuth refuses it, as
    an account refuses a user without a data role."""

    def get_token(self, *scopes):
        return types.SimpleNamespace(token="not-a-token-for-this-account", expires_on=0)


def test_without_a_key_or_a_delegation_one_line_names_the_missing_role(azurite):
    no_key = account_of(azurite, account_key=None, why_no_key="no right to list its secrets")
    with pytest.raises(DebugInputError) as error:
        make_relay_blobs(no_key, lifetime=60, step="train")
    assert "Storage Blob Data Contributor" in str(error.value)
    assert ACCOUNT in str(error.value) and "\n" not in str(error.value)

    refused_user = account_of(azurite, account_key=None, credential=RefusingCredential())
    with pytest.raises(DebugInputError) as error:
        make_relay_blobs(refused_user, lifetime=60, step="train")
    assert "Storage Blob Data Contributor" in str(error.value)
    assert "user delegation key" in str(error.value) and "\n" not in str(error.value)


def test_a_key_that_does_not_sign_for_the_account_says_so_without_a_signature(azurite):
    wrong = account_of(azurite, account_key=base64.b64encode(b"not the key" * 6).decode())
    with pytest.raises(DebugInputError) as error:
        make_relay_blobs(wrong, lifetime=60, step="train")
    assert "cannot make the relay's blobs" in str(error.value)
    assert "sig=" not in str(error.value)


def test_the_default_datastore_of_either_sdk_gives_the_account():
    """The control plane's answers as the SDKs shape them: SDK v1's AzureBlobDatastore
    (``account_key``), SDK v2's (``credentials.account_key``; ``include_secrets`` refused when
    the user may not list secrets)."""
    v1 = types.SimpleNamespace(get_default_datastore=lambda: types.SimpleNamespace(
        account_name="wsstore", container_name="azureml-blobstore-1", account_key=KEY,
        endpoint="core.windows.net", protocol="https"))
    found = blobs.account_of_v1(v1)
    assert (found.blob_endpoint, found.container, found.account_key) == (
        "https://wsstore.blob.core.windows.net", "azureml-blobstore-1", KEY)

    class Datastores:
        def get_default(self, include_secrets=False):
            if include_secrets:
                raise PermissionError("AuthorizationFailed: listSecrets")
            return types.SimpleNamespace(account_name="wsstore", container_name="c",
                                         endpoint="core.chinacloudapi.cn", protocol="https",
                                         credentials=None)

    credential = RefusingCredential()
    v2 = types.SimpleNamespace(datastores=Datastores(), _credential=credential)
    found = blobs.account_of_v2(v2)
    assert found.blob_endpoint == "https://wsstore.blob.core.chinacloudapi.cn"
    assert found.account_key is None and found.credential is credential
    assert "listSecrets" in found.why_no_key


def query_of(url: str) -> dict[str, str]:
    """A SAS URL's (or a bare token's) signed fields."""
    return dict(urllib.parse.parse_qsl(url.rpartition("?")[2]))


def expired(url: str, **options) -> bool:
    """Whether Azurite now refuses the notebook's read token of ``url`` (403)."""
    try:
        blob_sdk.BlobClient.from_blob_url(url, **options).get_blob_properties()
    except HttpResponseError as refusal:
        return refusal.status_code == 403
    return False


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def test_a_token_for_an_https_endpoint_is_refused_over_http(azurite, relay):
    """Azurite checks a token's ``spr`` against the request's scheme: the same blob, read over
    HTTP with a token signed for the account's ``https`` endpoint, is refused, and with one for
    its ``http`` endpoint (Azurite's own), read."""
    relay_urls = (*relay.node_up.urls, *relay.node_down.urls, *relay.notebook_up.urls,
                  *relay.notebook_down.urls)
    assert {query_of(url)["spr"] for url in relay_urls} == {"https,http"}
    name, expiry = relay.names[0], utc_now() + datetime.timedelta(minutes=10)
    over_http = account_of(azurite)
    over_https = account_of(azurite, blob_endpoint=azurite.endpoint.replace("http:", "https:"))
    https_only = sas_token(over_https, name, "r", expiry)
    assert query_of(https_only)["spr"] == "https"

    url = over_http.blob_url(name)
    assert blob(f"{url}?{sas_token(over_http, name, 'r', expiry)}").download_blob().readall() == b""
    with pytest.raises(HttpResponseError) as refusal:
        blob(f"{url}?{https_only}").download_blob().readall()
    assert refusal.value.status_code == 403
    assert refusal.value.error_code == "AuthorizationProtocolMismatch"


def test_blobs_whose_tokens_expired_are_still_deleted(azurite):
    """The relay's own tokens live three seconds here: once Azurite refuses them, delete()
    still deletes every blob, with tokens it signs then."""
    made = make_relay_blobs(account_of(azurite), lifetime=3, step="late", chain_length=2)
    signed_expiry = query_of(made.notebook_down.first)["se"]  # 2026-12-02T12:00:00Z
    folder = made.folder.split("/")[1]
    assert folder.startswith(signed_expiry.replace("-", "").replace(":", ""))  # its name says it
    assert folder_expiry(folder, utc_now(), 0) == made.expiry.replace(microsecond=0)

    wait_for(lambda: expired(made.notebook_up.first), 30, "the relay's tokens to expire")
    assert refused(lambda: blob(made.notebook_down.first).delete_blob()) == 403  # its own
    assert made.delete() == () and made.left_behind == ""
    assert list(azurite.container.list_blobs(name_starts_with=f"{made.folder}/")) == []


def test_a_delete_that_cannot_sign_says_in_one_line_what_stays_and_until_when(azurite):
    """The account key was changed since the blobs were made: nothing is deleted, nothing is
    raised, and one line names the folder and the moment the next session's sweep may have it."""
    made = make_relay_blobs(account_of(azurite), lifetime=600, step="train", chain_length=2)
    rotated = dataclasses.replace(made, account=account_of(
        azurite, account_key=base64.b64encode(b"a rotated key" * 5).decode()))
    assert rotated.delete() == made.names
    line = rotated.left_behind
    assert f"4 of the storage relay's 4 blobs stay in {ACCOUNT}/azureml/{made.folder}/" in line
    assert query_of(made.notebook_up.first)["se"] in line and "sweep" in line
    assert "\n" not in line and "sig=" not in line
    assert len(list(azurite.container.list_blobs(name_starts_with=f"{made.folder}/"))) == 4
    assert made.delete() == ()


# -- the sweep: what earlier sessions left, in a container of its own --------------------------


@pytest.fixture
def workspace(azurite):
    """An account whose container holds only what the test puts there."""
    name = f"sweep-{secrets.token_hex(4)}"
    container = azurite.service.create_container(name)
    yield StorageAccount(ACCOUNT, name, azurite.endpoint, account_key=KEY), container
    container.delete_container()


def relay_folder(expiry: datetime.datetime | None, step: str = "train") -> str:
    """A relay folder's name as documented: its tokens' expiry first (UTC), or, as folders
    were named before, a random hex first."""
    random = secrets.token_hex(8)
    if expiry is None:
        return f"aml-debug-relay/{random}-{step}"
    stamp = expiry.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"aml-debug-relay/{stamp}-{random}-{step}"


def plant(container, *names: str) -> None:
    for name in names:
        container.get_blob_client(name).create_append_blob()


def names_in(container) -> list[str]:
    return sorted(b.name for b in container.list_blobs())


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_sweep_deletes_the_folders_whose_tokens_expired_and_nothing_else(workspace):
    account, container = workspace
    now = utc_now()
    gone = [relay_folder(now - datetime.timedelta(hours=1)),
            relay_folder(now - datetime.timedelta(days=3), "prep")]
    plant(container, *(f"{folder}/{name}" for folder in gone for name in ("up", "up.1", "down")))
    live = make_relay_blobs(account, lifetime=600, step="train", chain_length=2)
    just_expired = relay_folder(now - datetime.timedelta(minutes=1))  # this clock may be ahead
    undated = relay_folder(None)  # named before the expiry was in the name, written just now
    same_name_elsewhere = gone[0].split("/")[1]
    kept = [f"{just_expired}/up", f"{undated}/up", f"{undated}/down",
            "aml-debug-relay/notes.txt", "aml-debug-relay/not-a-relay-folder/up",
            f"aml-debug-relay-old/{same_name_elsewhere}/up",
            f"azureml/ExperimentRun/{same_name_elsewhere}/up",
            "azureml/ExperimentRun/dcid.1/logs/std_log.txt"]
    plant(container, *kept)

    assert sweep(account, undated_after=LONGEST_TOKEN) == ""
    assert names_in(container) == sorted([*kept, *live.names])
    blob(live.node_up.first).append_block(b"still relaying")  # the live relay's tokens work


def test_a_folder_named_without_its_expiry_goes_once_unchanged_for_the_longest_token(workspace):
    """Such a folder is judged by its blobs' Last-Modified: the sweep is told a later moment
    to judge at, rather than waiting seven days."""
    account, container = workspace
    undated = relay_folder(None)
    plant(container, f"{undated}/up", f"{undated}/down")
    month = make_relay_blobs(account, lifetime=30 * 24 * 3600, step="long", chain_length=1)
    outside = "azureml/ExperimentRun/dcid.1/logs/std_log.txt"
    plant(container, outside)
    week = utc_now() + datetime.timedelta(seconds=LONGEST_TOKEN)

    assert sweep(account, undated_after=LONGEST_TOKEN,
                 now=week - datetime.timedelta(hours=1)) == ""
    assert names_in(container) == sorted([outside, f"{undated}/up", f"{undated}/down",
                                          *month.names])
    assert sweep(account, undated_after=LONGEST_TOKEN,
                 now=week + CLOCK_SKEW + datetime.timedelta(minutes=1)) == ""
    assert names_in(container) == sorted([outside, *month.names])


def test_a_sweep_reads_every_page_of_the_listing(workspace):
    account, container = workspace
    past = utc_now() - datetime.timedelta(hours=2)
    plant(container, *(f"{relay_folder(past, f'step{i}')}/up" for i in range(5)), "azureml/kept")
    assert sweep(account, undated_after=LONGEST_TOKEN, page=2) == ""
    assert names_in(container) == ["azureml/kept"]


def test_a_sweep_that_cannot_list_says_so_in_one_line_and_deletes_nothing(workspace):
    account, container = workspace
    leftover = f"{relay_folder(utc_now() - datetime.timedelta(hours=1))}/up"
    plant(container, leftover)
    wrong_key = dataclasses.replace(account, account_key=base64.b64encode(b"wrong" * 13).decode())
    no_signer = dataclasses.replace(account, account_key=None, why_no_key="no right to list "
                                    "its secrets")
    unreachable = dataclasses.replace(account,
                                      blob_endpoint=f"http://127.0.0.1:{closed_port()}/{ACCOUNT}")
    for broken in (wrong_key, no_signer, unreachable):
        line = sweep(broken, undated_after=LONGEST_TOKEN)
        assert line.startswith(f"the storage relay's expired blobs in {ACCOUNT}/"
                               f"{account.container} were not swept (")
        assert "\n" not in line and "sig=" not in line
    assert "no right to list its secrets" in sweep(no_signer, undated_after=LONGEST_TOKEN)
    assert names_in(container) == [leftover]


def debugged(name: str) -> StepSpec:
    return StepSpec(name, Path("."), "train.py")


def test_the_first_prepare_in_a_workspace_sweeps_it_once_a_session(workspace):
    account, container = workspace
    swept: set[tuple[str, str]] = set()
    notes: list[str] = []
    first_leftover = f"{relay_folder(utc_now() - datetime.timedelta(hours=1))}/up"
    plant(container, first_leftover)
    first = RelayPaths(lambda: account, 60, notes, swept=swept)
    first.prepare([debugged("train")])
    assert first_leftover not in names_in(container)

    second_leftover = f"{relay_folder(utc_now() - datetime.timedelta(hours=1))}/up"
    plant(container, second_leftover)
    second = RelayPaths(lambda: account, 60, notes, swept=swept)
    second.prepare([debugged("train")])
    assert second_leftover in names_in(container)  # one listing per workspace and session
    assert notes == []
    assert first.close() == "" and second.close() == ""
    assert names_in(container) == [second_leftover]


def test_a_sweep_that_fails_adds_one_note_and_the_blobs_are_still_made(workspace, monkeypatch):
    """The sweep alone is sent to an address that refuses connections; the relay's blobs are
    made in the real container."""
    account, container = workspace
    refusing = f"http://127.0.0.1:{closed_port()}/{ACCOUNT}"
    real_sweep = relay_paths.sweep
    monkeypatch.setattr(relay_paths, "sweep", lambda account, **options: real_sweep(
        dataclasses.replace(account, blob_endpoint=refusing), **options))
    notes: list[str] = []
    paths = RelayPaths(lambda: account, 60, notes, swept=set())
    variables = paths.prepare([debugged("train")])
    assert len(notes) == 1 and "were not swept" in notes[0]
    assert set(variables["train"]) == {"AML_DEBUG_RELAY_UP", "AML_DEBUG_RELAY_DOWN"}
    assert names_in(container) == sorted(paths.blobs[("train", 0, "start")].names)
    assert paths.close() == ""
    assert names_in(container) == []


# -- signing with a user delegation key: Azurite with OAuth, over HTTPS --------------------------


class AzureADUser:
    """A token credential for the user's own Azure AD identity. Azurite's ``--oauth basic``
    checks a token's issuer, audience and lifetime, not who signed it (there is no Azure AD
    here); it grants any role, so this is the path of a user who may not list secrets but
    holds a data role on the account."""

    def get_token(self, *scopes):
        assert scopes == ("https://storage.azure.com/.default",), scopes
        now = int(time.time())
        claims = {"aud": "https://storage.azure.com", "iss": f"https://sts.windows.net/{TENANT}/",
                  "nbf": now - 60, "iat": now - 60, "exp": now + 3600, "oid": USER,
                  "tid": TENANT}
        parts = [{"alg": "RS256", "typ": "JWT"}, claims]
        token = ".".join(base64.urlsafe_b64encode(json.dumps(p).encode()).decode().rstrip("=")
                         for p in parts) + ".c2lnbmF0dXJl"
        return types.SimpleNamespace(token=token, expires_on=now + 3600)


TENANT, USER = "72f988bf-86f1-41af-91ab-2d7cd011db47", "11059fcc-5514-4800-b5f8-49808b9cfab6"


@pytest.fixture(scope="module")
def azurite_oauth(tmp_path_factory):
    """A second Azurite, with OAuth on (it needs HTTPS): a self-signed certificate for
    127.0.0.1, trusted by this process through ``SSL_CERT_FILE``."""
    from azurite import azurite_blob_command
    from servers import listening_line

    command = azurite_blob_command()
    if command is None or shutil.which("openssl") is None:
        pytest.skip("needs azurite-blob and openssl")
    folder = tmp_path_factory.mktemp("azurite-oauth")
    certificate, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(certificate)], check=True,
                   capture_output=True)
    process = subprocess.Popen(
        [command, "--blobHost", "127.0.0.1", "--blobPort", "0", "--location", str(folder),
         "--oauth", "basic", "--cert", str(certificate), "--key", str(key),
         "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        found = listening_line(process, r"listens on (https://127\.0\.0\.1:\d+)", "Azurite")
        endpoint = f"{found.group(1)}/{ACCOUNT}"
        service = blob_sdk.BlobServiceClient(
            endpoint, credential={"account_name": ACCOUNT, "account_key": KEY},
            connection_verify=str(certificate))
        service.create_container("azureml")
        yield endpoint, str(certificate)
    finally:
        process.terminate()
        process.wait(10)


def test_without_the_account_key_a_user_delegation_key_signs_and_the_tokens_hold(
    azurite_oauth, monkeypatch
):
    endpoint, certificate = azurite_oauth
    monkeypatch.setenv("SSL_CERT_FILE", certificate)  # the relay's own HTTPS trusts Azurite's
    account = StorageAccount(ACCOUNT, "azureml", endpoint, credential=AzureADUser(),
                             why_no_key="no right to list its secrets")
    made = make_relay_blobs(account, lifetime=600, step="train", chain_length=2)
    try:
        assert "skoid=" + USER in made.node_up.first  # signed by the user's delegation key
        every_url = (*made.node_up.urls, *made.node_down.urls, *made.notebook_up.urls,
                     *made.notebook_down.urls)
        assert {query_of(url)["spr"] for url in every_url} == {"https"}  # and used over HTTPS

        def blob(url):
            return blob_sdk.BlobClient.from_blob_url(url, connection_verify=certificate)

        blob(made.node_up.first).append_block(b"up")
        blob(made.notebook_down.first).append_block(b"down")
        assert blob(made.notebook_up.first).download_blob().readall() == b"up"
        assert blob(made.node_down.first).download_blob().readall() == b"down"
        assert refused(lambda: blob(made.node_down.first).append_block(b"x")) == 403
        assert refused(lambda: blob(made.node_up.first).download_blob().readall()) == 403
        forged = made.node_up.first.replace(f"skoid={USER}", "skoid=" + "0" * 36)
        assert refused(lambda: blob(forged).append_block(b"x")) == 403
    finally:
        made.delete()


def test_with_a_user_delegation_key_expired_blobs_are_deleted_and_swept(
    azurite_oauth, monkeypatch
):
    """delete() and the sweep ask for a user delegation key of their own when they run: the
    relay's tokens have expired by then."""
    endpoint, certificate = azurite_oauth
    monkeypatch.setenv("SSL_CERT_FILE", certificate)
    account = StorageAccount(ACCOUNT, "azureml", endpoint, credential=AzureADUser(),
                             why_no_key="no right to list its secrets")
    container = blob_sdk.BlobServiceClient(
        endpoint, credential={"account_name": ACCOUNT, "account_key": KEY},
        connection_verify=certificate).get_container_client("azureml")
    made = make_relay_blobs(account, lifetime=3, step="late", chain_length=2)
    wait_for(lambda: expired(made.notebook_up.first, connection_verify=certificate), 30,
             "the relay's tokens to expire")
    assert made.delete() == () and made.left_behind == ""
    assert list(container.list_blobs(name_starts_with=f"{made.folder}/")) == []

    leftover = f"{relay_folder(utc_now() - datetime.timedelta(hours=1))}/up"
    live = f"{relay_folder(utc_now() + datetime.timedelta(hours=1))}/up"
    plant(container, leftover, live)
    assert sweep(account, undated_after=LONGEST_TOKEN) == ""
    assert [b.name for b in container.list_blobs(name_starts_with="aml-debug-relay/")] == [live]
    container.delete_blob(live)
