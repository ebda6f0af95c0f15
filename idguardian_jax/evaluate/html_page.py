"""report.html: one self-contained page (inline CSS, images as data: URIs, no scripts).

A Content-Security-Policy meta tag allows nothing but data: images and the inline style, so the
page cannot fetch anything even if a path in it looked like a URL.
"""
from __future__ import annotations

import base64
import html
from typing import Any

from idguardian_jax.evaluate import plots


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def escape(s: Any) -> str:
    return html.escape(str(s), quote=True)


CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.ok{color:#17803d}.bad{color:#b42318}
.photo{border:1px solid #e3e3e3;border-radius:6px;padding:10px;margin:12px 0}
.trio{display:flex;gap:10px;flex-wrap:wrap}.trio figure{margin:0}
figcaption{font-size:12px;color:#555;text-align:center}img{display:block;max-width:100%}
.note{color:#555;font-size:13px}.err{color:#b42318}
"""


def _img(data: bytes, mime: str, alt: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} alt="{escape(alt)}" src="{data_uri(data, mime)}">'


def _fmt(v, spec=".3f", none="-"):
    return none if v is None else format(v, spec)


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"


def _summary_table(report: dict) -> str:
    head = ("variant", "encoder", "faces", "found", "FDFR", "distance mean", "threshold", "success",
            "match rate (faces)", "clean match rate")
    out = ["<table><tr>" + "".join(f'<th class="{"l" if i < 2 else ""}">{h}</th>'
                                   for i, h in enumerate(head)) + "</tr>"]
    for r in report["summary"]:
        cells = (r["variant"], r["encoder"], r["faces"], r["found"], _pct(r["fdfr"]),
                 _fmt(r["distance_mean"]), _fmt(r["threshold"], "g"), _pct(r["success_rate"]),
                 f"{_pct(r['match_rate'])} ({r['faces_with_gallery']})",
                 _pct(r["clean_match_rate"]))
        out.append("<tr>" + "".join(f'<td class="{"l" if i < 2 else ""}">{escape(c)}</td>'
                                    for i, c in enumerate(cells)) + "</tr>")
    return "\n".join(out) + "</table>"


def _quality(report: dict) -> str:
    q = report["quality"]
    lp = (f"mean {q['lpips_mean']:.4f} ({escape(q['lpips'])})" if q["lpips_mean"] is not None
          else "not computed (no local weights given with --lpips_weights; never downloaded)")
    return (f"<p>Image quality over {q['photos']} photo(s), clean vs protected, whole photo: "
            f"PSNR mean {_fmt(q['psnr_mean'], '.2f')} dB (median {_fmt(q['psnr_median'], '.2f')}, "
            f"min {_fmt(q['psnr_min'], '.2f')}); SSIM mean {_fmt(q['ssim_mean'], '.4f')} "
            f"(min {_fmt(q['ssim_min'], '.4f')}); largest change {q['max_change']}/255; "
            f"LPIPS: {lp}.</p>")


def _photo(p: dict, thumbs: dict, encoders: list[str], variants: list[str]) -> str:
    parts = [f'<div class="photo"><h3>{escape(p["path"])}</h3>']
    if p["status"] == "error":
        parts.append(f'<p class="err">{escape(p["error"])}</p></div>')
        return "\n".join(parts)
    psnr = "identical" if p["psnr"] is None else f"PSNR {p['psnr']:.2f} dB"
    parts.append(f'<p class="note">{p["width"]}x{p["height"]}, {psnr}, '
                 f'SSIM {_fmt(p["ssim"], ".4f")}, max change {p["max_change"]}/255'
                 + (f", LPIPS {p['lpips']:.4f}" if p.get("lpips") is not None else "")
                 + (f", person {escape(p['person'])}" if p.get("person") else "")
                 + f", clean faces {escape(p.get('clean_faces_from') or '-')}</p>")
    if thumbs:
        gain = thumbs.get("gain", b"?").decode()
        parts.append('<div class="trio">')
        for key, cap in (("clean", "clean"), ("protected", "protected"),
                         ("difference", f"difference x{gain} (gray = unchanged)")):
            if key in thumbs:
                parts.append(f"<figure>{_img(thumbs[key], 'image/jpeg', cap + ' ' + p['path'])}"
                             f"<figcaption>{escape(cap)}</figcaption></figure>")
        parts.append("</div>")
    if p["status"] == "no_face":
        parts.append('<p class="note">no face found on the clean photo</p></div>')
        return "\n".join(parts)
    head = "".join(f"<th>face {f['index']} {escape(n)}</th>" for f in p["faces"] for n in encoders)
    rows = [f'<table><tr><th class="l">variant</th>{head}</tr>']
    for v in variants:
        cells = []
        for f in p["faces"]:
            r = f["results"].get(v)
            for n in encoders:
                if r is None:
                    cells.append("<td>-</td>")
                elif not r["found"]:
                    cells.append('<td class="ok">not detected</td>')
                else:
                    e = r["encoders"].get(n, {})
                    ok = e.get("success")
                    g = e.get("gallery_min")
                    gtxt = f" / gallery {g:.3f}" if g is not None else ""
                    mark = "&#10003;" if ok else "&#10007;"
                    cells.append(f'<td class="{"ok" if ok else "bad"}">'
                                 f'{_fmt(e.get("distance"))}{gtxt} {mark}</td>')
        rows.append(f'<tr><td class="l">{escape(v)}</td>{"".join(cells)}</tr>')
    parts.append("\n".join(rows) + "</table>")
    parts.append('<p class="note">distance of the face found again to its clean face / to the '
                 "nearest other clean photo of the person (gallery); &#10003; protected</p></div>")
    return "\n".join(parts)


def render(report: dict, thumbs: dict[str, dict[str, bytes]], max_photos: int = 100) -> str:
    """The HTML page of a JSON report; thumbs: photo path -> report.thumbnails(...)."""
    s = report["settings"]
    encoders = list(report["encoders"])
    figs = [(plots.distance_before_after(report), "Distance before/after: the protected face "
             "against its clean face and, with identities, against the person's other clean "
             "photos."),
            (plots.success_per_transform(report), "Protection success rate per transform (faces "
             "not detected count as protected), and the detection failure rate."),
            (plots.distance_per_transform(report), "dlib distance to the clean face per transform "
             "(faces found again)."),
            (plots.quality_distribution(report), "PSNR and SSIM distribution over the photos.")]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>IDGuardian evaluation</title>", f"<style>{_STYLE}</style></head><body>",
           "<h1>IDGuardian evaluation</h1>",
           f"<p class=\"note\">clean: {escape(s.get('clean'))}<br>"
           f"protected: {escape(s.get('protected'))}"
           f"<br>identities: {escape(s.get('identities') or 'none')}; encoders: "
           + ", ".join(f"{escape(n)} ({escape(i['distance'])}, threshold {i['threshold']:g})"
                       for n, i in report["encoders"].items())
           + f"; detector upsample {s.get('upsample')}</p>",
           "<h2>Summary</h2>",
           "<p>" + ", ".join(f"{v} {escape(k)}" for k, v in sorted(report["counts"].items()))
           + f"; {report['faces']} face(s).</p>", _quality(report), _summary_table(report),
           "<p class=\"note\">success: the face is not detected again, or its embedding is at or "
           "beyond the encoder's threshold from its clean face and from every other clean photo of "
           "the person. match rate: share of faces with a gallery still recognized (closer than "
           "the threshold to one of the person's other clean photos); clean match rate: the same "
           "for the clean faces.</p>"]
    for n in report["notes"]:
        if n.startswith("LPIPS"):
            continue  # said in the image-quality line
        out.append(f'<p class="note">{escape(n)}</p>')
    out.append("<h2>Figures</h2>")
    for png, cap in figs:
        if png is not None:
            out.append(f"<figure>{_img(png, 'image/png', cap)}"
                       f"<figcaption>{escape(cap)}</figcaption></figure>")
    photos = report["photos"]
    out.append("<h2>Photos</h2>")
    if len(photos) > max_photos:
        out.append(f'<p class="note">The first {max_photos} of {len(photos)} photos are shown; '
                   f"every photo is in report.json and the CSV files.</p>")
    for p in photos[:max_photos]:
        out.append(_photo(p, thumbs.get(p["path"], {}), encoders, report["variants"]))
    errors = [p for p in photos[max_photos:] if p["status"] == "error"]
    for p in errors:
        out.append(f'<p class="err">{escape(p["error"])}</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"
