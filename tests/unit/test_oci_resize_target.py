"""OCI resize: when an instance counts as at its new size (providers/oracle.py at_size)."""

from __future__ import annotations

from types import SimpleNamespace

from postgressor.providers.oracle import at_size


def instance(shape: str, ocpus: float, memory: float) -> SimpleNamespace:
    return SimpleNamespace(shape=shape, shape_config=SimpleNamespace(ocpus=ocpus, memory_in_gbs=memory))


def test_a_fixed_shape_is_reached_whatever_ocpus_the_request_carried() -> None:
    target = {"shape": "VM.Standard.E2.1.Micro", "ocpus": 4.0, "memory_gb": 24.0}  # from a Flex config
    assert at_size(instance("VM.Standard.E2.1.Micro", 1.0, 1.0), target)
    assert not at_size(instance("VM.Standard.A1.Flex", 4.0, 24.0), target)


def test_a_flex_shape_needs_its_ocpus_and_memory() -> None:
    target = {"shape": "VM.Standard.A1.Flex", "ocpus": 4.0, "memory_gb": 24.0}
    assert at_size(instance("VM.Standard.A1.Flex", 4.0, 24.0), target)
    assert not at_size(instance("VM.Standard.A1.Flex", 2.0, 12.0), target)  # not yet rebooted into it
