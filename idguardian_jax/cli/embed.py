r"""idguardian-embed: faces, landmarks and identity descriptors of photos, as JSON.

  idguardian-embed photo.jpg other.png folder/ [--compare] [--output=faces.json]
  idguardian-embed --aligned chips/            # inputs are already aligned 150x150 dlib chips
  idguardian-embed --encoder=arcface --checkpoint=w600k_r50.onnx photo.jpg   # any registered encoder

Output (stdout, or --output=FILE.json written atomically):
  {"images": [{"path": str, "width": int, "height": int, "error": str|null,
               "faces": [{"box": [left, top, right, bottom], "score": float,
                          "landmarks": [[x, y] x 5], "descriptor": [128 floats]}]}],
   "comparisons": [...]}            # with --compare
`path` is as given on the command line, or relative to the input folder. Boxes are dlib's inclusive
rectangles. Faces are always found with dlib's models; each encoder reads its own aligned chip
(dlib's 150 px chip; InsightFace-style crops for arcface 112, facenet 160, clip_vit 224), or with
--aligned the input itself, which must be the encoder's chip size (only its normalization applies).
`descriptor` holds the embedding (for clip_vit the projected image_embeds). With --compare, every
pair of faces gets the encoder's distance (Euclidean for dlib, cosine otherwise) and its
same-person decision (distance below the encoder's threshold, 0.6 for dlib).

Exit status: 0 all inputs read, 1 some inputs failed (each named on stderr and in the JSON),
2 usage error.
"""
from __future__ import annotations

import itertools
import json
import os
import sys

from absl import app, flags

from idguardian_jax import images, jsonio, views
from idguardian_jax.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Write the JSON here (atomically) instead of stdout.")
flags.DEFINE_bool("aligned", False, "Inputs are aligned 150x150 dlib chips: no detection.")
flags.DEFINE_bool("compare", False, "Add pairwise distances and dlib's same-person decision.")
flags.DEFINE_enum("encoder", "dlib_resnet", ["dlib_resnet", "arcface", "facenet", "clip_vit"],
                  "Identity encoder.")
flags.DEFINE_string("checkpoint", None, "The encoder's weights (upstream format or converted); "
                    "dlib_resnet defaults to the bundled file.")
flags.DEFINE_integer("upsample", 1, "Times the detector upsamples the photo (dlib's "
                     "upsample_num_times; 1 finds faces down to ~40 px).", lower_bound=0)
flags.DEFINE_integer("max_pixels", images.DEFAULT_MAX_PIXELS, "Refuse larger photos.")


def embed_paths(inputs: list[tuple[str, str]], aligned: bool = False, upsample: int = 1,
                max_pixels: int = images.DEFAULT_MAX_PIXELS, models=None,
                encoder: str = "dlib_resnet", checkpoint: str | None = None) -> list[dict]:
    """The per-image records of the JSON output (see the module docstring)."""
    import numpy as np

    from idguardian_jax import encoders
    from idguardian_jax.faces import align, analyze

    enc = encoders.get(encoder)
    if models is None and not aligned:
        models = analyze.FaceModels.load()
    if encoder == "dlib_resnet" and checkpoint is None:
        params = models.resnet if models is not None else encoders.load_params(encoder)
    else:
        params = encoders.load_params(encoder, checkpoint)

    def embed(chips_u8):
        return encoders.embed_uint8(encoder, params, np.asarray(chips_u8, np.uint8))

    records = []
    for open_path, report_path in inputs:
        rec = {"path": report_path, "width": None, "height": None, "error": None, "faces": []}
        records.append(rec)
        try:
            photo = images.read_photo(open_path, max_pixels=max_pixels)
        except images.ImageReadError as e:
            rec["error"] = str(e)
            continue
        rec["width"], rec["height"] = photo.width, photo.height
        if aligned:
            size = enc.chip_size
            if photo.rgb.shape[:2] != (size, size):
                rec["error"] = (f"{open_path}: --aligned expects a {size}x{size} {encoder} chip, "
                                f"got {photo.width}x{photo.height}")
                continue
            rec["faces"].append({"box": [0, 0, photo.width - 1, photo.height - 1], "score": None,
                                 "landmarks": None, "descriptor": _floats(embed(photo.rgb[None])[0])})
            continue
        faces = analyze.find_faces(photo.rgb, models, upsample, with68=enc.view != "dlib")
        if faces:
            chips = np.stack([align.extract_chip(photo.rgb, analyze.chip_plan_for(enc, f, photo.rgb.shape),
                                                 views.rounding_for(enc)) for f in faces])
            for f, d in zip(faces, embed(chips)):
                rec["faces"].append({
                    "box": [int(v) for v in f.box],
                    "score": None if f.score is None else float(f.score),
                    "landmarks": [[float(x), float(y)] for x, y in np.asarray(f.landmarks)],
                    "descriptor": _floats(d),
                })
    return records


