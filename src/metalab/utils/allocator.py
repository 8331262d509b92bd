"""Keep freed memory in the process instead of handing it back to the system (glibc's malloc).

A meta-training step on a CPU allocates and frees the same large activations task after
task (a 5-way 15-query Conv4 pass holds 15 MB maps). glibc serves blocks above its mmap
threshold with fresh ``mmap`` pages and returns them on ``free``, trims freed memory at the
top of its heaps back to the system, and unmaps a thread's whole heap once it is empty:
every task then pays the kernel for zeroed pages again (tens of thousands of minor page
faults per meta-iteration). Raising the thresholds and the top padding keeps those blocks
for reuse, as a caching allocator does, at the cost of a resident size that stays near the
process's high-water mark.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from metalab.utils.errors import MetalabError

#: glibc's ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
#: the largest mmap threshold glibc accepts on 64-bit systems (``HEAP_MAX_SIZE / 2``)
MAX_MMAP_THRESHOLD = 32 * 2**20
#: freed memory at the top of a heap kept before glibc trims it
TRIM_THRESHOLD = 1 << 30
#: extra room requested whenever a heap grows (address space only until it is used); glibc keeps
#: an empty thread heap mapped while this much is to spare, i.e. always at 64 MB (``HEAP_MAX_SIZE``)
TOP_PAD = 64 * 2**20


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``mallopt``), else ``None``."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        return libc
    except (OSError, AttributeError):
        return None


def retain_freed_memory(mmap_threshold: int = MAX_MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Make glibc keep freed blocks of up to ``mmap_threshold`` bytes, up to ``trim_threshold``
    bytes of free heap and its threads' empty heaps for reuse; process-wide and permanent
    (``mallopt``; the top padding is :data:`TOP_PAD`).

    What :func:`metalab.train` and ``metalab train`` / ``metalab eval`` do first unless told
    not to (``TrainConfig.release_freed_memory``, ``--release-freed-memory``); measured by
    ``benchmarks/throughput.py`` (see docs/speed_and_exactness.md). Blocks larger than
    ``mmap_threshold`` still come from and go back to the system. Returns ``False`` (and
    changes nothing) where the C library is not glibc.
    """
    if not 0 < mmap_threshold <= MAX_MMAP_THRESHOLD:
        raise MetalabError(f"mmap_threshold must be between 1 and {MAX_MMAP_THRESHOLD} bytes (glibc's limit), "
                           f"got {mmap_threshold}")
    if not 0 < trim_threshold < 2**31:
        raise MetalabError(f"trim_threshold must be between 1 and {2**31 - 1} bytes, got {trim_threshold}")
    libc = _glibc()
    if libc is None:
        return False
    settings = {M_MMAP_THRESHOLD: mmap_threshold, M_TRIM_THRESHOLD: trim_threshold, M_TOP_PAD: TOP_PAD}
    if not all(libc.mallopt(param, value) for param, value in settings.items()):
        raise MetalabError(f"glibc refused mallopt(mmap_threshold={mmap_threshold}, trim_threshold={trim_threshold}, "
                           f"top_pad={TOP_PAD})")
    return True


def trim_freed_memory() -> bool:
    """Hand the free memory of every glibc heap back to the system now (``malloc_trim(0)``), the
    kept blocks of :func:`retain_freed_memory` included; ``False`` where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


class _MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2 (malloc.h, glibc 2.33 and later)
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def allocated_bytes() -> int | None:
    """Bytes glibc's malloc has handed out and not yet taken back, over all its heaps and mmapped blocks
    (``mallinfo2``: ``uordblks + hblkhd``): the live allocations (torch's CPU tensors among them), whatever
    freed memory the allocator keeps; ``None`` where the C library is not glibc 2.33 or later. Each call
    walks the allocator's free lists under its locks: a measurement, not for a hot loop."""
    mallinfo2 = _mallinfo2()
    if mallinfo2 is None:
        return None
    info = mallinfo2()
    return info.uordblks + info.hblkhd



@functools.lru_cache(maxsize=1)
def _mallinfo2():
    """glibc's ``mallinfo2`` with its return type set (once), or ``None`` where there is none."""
    libc = _glibc()
    mallinfo2 = getattr(libc, "mallinfo2", None) if libc is not None else None
    if mallinfo2 is not None:
        mallinfo2.restype = _MallInfo2
    return mallinfo2
