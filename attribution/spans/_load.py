"""How an index's `.npy` arrays get into memory: the trade-off between RSS and tail latency.

A trace touches a few hundred scattered pages of the suffix and token arrays (binary searches
over hundreds of MB at 100M tokens). Where those pages are decides its tail:

- `map`: a lazy, read-only shared mapping. Opening costs nothing and nothing is resident
  until touched, but every page a query touches for the first time costs a page fault: a
  minor one (page-table fill, about a microsecond) when the page is in the page cache, a
  major one (a disk read) when it is not, e.g. after load or after the kernel reclaimed it.
- `populate`: the same shared mapping, prefaulted at open (huge pages where the kernel gives
  them, see `_prefault`): the kernel reads the whole file into the page cache and fills the
  page table, so traces take no faults while the pages stay cached. Memory is page cache,
  shared by every process that maps the same index (gateway workers) and reclaimable under
  pressure (the pages then fault back in). The default.
- `ram`: a private anonymous copy on transparent huge pages. Never faults and is never
  evicted (no swap here), and the first traces after an open cost what later ones do; but
  each process holds its own copy: RSS = index size per process, and opening reads it all.

Measured at 100M tokens (bench/README.md, "Span trace"): lazy `map` after the index left the
page cache takes ~110 faults per 256-token trace for the first hundred traces (wall p99 tens
of ms: disk reads); `populate` and `ram` take none.

`LOAD_MODES` lists them; `SPAN_INDEX_LOAD_ENV` chooses the default of `SpanIndex.open`.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

LOAD_MODES = ("map", "populate", "ram")
SPAN_INDEX_LOAD_ENV = "ROYALTY_SPAN_INDEX_LOAD"
DEFAULT_LOAD = "populate"
_HUGE_PAGE = 2 << 20


def default_load() -> str:
    mode = os.environ.get(SPAN_INDEX_LOAD_ENV, DEFAULT_LOAD)
    if mode not in LOAD_MODES:
        raise ValueError(f"{SPAN_INDEX_LOAD_ENV}={mode!r}: expected one of {LOAD_MODES}")
    return mode


def _header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


def _prefault(buf: mmap.mmap) -> None:
    """Read the whole mapping into the page cache and fill the page table now, by reading one
    byte of every page from this CPU.

    Huge pages first: pages the kernel reads in for a VM_HUGEPAGE mapping come as 2 MiB
    folios, mapped by one page-table entry each, so the random probes of a trace walk far
    fewer page tables (100M tokens, first 90 traces after an open over 4 KiB pages: CPU p50
    1.1-1.9 ms, against 0.25 ms once warm). Pages already cached in small folios stay small
    (hence a build drops what it wrote from the cache); correctness never depends on it.

    Why touch rather than MAP_POPULATE / MADV_POPULATE_READ: those fill the guest's page
    tables, yet on a virtual machine the first CPU access to each page still cost something
    the fault counters do not see (our guess: the hypervisor mapping it), ~1 ms CPU p50 on the
    first 90 traces in 2 of 4 runs against 0.26-0.30 ms after touching; and `mmap.madvise`
    holds the GIL (a 235 ms stall of the gateway's event loop at 100M tokens) where numpy's
    strided read releases it (20-30 ms), and takes 0.35 s instead of ~1 s."""
    if len(buf) >= _HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)
    int(np.frombuffer(buf, np.uint8)[:: mmap.PAGESIZE].sum())


def load_array(path: Path, mode: str) -> NDArray[Any]:
    """The 1-D array in the `.npy` file at `path`, read-only, loaded as `mode` says."""
    if mode not in LOAD_MODES:
        raise ValueError(f"load mode {mode!r}: expected one of {LOAD_MODES}")
    with open(path, "rb") as f:
        shape, fortran_order, dtype = _header(f)
        offset = f.tell()
        if len(shape) != 1 or dtype.hasobject:
            raise ValueError(f"expected a flat numeric array, got shape {shape} of {dtype}")
        count = int(shape[0])
        nbytes = count * dtype.itemsize
        if os.fstat(f.fileno()).st_size < offset + nbytes:
            raise ValueError(f"truncated: {nbytes} bytes of data expected after the header")
        if count == 0:
            arr: NDArray[Any] = np.empty(0, dtype)
        elif mode == "ram":
            # anonymous memory rounded up to whole huge pages, so THP can back all of it
            size = -(-nbytes // _HUGE_PAGE) * _HUGE_PAGE if nbytes >= _HUGE_PAGE else nbytes
            # private: shared anonymous memory would be shmem, which THP (madvise mode) skips
            buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            if size >= _HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
                buf.madvise(mmap.MADV_HUGEPAGE)
            view = memoryview(buf)[:nbytes]
            done = 0
            while done < nbytes:
                got = f.readinto(view[done:])
                if not got:
                    raise ValueError("truncated while reading")
                done += got
            view.release()
            arr = np.frombuffer(buf, dtype, count)
        elif mode == "populate":
            buf = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            _prefault(buf)
            arr = np.frombuffer(buf, dtype, count, offset)
        else:
            buf = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            arr = np.frombuffer(buf, dtype, count, offset)
    # frombuffer keeps `buf` alive through arr.base; the mapping outlives the closed file
    arr.flags.writeable = False
    return arr
