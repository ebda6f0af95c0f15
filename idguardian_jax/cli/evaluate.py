r"""idguardian-evaluate: how well protected photos hide the identity, and what they look like.

  idguardian-evaluate --clean=photos/ --protected=protected/ --report=report/
  idguardian-evaluate --clean=photos/ --protected=protected/ --report=report/ \
      --identities=people.json --transforms=default            # verification + robustness sweep
  idguardian-evaluate ... --encoders=dlib_resnet,arcface --checkpoints=arcface=w600k_r50.onnx
  idguardian-evaluate ... --transforms=jpeg75,resize0.5+jpeg75,blur1 --clean_baseline

Pairs every photo under --clean with the photo of the same relative path (any image extension)
under --protected, as idguardian-protect writes them (a.jpg -> a.png). Per face and encoder:
distance of the protected face (found again by the detector, as an attacker would) to its clean
face; with --identities (JSON {file: person} or CSV file,person) verification against the person's
other clean photos; faces no longer detected (FDFR); per photo PSNR, SSIM, largest change and LPIPS
(only with local --lpips_weights; never downloaded). --transforms repeats the identity measures
after post-processing the protected photo (JPEG, resize, blur, noise, crop, bit depth, median, and
'+' chains; 'default' is the issue's list: jpeg95,jpeg85,jpeg75,jpeg50,resize0.5,blur0.5,blur1,
noise4,crop0.9,bits5,median3,resize0.5+jpeg75).

Prints a table; writes REPORT/report.json, report.html (self-contained), summary.csv, photos.csv,
faces.csv. Exit status: 0 every photo evaluated, 1 some photos failed (each named on stderr),
2 usage error.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from idguardian_jax import images
from idguardian_jax.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("clean", None, "Folder of clean (original) photos.")
flags.DEFINE_string("protected", None, "Folder of protected photos (same relative paths).")
flags.DEFINE_string("report", None, "Folder for report.json, report.html and the CSV files.")
flags.DEFINE_string("identities", None, "JSON {clean file: person} or CSV with columns "
                    "file,person: verification against the person's other clean photos.")
flags.DEFINE_list("encoders", [], "Encoders to measure (default: dlib_resnet, every real encoder "
                  "installed with `idguardian-models install`, and every encoder "
                  "given a checkpoint).")
flags.DEFINE_list("checkpoints", [], "name=path of each encoder's weights, e.g. "
                  "arcface=w600k_r50.onnx (dlib_resnet defaults to the bundled weights).")
flags.DEFINE_string("transforms", "", "Comma-separated post-processing transforms to measure the "
                    "protected photo after ('default' = the standard sweep; '+' chains).")
flags.DEFINE_bool("clean_baseline", False, "Also measure each transform on the clean photo "
                  "(what the transform alone does to the identity).")
flags.DEFINE_string("lpips_weights", None, "Local LPIPS weights (.npz written by "
                    "idguardian_jax.evaluate.lpips, or lpips' alex.pth with --lpips_backbone).")
flags.DEFINE_string("lpips_backbone", None, "torchvision AlexNet weights (.pth) for "
                    "--lpips_weights=alex.pth.")
flags.DEFINE_integer("upsample", 1, "Times the detector upsamples the photo (dlib's "
                     "upsample_num_times).", lower_bound=0)
flags.DEFINE_integer("detect_max_side", 1024, "Long side of the canvas the clean faces are first "
                     "looked for on, then refined at full resolution (0: the full canvas).",
                     lower_bound=0)
flags.DEFINE_bool("detect_near", True, "On each transformed photo, detect faces only near the "
                  "clean faces (equal to a full detection there; other faces are not used).")
flags.DEFINE_bool("reuse_protect_records", False, "Take the clean faces' boxes from "
                  "PROTECTED/idguardian_summary.jsonl when its record's checksums match both the "
                  "clean and the protected file (sha256); saves one detection per photo. Off by "
                  "default: nothing in the protected folder is trusted.")
flags.DEFINE_integer("html_photos", 100, "Photos shown in report.html (all are in the JSON/CSV).",
                     lower_bound=0)
flags.DEFINE_integer("thumb_size", 320, "Longest side of the report's thumbnails (pixels).",
                     lower_bound=0)
flags.DEFINE_integer("max_pixels", images.DEFAULT_MAX_PIXELS, "Refuse larger photos.")
flags.DEFINE_bool("progress", True, "One line per photo on stderr.")
# 2 by default: on a 2-core CPU, 100 one-face 512 px photos take 95.6 s with 2 threads and 140.2 s
# with 1 (benchmarks/bench_evaluate.py, BENCHMARKS.md): the detector's convolutions use ~1 core.
flags.DEFINE_integer("workers", 2, "Photos evaluated at once (threads).", lower_bound=1)


def _usage(msg: str):
    raise app.UsageError(msg, exitcode=common.EXIT_USAGE)


def _checkpoints(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            _usage(f"--checkpoints: expected name=path, got {item!r}")
        if not os.path.exists(path):
            _usage(f"{path}: no such checkpoint file (--checkpoints {name})")
        out[name.strip()] = path
    return out


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        _usage(f"unexpected arguments: {' '.join(argv[1:])} (use --clean/--protected/--report)")
    for name in ("clean", "protected", "report"):
        if not getattr(FLAGS, name):
            _usage(f"give --{name}=FOLDER")
    for name in ("clean", "protected"):
        if not os.path.isdir(getattr(FLAGS, name)):
            _usage(f"{getattr(FLAGS, name)}: not a folder (--{name})")
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from idguardian_jax import encoders as encoder_registry
    from idguardian_jax import evaluate
    from idguardian_jax.evaluate import inputs, report

    checkpoints = _checkpoints(FLAGS.checkpoints)
    installed = encoder_registry.installed()
    names = list(FLAGS.encoders) or (["dlib_resnet"] + installed
                                     + [n for n in checkpoints if n not in ["dlib_resnet"] + installed])
    for n in names + list(checkpoints):
        if n not in encoder_registry.names():
            _usage(f"unknown encoder {n!r}; available: {', '.join(encoder_registry.names())}")
        if n != "dlib_resnet" and n not in checkpoints and n not in installed:
            _usage(f"encoder {n} needs its weights: --checkpoints={n}=PATH"
                   + (" (or `idguardian-models install`)" if n in encoder_registry.installable() else ""))
    try:
        ts = evaluate.transforms.parse_list(FLAGS.transforms)
    except ValueError as e:
        _usage(f"--transforms: {e}")
    if FLAGS.lpips_weights and not os.path.exists(FLAGS.lpips_weights):
        _usage(f"{FLAGS.lpips_weights}: no such file (--lpips_weights)")
    if FLAGS.lpips_backbone and not os.path.exists(FLAGS.lpips_backbone):
        _usage(f"{FLAGS.lpips_backbone}: no such file (--lpips_backbone)")
    labels = None
    if FLAGS.identities:
        try:
            labels = inputs.read_identities(FLAGS.identities)
        except inputs.InputError as e:
            _usage(str(e))
    if not common.list_inputs([FLAGS.clean]):
        _usage(f"{FLAGS.clean}: no image files")
    lpips = FLAGS.lpips_weights
    if lpips and FLAGS.lpips_backbone:
        lpips = f"{FLAGS.lpips_weights},{FLAGS.lpips_backbone}"
    try:
        ev = evaluate.Evaluator(names, checkpoints, ts, FLAGS.clean_baseline, lpips, FLAGS.upsample,
                                thumb_size=FLAGS.thumb_size, max_side=FLAGS.detect_max_side,
                                near=FLAGS.detect_near)
    except (OSError, ValueError, KeyError) as e:  # weights: damaged, foreign
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return common.EXIT_SOME_FAILED
    run = ev.evaluate_folders(FLAGS.clean, FLAGS.protected, labels,
                              reuse_protect_records=FLAGS.reuse_protect_records,
                              max_pixels=FLAGS.max_pixels, progress=FLAGS.progress,
                              workers=FLAGS.workers)
    run.settings["identities"] = FLAGS.identities
    rep = report.build(run)
    thumbs = {p.path: p.thumbs for p in run.photos if p.thumbs}
    try:
        paths = report.write(FLAGS.report, rep, thumbs, FLAGS.html_photos)
    except OSError as e:
        print(f"error: {FLAGS.report}: cannot write the report ({e.strerror or e})",
              file=sys.stderr)
        return common.EXIT_SOME_FAILED
    print(report.text_table(rep))
    failed = [p for p in run.photos if p.status == "error"]
    for p in failed:
        print(f"error: {p.error}", file=sys.stderr)
    for n in run.notes:
        print(f"note: {n}", file=sys.stderr)
    if not ts:
        print("note: add --transforms=default to measure robustness to JPEG, resizing, blur, "
              "noise, cropping, bit depth and median filtering", file=sys.stderr)
    print(f"report: {paths['report.html']} (and report.json, summary.csv, photos.csv, faces.csv)")
    return common.EXIT_SOME_FAILED if failed else common.EXIT_OK


def run():
    app.run(common.one_line_usage_errors(main), flags_parser=common.parse_flags_or_exit)


if __name__ == "__main__":
    run()
