"""idguardian-evaluate on real photos protected with configs/tiny.py, checked by direct computation.

Three photos of one person from ../shared/faces (downscaled to 256x256 and written only to temp
folders) and one photo without a face are protected with protect.protect_files; the command then
evaluates them with identities and two transforms. The figures in its report are recomputed here
from the photos with the plain face pipeline (analyze.analyze), numpy and scikit-image.
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from idguardian_jax.configs import tiny
from idguardian_jax import evaluate, images, protect
from idguardian_jax.evaluate import inputs, lpips, metrics, report, transforms
from idguardian_jax.faces import analyze

NAMES = ("n000050_A_0003_01.png", "n000050_A_0010_01.png", "n000050_A_0075_01.png")
TRANSFORMS = "jpeg75,crop0.9"


@pytest.fixture(scope="module")
def folders(faces_dir, tmp_path_factory):
    """clean/ (3 faces of one person + a photo without a face), protected/ (tiny config),
    identities.json; returns a dict of paths and protect's summary."""
    root = tmp_path_factory.mktemp("evaluate")
    clean = root / "clean"
    (clean / "sub").mkdir(parents=True)
    rels = ["a.png", "sub/b.jpg", "c.png"]
    for name, rel in zip(NAMES, rels):
        im = Image.open(os.path.join(faces_dir, name)).convert("RGB")
        im.resize((256, 256), Image.LANCZOS).save(clean / rel, quality=95)
    Image.new("RGB", (64, 48), (90, 120, 90)).save(clean / "blank.png")
    ids = root / "identities.json"
    ids.write_text(json.dumps({r: "n000050" for r in rels} | {"blank.png": "nobody"}))
    cfg = tiny.get_config()
    inputs_ = [(str(clean / r), r) for r in rels + ["blank.png"]]
    summary = protect.protect_files(inputs_, str(root / "protected"), cfg, progress=False)
    assert summary["counts"] == {"protected": 3, "no_face": 1}, summary["counts"]
    return {"root": root, "clean": clean, "protected": root / "protected", "ids": ids,
            "rels": rels, "summary": summary}


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    """LPIPS AlexNet-shaped weights with random values (the real ones are never downloaded)."""
    path = tmp_path_factory.mktemp("lpips") / "random_lpips.npz"
    np.savez(path, **_random_lpips(np.random.default_rng(0)))
    return str(path)


def _random_lpips(rng):
    shapes = {"features.0": (64, 3, 11, 11), "features.3": (192, 64, 5, 5),
              "features.6": (384, 192, 3, 3), "features.8": (256, 384, 3, 3),
              "features.10": (256, 256, 3, 3)}
    out = {}
    for n, s in shapes.items():
        fan_in = s[1] * s[2] * s[3]
        out[f"{n}.weight"] = (rng.normal(size=s) / np.sqrt(fan_in)).astype(np.float32)
        out[f"{n}.bias"] = (rng.normal(size=s[0]) * 0.01).astype(np.float32)
    for i, c in enumerate((64, 192, 384, 256, 256)):
        lin = np.abs(rng.normal(size=(1, c, 1, 1)) * 0.1)
        out[f"lin{i}.model.1.weight"] = lin.astype(np.float32)
    return out


@pytest.fixture(scope="module")
def cli(folders, lpips_file):
    rep = folders["root"] / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "idguardian_jax.cli.evaluate", f"--clean={folders['clean']}",
         f"--protected={folders['protected']}", f"--report={rep}", f"--identities={folders['ids']}",
         f"--transforms={TRANSFORMS}", f"--lpips_weights={lpips_file}",
         "--reuse_protect_records=true"],
        capture_output=True, text=True, timeout=900)
    data = json.loads((rep / "report.json").read_text()) if (rep / "report.json").exists() else None
    return proc, data, rep


@pytest.fixture(scope="module")
def models():
    return analyze.FaceModels.load()


def _photo(data, path):
    return next(p for p in data["photos"] if p["path"] == path)


