"""The evaluation report: JSON, CSV tables, a console table and a self-contained HTML page.

`build(run)` turns a core.Run into the JSON-able report; `write(report_dir, report, thumbs)` writes
  report.json   everything below, per photo and face (see core.FaceEval / PhotoEval.record)
  summary.csv   one row per variant x encoder: faces, found, FDFR, distance, success and match rates
  photos.csv    one row per photo: status, PSNR, SSIM, LPIPS, maximum change, faces, error
  faces.csv     one row per face x variant x encoder
  report.html   one file, every image and plot embedded as base64 (no scripts, no external files;
                a Content-Security-Policy forbids loading anything but data: images)
"""
from __future__ import annotations

import csv
import io
import math
import os
import statistics
from typing import Sequence

import numpy as np
from PIL import Image

from idguardian_jax import jsonio

REPORT_VERSION = 1
SUMMARY_FIELDS = ("variant", "image", "transform", "encoder", "threshold", "faces", "found", "fdfr",
                  "distance_mean", "distance_median", "success_rate", "faces_with_gallery",
                  "match_rate", "clean_match_rate")
PHOTO_FIELDS = ("path", "status", "width", "height", "faces", "person", "psnr", "ssim", "lpips",
                "max_change", "clean_faces_from", "seconds", "error")
FACE_FIELDS = ("path", "face", "box", "person", "gallery", "variant", "encoder", "found",
               "distance", "gallery_min", "recognized", "success")


# ------------------------------------------------------------------------------------------
# Aggregates
# ------------------------------------------------------------------------------------------
def _mean(v):
    return None if not v else round(float(statistics.fmean(v)), 6)


def _rate(num, den):
    return None if not den else round(num / den, 6)


def summary_rows(photos: Sequence[dict], encoders: dict[str, dict],
                 variants: Sequence[str]) -> list[dict]:
    """Per variant x encoder aggregates over every face of the evaluated photos (JSON records)."""
    faces = [f for p in photos if p["status"] == "evaluated" for f in p["faces"]]
    rows = []
    for v in variants:
        image, transform = (("clean", v.split(":", 1)[1]) if v.startswith("clean:")
                            else ("protected", v))
        for name, info in encoders.items():
            res = [f["results"][v] for f in faces if v in f["results"]]
            found = [r for r in res if r["found"]]
            dist = [r["encoders"][name]["distance"] for r in found
                    if r["encoders"].get(name, {}).get("distance") is not None]
            succ = [r["encoders"].get(name, {}).get("success") for r in res]
            gal = [(f, f["results"][v]) for f in faces if v in f["results"] and f["gallery"] > 0]
            rec = [r["encoders"].get(name, {}).get("recognized") for _, r in gal]
            clean_rec = [f["clean"].get(name, {}).get("recognized") for f, _ in gal]
            rows.append({
                "variant": v, "image": image, "transform": transform, "encoder": name,
                "threshold": info["threshold"], "faces": len(res), "found": len(found),
                "fdfr": _rate(len(res) - len(found), len(res)),
                "distance_mean": _mean(dist),
                "distance_median": None if not dist else round(float(np.median(dist)), 6),
                "success_rate": _rate(sum(bool(s) for s in succ), len(succ)),
                "faces_with_gallery": len(gal),
                "match_rate": _rate(sum(bool(r) for r in rec), len(rec)),
                "clean_match_rate": _rate(sum(bool(r) for r in clean_rec), len(clean_rec)),
            })
    return rows


def quality_summary(photos: Sequence[dict], lpips_note: str) -> dict:
    ev = [p for p in photos
          if p["status"] in ("evaluated", "no_face") and p.get("max_change") is not None]
    ps = [p["psnr"] for p in ev if p["psnr"] is not None]
    ss = [p["ssim"] for p in ev if p["ssim"] is not None and not math.isnan(p["ssim"])]
    lp = [p["lpips"] for p in ev if p.get("lpips") is not None]
    return {"photos": len(ev), "identical": sum(p["psnr"] is None for p in ev),
            "psnr_mean": _mean(ps),
            "psnr_median": None if not ps else round(float(np.median(ps)), 4),
            "psnr_min": None if not ps else round(min(ps), 4),
            "ssim_mean": _mean(ss), "ssim_min": None if not ss else round(min(ss), 6),
            "lpips_mean": _mean(lp), "lpips": lpips_note,
            "max_change": max((p["max_change"] for p in ev), default=None)}


def build(run) -> dict:
    """The JSON report of a core.Run."""
    photos = [p.record() for p in run.photos]
    counts: dict[str, int] = {}
    for p in photos:
        counts[p["status"]] = counts.get(p["status"], 0) + 1
    lpips_note = next((n for n in run.notes if n.startswith("LPIPS")), "")
    return {
        "version": REPORT_VERSION, "settings": run.settings, "encoders": run.encoders,
        "variants": list(run.variants), "counts": counts,
        "faces": sum(len(p["faces"]) for p in photos if p["status"] == "evaluated"),
        "quality": quality_summary(photos, lpips_note),
        "summary": summary_rows(photos, run.encoders, run.variants),
        "photos": photos, "unpaired": run.unpaired, "notes": run.notes,
        "timings": {k: round(v, 3) for k, v in run.timings.items()},
    }


