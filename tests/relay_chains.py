"""A relay session's blobs in Azurite, made and signed as the notebook makes them for a real
account: both chains of append blobs created first (the node's add-only token cannot create a
blob), each blob with its own blob-scoped SAS over http (``spr=https,http``).

In: Azurite's endpoint. Out: :class:`Chains`, the four chain strings ``relay_wire`` reads.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass

from azurite import ACCOUNT, KEY

from aml_debug_magics.node import relay_wire

CONTAINER = "azureml"


@dataclass(frozen=True)
class Chains:
    """One relay session's blobs, signed as the notebook signs them: the node's pair (add-only
    up, read-only down) and the notebook's pair (read up, create/write/delete down)."""

    node_up: str
    node_down: str
    notebook_up: str
    notebook_down: str


def make_chains(endpoint: str, length: int = 2) -> Chains:
    """Create every blob of both chains (``length`` blobs each) and sign each blob twice: with
    the node's permissions and with the notebook's."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient(endpoint, credential={"account_name": ACCOUNT, "account_key": KEY})
    container = service.get_container_client(CONTAINER)
    if not container.exists():
        container.create_container()
    session = f"relay/{uuid.uuid4().hex[:12]}"
    names = {direction: relay_wire.chain_names(f"{session}/{direction}", length)
             for direction in ("up", "down")}
    for name in names["up"] + names["down"]:
        container.get_blob_client(name).create_append_blob()

    def chain(direction: str, **permission: bool) -> str:
        return " ".join(signed_url(endpoint, name, **permission) for name in names[direction])

    return Chains(
        node_up=chain("up", add=True),
        node_down=chain("down", read=True),
        notebook_up=chain("up", read=True),
        notebook_down=chain("down", create=True, write=True, delete=True),
    )


def signed_url(endpoint: str, name: str, **permission: bool) -> str:
    """The blob's URL with a blob-scoped SAS granting ``permission`` for an hour, over http too."""
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    token = generate_blob_sas(ACCOUNT, CONTAINER, name, account_key=KEY, expiry=expiry,
                              permission=BlobSasPermissions(**permission), protocol="https,http")
    return f"{endpoint}/{CONTAINER}/{name}?{token}"
