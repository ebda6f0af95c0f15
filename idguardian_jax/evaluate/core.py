"""Evaluating protected photos against their clean originals, per face, encoder and transform.

For one pair (clean, protected), both (H, W, 3) uint8 RGB of the same size:
  1. the clean faces: dlib's MMOD detector (or the boxes idguardian-protect recorded for this very
     file), 5 landmarks, each encoder's chip and clean embedding;
  2. image quality on the whole photo: PSNR, SSIM, maximum change, LPIPS (when weights are given);
  3. for each variant (the protected photo itself, 'none', and each post-processing transform of
     it): faces found again on that image, as an attacker would; each clean face is matched to a
     found face by box IoU >= 0.3 (the clean box moved by the transform's geometry); the matched
     face's chip is cut again and embedded; distance to the clean embedding.
After all photos (`finish`), identity verification against the gallery: the same person's other
clean photos (largest face of each labelled photo). A face is a protection *success* for an
encoder when it is not found at all, or its embedding is at or beyond the encoder's threshold from
its own clean face and from every gallery face; it is *recognized* when found and closer than the
threshold to some gallery face (the match rate is the share of faces with a gallery that are).
"""
from __future__ import annotations

import collections
import hashlib
import os
import sys
import threading
import time
from concurrent import futures
from typing import Sequence

import numpy as np

from idguardian_jax import encoders as encoder_registry
from idguardian_jax import images, measure
from idguardian_jax.evaluate import inputs, metrics
from idguardian_jax.evaluate import transforms as transforms_mod
from idguardian_jax.evaluate.records import FaceEval, PhotoEval, Run, Variant
from idguardian_jax.faces import analyze, detect, detect_regions

MIN_IOU = measure.MIN_IOU
NONE = "none"


