"""protect_files / idguardian-protect on a folder with every kind of input, and reruns."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageCms

from idguardian_jax.configs import tiny
from idguardian_jax import images, protect


@pytest.fixture(scope="module")
def protector():
    return protect.Protector(tiny.get_config())


@pytest.fixture(scope="module")
def face(faces_dir):
    """A real face photo, downscaled to 256x256 (written only to temp folders)."""
    im = Image.open(os.path.join(faces_dir, "n000050_A_0003_01.png")).convert("RGB")
    return im.resize((256, 256), Image.LANCZOS)


@pytest.fixture()
def tree(tmp_path, face):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x013B] = "Jane Doe"  # Artist
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    face.save(src / "sub" / "face.jpg", quality=95, exif=exif.tobytes(), icc_profile=icc)
    face.convert("L").save(src / "gray.png")
    rgba = face.copy()
    rgba.putalpha(Image.fromarray(np.full((256, 256), 200, np.uint8)))
    rgba.save(src / "rgba.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "empty.png").write_bytes(b"")
    Image.new("RGB", (10, 10), (90, 90, 90)).save(src / "tiny.png")
    frames = [face.convert("P"), face.transpose(Image.FLIP_LEFT_RIGHT).convert("P")]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    (src / "notes.txt").write_text("not a photo")
    return src


def _by_path(summary):
    return {r["path"]: r for r in summary["records"]}


def test_folder_with_every_kind_of_input(tree, tmp_path, protector):
    out = tmp_path / "out"
    inputs = [(str(tree / p), p) for p in
              ("anim.gif", "broken.jpg", "empty.png", "gray.png", "rgba.png", "sub/face.jpg", "tiny.png")]
    summary = protect.protect_files(inputs, str(out), protector.config, input_roots=[str(tree)],
                                    protector=protector, progress=False)
    recs = _by_path(summary)
    assert recs["sub/face.jpg"]["status"] == "protected"
    assert recs["gray.png"]["status"] == "protected" and recs["rgba.png"]["status"] == "protected"
    assert recs["tiny.png"]["status"] == "no_face" and not (out / "tiny.png").exists()
    for bad, why in (("anim.gif", "animated"), ("broken.jpg", "truncated|corrupt|not an image"),
                     ("empty.png", "empty")):
        assert recs[bad]["status"] == "error" and re.search(why, recs[bad]["error"]), recs[bad]
        assert recs[bad]["error"].startswith(str(tree / bad))
    # outputs mirror the tree, JPEG -> PNG, inputs untouched
    written = images.read_photo(out / "sub" / "face.png")
    original = images.read_photo(tree / "sub" / "face.jpg")
    assert written.format == "PNG"
    budget = round(protector.config.budget * 255)
    assert np.abs(written.rgb.astype(int) - original.rgb).max() <= budget
    assert Image.open(out / "sub" / "face.png").getexif().get(0x013B) == "Jane Doe"
    assert written.icc_profile == original.icc_profile
    a = images.read_photo(out / "rgba.png")
    assert a.alpha is not None and (a.alpha == 200).all()
    lines = (out / "idguardian_summary.jsonl").read_text().splitlines()
    assert len(lines) == 7 and all(json.loads(l)["path"] for l in lines)
    face_rec = recs["sub/face.jpg"]
    assert face_rec["faces"] and face_rec["psnr"] > 30 and face_rec["max_change"] <= budget


def test_rerun_skips_and_changed_settings_redo(tree, tmp_path, protector):
    out = tmp_path / "out"
    inputs = [(str(tree / "sub" / "face.jpg"), "sub/face.jpg")]
    protect.protect_files(inputs, str(out), protector.config, protector=protector, progress=False)
    before = (out / "sub" / "face.png").read_bytes()
    again = protect.protect_files(inputs, str(out), protector.config, protector=protector,
                                  progress=False)
    assert _by_path(again)["sub/face.jpg"]["status"] == "skipped"
    assert (out / "sub" / "face.png").read_bytes() == before
    cfg = tiny.get_config()
    cfg.budget = 2 / 255
    other = protect.Protector(cfg, models=protector.models)
    with pytest.raises(protect.UsageError, match="holds a job with other settings"):
        protect.protect_files(inputs, str(out), cfg, protector=other, progress=False)
    cfg.job.allow_changed_settings = True
    redo = protect.protect_files(inputs, str(out), cfg, protector=other, progress=False)
    assert _by_path(redo)["sub/face.jpg"]["status"] == "protected"
    assert _by_path(redo)["sub/face.jpg"]["max_change"] <= 2


def test_output_inside_input_and_unwritable_output(tree, tmp_path, protector):
    inputs = [(str(tree / "gray.png"), "gray.png")]
    with pytest.raises(protect.UsageError, match="inside the input folder"):
        protect.protect_files(inputs, str(tree / "out"), protector.config,
                              input_roots=[str(tree)], protector=protector, progress=False)
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the output folder should be")
    with pytest.raises(protect.UsageError, match="cannot create the output folder"):
        protect.protect_files(inputs, str(blocker), protector.config, protector=protector,
                              progress=False)
    out = tmp_path / "out2"
    out.mkdir()
    (out / "sub").write_text("a file where a sub-folder should be")
    summary = protect.protect_files(
        [(str(tree / "sub" / "face.jpg"), "sub/face.jpg"), (str(tree / "gray.png"), "gray.png")],
        str(out), protector.config, protector=protector, progress=False)
    recs = _by_path(summary)
    assert recs["sub/face.jpg"]["status"] == "error" and "cannot write" in recs["sub/face.jpg"]["error"]
    assert recs["gray.png"]["status"] == "protected"  # the batch went on


def test_missing_input_and_pixel_limit(tree, tmp_path, protector):
    cfg = tiny.get_config()
    cfg.output.max_pixels = 1000
    summary = protect.protect_files([(str(tree / "nope.jpg"), "nope.jpg"), (str(tree / "gray.png"), "gray.png")],
                                    str(tmp_path / "o"), cfg, protector=protector, progress=False)
    recs = _by_path(summary)
    assert "no such file" in recs["nope.jpg"]["error"]
    assert "exceeds the limit of 1,000" in recs["gray.png"]["error"]


def test_cli_exit_codes_and_lossy_warning(tree, tmp_path):
    cmd = [sys.executable, "-m", "idguardian_jax.cli.protect", "--config=" + tiny.__file__,
           "--progress=false"]
    p = subprocess.run(cmd + [f"--input={tree}", f"--output={tree / 'inner'}"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "inside the input folder" in p.stderr
    p = subprocess.run(cmd + [f"--input={tree / 'gray.png'}", f"--input={tree / 'broken.jpg'}",
                              f"--output={tmp_path / 'o'}", "--config.output.format=jpeg"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 1, p.stderr
    assert "lossy JPEG output weakens the protection" in p.stderr
    assert (tmp_path / "o" / "gray.jpg").exists()
    assert "dlib_resnet: distance to the clean face 0.00 -> " in p.stdout and "1 error" in p.stdout
    assert "protection is computed and measured against dlib alone" in p.stdout  # tiny: dlib only
