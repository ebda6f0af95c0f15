"""The report's figures (matplotlib, no pyplot state), each returned as PNG bytes or None when
there is nothing to draw. Input: the JSON report of evaluate.report.build."""
from __future__ import annotations

import io

import numpy as np

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _points(x, ys):
    """The (x, y) pairs of a series whose y is known."""
    keep = [(xi, y) for xi, y in zip(x, ys) if y is not None]
    return [k[0] for k in keep], [k[1] for k in keep]


def _faces(report: dict) -> list[dict]:
    return [f for p in report["photos"] if p["status"] == "evaluated" for f in p["faces"]]


def distance_before_after(report: dict) -> bytes | None:
    """Per encoder, per face (sorted): distance of the protected face to its clean face, and,
    with identities, the nearest of the person's other clean photos before (clean face) and after
    (protected face) protection; the encoder's threshold as a line."""
    faces = [f for f in _faces(report) if "none" in f["results"]]
    if not faces:
        return None
    encs = list(report["encoders"])
    fig = _figure(7.5, 2.8 * len(encs))
    axes = fig.subplots(len(encs), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, encs):
        thr = report["encoders"][name]["threshold"]
        own = [f["results"]["none"]["encoders"].get(name, {}).get("distance") for f in faces]
        order = sorted(range(len(faces)), key=lambda i: -1 if own[i] is None else own[i])
        x = np.arange(len(faces))
        y_own = [own[i] for i in order]
        ax.scatter(*_points(x, y_own), s=22, color=_COLORS[0], label="protected vs its clean face",
                   zorder=3)
        lost = [xi for xi, v in zip(x, y_own) if v is None]
        if lost:
            ax.scatter(lost, [thr] * len(lost), marker="x", s=40, color="black", zorder=3,
                       label="protected face not detected")
        before = [faces[i]["clean"].get(name, {}).get("gallery_min") for i in order]
        after = [faces[i]["results"]["none"]["encoders"].get(name, {}).get("gallery_min")
                 for i in order]
        if any(v is not None for v in before):
            for xi, b, a in zip(x, before, after):
                if b is not None and a is not None:
                    ax.plot([xi, xi], [b, a], color="#999999", lw=1, zorder=1)
            ax.scatter(*_points(x, before), s=22, facecolors="none", edgecolors=_COLORS[2],
                       label="same person, before", zorder=2)
            ax.scatter(*_points(x, after), s=26, marker="^", color=_COLORS[1],
                       label="same person, after", zorder=2)
        ax.axhline(thr, color="black", ls="--", lw=1, label=f"threshold {thr:g}")
        ax.set_xlabel("face (sorted by distance to its clean face)")
        ax.set_ylabel(f"{name} distance")
        ax.set_xlim(-0.7, max(len(faces) - 0.3, 0.7))
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7, loc="best")
    return _png(fig)


def success_per_transform(report: dict) -> bytes | None:
    """Protection success rate (and detection failure rate) per variant, one bar per encoder."""
    rows = report["summary"]
    if not rows or not any(r["faces"] for r in rows):
        return None
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    encs = list(report["encoders"])
    fig = _figure(max(6.0, 0.65 * len(variants) * max(1, len(encs)) + 2), 3.6)
    ax = fig.subplots()
    width = 0.8 / (len(encs) + 1)
    x = np.arange(len(variants))
    for k, name in enumerate(encs):
        rates = {r["variant"]: r["success_rate"] for r in rows if r["encoder"] == name}
        ax.bar(x + k * width, [100 * (rates.get(v) or 0) for v in variants], width,
               color=_COLORS[k % len(_COLORS)], label=f"success, {name}")
    fdfr = [next((r["fdfr"] for r in rows if r["variant"] == v), None) for v in variants]
    ax.bar(x + len(encs) * width, [100 * (v or 0) for v in fdfr], width, color="#7f7f7f",
           label="face not detected (FDFR)")
    ax.set_xticks(x + width * len(encs) / 2, variants, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("% of faces")
    ax.legend(fontsize=7)
    return _png(fig)


def quality_distribution(report: dict) -> bytes | None:
    """Histograms of the per-photo PSNR and SSIM between clean and protected photos."""
    ps = [p["psnr"] for p in report["photos"] if p.get("psnr") is not None]
    ss = [p["ssim"] for p in report["photos"]
          if p.get("ssim") is not None and np.isfinite(p["ssim"])]
    if not ps and not ss:
        return None
    fig = _figure(7.5, 2.8)
    a1, a2 = fig.subplots(1, 2)
    a1.hist(ps, bins=min(20, max(3, len(ps))), color=_COLORS[0])
    a1.set_xlabel("PSNR (dB), clean vs protected")
    a1.set_ylabel("photos")
    a2.hist(ss, bins=min(20, max(3, len(ss))), color=_COLORS[2])
    a2.set_xlabel("SSIM, clean vs protected")
    return _png(fig)


def distance_per_transform(report: dict, encoder: str = "dlib_resnet") -> bytes | None:
    """Box plot of the distance to the clean face per variant (found faces), for one encoder."""
    if encoder not in report["encoders"] or len(report["variants"]) < 2:
        return None
    faces = _faces(report)
    data, labels = [], []
    for v in report["variants"]:
        d = [f["results"][v]["encoders"][encoder]["distance"] for f in faces
             if v in f["results"] and f["results"][v]["found"]
             and f["results"][v]["encoders"].get(encoder, {}).get("distance") is not None]
        data.append(d or [np.nan])
        labels.append(v)
    fig = _figure(max(6.0, 0.55 * len(labels) + 2), 3.4)
    ax = fig.subplots()
    ax.boxplot(data, tick_labels=labels)
    ax.axhline(report["encoders"][encoder]["threshold"], color="black", ls="--", lw=1)
    ax.tick_params(axis="x", rotation=35, labelsize=8)
    ax.set_ylabel(f"{encoder} distance to the clean face")
    return _png(fig)
