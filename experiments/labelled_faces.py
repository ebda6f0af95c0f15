"""Labelled clean photos for the experiments: each listed single-person photo's largest face."""
from __future__ import annotations

import json
import os

from idguardian_jax import images
from idguardian_jax.faces import analyze


def largest(faces):
    return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))


def load(folders, identity_files, face_models, limit: int = 0):
    """(rgbs, faces, persons): per photo listed in each folder's {file: person} JSON (same order;
    'multiple' skipped; at most `limit` per folder, 0: all), the uint8 RGB photo, [its largest
    face] (dlib's detector at upsample 1, with the 68 landmarks) and 'folder index:person'.
    Photos without a face are said on stdout and skipped."""
    rgbs, faces, persons = [], [], []
    for i, folder in enumerate(folders):
        ids = json.load(open(identity_files[i])) if i < len(identity_files) else {}
        names = sorted(n for n, p in ids.items() if p != "multiple"
                       and os.path.exists(os.path.join(folder, n)))
        for name in names[:limit] if limit else names:
            path = os.path.join(folder, name)
            rgb = images.read_photo(path).rgb
            found = analyze.find_faces(rgb, face_models, 1, with68=True)
            if not found:
                print(f"{path}: no face, skipped")
                continue
            rgbs.append(rgb)
            faces.append([largest(found)])
            persons.append(f"{i}:{ids[name]}")
    return rgbs, faces, persons
