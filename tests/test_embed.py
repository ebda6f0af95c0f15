"""The whole face pipeline against dlib, and the idguardian-embed command."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from idguardian_jax.faces import analyze, boxes


@pytest.fixture(scope="module")
def models():
    return analyze.FaceModels.load()


@pytest.mark.parametrize("name", ["obama.jpg", "two_people.jpg", "n000050_A_0408_01.png",
                                  "32bit.png"])
def test_whole_pipeline_matches_dlib_cnn_faces(models, faces_dir, dlib_reference, name):
    img = np.asarray(Image.open(os.path.join(faces_dir, name)).convert("RGB"))
    faces = analyze.analyze(img, models)
    ref = dlib_reference["images"][name]["cnn_faces"]
    assert len(faces) == len(ref)
    for r in ref:
        f = max(faces, key=lambda f: boxes.iou(f.box, r["rect"]))
        assert boxes.iou(f.box, r["rect"]) >= 0.9
        assert np.abs(f.landmarks - np.asarray(r["landmarks5"])).max() <= 1.5
        dist = np.linalg.norm(f.descriptor - np.asarray(r["descriptor_from_image_and_shape"]))
        assert dist <= 0.03, dist


def _embed(args, tmp_path, check=False):
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "idguardian_jax.cli.embed", f"--output={out}"]
                          + args, capture_output=True, text=True, timeout=600)
    data = json.loads(out.read_text()) if out.exists() else None
    return proc, data


def test_embed_compare_same_and_different_people(tmp_path, faces_dir):
    paths = [os.path.join(faces_dir, n) for n in ("obama.jpg", "obama2.jpg", "biden.jpg")]
    proc, data = _embed(["--compare"] + paths, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [len(im["faces"]) for im in data["images"]] == [1, 1, 1]
    face = data["images"][0]["faces"][0]
    assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and len(face["descriptor"]) == 128
    assert data["images"][0]["path"] == paths[0] and data["images"][0]["width"] == 910
    verdict = {(c["a"]["path"], c["b"]["path"]): c["same_person"] for c in data["comparisons"]}
    assert verdict[(paths[0], paths[1])] is True
    assert verdict[(paths[0], paths[2])] is False and verdict[(paths[1], paths[2])] is False


def test_embed_aligned_folder_and_failures(tmp_path, faces_dir, dlib_reference):
    chips = tmp_path / "chips"
    chips.mkdir()
    ref = dlib_reference["images"]["obama.jpg"]["faces"][0]
    Image.open(os.path.join(faces_dir, ref["chip_file"])).save(chips / "a.png")
    (chips / "broken.png").write_bytes(b"\x89PNG garbage")
    Image.new("RGB", (112, 112)).save(chips / "small.png")
    (chips / "notes.txt").write_text("not a photo, skipped in folders")
    proc, data = _embed(["--aligned", str(chips)], tmp_path)
    assert proc.returncode == 1
    by_path = {im["path"]: im for im in data["images"]}
    assert sorted(by_path) == ["a.png", "broken.png", "small.png"]
    desc = np.asarray(by_path["a.png"]["faces"][0]["descriptor"])
    assert np.linalg.norm(desc - np.asarray(ref["descriptor_from_chip"])) <= 1e-3
    assert "broken.png" in by_path["broken.png"]["error"]
    assert "150x150" in by_path["small.png"]["error"]
    assert "broken.png" in proc.stderr


@pytest.mark.slow
def test_embed_usage_errors(tmp_path):
    proc, _ = _embed([], tmp_path)
    assert proc.returncode == 2
    proc = subprocess.run([sys.executable, "-m", "idguardian_jax.cli.embed", "--no_such_flag", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no_such_flag" in proc.stderr
    proc, data = _embed([str(tmp_path / "missing.jpg")], tmp_path)
    assert proc.returncode == 1 and "no such file" in data["images"][0]["error"]


def test_embed_other_encoder_and_aligned(tmp_path, faces_dir):
    torch = pytest.importorskip("torch")
    import reference_models as rm

    ckpt = tmp_path / "facenet.pt"
    torch.save(rm.random_facenet(0, classify_head=8631).state_dict(), ckpt)
    photo = os.path.join(faces_dir, "n000050_A_0003_01.png")
    proc, data = _embed(["--encoder=facenet", f"--checkpoint={ckpt}", "--compare", photo, photo],
                        tmp_path)
    assert proc.returncode == 0, proc.stderr
    face = data["images"][0]["faces"][0]
    assert len(face["descriptor"]) == 512 and data["encoder"] == "facenet"
    assert abs(np.linalg.norm(face["descriptor"]) - 1) < 1e-4
    assert data["comparisons"][0]["distance"] < 1e-5 and data["comparisons"][0]["same_person"]
    chip = tmp_path / "chip.png"
    Image.fromarray(np.full((160, 160, 3), 120, np.uint8)).save(chip)
    proc, data = _embed(["--encoder=facenet", f"--checkpoint={ckpt}", "--aligned", str(chip)], tmp_path)
    assert proc.returncode == 0 and len(data["images"][0]["faces"][0]["descriptor"]) == 512
    proc, data = _embed(["--encoder=facenet", "--aligned", str(chip)], tmp_path)
    assert proc.returncode == 1
