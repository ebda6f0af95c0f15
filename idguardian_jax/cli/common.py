"""Pieces shared by the absl entry points: input listing, flag parsing with usage exit code 2."""
from __future__ import annotations

import os
import sys
from typing import Iterable

from absl import flags

from idguardian_jax import images, samples

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def parse_flags_or_exit(argv: list[str]) -> list[str]:
    """absl flag parsing that exits with status 2 (usage error) instead of 1 on bad flags.

    Also quiets JAX's start-up INFO lines (e.g. that no TPU is present) on the console.
    """
    import logging
    import os

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    # Compiled programs are kept on disk (next to the parsed weights) so that a second run with
    # photos of the same shapes starts without compiling again (6 s per shape bucket measured).
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        import jax

        from idguardian_jax.checkpoints import cache

        jax.config.update("jax_compilation_cache_dir", os.path.join(cache.cache_dir(), "xla"))
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.stderr.write(f"usage error: {e}\nPass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(EXIT_USAGE)


def list_inputs(paths: Iterable[str]) -> list[tuple[str, str]]:
    """Expand files and folders into (path to open, path to report).

    A file is reported as given; `sample:NAME` by the sample file's name; a folder is walked recursively (sorted, hidden entries skipped),
    keeping files with an image extension, each reported relative to that folder. A missing path
    is kept, so that reading it reports the error.
    """
    out: list[tuple[str, str]] = []
    for p in paths:
        if samples.is_sample(p):
            try:
                out.append((samples.resolve(p), os.path.basename(samples.resolve(p))))
            except FileNotFoundError as e:
                out.append((p, p))
                sys.stderr.write(f"error: {e}\n")
            continue
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.startswith(".") or not images.is_image_path(name):
                        continue
                    full = os.path.join(root, name)
                    out.append((full, os.path.relpath(full, p)))
        else:
            out.append((p, p))
    return out
