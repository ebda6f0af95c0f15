"""report.html opens offline in a real browser (Debian's chromium, headless), every image decoded.

The page itself has no script; for the check, a copy gets a small inline script that writes each
<img>'s naturalWidth/naturalHeight into the DOM, which chromium's --dump-dom prints. The page's
Content-Security-Policy is kept (only script-src is added to it), so an image that tried to load
from anywhere but a data: URI would fail to decode and fail the test. Skips when chromium is absent.
"""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from idguardian_jax.evaluate import core, html_page, report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)

_PROBE = """<pre id="imgcheck"></pre><script>
window.addEventListener('load', function () {
  var out = [];
  for (var i = 0; i < document.images.length; i++) {
    var im = document.images[i];
    out.push([im.complete, im.naturalWidth, im.naturalHeight, im.src.slice(0, 22)]);
  }
  document.getElementById('imgcheck').textContent = JSON.stringify(out);
});
</script>"""


def _chromium(args, timeout=120):
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install -y chromium): browser check skipped")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-extensions", "--hide-scrollbars", "--virtual-time-budget=10000"] + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def static_checks(text: str) -> int:
    """No external reference of any kind; every image a data: URI. Returns the number of <img>."""
    assert "<script" not in text.lower()
    assert not re.search(r"""\b(src|href)\s*=\s*(?!["']?data:)""", text, re.I), "non-data src"
    assert not re.search(r"url\(", text, re.I) and "@import" not in text
    assert "<link" not in text.lower() and "<iframe" not in text.lower()
    assert html_page.CSP in text
    srcs = re.findall(r'<img[^>]*src="([^"]*)"', text)
    assert all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in srcs)
    return len(srcs)


def check_report_in_browser(html_path, tmp_path, expected_images: int) -> str:
    """Static checks, then load a probed copy in headless chromium: every <img> decoded.
    Returns the path of a screenshot of the unmodified page."""
    text = open(html_path, encoding="utf-8").read()
    assert static_checks(text) == expected_images
    probed = text.replace(html_page.CSP, html_page.CSP + "; script-src 'unsafe-inline'")
    probed = probed.replace("</body>", _PROBE + "</body>")
    page = os.path.join(str(tmp_path), "probed.html")
    with open(page, "w", encoding="utf-8") as fh:
        fh.write(probed)
    proc = _chromium(["--dump-dom", f"file://{page}"])
    m = re.search(r'<pre id="imgcheck">(.*?)</pre>', proc.stdout, re.S)
    assert m and m.group(1), f"the page did not load in chromium: {proc.stderr[-2000:]}"
    results = json.loads(m.group(1).replace("&quot;", '"'))
    assert len(results) == expected_images
    bad = [r for r in results if not (r[0] and r[1] > 0 and r[2] > 0)]
    assert not bad, f"images that did not decode: {bad}"
    shot = os.path.join(str(tmp_path), "report.png")
    proc = _chromium([f"--screenshot={shot}", "--window-size=1280,2400",
                      f"file://{os.path.abspath(html_path)}"])
    assert os.path.exists(shot), proc.stderr[-2000:]
    from PIL import Image

    px = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert px.std() > 10, "the screenshot is blank"
    return shot


def _synthetic_run(n_photos=3, variants=("none", "jpeg75", "resize0.5+jpeg75")) -> core.Run:
    """A Run as the evaluator would produce it, from random photos (no models needed)."""
    rng = np.random.default_rng(0)
    photos = []
    for k in range(n_photos):
        clean = rng.integers(0, 256, (120, 100 + 20 * k, 3), dtype=np.uint8)
        noise = rng.integers(-6, 7, clean.shape)
        prot = np.clip(clean.astype(int) + noise, 0, 255).astype(np.uint8)
        pe = core.PhotoEval(f"dir/p{k}.png", f"clean/dir/p{k}.png", f"prot/dir/p{k}.png",
                            "evaluated", width=clean.shape[1], height=clean.shape[0], person="ann",
                            psnr=round(30 + 3 * k + rng.random(), 3), ssim=0.95 + 0.01 * k,
                            max_change=6, clean_faces_from="detected", seconds=1.0)
        pe.thumbs = report.thumbnails(clean, prot, 96)
        fe = core.FaceEval(0, [10, 10, 60, 60], 1.0, "ann", gallery=n_photos - 1,
                           clean={"dlib_resnet": {"gallery_min": 0.35, "recognized": True}})
        for j, v in enumerate(variants):
            found = not (k == 2 and v != "none")
            d = 0.7 - 0.1 * j + 0.02 * k
            fe.results[v] = {"found": found, "box": [11, 10, 61, 60] if found else None,
                             "encoders": {"dlib_resnet": {
                                 "distance": d if found else None,
                                 "gallery_min": d + 0.05 if found else None,
                                 "recognized": found and d + 0.05 < 0.6,
                                 "success": (not found) or d >= 0.6}}}
        pe.faces = [fe]
        photos.append(pe)
    photos.append(core.PhotoEval("broken.jpg", status="error", error="clean/broken.jpg: truncated"))
    encs = {"dlib_resnet": {"distance": "euclidean", "threshold": 0.6}}
    settings = {"clean": "clean/", "protected": "prot/", "identities": "ids.json", "upsample": 1}
    notes = ["LPIPS not computed: no local weights given (--lpips_weights); never downloaded"]
    return core.Run(photos, encs, list(variants), settings, notes)


def test_synthetic_report_renders_in_browser(tmp_path):
    run = _synthetic_run()
    rep = report.build(run)
    thumbs = {p.path: p.thumbs for p in run.photos if p.thumbs}
    paths = report.write(str(tmp_path / "report"), rep, thumbs)
    json.loads(open(paths["report.json"]).read())
    text = open(paths["report.html"], encoding="utf-8").read()
    assert "clean/broken.jpg: truncated" in text and "LPIPS: not computed" in text
    assert text.count('class="photo"') == 4
    # 3 photos x 3 thumbnails + 4 figures (distance, success, distance per transform, quality)
    check_report_in_browser(paths["report.html"], tmp_path, expected_images=3 * 3 + 4)


def test_html_photo_limit_and_escaping(tmp_path):
    run = _synthetic_run(n_photos=3, variants=("none",))
    run.photos[0].path = "<b>x&y</b>.png"
    rep = report.build(run)
    thumbs = {p.path: p.thumbs for p in run.photos if p.thumbs}
    text = html_page.render(rep, thumbs, max_photos=2)
    assert "&lt;b&gt;x&amp;y&lt;/b&gt;.png" in text and "<b>x&y" not in text
    assert "The first 2 of 4 photos are shown" in text
    assert "clean/broken.jpg: truncated" in text  # errors past the limit are still listed
    # 2 photos x 3 thumbnails + 3 figures (one variant: no per-transform box plot)
    assert static_checks(text) == 2 * 3 + 3


def test_static_checks_catch_external_references():
    ok = (f'<meta http-equiv="Content-Security-Policy" content="{html_page.CSP}">'
          '<img src="data:image/png;base64,AA">')
    assert static_checks(ok) == 1
    for bad in ('<img src="http://x/y.png">', '<img src="y.png">',
                '<div style="background:url(x.png)">',
                '<link rel="stylesheet" href="s.css">', "<script src=x.js></script>"):
        with pytest.raises(AssertionError):
            static_checks(ok + bad)
