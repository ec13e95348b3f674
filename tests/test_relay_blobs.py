"""The storage relay's blobs and tokens, against Azurite, which checks SAS signatures and
permissions (tokens say ``spr=https,http``, so they work over Azurite's plain HTTP).

Signing is ours (standard library HMAC, ``targets/relay_blobs.py``); what a token may do is
checked with azure-storage-blob's own clients, so the test does not agree with the code by
construction. The workspace's control plane (the default datastore and its secrets) is the only
stand-in: small objects with the SDKs' attribute names.
"""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import subprocess
import time
import types
import urllib.parse

import pytest
from azurite import ACCOUNT, KEY

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.targets import relay_blobs
from aml_debug_magics.targets.relay_blobs import StorageAccount, make_relay_blobs, sas_token

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
    found = relay_blobs.account_of_v1(v1)
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
    found = relay_blobs.account_of_v2(v2)
    assert found.blob_endpoint == "https://wsstore.blob.core.chinacloudapi.cn"
    assert found.account_key is None and found.credential is credential
    assert "listSecrets" in found.why_no_key


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
