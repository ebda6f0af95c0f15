#!/usr/bin/env python3
r"""Judge protected photos with the REAL dlib library, the way face_recognition uses it.

Not part of the package and not a dependency: run it in an environment with `pip install dlib-bin`
(or dlib) plus numpy and Pillow, e.g.

  python -m venv /tmp/dlibenv && /tmp/dlibenv/bin/pip install dlib-bin numpy pillow
  /tmp/dlibenv/bin/python experiments/judge_with_dlib.py --clean ../shared/faces \
      --protected out/ --identities ../shared/faces/identities.json --models MODELS_DIR

For each protected photo: dlib.load_rgb_image, HOG detector (upsample 1), the 5-point predictor,
compute_face_descriptor(img, shape) (dlib's own chip extraction with its pyramid downsampling).
Each clean face (same pipeline on the clean photo) is matched to the protected face whose box
overlaps it most (IoU >= 0.3). A face counts as protected when its protected descriptor is at
distance >= 0.6 from its clean descriptor AND from every clean face of the same person in other
photos (the gallery), or when HOG no longer finds it. Prints a summary line and writes JSON.
"""
import argparse
import json
import os
import sys

import numpy as np

THRESHOLD = 0.6


def load_models(models_dir):
    import dlib

    return {
        "hog": dlib.get_frontal_face_detector(),
        "sp": dlib.shape_predictor(os.path.join(models_dir, "shape_predictor_5_face_landmarks.dat")),
        "rec": dlib.face_recognition_model_v1(
            os.path.join(models_dir, "dlib_face_recognition_resnet_model_v1.dat")),
    }


def faces_of(path, m):
    import dlib

    img = dlib.load_rgb_image(path)
    out = []
    for r in m["hog"](img, 1):
        shape = m["sp"](img, r)
        d = np.array(m["rec"].compute_face_descriptor(img, shape))
        out.append(([r.left(), r.top(), r.right(), r.bottom()], d))
    return out


def iou(a, b):
    l, t, r, bb = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, r - l + 1) * max(0, bb - t + 1)
    area = lambda x: (x[2] - x[0] + 1) * (x[3] - x[1] + 1)  # noqa: E731
    return inter / float(area(a) + area(b) - inter)


def find_protected(clean_dir, prot_dir, rel):
    stem = os.path.splitext(rel)[0]
    for ext in (".png", ".jpg", ".jpeg", ".webp"):
        p = os.path.join(prot_dir, stem + ext)
        if os.path.exists(p):
            return p
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clean", required=True)
    ap.add_argument("--protected", required=True)
    ap.add_argument("--identities", required=True, help="JSON file -> person (identities.json)")
    ap.add_argument("--face_identities", default=None,
                    help="JSON {'faces': file -> [person per HOG face]} for group photos")
    ap.add_argument("--models", required=True, help="folder with dlib's .dat files")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    m = load_models(args.models)
    ids = json.load(open(args.identities))
    face_ids = json.load(open(args.face_identities))["faces"] if args.face_identities else {}
    clean = {}
    for rel in sorted(ids):
        faces = faces_of(os.path.join(args.clean, rel), m)
        labels = face_ids.get(rel) or [ids[rel]] * len(faces)
        clean[rel] = [(b, d, lab) for (b, d), lab in zip(faces, labels)]
    rows = []
    for rel in sorted(ids):
        ppath = find_protected(args.clean, args.protected, rel)
        if ppath is None:
            continue
        prot = faces_of(ppath, m)
        for fi, (box, d0, person) in enumerate(clean[rel]):
            best = max(prot, key=lambda f: iou(box, f[0]), default=None)
            row = {"file": rel, "face": fi, "person": person}
            if best is None or iou(box, best[0]) < 0.3:
                row.update(found=False, distance_self=None, min_distance_gallery=None, protected=True)
            else:
                d = best[1]
                gallery = [np.linalg.norm(d - g) for r2, fs in clean.items() if r2 != rel
                           for (_, g, p2) in fs if p2 == person and person != "multiple"]
                ds = float(np.linalg.norm(d - d0))
                dg = float(min(gallery)) if gallery else None
                row.update(found=True, distance_self=ds, min_distance_gallery=dg,
                           protected=ds >= THRESHOLD and (dg is None or dg >= THRESHOLD))
            rows.append(row)
    n = len(rows)
    ok = sum(r["protected"] for r in rows)
    summary = {"faces": n, "protected": ok, "rate": ok / n if n else None,
               "not_found": sum(not r["found"] for r in rows)}
    print(json.dumps(summary))
    for r in rows:
        print(f"{r['file']}#{r['face']}: self {r['distance_self']}, gallery min "
              f"{r['min_distance_gallery']}, protected {r['protected']}", file=sys.stderr)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"summary": summary, "faces": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
