"""The malloc a timing command runs with: tcmalloc where it is installed, arranged by vitprune itself.

At large batches on a CPU, glibc's malloc hands big freed buffers back to the OS and takes fresh
ones whose first touch page-faults, in a pattern that depends on everything allocated before: the
same block costs a third more in one process state than in another (docs/latency.md, "The
allocator"), and a table timed in one state prices models timed in another 20% low. A caching
allocator reuses its memory. So every command that times models on this machine (or runs the
service, whose workers time them) re-executes itself once with tcmalloc preloaded when the library
is installed (Debian: `libtcmalloc-minimal4`), and says so on stderr; tables record the allocator in
their runtime. `VITPRUNE_MALLOC=system` keeps glibc's malloc.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Sequence

__all__ = ["TIMING_COMMANDS", "arrange"]

TIMING_COMMANDS = frozenset({"profile", "devices", "lut", "search", "worker", "serve", "prune", "evaluate", "latency"})
"""Commands that time models here, start processes that do, or read the tables timed (cached per allocator)."""
LIBRARIES = ("tcmalloc_minimal", "tcmalloc")


def arrange(command: str, argv: Sequence[str]) -> None:
    """Re-execute `vitprune <argv>` with tcmalloc preloaded, if `command` times models, no caching
    allocator is preloaded already, the user has not asked for the system's, and tcmalloc is installed.
    Returns only when it does not re-execute."""
    if command not in TIMING_COMMANDS or os.environ.get("VITPRUNE_MALLOC") in ("system", "arranged"):
        return
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("tcmalloc", "jemalloc", "mimalloc")) or sys.platform != "linux":
        return
    library = next((found for name in LIBRARIES if (found := ctypes.util.find_library(name))), None)
    if library is None:
        print(
            "vitprune: timing with glibc's malloc; install tcmalloc (Debian: libtcmalloc-minimal4) for steady "
            "timings at large batches, and vitprune uses it (docs/latency.md, 'The allocator')",
            file=sys.stderr,
        )
        return
    print(
        f"vitprune: timing with tcmalloc ({library}, preloaded; VITPRUNE_MALLOC=system keeps glibc's)", file=sys.stderr
    )
    env = os.environ | {"LD_PRELOAD": f"{preload} {library}".strip(), "VITPRUNE_MALLOC": "arranged"}
    os.execve(sys.executable, [sys.executable, "-m", "vitprune", *argv], env)