class Evaluator:
    """Holds the models and settings of one evaluation; `evaluate_pair` per photo, then `finish`.

    encoders: names from the registry; dlib_resnet uses the bundled weights unless checkpoints
      names a file; every other encoder needs checkpoints[name].
    transforms: names (see evaluate.transforms) or Transform objects; the protected photo itself
      ('none') is always evaluated.
    clean_baseline: also measure each transform on the clean photo ('clean:<name>' variants).
    lpips_weights: a local LPIPS weights file (evaluate.lpips), or None (LPIPS not computed).
    upsample: the detector's upsample_num_times (1, as face_recognition).
    max_side: 0 detects the clean faces on the full canvas; otherwise on a canvas of that long side,
      refined at full resolution (faces.detect_regions; the default of configs/default.py).
    near: on each transformed photo, compute dlib's detections only near the clean faces' mapped
      boxes (faces.detect_regions.refine: equal to the full detection there) rather than on the
      whole photo; other faces of a variant are never used.
    thumb_size: longest side of the report's thumbnails (0: none).
    """

    def __init__(self, encoders: Sequence[str] = ("dlib_resnet",), checkpoints: dict | None = None,
                 transforms: Sequence[str | transforms_mod.Transform] = (),
                 clean_baseline: bool = False, lpips_weights: str | None = None, upsample: int = 1,
                 models: analyze.FaceModels | None = None, thumb_size: int = 320,
                 max_side: int = 1024, near: bool = True):
        checkpoints = dict(checkpoints or {})
        self.encoder_names = list(dict.fromkeys(encoders))
        installed = encoder_registry.installed()
        for name in self.encoder_names:
            encoder_registry.get(name)  # KeyError for an unknown name
            if name != "dlib_resnet" and not checkpoints.get(name) and name not in installed:
                raise ValueError(f"encoder {name} needs its weights: --checkpoints={name}=PATH")
        self.models = models or analyze.FaceModels.load()
        self.params = {}
        for name in self.encoder_names:
            path = checkpoints.get(name)
            # installed real encoders load from the install folder (path None)
            self.params[name] = (self.models.resnet if name == "dlib_resnet" and not path
                                 else encoder_registry.load_params(name, path))
        self.with68 = analyze.needs_68(self.encoder_names)
        if self.with68:
            self.models.ensure_68()
        self.upsample = int(upsample)
        self.max_side = int(max_side)
        self.near = bool(near)
        self.thumb_size = int(thumb_size)
        ts = [t if isinstance(t, transforms_mod.Transform) else transforms_mod.parse(t)
              for t in transforms]
        ts = [t for t in ts if t.name not in (NONE, "identity")]
        self.variants = [Variant(NONE, "protected", transforms_mod.parse(NONE))]
        self.variants += [Variant(t.name, "protected", t) for t in ts]
        if clean_baseline:
            self.variants += [Variant(f"clean:{t.name}", "clean", t) for t in ts]
        self.lpips = None
        self.lpips_note = ("LPIPS not computed: no local weights given (--lpips_weights); "
                           "never downloaded")
        if lpips_weights:
            from idguardian_jax.evaluate import lpips

            self.lpips = lpips.load(lpips_weights)
            self.lpips_note = f"LPIPS ({self.lpips.net}) from {lpips_weights}"
        self._detections: collections.OrderedDict = collections.OrderedDict()
        self.timings: dict[str, float] = collections.defaultdict(float)
        self._lock = threading.Lock()

    def _tick(self, key: str, t0: float, count: str | None = None) -> None:
        """Add the seconds since t0 to timings[key] (thread-seconds when workers > 1)."""
        dt = time.perf_counter() - t0
        with self._lock:
            self.timings[key] += dt
            if count:
                self.timings[count] += 1

    # -- faces and embeddings ------------------------------------------------------------------
    def find_faces(self, rgb: np.ndarray, boxes=None, near=None) -> list[analyze.Face]:
        """Faces of an (H, W, 3) uint8 photo: detected (memoized by pixels), or from given
        (box, score) pairs; landmarks (and 68 points when an encoder needs them) found on `rgb`.
        near: boxes where faces are expected; only dlib's detections near them are computed."""
        if boxes is None:
            near_key = None if near is None else tuple(tuple(int(v) for v in b) for b in near)
            base = (hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest(), rgb.shape,
                    self.upsample, self.max_side)
            key = base + (near_key,)
            with self._lock:
                # a whole-photo detection of the same pixels serves a detection near boxes too
                # (the caller matches faces to its boxes; refine equals the full detection there)
                boxes = self._detections.get(key) or self._detections.get(base + (None,))
            if boxes is None:
                t = time.perf_counter()
                if near is not None:
                    dets = detect_regions.refine(rgb, self.models.detector, list(near), self.upsample)
                elif self.max_side:
                    dets = detect_regions.detect_faces_bounded(rgb, self.models.detector,
                                                               self.max_side, self.upsample)
                else:
                    dets = detect.detect_faces(rgb, self.models.detector, self.upsample)
                boxes = [(d.rect, d.confidence) for d in dets]
                self._tick("detect", t, "detections")
                with self._lock:
                    self._detections[key] = boxes
                    while len(self._detections) > 4096:
                        self._detections.popitem(last=False)
        t = time.perf_counter()
        faces = analyze.find_faces(rgb, self.models, self.upsample, boxes=[b for b, _ in boxes],
                                   with68=self.with68)
        for f, (_, s) in zip(faces, boxes):
            f.score = None if s is None else float(s)
        self._tick("landmarks", t)
        return faces

    def chip(self, name: str, rgb: np.ndarray, face: analyze.Face) -> np.ndarray:
        """The (S, S, 3) uint8 chip encoder `name` reads from this face of `rgb`."""
        return measure.chip(encoder_registry.get(name), rgb, face)

    def embed(self, name: str, chips: np.ndarray) -> np.ndarray:
        """(N, E) float32 embeddings of (N, S, S, 3) uint8 chips (encoders.embed_uint8)."""
        t = time.perf_counter()
        out = encoder_registry.embed_uint8(name, self.params[name], chips)
        self._tick("embed", t)
        return out

    # -- one photo -----------------------------------------------------------------------------
    def evaluate_pair(self, path: str, clean: np.ndarray, protected: np.ndarray,
                      person: str | None = None, boxes=None) -> PhotoEval:
        """Phase 1 for one photo: faces, image quality and every variant's embeddings.

        clean, protected: (H, W, 3) uint8 RGB of the same size. boxes: the clean faces as
        (box, score) pairs when already known (e.g. from idguardian-protect's records).
        """
        t0 = time.perf_counter()
        pe = PhotoEval(path, person=person, width=int(clean.shape[1]), height=int(clean.shape[0]))
        if protected.shape != clean.shape:
            pe.error = (f"{path}: the protected photo is {protected.shape[1]}x"
                        f"{protected.shape[0]}, the clean one {clean.shape[1]}x{clean.shape[0]}")
            return pe
        t = time.perf_counter()
        pe.max_change = metrics.max_change(clean, protected)
        pe.psnr = None if pe.max_change == 0 else round(metrics.psnr(clean, protected), 4)
        ssim = metrics.ssim(clean, protected)
        pe.ssim = None if np.isnan(ssim) else round(ssim, 6)  # nan: smaller than SSIM's window
        if self.lpips is not None:
            pe.lpips = float(f"{self.lpips(clean, protected):.7g}")
        self._tick("image_metrics", t)
        if self.thumb_size:
            t = time.perf_counter()
            from idguardian_jax.evaluate import report

            pe.thumbs = report.thumbnails(clean, protected, self.thumb_size)
            self._tick("thumbnails", t)
        pe.clean_faces_from = "detected" if boxes is None else "idguardian-protect records"
        faces = self.find_faces(clean, boxes)
        pe.status = "evaluated" if faces else "no_face"
        if not faces:
            pe.notes.append("no face found on the clean photo")
            pe.seconds = round(time.perf_counter() - t0, 3)
            return pe
        pe.faces = [FaceEval(i, [int(v) for v in f.box], f.score) for i, f in enumerate(faces)]
        if person is not None:  # the label names the photo's subject: its largest face
            sizes = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]
            pe.faces[int(np.argmax(sizes))].person = person
        # every variant: faces found again, matched to the clean faces
        chips = {n: [self.chip(n, clean, f) for f in faces] for n in self.encoder_names}
        slots: list[tuple[str, int]] = []  # (variant, face index) per extra chip
        for v in self.variants:
            t = time.perf_counter()
            img = v.transform(protected if v.source == "protected" else clean)
            self._tick("transforms", t)
            mapped = [v.transform.map_box(f.box, img.shape) for f in faces]
            found, match = measure.found_again(img, mapped, self.find_faces, self.near, MIN_IOU)
            for i, j in enumerate(match):
                box = None if j is None else [int(x) for x in found[j].box]
                pe.faces[i].results[v.name] = {"found": j is not None, "box": box, "encoders": {}}
                if j is not None:
                    slots.append((v.name, i))
                    for n in self.encoder_names:
                        chips[n].append(self.chip(n, img, found[j]))
        for n in self.encoder_names:
            emb = self.embed(n, np.stack(chips[n]))
            enc = encoder_registry.get(n)
            for i, fe in enumerate(pe.faces):
                fe.clean_emb[n] = emb[i]
            for (vname, i), e in zip(slots, emb[len(faces):]):
                fe = pe.faces[i]
                fe.emb[(vname, n)] = e
                d = metrics.distance(e, fe.clean_emb[n], enc.distance)
                fe.results[vname]["encoders"][n] = {"distance": round(d, 6)}
        pe.seconds = round(time.perf_counter() - t0, 3)
        return pe

    # -- all photos ----------------------------------------------------------------------------
    def finish(self, photos: Sequence[PhotoEval]) -> None:
        """Phase 2: gallery verification and success, in place, once every photo is evaluated."""
        subjects: dict[str, list[tuple[str, FaceEval]]] = collections.defaultdict(list)
        for pe in photos:
            for fe in pe.faces:
                if fe.person is not None:
                    subjects[fe.person].append((pe.path, fe))
        for pe in photos:
            for fe in pe.faces:
                gallery = ([g for p, g in subjects.get(fe.person, []) if p != pe.path]
                           if fe.person else [])
                fe.gallery = len(gallery)
                for n in self.encoder_names:
                    enc = encoder_registry.get(n)
                    thr = enc.threshold
                    gal = np.stack([g.clean_emb[n] for g in gallery]) if gallery else None
                    if gal is not None:
                        d0 = metrics.distances(fe.clean_emb[n][None], gal, enc.distance)[0]
                        fe.clean[n] = {"gallery_min": round(float(d0.min()), 6),
                                       "recognized": bool(d0.min() < thr)}
                    for vname, res in fe.results.items():
                        entry = res["encoders"].setdefault(n, {"distance": None})
                        e = fe.emb.get((vname, n))
                        gmin = None
                        if e is not None and gal is not None:
                            gmin = float(metrics.distances(e[None], gal, enc.distance)[0].min())
                        entry["gallery_min"] = None if gmin is None else round(gmin, 6)
                        entry["recognized"] = (None if gal is None else
                                               bool(e is not None and gmin < thr))
                        entry["success"] = bool(e is None or (entry["distance"] >= thr and
                                                              (gmin is None or gmin >= thr)))

    def encoders_info(self) -> dict[str, dict]:
        return {n: {"distance": encoder_registry.get(n).distance,
                    "threshold": encoder_registry.get(n).threshold} for n in self.encoder_names}

    def evaluate_folders(self, clean_dir: str, protected_dir: str,
                         identities: str | dict | None = None, reuse_protect_records: bool = False,
                         max_pixels: int = images.DEFAULT_MAX_PIXELS, progress: bool = True,
                         workers: int = 1) -> Run:
        """Evaluate every clean photo under clean_dir against its copy under protected_dir.

        workers: photos evaluated at once in threads (XLA runs the detector's convolutions on about
        one core and releases the GIL, so 2 threads can use 2 idle cores)."""
        t_start = time.perf_counter()
        self.timings.clear()
        pairs, unpaired = inputs.pair_folders(clean_dir, protected_dir)
        labels = (inputs.read_identities(identities) if isinstance(identities, str)
                  else dict(identities or {}))
        # the protected folder's records: face boxes reused only if asked and checksums match
        records = inputs.protect_records(protected_dir) if reuse_protect_records else {}
        photos: list[PhotoEval] = []
        work = lambda pair: self._evaluate_file(pair, labels, records, max_pixels,  # noqa: E731
                                                reuse_protect_records)
        with futures.ThreadPoolExecutor(max(1, int(workers))) as pool:
            results = pool.map(work, pairs) if workers > 1 else map(work, pairs)
            for k, pe in enumerate(results, start=1):
                photos.append(pe)
                if progress:
                    sys.stderr.write(f"[{k}/{len(pairs)}] {progress_line(pe)}\n")
                    sys.stderr.flush()
        self.finish(photos)
        self.timings["total"] = time.perf_counter() - t_start
        notes = [self.lpips_note]
        if unpaired:
            notes.append(f"{len(unpaired)} protected photo(s) have no clean photo: "
                         + ", ".join(unpaired[:5]) + (" ..." if len(unpaired) > 5 else ""))
        reused = sum(1 for p in photos if any("boxes reused" in n for n in p.notes))
        notes.append(f"faces found again on every clean photo (nothing in {protected_dir} trusted)"
                     if not reused else
                     f"clean faces' boxes of {reused} photo(s) reused from "
                     f"{os.path.join(protected_dir, inputs.SUMMARY_NAME)} (records whose input and "
                     f"output checksums match the files); the others found again")
        if labels and not any(f.person for p in photos for f in p.faces):
            notes.append("no identity label matched a clean photo with a face: no verification")
        settings = {"clean": clean_dir, "protected": protected_dir,
                    "identities": identities if isinstance(identities, str) else None,
                    "upsample": self.upsample, "min_iou": MIN_IOU, "max_side": self.max_side,
                    "near": self.near,
                    "transforms": [v.name for v in self.variants if v.name != NONE],
                    "reuse_protect_records": reuse_protect_records, "workers": int(workers),
                    "budget_255": max((r["budget_255"] for r in records.values()
                                       if isinstance(r.get("budget_255"), int)), default=None)}
        return Run(photos, self.encoders_info(), [v.name for v in self.variants], settings, notes,
                   unpaired, dict(self.timings))

    def _evaluate_file(self, pair: inputs.Pair, labels, records, max_pixels,
                       reuse=True) -> PhotoEval:
        pe = PhotoEval(pair.key, pair.clean, pair.protected)
        if pair.error:
            pe.error = pair.error
            return pe
        t = time.perf_counter()
        try:
            clean = images.read_photo(pair.clean, max_pixels=max_pixels).rgb
        except images.ImageReadError as e:
            pe.error = str(e)
            return pe
        boxes = (inputs.reusable_boxes(records, pair.clean, pair.protected)
                 if records and reuse else None)
        if boxes is not None:
            pe.notes.append("clean faces' boxes reused from idguardian-protect's record (its input "
                            "and output checksums match these files)")
        if pair.protected is None:
            if boxes is not None and not boxes:  # protect found no face and wrote nothing
                pe.status, pe.width, pe.height = "no_face", clean.shape[1], clean.shape[0]
                pe.notes.append("no face found on the clean photo (idguardian-protect records); "
                                "no protected copy")
                return pe
            faces = self.find_faces(clean, boxes)
            if not faces:
                pe.status, pe.width, pe.height = "no_face", clean.shape[1], clean.shape[0]
                pe.notes.append("no face found on the clean photo; no protected copy")
                return pe
            stem = os.path.splitext(pair.key)[0]
            pe.error = (f"{pair.clean}: no protected copy (expected {stem}.png or another image "
                        f"extension under the protected folder)")
            return pe
        try:
            protected = images.read_photo(pair.protected, max_pixels=max_pixels).rgb
        except images.ImageReadError as e:
            pe.error = str(e)
            return pe
        self._tick("read", t)
        if protected.shape != clean.shape:
            pe.error = (f"{pair.protected}: {protected.shape[1]}x{protected.shape[0]} pixels, but "
                        f"the clean photo {pair.clean} is {clean.shape[1]}x{clean.shape[0]}")
            return pe
        try:
            out = self.evaluate_pair(pair.key, clean, protected, inputs.person_of(pair.key, labels),
                                     boxes)
        except Exception as e:  # noqa: BLE001 - one photo's failure must not stop the others
            pe.error = f"{pair.clean}: {type(e).__name__}: {e}"
            return pe
        out.clean, out.protected = pair.clean, pair.protected
        return out


def progress_line(pe: PhotoEval) -> str:
    if pe.status == "error":
        return f"{pe.path}: error: {pe.error}"
    if pe.status == "no_face":
        return f"{pe.path}: no face"
    parts = []
    for fe in pe.faces:
        r = fe.results.get(NONE, {})
        d = (r.get("encoders") or {}).get("dlib_resnet", {}).get("distance")
        parts.append("not found again" if not r.get("found") else
                     (f"distance {d:.3f}" if d is not None else "found"))
    psnr = "identical" if pe.psnr is None else f"PSNR {pe.psnr:.1f} dB"
    return f"{pe.path}: {len(pe.faces)} face(s) ({'; '.join(parts)}), {psnr} ({pe.seconds:.1f} s)"