# ------------------------------------------------------------------------------------------
# Console table
# ------------------------------------------------------------------------------------------
def _pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v, fmt=".3f"):
    return "-" if v is None else format(v, fmt)


def text_table(report: dict) -> str:
    """What idguardian-evaluate prints: counts, image quality, and variant x encoder figures."""
    c, q = report["counts"], report["quality"]
    lines = [f"{sum(c.values())} photos: " + ", ".join(f"{v} {k}" for k, v in sorted(c.items()))
             + f"; {report['faces']} faces"]
    if q["photos"]:
        lp = (f"LPIPS mean {q['lpips_mean']:.4f}" if q["lpips_mean"] is not None
              else "LPIPS not computed (no --lpips_weights)")
        lines.append(f"image quality (clean vs protected, {q['photos']} photos): PSNR mean "
                     f"{_num(q['psnr_mean'], '.2f')} dB (min {_num(q['psnr_min'], '.2f')}), "
                     f"SSIM mean {_num(q['ssim_mean'], '.4f')} (min {_num(q['ssim_min'], '.4f')}), "
                     f"max change {q['max_change']}/255, {lp}")
    head = ("variant", "encoder", "faces", "found", "FDFR", "dist mean", "thr", "success",
            "match (n)", "clean match")
    rows = [head]
    for r in report["summary"]:
        rows.append((r["variant"], r["encoder"], str(r["faces"]), str(r["found"]), _pct(r["fdfr"]),
                     _num(r["distance_mean"]), _num(r["threshold"], "g"), _pct(r["success_rate"]),
                     f"{_pct(r['match_rate'])} ({r['faces_with_gallery']})",
                     _pct(r["clean_match_rate"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for k, r in enumerate(rows):
        lines.append("  ".join(s.ljust(w) for s, w in zip(r, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("success: not found again, or at/beyond the threshold from the clean face and "
                 "the person's other photos; match: still recognized by the gallery (needs "
                 "--identities)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------
def _csv(path: str, fields: Sequence[str], rows: Sequence[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    jsonio.write_text_atomic(path, buf.getvalue())


def face_rows(report: dict) -> list[dict]:
    rows = []
    for p in report["photos"]:
        for f in p["faces"]:
            for v, res in f["results"].items():
                for name, e in res["encoders"].items():
                    rows.append({"path": p["path"], "face": f["index"],
                                 "box": " ".join(map(str, f["box"])), "person": f["person"],
                                 "gallery": f["gallery"], "variant": v, "encoder": name,
                                 "found": res["found"], **e})
    return rows


def write(report_dir: str, report: dict, thumbs: dict[str, dict[str, bytes]] | None = None,
          html_photos: int = 100) -> dict[str, str]:
    """Write report.json, report.html and the CSVs under report_dir; returns name -> path."""
    os.makedirs(report_dir, exist_ok=True)
    paths = {n: os.path.join(report_dir, n) for n in
             ("report.json", "report.html", "summary.csv", "photos.csv", "faces.csv")}
    jsonio.write_json_atomic(paths["report.json"], report)
    _csv(paths["summary.csv"], SUMMARY_FIELDS, report["summary"])
    _csv(paths["photos.csv"], PHOTO_FIELDS,
         [dict(p, faces=len(p["faces"])) for p in report["photos"]])
    _csv(paths["faces.csv"], FACE_FIELDS, face_rows(report))
    from idguardian_jax.evaluate import html_page

    page = html_page.render(report, thumbs or {}, html_photos)
    jsonio.write_text_atomic(paths["report.html"], page)
    return paths


# ------------------------------------------------------------------------------------------
# Thumbnails
# ------------------------------------------------------------------------------------------
def _jpeg(rgb: np.ndarray, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def amplified_difference(clean: np.ndarray, protected: np.ndarray) -> tuple[np.ndarray, float]:
    """(H, W, 3) uint8 view of protected - clean: 128 + gain * difference, the gain mapping the
    largest change to +-127 (gray = unchanged); returns (image, gain)."""
    d = protected.astype(np.int16) - clean.astype(np.int16)
    m = int(np.abs(d).max(initial=0))
    gain = 127.0 / m if m else 1.0
    return np.clip(np.round(128 + gain * d), 0, 255).astype(np.uint8), gain


def thumbnails(clean: np.ndarray, protected: np.ndarray, size: int = 320) -> dict[str, bytes]:
    """JPEG thumbnails (longest side <= size): clean, protected (Lanczos) and the amplified
    difference (nearest neighbour, so the perturbation's texture is kept, not averaged away)."""
    h, w = clean.shape[:2]
    s = min(1.0, size / max(h, w))
    wh = (max(1, round(w * s)), max(1, round(h * s)))
    def small(a, f):
        return a if s == 1.0 else np.asarray(Image.fromarray(a).resize(wh, f))

    diff, gain = amplified_difference(clean, protected)
    return {"clean": _jpeg(small(clean, Image.LANCZOS)),
            "protected": _jpeg(small(protected, Image.LANCZOS)),
            "difference": _jpeg(small(diff, Image.NEAREST), 92),
            "gain": f"{gain:.0f}".encode()}