def _floats(v) -> list[float]:
    return [float(x) for x in v]


def compare(records: list[dict], encoder: str = "dlib_resnet") -> list[dict]:
    """All pairs of faces across the records: the encoder's distance and same-person decision."""
    import numpy as np

    from idguardian_jax import encoders
    from idguardian_jax.losses import identity

    enc = encoders.get(encoder)
    faces = [(r["path"], i, np.asarray(f["descriptor"], np.float32))
             for r in records for i, f in enumerate(r["faces"])]
    out = []
    for (pa, ia, da), (pb, ib, db) in itertools.combinations(faces, 2):
        dist = float(np.asarray(identity.embedding_distance(da[None], db[None], enc.distance))[0])
        out.append({"a": {"path": pa, "face": ia}, "b": {"path": pb, "face": ib},
                    "distance": dist, "same_person": dist < enc.threshold})
    return out


def main(argv: list[str]) -> int:
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give at least one photo or folder", exitcode=common.EXIT_USAGE)
    inputs = common.list_inputs(paths)
    if not inputs:
        raise app.UsageError(f"no image files found in {' '.join(paths)}", exitcode=common.EXIT_USAGE)
    if FLAGS.output:  # before any work: the output must be writable
        folder = os.path.dirname(os.path.abspath(FLAGS.output))
        parent = folder
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise app.UsageError(f"{FLAGS.output}: cannot write there ({parent} is not a "
                                 f"writable folder)", exitcode=common.EXIT_USAGE)
    try:
        records = embed_paths(inputs, aligned=FLAGS.aligned, upsample=FLAGS.upsample,
                              max_pixels=FLAGS.max_pixels, encoder=FLAGS.encoder,
                              checkpoint=FLAGS.checkpoint)
    except (OSError, ValueError) as e:  # the encoder's weights: missing, damaged, foreign
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return common.EXIT_SOME_FAILED
    result: dict = {"images": records, "encoder": FLAGS.encoder}
    if FLAGS.compare:
        result["comparisons"] = compare(records, FLAGS.encoder)
    failed = [r for r in records if r["error"]]
    for r in failed:
        print(f"error: {r['error']}", file=sys.stderr)
    if FLAGS.output:
        try:
            jsonio.write_json_atomic(FLAGS.output, result)
        except OSError as e:  # a full or read-only disk
            print(f"usage error: {FLAGS.output}: cannot write ({e.strerror or e})", file=sys.stderr)
            return common.EXIT_USAGE
        n_faces = sum(len(r["faces"]) for r in records)
        print(f"{len(records)} images, {n_faces} faces, {len(failed)} failed -> {FLAGS.output}",
              file=sys.stderr)
    else:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    if FLAGS.compare:
        for c in result["comparisons"]:
            verdict = "same person" if c["same_person"] else "different people"
            print(f"{c['a']['path']}#{c['a']['face']} vs {c['b']['path']}#{c['b']['face']}: "
                  f"distance {c['distance']:.3f} -> {verdict}", file=sys.stderr)
    return common.EXIT_SOME_FAILED if failed else common.EXIT_OK


def run():
    app.run(common.one_line_usage_errors(main), flags_parser=common.parse_flags_or_exit)


if __name__ == "__main__":
    run()
