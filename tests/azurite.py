"""Azurite, the Azure Storage emulator: the blob store behind Azure ML's log URLs in tests.

Started on 127.0.0.1 with a free port by the ``azurite`` fixture; logs are append blobs read
through real SAS URLs over HTTP, as Azure ML's ``logFiles`` give them.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from servers import listening_line

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = "devstoreaccount1"
KEY = (  # Azurite's published development key
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def azurite_blob_command() -> str | None:
    local = REPO / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
    return str(local) if local.exists() else shutil.which("azurite-blob")


class Azurite:
    def __init__(self, endpoint: str) -> None:
        from azure.storage.blob import BlobServiceClient

        self.endpoint = endpoint
        self.service = BlobServiceClient(endpoint, credential={"account_name": ACCOUNT,
                                                               "account_key": KEY})
        self.container = self.service.get_container_client("azureml")
        self.container.create_container()

    def append_blob(self, name: str, text: str = "") -> AppendLog:
        blob = self.container.get_blob_client(name)
        blob.create_append_blob()
        log = AppendLog(self, name, blob)
        if text:
            log.append(text)
        return log

    def sas_url(self, name: str, *, expires_in: float = 3600) -> str:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        now = datetime.datetime.now(datetime.timezone.utc)
        expiry = now + datetime.timedelta(seconds=expires_in)
        token = generate_blob_sas(ACCOUNT, "azureml", name, account_key=KEY,
                                  permission=BlobSasPermissions(read=True), expiry=expiry)
        return f"{self.endpoint}/azureml/{name}?{token}"


class AppendLog:
    def __init__(self, azurite: Azurite, name: str, blob) -> None:
        self.azurite, self.name, self.blob = azurite, name, blob
        self.size = 0

    def append(self, text: str) -> None:
        data = text.encode()
        for start in range(0, len(data), 4 * 1024 * 1024):  # an append is at most 4 MiB
            self.blob.append_block(data[start : start + 4 * 1024 * 1024])
        self.size += len(data)

    def url(self, **options) -> str:
        return self.azurite.sas_url(self.name, **options)


def start_azurite(location: Path, host: str = "127.0.0.1") -> tuple[subprocess.Popen, Azurite]:
    """Start ``azurite-blob`` on ``host`` on a free port; end it with ``process.terminate()``."""
    command = azurite_blob_command()
    if command is None:
        raise FileNotFoundError("azurite-blob is not installed: run `bash scripts/test.sh`")
    process = subprocess.Popen(
        [command, "--blobHost", host, "--blobPort", "0", "--location", str(location),
         "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ},
    )
    found = listening_line(process, rf"listens on (http://{re.escape(host)}:\d+)", "Azurite")
    return process, Azurite(f"{found.group(1)}/{ACCOUNT}")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    if azurite_blob_command() is None:
        pytest.skip("azurite-blob is not installed: run `bash scripts/test.sh`, which installs it")
    pytest.importorskip("azure.storage.blob", reason="azure-storage-blob is a test dependency")
    process, started = start_azurite(tmp_path_factory.mktemp("azurite"))
    try:
        yield started
    finally:
        process.terminate()
        process.wait(10)
