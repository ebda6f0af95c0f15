"""Timing helpers shared by the benchmarks (not a test: speed is measured, never asserted)."""
import os
import platform
import time

import jax


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, jax {jax.__version__} "
            f"({jax.default_backend()}, {jax.device_count()} device(s))")


def timeit(fn, repeat: int = 10, warmup: int = 1) -> float:
    """Median seconds per call of fn() (results blocked on)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]
