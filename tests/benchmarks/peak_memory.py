"""Peak resident memory of a benchmark case, for every bench_*.py script.

Linux keeps a high-water mark of RSS per process; writing 5 to ``/proc/self/clear_refs``
resets it (Linux >= 4.0), so the peak read after a case belongs to that case alone.
"""

from __future__ import annotations

import gc
import resource
from pathlib import Path


def peak_rss_mib() -> float:
    """The highest RSS since the last reset, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> float:
    """Reset the peak counter and return the current RSS in MiB (the case's baseline)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return peak_rss_mib()
