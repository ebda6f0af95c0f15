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
    argv = [argv[0]] + [_config_by_name(a) for a in argv[1:]]
    cut = argv.index("--") if "--" in argv else len(argv)
    if any(a in HELP_ARGS for a in argv[1:cut]):
        _print_help([a for i, a in enumerate(argv) if i >= cut or a not in HELP_ARGS])
        sys.exit(EXIT_OK)
    try:
        rest = flags.FLAGS(argv)
        for name in _config_flag_names():
            flags.FLAGS[name].value.keys()  # a config that failed to load raises here
        return rest
    except flags.Error as e:
        _usage_exit(str(e))
    except (AttributeError, KeyError) as e:  # --config.no_such_field=...
        _usage_exit(f"--config: no such field {e} (idguardian-protect --help lists the fields)")
    except Exception as e:  # noqa: BLE001 - a config file that does not load: one line, exit 2
        cause = e.__cause__ or e.__context__ or e
        detail = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
        given = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
        _usage_exit(f"--config={given}: cannot load the config ({detail[-1] if detail else type(cause).__name__})")


HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")


def one_line_usage_errors(main):
    """main wrapped so that app.UsageError is one line on stderr and its exit status (absl
    prints the whole module help before it)."""
    from absl import app

    def wrapped(argv):
        try:
            return main(argv)
        except app.UsageError as e:
            sys.stderr.write(f"usage error: {e}\n")
            sys.exit(e.exitcode if e.exitcode is not None else EXIT_USAGE)
    return wrapped


def unknown_config_field_exit(e: Exception, argv: list[str]) -> None:
    """An override of a field the config does not have (--config.nope=1): one line, exit 2."""
    key = str(e).strip("'\" ")
    given = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    name = next((g for g in given if g.split(".")[-1] == key or key in g.split(".")), None)
    _usage_exit(f"{name or '--config.' + key}: no such config field (--help lists them)")


def _usage_exit(msg: str) -> None:
    sys.stderr.write(f"usage error: {msg.splitlines()[0] if msg else msg}\n"
                     f"Pass --help to see the flags.\n")
    sys.exit(EXIT_USAGE)


def _config_by_name(arg: str) -> str:
    """--config=robust (a config shipped in the installed `configs` package) -> its path."""
    if arg.startswith("--config=") and "config" in flags.FLAGS:
        from idguardian_jax import settings

        return "--config=" + settings.resolve_config_path(arg[len("--config="):])
    return arg


def _config_flag_names() -> list[str]:
    from ml_collections.config_flags import config_flags

    return [n for n in ("config",) if n in flags.FLAGS
            and isinstance(flags.FLAGS[n], config_flags._ConfigFlag)]


def _tool_modules() -> list[str]:
    # absl keys flags by defining module: a module name, or the script path for `python -m` /
    # a script; absl's own (logging, help) and JAX's are left out.
    return [m for m in flags.FLAGS.flags_by_module_dict()
            if m.startswith("idguardian_jax.cli.") or m == "__main__"
            or (m.endswith(".py") and os.sep + "idguardian_jax" + os.sep in m)]


def _print_help(argv: list[str]) -> None:
    """The tool's description, its own flags and (for tools with --config) every config field
    with its value under the given --config and its meaning."""
    FLAGS = flags.FLAGS
    try:
        FLAGS(argv)
        for name in _config_flag_names():
            FLAGS[name].value.keys()
    except Exception:  # noqa: BLE001 - help is shown with the defaults
        FLAGS.unparse_flags()
        FLAGS([argv[0]])
    modules = _tool_modules()
    main = sys.modules.get("__main__")
    doc = next((sys.modules[m].__doc__ for m in modules if sys.modules.get(m)
                and sys.modules[m].__doc__), None) or getattr(main, "__doc__", None) or ""
    out = [doc.strip(), "", "flags:"]
    for m in modules:
        for f in sorted(FLAGS.flags_by_module_dict()[m], key=lambda f: f.name):
            if f.name == "config" or f.name.startswith("config."):
                continue
            default = "" if f.default in (None, [], "") else f" (default: {f.default!r})"
            out.append(f"  --{f.name}: {' '.join((f.help or '').split())}{default}")
    if _config_flag_names():
        from idguardian_jax import settings

        out.append(f"  --config: a config file (get_config()), or the name of one shipped with "
                   f"the package: {', '.join(settings.shipped_config_names())} (default: default)")
        out += ["", "config fields (--config.FIELD=VALUE; shown: the value under this --config):",
                settings.describe(FLAGS.config)]
    out.append("  -h, --help: this help")
    sys.stdout.write("\n".join(out) + "\n")


# Photo formats that cameras and phones write but that are not read here: named, not skipped
# silently (convert them to JPEG/PNG first).
UNSUPPORTED_PHOTO_EXTENSIONS = (".heic", ".heif", ".avif", ".jxl", ".dng", ".cr2", ".cr3", ".nef",
                                ".arw", ".raf", ".orf", ".rw2")


def list_inputs(paths: Iterable[str], problems: list[str] | None = None,
                files_by_name: bool = False) -> list[tuple[str, str]]:
    """Expand files and folders into (path to open, path to report).

    A file is reported as given, or with files_by_name by its name (protect: so that `a.jpg`,
    `./a.jpg` and `/abs/a.jpg` map to the same output); `sample:NAME` by the sample file's name; a folder is walked recursively (sorted,
    hidden entries skipped), keeping files with an image extension, each reported relative to
    that folder. A missing path is kept, so that reading it reports the error.

    problems: gets one line (also written to stderr) for each thing in a folder that is not
    protected although it may hold photos: an unreadable sub-folder, a photo format that is not
    read (.heic...), a symbolic link to a folder (not followed: it could loop).
    """
    problems = [] if problems is None else problems

    def problem(msg: str) -> None:
        problems.append(msg)
        sys.stderr.write(f"error: {msg}\n")

    def walk_error(e: OSError) -> None:
        problem(f"{e.filename}: cannot read the folder ({e.strerror or e}); its photos are not "
                f"protected")

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
            for root, dirs, files in os.walk(p, onerror=walk_error):
                for d in dirs:
                    if not d.startswith(".") and os.path.islink(os.path.join(root, d)):
                        problem(f"{os.path.join(root, d)}: a symbolic link to a folder; not "
                                f"followed (give its target as an input)")
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                                 and not os.path.islink(os.path.join(root, d)))
                for name in sorted(files):
                    if name.startswith("."):
                        continue
                    ext = os.path.splitext(name)[1].lower()
                    if ext in UNSUPPORTED_PHOTO_EXTENSIONS:
                        problem(f"{os.path.join(root, name)}: {ext[1:].upper()} photos are not "
                                f"read; convert it to JPEG or PNG to protect it")
                    if not images.is_image_path(name):
                        continue
                    full = os.path.join(root, name)
                    out.append((full, os.path.relpath(full, p)))
        else:
            out.append((p, (os.path.basename(os.path.normpath(p)) or p) if files_by_name else p))
    return out
