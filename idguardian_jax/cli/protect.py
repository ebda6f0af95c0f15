r"""idguardian-protect: protected copies of face photos.

  idguardian-protect --input=photos/ --output=protected/
  idguardian-protect --input=photo.jpg --output=out/ --config=configs/default.py \
      --config.budget=0.0235 --config.attack.steps=200
  idguardian-protect --input=sample:astronaut --output=out/     # a sample photo

Faces are found on each photo; a small perturbation (at most --config.budget per pixel) is added so
that identity encoders no longer match the face, and a PNG with the same relative path is written
under --output (metadata and alpha carried over). One JSON record per photo goes to
OUTPUT/idguardian_summary.jsonl. Exit status: 0 all photos done, 1 some failed, 2 usage error.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from idguardian_jax.cli import common

from idguardian_jax import configs

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(configs.__file__)), "default.py")

FLAGS = flags.FLAGS
try:  # ml_collections reads the --config.* overrides in sys.argv right here
    config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Protection settings (a get_config() "
                                    "file); override fields with --config.a.b=value.",
                                    lock_config=True)
except (AttributeError, KeyError) as _e:
    common.unknown_config_field_exit(_e, sys.argv)
flags.DEFINE_multi_string("input", [], "Photo files or folders (repeatable); positional "
                          "arguments are inputs too.")
flags.DEFINE_string("output", None, "Output folder (created). It must not be, contain or lie "
                    "inside an input folder or the folder of --input_list; files in it that the "
                    "tool did not write are never replaced.")
flags.DEFINE_bool("progress", True, "Show progress (a bar on a terminal, plain lines otherwise).")
flags.DEFINE_string("input_list", None, "A file list (.txt), or a manifest (.csv with a 'path' "
                    "column, .jsonl with \"path\"); paths relative to the list's folder.")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"], "Multi-process run under "
                  "jax.distributed: 'auto' starts it when the flags below are given or the "
                  "environment (SLURM, TPU pod, JAX_COORDINATOR_ADDRESS) describes several processes.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit start).")
flags.DEFINE_integer("num_processes", None, "Number of processes (explicit start).")
flags.DEFINE_integer("process_id", None, "This process's index (explicit start).")


def _usage(msg: str):
    return app.UsageError(msg, exitcode=common.EXIT_USAGE)


def main(argv: list[str]) -> int:
    from idguardian_jax import jobs, parallel, protect, results, settings

    paths = list(FLAGS.input) + argv[1:]
    if not paths and not FLAGS.input_list:
        raise _usage("give --input=PHOTO_OR_FOLDER or --input_list=FILE")
    if not FLAGS.output:
        raise _usage("give --output=FOLDER")
    config = FLAGS.config
    try:  # every setting is checked before any work
        settings.validate(config)
    except settings.SettingsError as e:
        raise _usage(str(e))
    note = settings.dlib_alone_note(config)
    if note:
        print(note)
    n, i = FLAGS.num_processes, FLAGS.process_id
    if n is not None and n < 1:
        raise _usage(f"--num_processes must be >= 1, got {n}")
    if i is not None and (i < 0 or (n is not None and i >= n)):
        raise _usage(f"--process_id must be in 0..{'N-1' if n is None else n - 1} "
                     f"(--num_processes={n}), got {i}")
    guard = []
    problems: list[str] = []
    inputs = common.list_inputs(paths, problems, files_by_name=True)
    if FLAGS.input_list:
        try:
            inputs += jobs.read_input_list(FLAGS.input_list)
        except jobs.UsageError as e:
            raise _usage(str(e))
        guard.append(os.path.dirname(os.path.abspath(FLAGS.input_list)))
    if not inputs:
        raise _usage(f"no image files found in {' '.join(paths)}")
    parallel.initialize_distributed(FLAGS.distributed, FLAGS.coordinator_address,
                                    FLAGS.num_processes, FLAGS.process_id)
    try:
        summary = protect.protect_files(inputs, FLAGS.output, config, input_roots=paths,
                                        progress=FLAGS.progress, guard_folders=guard)
    except protect.UsageError as e:
        raise _usage(str(e))
    counts = summary["counts"]
    failed = counts.get("error", 0)
    for r in summary["records"]:
        if r["status"] == "protected":
            for i, f in enumerate(r["faces"]):
                print(f"{r['path']} face {i}: PSNR {r['psnr']:.1f} dB, max change "
                      f"{r['max_change']}/255; found again on the written photo:")
                for line in results.describe_face(f):
                    print(f"  {line}")
    parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    where = "" if summary.get("report") is None else " (all processes: OUTPUT/idguardian_report.json)"
    print(f"{summary['photos']} photos: {parts}; {summary['faces_past_threshold']} of "
          f"{summary['faces']} protected faces moved past dlib's threshold; records in "
          f"{summary['summary_file']}{where}")
    print(f"time in this process: waiting for input {summary['input_wait_seconds']:.1f} s, "
          f"protecting {summary['device_seconds']:.1f} s")
    if problems:
        print(f"{len(problems)} problem(s) listing the inputs (above): not everything was protected")
    return common.EXIT_SOME_FAILED if failed or problems else common.EXIT_OK


def run():
    app.run(common.one_line_usage_errors(main), flags_parser=common.parse_flags_or_exit)


if __name__ == "__main__":
    run()
