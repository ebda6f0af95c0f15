r"""Paper-style tables from folders of photos: method x metric, transform x success rate, eps x
success rate, as CSV and Markdown.

  # protected folders you already have (e.g. written by idguardian-protect):
  python experiments/tables.py --clean=photos/ --identities=people.json --out=tables/ \
      --method=default=protected_default/ --method=robust=protected_robust/ --transforms=default

  # protect first, with each config at each budget (OUT/protected/<name>_eps<k>/; reruns resume):
  python experiments/tables.py --clean=photos/ --out=tables/ --transforms=jpeg75,resize0.5+jpeg75 \
      --protect=default=configs/default.py --protect=robust=configs/robust.py --eps=4,6,8

  # from reports idguardian-evaluate wrote (no evaluation):
  python experiments/tables.py --out=tables/ --report=default=rep_default/ \
      --report=robust=rep_robust/

Writes OUT/methods.{csv,md} (per method: photos, faces, budget, PSNR, SSIM, LPIPS, largest change,
FDFR, mean distance, success and match rates on the protected photos as written),
OUT/transforms.{csv,md} (success rate of each method after each transform) and, when budgets
differ, OUT/eps.{csv,md} (success rate per budget and transform, one block per config). Each
evaluated method's full report goes to OUT/reports/<method>/. Success rate: share of faces not
detected again, or at or beyond the encoder's threshold from their clean face and from the
person's other clean photos (see idguardian-evaluate).
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("clean", None, "Folder of clean photos (needed unless every method is a "
                    "--report).")
flags.DEFINE_string("identities", None, "JSON {file: person} or CSV file,person for verification.")
flags.DEFINE_multi_string("method", [], "name=PROTECTED_FOLDER (repeatable).")
flags.DEFINE_multi_string("protect", [], "name=CONFIG_FILE: protect --clean with this config first "
                          "(repeatable; with --eps, once per budget).")
flags.DEFINE_list("eps", [], "Budgets in 1/255 units for --protect configs (default: the "
                  "config's).")
flags.DEFINE_multi_string("report", [], "name=REPORT_FOLDER (or report.json) of "
                          "idguardian-evaluate.")
flags.DEFINE_string("transforms", "default", "Post-processing transforms ('default', names, '' "
                    "for none).")
flags.DEFINE_string("encoder", "dlib_resnet", "Encoder whose figures fill the tables.")
flags.DEFINE_list("checkpoints", [], "name=path of extra encoders' weights (measured too).")
flags.DEFINE_string("out", None, "Output folder for the tables.")
flags.DEFINE_integer("workers", 1, "Photos evaluated at once (threads).", lower_bound=1)


# ------------------------------------------------------------------------------------------
# Tables from reports
# ------------------------------------------------------------------------------------------
def _row(rep: dict, variant: str, encoder: str) -> dict | None:
    return next((r for r in rep["summary"]
                 if r["variant"] == variant and r["encoder"] == encoder), None)


def budget_of(rep: dict) -> int | None:
    """The method's budget in 1/255 (from idguardian-protect's records, when it wrote them)."""
    return rep.get("settings", {}).get("budget_255")


def method_table(reports: dict[str, dict], encoder: str) -> tuple[list[str], list[list]]:
    head = ["method", "photos", "faces", "eps (/255)", "PSNR (dB)", "SSIM", "LPIPS", "max change",
            "FDFR", f"distance ({encoder})", "success rate", "match rate", "clean match rate"]
    rows = []
    for name, rep in reports.items():
        q, r = rep["quality"], _row(rep, "none", encoder) or {}
        rows.append([name, rep["counts"].get("evaluated", 0), rep["faces"], budget_of(rep),
                     q["psnr_mean"], q["ssim_mean"], q["lpips_mean"], q["max_change"],
                     r.get("fdfr"), r.get("distance_mean"), r.get("success_rate"),
                     r.get("match_rate"), r.get("clean_match_rate")])
    return head, rows


def transform_table(reports: dict[str, dict], encoder: str) -> tuple[list[str], list[list]]:
    variants = list(dict.fromkeys(v for rep in reports.values() for v in rep["variants"]))
    head = ["transform"] + list(reports)
    rows = [[v] + [(_row(rep, v, encoder) or {}).get("success_rate") for rep in reports.values()]
            for v in variants]
    return head, rows


def eps_table(reports: dict[str, dict], groups: dict[str, tuple[str, int]], encoder: str):
    """groups: method name -> (config name, eps). Rows (config, eps), columns transforms."""
    variants = list(dict.fromkeys(v for rep in reports.values() for v in rep["variants"]))
    head = ["config", "eps (/255)"] + variants
    rows = []
    for name, (cfg, eps) in sorted(groups.items(), key=lambda kv: (kv[1][0], kv[1][1])):
        rows.append([cfg, eps] + [(_row(reports[name], v, encoder) or {}).get("success_rate")
                                  for v in variants])
    return head, rows


def _fmt(col: str, v) -> str:
    """Rates as percentages; PSNR, SSIM, LPIPS, distances and budgets as numbers."""
    if v is None:
        return "-"
    c = col.lower()
    if not isinstance(v, float):
        return str(v)
    if c.startswith("psnr"):
        return f"{v:.2f}"
    if c in ("ssim", "lpips"):
        return f"{v:.4f}"
    if c.startswith("distance"):
        return f"{v:.3f}"
    if c.startswith("eps"):
        return f"{v:g}"
    return f"{100 * v:.1f}%"


def markdown(head: list[str], rows: list[list], title: str = "", notes: str = "") -> str:
    out = [f"### {title}\n"] if title else []
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        out.append("| " + " | ".join(_fmt(h, v) for h, v in zip(head, r)) + " |")
    if notes:
        out.append(f"\n{notes}")
    return "\n".join(out) + "\n"


def write_table(out_dir: str, stem: str, head, rows, title: str, notes: str) -> None:
    from idguardian_jax import jsonio

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for r in rows:
        w.writerow(["" if v is None else v for v in r])
    jsonio.write_text_atomic(os.path.join(out_dir, f"{stem}.csv"), buf.getvalue())
    jsonio.write_text_atomic(os.path.join(out_dir, f"{stem}.md"),
                             markdown(head, rows, title, notes))


# ------------------------------------------------------------------------------------------
# Producing the reports
# ------------------------------------------------------------------------------------------
def _pair(item: str, flag: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name or not value:
        raise app.UsageError(f"--{flag}: expected name=value, got {item!r}")
    return name, value


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("_tables_config", path)
    if spec is None or not os.path.exists(path):
        raise app.UsageError(f"{path}: no such config file")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.out:
        raise app.UsageError("give --out=FOLDER")
    if not (FLAGS.method or FLAGS.protect or FLAGS.report):
        raise app.UsageError("give --method, --protect or --report")
    if (FLAGS.method or FLAGS.protect) and not FLAGS.clean:
        raise app.UsageError("--method/--protect need --clean=FOLDER")
    from idguardian_jax import protect
    from idguardian_jax.cli import common
    from idguardian_jax.evaluate import report, transforms

    try:
        transforms.parse_list(FLAGS.transforms)
    except ValueError as e:
        raise app.UsageError(f"--transforms: {e}")
    os.makedirs(FLAGS.out, exist_ok=True)
    reports: dict[str, dict] = {}
    groups: dict[str, tuple[str, int]] = {}
    for item in FLAGS.report:
        name, path = _pair(item, "report")
        path = os.path.join(path, "report.json") if os.path.isdir(path) else path
        with open(path, encoding="utf-8") as fh:
            reports[name] = json.load(fh)
    methods: list[tuple[str, str]] = [_pair(m, "method") for m in FLAGS.method]
    for item in FLAGS.protect:
        cname, cpath = _pair(item, "protect")
        for eps in FLAGS.eps or [None]:
            cfg = load_config(cpath)
            if eps is not None:
                cfg.budget = float(eps) / 255
            e255 = round(cfg.budget * 255, 3)
            name = f"{cname}_eps{e255:g}" if FLAGS.eps else cname
            out = os.path.join(FLAGS.out, "protected", name)
            t = time.time()
            summary = protect.protect_files(common.list_inputs([FLAGS.clean]), out, cfg,
                                            input_roots=[FLAGS.clean], progress=False)
            print(f"{name}: protected in {time.time() - t:.0f} s: {summary['counts']}",
                  file=sys.stderr)
            methods.append((name, out))
            groups[name] = (cname, e255)
    if methods:
        from idguardian_jax.evaluate import core

        checkpoints = dict(_pair(c, "checkpoints") for c in FLAGS.checkpoints)
        names = list(dict.fromkeys(["dlib_resnet", FLAGS.encoder] + list(checkpoints)))
        ev = core.Evaluator(names, checkpoints, transforms.parse_list(FLAGS.transforms))
        for name, folder in methods:
            t = time.time()
            run = ev.evaluate_folders(FLAGS.clean, folder, FLAGS.identities, progress=False,
                                      workers=FLAGS.workers)
            rep = report.build(run)
            report.write(os.path.join(FLAGS.out, "reports", name), rep,
                         {p.path: p.thumbs for p in run.photos if p.thumbs})
            reports[name] = rep
            print(f"{name}: evaluated in {time.time() - t:.0f} s", file=sys.stderr)
    enc = FLAGS.encoder
    first = next(iter(reports.values()))
    n_photos = first["counts"].get("evaluated", 0)
    notes = (f"{time.strftime('%Y-%m-%d')}; clean photos: {first['settings'].get('clean')} "
             f"({n_photos} with faces, {first['faces']} faces); identities: "
             f"{first['settings'].get('identities') or 'none'}; encoder {enc} (threshold "
             f"{first['encoders'][enc]['threshold']:g}); success = not detected again, or "
             f"at/beyond the threshold from the clean face and the person's other clean photos.")
    head, rows = method_table(reports, enc)
    write_table(FLAGS.out, "methods", head, rows, "Method x metric (protected photos as written)",
                notes)
    head, rows = transform_table(reports, enc)
    write_table(FLAGS.out, "transforms", head, rows, "Success rate after post-processing", notes)
    if len({e for _, e in groups.values()}) > 1:
        head, rows = eps_table(reports, groups, enc)
        write_table(FLAGS.out, "eps", head, rows, "Success rate per budget", notes)
    for stem in ("methods", "transforms", "eps"):
        path = os.path.join(FLAGS.out, f"{stem}.md")
        if os.path.exists(path) and (stem != "eps" or len({e for _, e in groups.values()}) > 1):
            print(open(path, encoding="utf-8").read())
    return 0


if __name__ == "__main__":
    from idguardian_jax.cli import common

    app.run(main, flags_parser=common.parse_flags_or_exit)
