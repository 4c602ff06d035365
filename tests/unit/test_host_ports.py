"""The host ports a VM's forwards get: given ones kept, new ones free and all different."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from postgressor.vm import machine


class KernelPorts:
    """socket.socket as the kernel hands out ports to bind(("127.0.0.1", 0)): here from a list, where a port
    can come back once its socket is closed (as the CI saw: 3000 and 8080 forwarded from the same host port)."""

    def __init__(self, handed_out: list[int]) -> None:
        self.handed_out, self.open = list(handed_out), set[int]()

    def __call__(self, *args: Any) -> Any:
        ports = self

        class Sock:
            port = 0

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: Any) -> None:
                ports.open.discard(self.port)

            def bind(self, address: tuple[str, int]) -> None:
                # a port still bound is never handed out again; a closed one may be
                self.port = next(p for p in ports.handed_out if p not in ports.open)
                ports.handed_out.remove(self.port)
                ports.open.add(self.port)

            def getsockname(self) -> tuple[str, int]:
                return ("127.0.0.1", self.port)

        return Sock()


def test_each_forward_gets_its_own_port_even_when_the_kernel_repeats_one(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = KernelPorts([47699, 47699, 51000, 52000, 47699, 53000])
    monkeypatch.setattr(machine.socket, "socket", kernel)
    ports = machine.host_ports([22, 80, 443, 3000])
    assert set(ports) == {22, 80, 443, 3000}
    assert len(set(ports.values())) == 4, ports
    assert not kernel.open  # every socket closed again, for QEMU to bind


def test_given_ports_are_kept_and_never_handed_to_another_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine.socket, "socket", KernelPorts([2222, 40001, 40002]))
    ports = machine.host_ports([22, 80, 443], {22: 2222})
    assert ports == {22: 2222, 80: 40001, 443: 40002}


def test_real_ports_are_free_and_different() -> None:
    ports = machine.host_ports(range(50))
    assert len(set(ports.values())) == 50
    for port in ports.values():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free again once chosen


def test_a_saved_pair_of_forwards_on_one_port_is_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """A state saved before host_ports (3000 and 8080 from one port) boots again with the second one moved."""
    monkeypatch.setattr(machine.socket, "socket", KernelPorts([47699, 51000]))
    ports = machine.host_ports([22, 3000, 8080], {22: 2222, 3000: 47699, 8080: 47699})
    assert ports == {22: 2222, 3000: 47699, 8080: 51000}