def test_cli_prints_table_and_writes_report(cli, folders):
    proc, data, rep = cli
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "variant" in out and "success" in out and "FDFR" in out
    for v in ("none", "jpeg75", "crop0.9"):
        assert any(line.split()[:2] == [v, "dlib_resnet"] for line in out.splitlines()), out
    assert "PSNR mean" in out and "LPIPS mean" in out
    for name in ("report.json", "report.html", "summary.csv", "photos.csv", "faces.csv"):
        assert (rep / name).stat().st_size > 0
    assert data["counts"] == {"evaluated": 3, "no_face": 1}
    assert data["faces"] == 3 and data["variants"] == ["none", "jpeg75", "crop0.9"]
    blank = _photo(data, "blank.png")
    assert blank["status"] == "no_face" and blank["error"] is None
    # the clean boxes came from protect's records (same files), not a second detection
    sources = {_photo(data, r)["clean_faces_from"] for r in folders["rels"]}
    assert sources == {"idguardian-protect records"}
    assert all(_photo(data, r)["lpips"] > 0 for r in folders["rels"])
    assert "[1/4]" in proc.stderr


def test_figures_agree_with_direct_computation(cli, folders, models, lpips_file):
    _, data, _ = cli
    clean_desc = {}
    for rel in folders["rels"]:
        clean = images.read_photo(folders["clean"] / rel).rgb
        faces = analyze.analyze(clean, models)
        assert len(faces) == 1
        clean_desc[rel] = faces[0].descriptor
    rel = folders["rels"][1]  # sub/b.jpg -> sub/b.png
    p = _photo(data, rel)
    clean = images.read_photo(folders["clean"] / rel).rgb
    prot_path = folders["protected"] / "sub" / "b.png"
    assert p["protected"] == str(prot_path)
    prot = images.read_photo(prot_path).rgb
    # image quality, whole photo
    diff = prot.astype(float) - clean.astype(float)
    assert p["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / np.mean(diff ** 2)), abs=1e-3)
    assert p["max_change"] == int(np.abs(diff).max()) <= round(tiny.get_config().budget * 255)
    from skimage.metrics import structural_similarity

    sk = structural_similarity(clean / 255.0, prot / 255.0, channel_axis=-1, data_range=1.0,
                               gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert p["ssim"] == pytest.approx(sk, abs=2e-3)
    # identity: the face found again on the protected photo, described, vs the clean face
    face = p["faces"][0]
    again = analyze.analyze(prot, models)
    j = max(range(len(again)), key=lambda k: metrics.iou(again[k].box, face["box"]))
    d = float(np.linalg.norm(again[j].descriptor - clean_desc[rel]))
    res = face["results"]["none"]
    assert res["found"] and res["box"] == list(again[j].box)
    assert res["encoders"]["dlib_resnet"]["distance"] == pytest.approx(d, abs=1e-5)
    # idguardian-protect measured the same thing when it wrote the photo
    rec = next(r for r in folders["summary"]["records"] if r["path"] == rel)
    assert rec["faces"][0]["distance_after"] == pytest.approx(d, abs=1e-5)
    # verification against the person's two other clean photos
    others = [np.linalg.norm(again[j].descriptor - clean_desc[r])
              for r in folders["rels"] if r != rel]
    e = res["encoders"]["dlib_resnet"]
    assert face["person"] == "n000050" and face["gallery"] == 2
    assert e["gallery_min"] == pytest.approx(min(others), abs=1e-5)
    assert e["recognized"] == (min(others) < 0.6)
    assert e["success"] == (d >= 0.6 and min(others) >= 0.6)
    before = min(np.linalg.norm(clean_desc[rel] - clean_desc[r])
                 for r in folders["rels"] if r != rel)
    assert face["clean"]["dlib_resnet"]["gallery_min"] == pytest.approx(before, abs=1e-5)
    # after a transform: the transformed protected photo, faces found again (crop moves the box)
    t = transforms.parse("crop0.9")
    tp = t(prot)
    found = analyze.analyze(tp, models)
    mapped = t.map_box(face["box"], prot.shape)
    k = max(range(len(found)), key=lambda k: metrics.iou(found[k].box, mapped))
    assert metrics.iou(found[k].box, mapped) > 0.6
    rc = face["results"]["crop0.9"]
    assert rc["box"] == list(found[k].box)
    assert rc["encoders"]["dlib_resnet"]["distance"] == pytest.approx(
        float(np.linalg.norm(found[k].descriptor - clean_desc[rel])), abs=1e-5)
    # LPIPS with the given weights
    assert p["lpips"] == pytest.approx(lpips.load(lpips_file)(clean, prot), rel=1e-4)


def test_summary_and_csv_agree_with_faces(cli):
    _, data, rep = cli
    faces = [f for p in data["photos"] for f in p["faces"]]
    for row in data["summary"]:
        res = [f["results"][row["variant"]] for f in faces]
        succ = [r["encoders"]["dlib_resnet"]["success"] for r in res]
        assert row["faces"] == 3 and row["found"] == sum(r["found"] for r in res)
        assert row["success_rate"] == pytest.approx(sum(succ) / 3)
        rec = [r["encoders"]["dlib_resnet"]["recognized"] for r in res]
        assert row["match_rate"] == pytest.approx(sum(rec) / 3) and row["faces_with_gallery"] == 3
        dist = [r["encoders"]["dlib_resnet"]["distance"] for r in res if r["found"]]
        assert row["distance_mean"] == pytest.approx(np.mean(dist), abs=1e-5)
    with open(rep / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows] == ["none", "jpeg75", "crop0.9"]
    assert float(rows[0]["success_rate"]) == pytest.approx(data["summary"][0]["success_rate"])
    with open(rep / "faces.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3 * 3  # faces x variants x 1 encoder
    with open(rep / "photos.csv") as fh:
        photos = {r["path"]: r for r in csv.DictReader(fh)}
    assert photos["blank.png"]["status"] == "no_face" and photos["a.png"]["faces"] == "1"
    q = data["quality"]
    ps = [p["psnr"] for p in data["photos"] if p["psnr"] is not None]
    assert q["psnr_min"] == pytest.approx(min(ps)) and q["photos"] == 3


def test_real_report_renders_in_a_browser(cli, tmp_path):
    from test_report_browser import check_report_in_browser

    _, data, rep = cli
    # 3 photos x (clean, protected, difference) + 4 figures
    check_report_in_browser(rep / "report.html", tmp_path, expected_images=3 * 3 + 4)


def test_missing_mismatched_and_identical_copies(folders, models, tmp_path):
    clean, prot = tmp_path / "clean", tmp_path / "prot"
    clean.mkdir(), prot.mkdir()
    src = images.read_photo(folders["clean"] / "a.png").rgb
    Image.fromarray(src).save(clean / "same.png")
    Image.fromarray(src).save(prot / "same.png")          # identical: PSNR None, distance 0
    Image.fromarray(src).save(clean / "gone.png")         # a face, but no protected copy
    Image.fromarray(src).save(clean / "small.png")
    Image.fromarray(src[:200]).save(prot / "small.png")   # another size
    Image.fromarray(src).save(prot / "extra.png")         # no clean photo
    ev = evaluate.Evaluator(models=models, transforms=["jpeg75"], clean_baseline=True, thumb_size=0)
    run = ev.evaluate_folders(str(clean), str(prot), progress=False)
    assert [v.name for v in ev.variants] == ["none", "jpeg75", "clean:jpeg75"]
    by = {p.path: p for p in run.photos}
    assert by["gone.png"].status == "error" and "no protected copy" in by["gone.png"].error
    assert by["gone.png"].error.startswith(str(clean / "gone.png"))
    assert by["small.png"].status == "error"
    assert by["small.png"].error.startswith(str(prot / "small.png"))
    assert "256x200" in by["small.png"].error or "256x256" in by["small.png"].error
    same = by["same.png"]
    assert same.status == "evaluated" and same.psnr is None and same.max_change == 0
    assert same.ssim == pytest.approx(1.0)
    r = same.faces[0].results["none"]["encoders"]["dlib_resnet"]
    assert r["distance"] == pytest.approx(0.0, abs=1e-6) and r["success"] is False
    assert r["recognized"] is None  # no identities: no gallery
    # the clean baseline of an identical copy is the transformed protected photo, found in the cache
    j, c = (same.faces[0].results[v]["encoders"]["dlib_resnet"] for v in ("jpeg75", "clean:jpeg75"))
    assert j == c and 0 < c["distance"] < 0.6
    # detections are memoized by pixels: same.png (= gone.png = its copy) and one JPEG
    assert run.timings["detections"] == 2
    assert any("extra.png" in n for n in run.notes)
    rep = report.build(run)
    assert rep["counts"] == {"evaluated": 1, "error": 2}
    assert rep["quality"]["identical"] == 1


def test_identities_files_and_pairing(tmp_path):
    j = tmp_path / "ids.json"
    j.write_text(json.dumps({"a.jpg": "ann", "sub/b.png": "bob", "c.png": ["x", "y"], "d.png": ""}))
    labels = inputs.read_identities(str(j))
    assert labels == {"a.jpg": "ann", os.path.normpath("sub/b.png"): "bob"}
    assert inputs.person_of("a.jpg", labels) == "ann" and inputs.person_of("a.png", labels) == "ann"
    assert inputs.person_of("c.png", labels) is None
    c = tmp_path / "ids.csv"
    c.write_text("file,person\na.jpg,ann\n\nsub/b.png, bob \n")
    assert inputs.read_identities(str(c)) == labels
    for text, suffix, msg in (("{not json", ".json", "not valid JSON"),
                              ("[1]", ".json", "JSON object"),
                              ("name,who\na,b\n", ".csv", "header 'file,person'"),
                              ("file,person\nonly\n", ".csv", "line 2")):
        bad = tmp_path / f"bad{suffix}"
        bad.write_text(text)
        with pytest.raises(inputs.InputError, match=msg) as e:
            inputs.read_identities(str(bad))
        assert str(e.value).startswith(str(bad))
    with pytest.raises(inputs.InputError, match="cannot read"):
        inputs.read_identities(str(tmp_path / "missing.json"))
    # pairing by path up to the extension
    (tmp_path / "c" / "s").mkdir(parents=True), (tmp_path / "p" / "s").mkdir(parents=True)
    for rel in ("x.jpg", "s/y.png", "z.jpg", "z.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "c" / rel)
    for rel in ("x.png", "s/y.webp", "w.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "p" / rel)
    pairs, unpaired = inputs.pair_folders(str(tmp_path / "c"), str(tmp_path / "p"))
    by = {p.key: p for p in pairs}
    assert by["x.jpg"].protected == str(tmp_path / "p" / "x.png") and by["x.jpg"].error is None
    assert by[os.path.join("s", "y.png")].protected.endswith("y.webp")
    assert "ambiguous" in by["z.jpg"].error and "ambiguous" in by["z.png"].error
    assert unpaired == [str(tmp_path / "p" / "w.png")]


@pytest.mark.parametrize("args, msg", [
    (["--protected=P", "--report=R"], "--clean"),
    (["--clean=C", "--protected=P", "--report=R", "--transforms=jpeg75,sharpen"],
     "unknown transform"),
    (["--clean=C", "--protected=P", "--report=R", "--encoders=arcface"], "needs its weights"),
    (["--clean=C", "--protected=P", "--report=R", "--identities=C/nothing.json"], "cannot read"),
])
@pytest.mark.slow
def test_cli_usage_errors(tmp_path, args, msg):
    (tmp_path / "C").mkdir(), (tmp_path / "P").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "C" / "a.png")
    args = [a.replace("=C", f"={tmp_path / 'C'}").replace("=P", f"={tmp_path / 'P'}")
            .replace("=R", f"={tmp_path / 'R'}") for a in args]
    proc = subprocess.run([sys.executable, "-m", "idguardian_jax.cli.evaluate"] + args,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert msg in proc.stderr


def test_lpips_matches_a_torch_reference(lpips_file):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    w = dict(np.load(lpips_file))
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)

    def ref(x, y):  # the lpips package's forward (v0.1, alex), written out in torch
        def t(im):
            return torch.tensor(im, dtype=torch.float32).permute(2, 0, 1)[None] / 255.0

        shift = torch.tensor([-.030, -.088, -.188])[None, :, None, None]
        scale = torch.tensor([.458, .448, .450])[None, :, None, None]
        feats = []
        for im in (x, y):
            h = (t(im) * 2 - 1 - shift) / scale
            fs = []
            for i, (n, s, p) in enumerate((("features.0", 4, 2), ("features.3", 1, 2),
                                           ("features.6", 1, 1), ("features.8", 1, 1),
                                           ("features.10", 1, 1))):
                h = F.relu(F.conv2d(h, torch.tensor(w[f"{n}.weight"]),
                                    torch.tensor(w[f"{n}.bias"]), s, p))
                fs.append(h)
                if i < 2:
                    h = F.max_pool2d(h, 3, 2)
            feats.append(fs)
        total = 0.0
        for i, (f0, f1) in enumerate(zip(*feats)):
            n0 = f0 / (torch.sqrt(torch.sum(f0 ** 2, 1, keepdim=True)) + 1e-10)
            n1 = f1 / (torch.sqrt(torch.sum(f1 ** 2, 1, keepdim=True)) + 1e-10)
            lin = torch.tensor(w[f"lin{i}.model.1.weight"])
            total += F.conv2d((n0 - n1) ** 2, lin).mean().item()
        return total

    m = lpips.load(lpips_file)
    assert m(a, b) == pytest.approx(ref(a, b), rel=1e-4)
    assert m(a, a) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="not LPIPS AlexNet weights"):
        np.savez(lpips_file + ".bad.npz", x=np.zeros(3))
        lpips.load(lpips_file + ".bad.npz")


@pytest.mark.slow
def test_a_second_encoder_from_a_checkpoint(folders, models, tmp_path):
    """FaceNet (random weights in the upstream state-dict format) beside dlib: its own chip from
    the 68 landmarks found again, cosine distance, its own threshold."""
    torch = pytest.importorskip("torch")
    import reference_models as rm

    from idguardian_jax import encoders
    from idguardian_jax.faces import align

    ckpt = str(tmp_path / "facenet.pt")
    torch.save(rm.random_facenet(0).state_dict(), ckpt)
    ev = evaluate.Evaluator(["dlib_resnet", "facenet"], {"facenet": ckpt}, models=models,
                            thumb_size=0)
    clean = images.read_photo(folders["clean"] / "a.png").rgb
    prot = images.read_photo(folders["protected"] / "a.png").rgb
    pe = ev.evaluate_pair("a.png", clean, prot)
    ev.finish([pe])
    e = pe.faces[0].results["none"]["encoders"]["facenet"]
    enc = encoders.get("facenet")
    params = encoders.load_params("facenet", ckpt)

    def emb(rgb):
        face = analyze.find_faces(rgb, models, with68=True)[0]
        chip = align.extract_chip(rgb, analyze.chip_plan_for(enc, face, rgb.shape), "round")
        # the network itself is checked against its upstream elsewhere; here, the pipeline
        return encoders.embed_uint8("facenet", params, chip[None])[0]

    a, b = emb(clean), emb(prot)
    cos = 1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert e["distance"] == pytest.approx(cos, abs=1e-5)
    assert e["success"] == (cos >= enc.threshold)
    assert ev.encoders_info()["facenet"] == {"distance": "cosine", "threshold": enc.threshold}
