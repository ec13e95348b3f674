"""A simulated node with a network of its own: a Linux network namespace joined to this machine by
a veth pair, the node's end named ``eth0`` with a link-local address (169.254.0.0/16) and a
default route back to this machine, as a compute node has its NIC on the virtual network.

Needs root and ``ip`` (iproute2); without them ``node_network()`` skips the test with the reason.
Everything made (the namespace, the veth pair, processes left inside) is removed on exit, also
when the test fails.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

_counter = itertools.count(1)
# one file per /30 in use, named by its index and holding the pid that made it: test processes
# running side by side (and other test runs) never hand out the same link-local subnet
SUBNETS = Path(tempfile.gettempdir()) / "aml-debug-netns-subnets"


def _take_subnet() -> tuple[int, str, str]:
    """A /30 inside 169.254.1.0 - 169.254.253.255 nobody else holds: its index and its two
    addresses. Released with :func:`_release_subnet`."""
    SUBNETS.mkdir(exist_ok=True)
    while True:
        index = random.randrange(64, 254 * 64)  # 169.254.0.x is reserved by some stacks
        claim = SUBNETS / str(index)
        try:
            with open(claim, "x") as file:
                file.write(str(os.getpid()))
        except FileExistsError:
            try:
                holder = int(claim.read_text() or 0)
                os.kill(holder, 0)
                continue  # held by a live process
            except (ValueError, ProcessLookupError, FileNotFoundError):
                claim.unlink(missing_ok=True)  # its process is gone: free again
                continue
            except PermissionError:
                continue
        third, fourth = divmod(4 * index, 256)
        return index, f"169.254.{third}.{fourth + 1}", f"169.254.{third}.{fourth + 2}"


def _release_subnet(index: int) -> None:
    (SUBNETS / str(index)).unlink(missing_ok=True)


@dataclass(frozen=True)
class Node:
    namespace: str
    address: str  # the node's eth0
    gateway: str  # this machine's end of the pair
    host_end: str  # the name of this machine's end (for tc)

    @property
    def launcher(self) -> list[str]:
        """What runs a command on the node."""
        return ["ip", "netns", "exec", self.namespace]


def _ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", *(["-n", namespace] if namespace else []), *args]
    subprocess.run(command, check=True, capture_output=True, text=True)


def skip_without_namespaces() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a simulated node needs root and iproute2's ip (network namespaces)")


@contextmanager
def node_network() -> Iterator[Node]:
    """One simulated node; this machine reaches it at ``node.address``."""
    skip_without_namespaces()
    number = next(_counter)
    tag = f"{os.getpid() % 100000}x{number}"
    namespace, host_end = f"amldbg{tag}", f"amlh{tag}"[:15]
    subnet, gateway, address = _take_subnet()
    try:
        _ip("netns", "add", namespace)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("addr", "add", f"{gateway}/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("addr", "add", f"{address}/30", "dev", "eth0", namespace=namespace)
        _ip("link", "set", "eth0", "up", namespace=namespace)
        _ip("link", "set", "lo", "up", namespace=namespace)
        _ip("route", "add", "default", "via", gateway, namespace=namespace)
        yield Node(namespace, address, gateway, host_end)
    finally:
        _remove(namespace, host_end)
        _release_subnet(subnet)


def _remove(namespace: str, host_end: str) -> None:
    left = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    for pid in left.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    if host_end:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def namespaces() -> list[str]:
    """Network namespaces made by this process's helpers that still exist (none after a test;
    another test run on the machine has its own)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    ours = (f"amldbg{os.getpid() % 100000}x", f"amldbg{os.getpid() % 100000}c")
    return [line.split()[0] for line in listed.splitlines() if line.startswith(ours)]


@contextmanager
def side_client(node: Node) -> Iterator[Node]:
    """A third host joined to ``node`` only (a second link, its ``eth1``): somebody else on the
    cluster's network. Returns it as a Node whose ``address`` is its own and whose ``gateway``
    is the node's address on that link."""
    number = next(_counter)
    tag = f"{os.getpid() % 100000}c{number}"
    namespace, node_end = f"amldbg{tag}", f"eth{number % 9 + 1}"
    subnet, node_side, client = _take_subnet()
    try:
        _ip("netns", "add", namespace)
        _ip("link", "add", node_end, "netns", node.namespace, "type", "veth", "peer", "name",
            "eth0", "netns", namespace)
        _ip("addr", "add", f"{node_side}/30", "dev", node_end, namespace=node.namespace)
        _ip("link", "set", node_end, "up", namespace=node.namespace)
        _ip("addr", "add", f"{client}/30", "dev", "eth0", namespace=namespace)
        _ip("link", "set", "eth0", "up", namespace=namespace)
        yield Node(namespace, client, node_side, node_end)
    finally:
        subprocess.run(["ip", "-n", node.namespace, "link", "del", node_end], capture_output=True)
        _remove(namespace, "")
        _release_subnet(subnet)
