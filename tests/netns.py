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
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

_counter = itertools.count(1)


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
    subnet = 4 * ((os.getpid() * 7 + number) % 16000)  # a /30 inside 169.254.0.0/16
    third, fourth = divmod(subnet, 256)
    third += 1  # 169.254.0.x is reserved by some stacks
    gateway, address = f"169.254.{third}.{fourth + 1}", f"169.254.{third}.{fourth + 2}"
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
    third, fourth = divmod(4 * ((os.getpid() * 11 + number + 8000) % 16000), 256)
    third += 1
    node_side, client = f"169.254.{third}.{fourth + 1}", f"169.254.{third}.{fourth + 2}"
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
