r"""Make the photo sets of docs/TRANSFER.md: each single-face photo resized (Lanczos) so that dlib's
face box is 160 px wide, centred on a 384x384 gray canvas.

  python experiments/normalize_faces.py SRC_DIR SRC_IDS.json DST_DIR PREFIX

SRC_IDS.json maps file -> person ("multiple" skipped); photos where dlib's detector does not find
exactly one face are skipped (said on stdout). Writes DST_DIR/PREFIX<name>.png and
DST_DIR/PREFIXids.json (person names prefixed too).
"""
import json
import os
import sys

from PIL import Image

from idguardian_jax import images
from idguardian_jax.faces import analyze

FACE_PX = 160   # dlib box width after resizing
CANVAS = 384    # side of the square canvas


def main(src: str, ids_path: str, dst: str, prefix: str) -> None:
    fm = analyze.FaceModels.load()
    ids = json.load(open(ids_path))
    out = {}
    os.makedirs(dst, exist_ok=True)
    for name, person in sorted(ids.items()):
        if person == "multiple":
            continue
        rgb = images.read_photo(os.path.join(src, name)).rgb
        faces = analyze.find_faces(rgb, fm, 1)
        if len(faces) != 1:
            print(f"{name}: {len(faces)} faces, skipped")
            continue
        left, top, right, bottom = faces[0].box
        s = FACE_PX / (right - left + 1)
        size = (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s)))
        im = Image.fromarray(rgb).resize(size, Image.LANCZOS)
        cx, cy = (left + right) / 2 * s, (top + bottom) / 2 * s
        canvas = Image.new("RGB", (CANVAS, CANVAS), (128, 128, 128))
        canvas.paste(im, (int(round(CANVAS / 2 - cx)), int(round(CANVAS / 2 - cy))))
        stem = prefix + os.path.splitext(name)[0] + ".png"
        canvas.save(os.path.join(dst, stem))
        out[stem] = prefix + person
    with open(os.path.join(dst, prefix + "ids.json"), "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"{len(out)} photos written to {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: normalize_faces.py SRC_DIR SRC_IDS.json DST_DIR PREFIX")
    main(*sys.argv[1:])
