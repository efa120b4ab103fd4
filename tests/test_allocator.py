"""The allocator setting the CLI and the Lambda handler make for their process."""

from __future__ import annotations

import platform

from smartgo_exporter.allocator import unmap_large_blocks


def test_glibc_takes_the_fixed_mmap_threshold() -> None:
    assert platform.libc_ver()[0] == "glibc"  # these machines' C library: the case that matters
    assert unmap_large_blocks() is True
