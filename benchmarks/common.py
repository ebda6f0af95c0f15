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


def timeit(fn, repeat: int = 10, warmup: int = 1, stat: str = "median") -> float:
    """Median (stat='min': fastest) seconds per call of fn() (results blocked on)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    times.sort()
    return times[0] if stat == "min" else times[len(times) // 2]


def synthetic_photo(face_rgb, height: int, width: int, seed: int = 0):
    """A (height, width, 3) uint8 one-face photo: `face_rgb` (a real photo with one face) pasted at
    1/3 of the width and height of a smooth noisy gray background (no other face-like structure).
    A face photo at least as large as the canvas is returned resized to it (Pillow, Lanczos)."""
    import numpy as np
    from PIL import Image, ImageFilter

    fh, fw = face_rgb.shape[:2]
    if fh >= height and fw >= width:
        return np.asarray(Image.fromarray(face_rgb).resize((width, height), Image.LANCZOS))
    rng = np.random.default_rng(seed)
    small = rng.integers(90, 170, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    bg = Image.fromarray(small).resize((width, height), Image.BICUBIC).filter(ImageFilter.GaussianBlur(4))
    out = np.array(bg)
    out = np.clip(out.astype(np.int16) + rng.integers(-6, 7, out.shape, dtype=np.int16), 0, 255)
    out = out.astype(np.uint8)
    top, left = (height - fh) // 3, (width - fw) // 3
    out[top:top + fh, left:left + fw] = face_rgb
    return out
