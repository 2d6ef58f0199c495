"""What every bench_*.py script measures and reports: peak memory of a case, and its targets.

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


def report_targets(checks: list[tuple[str, bool]]) -> int:
    """Print each target as met or MISSED; the script's exit code is 1 if any was missed."""
    print()
    for text, met in checks:
        print(f"- {'met' if met else 'MISSED'}: {text}")
    return 0 if all(met for _, met in checks) else 1
