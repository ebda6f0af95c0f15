"""The tool as a careful and a hostile user try it (issue 12): it writes only its own files,
refuses outputs that overlap the inputs, checks every setting up front, says what it skipped,
keeps no location data by default, and trusts nothing in a protected folder.

Most cases write photos without faces (on_no_face=copy): the write path without PGD, in seconds.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from idguardian_jax.configs import tiny
from idguardian_jax import images, jobs, jsonio, protect, settings, writer
from idguardian_jax.checkpoints import cache
from idguardian_jax.cli import common
from idguardian_jax.evaluate import inputs as eval_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "idguardian_jax.cli.protect"]


@pytest.fixture(scope="module")
def protector():
    return protect.Protector(tiny.get_config())


def _copy_config():
    cfg = tiny.get_config()
    cfg.output.on_no_face = "copy"
    return cfg


def _blank(path, value=90):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 40), (value, value, value)).save(path)
    return path


def _run(inputs, out, protector, cfg=None, **kw):
    summary = protect.protect_files(inputs, str(out), cfg or _copy_config(), protector=protector,
                                    progress=False, **kw)
    return {r["path"]: r for r in summary["records"]}


def _cli(args, cwd=ROOT, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(CLI + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, **kw)


# ------------------------------------------------------------------------------ ownership
def test_a_file_the_tool_did_not_write_is_never_replaced(tmp_path, protector):
    src, out = tmp_path / "in", tmp_path / "out"
    _blank(src / "a.png")
    _blank(src / "b.png")
    out.mkdir()
    (out / "a.png").write_bytes(b"the user's own file")
    recs = _run([(str(src / "a.png"), "a.png"), (str(src / "b.png"), "b.png")], out, protector)
    assert recs["a.png"]["status"] == "error"
    assert "did not write" in recs["a.png"]["error"] and "\n" not in recs["a.png"]["error"]
    assert (out / "a.png").read_bytes() == b"the user's own file"
    assert recs["b.png"]["status"] == "copied"  # the batch went on
    # its own output may be rewritten by a later run (named in its record)
    cfg = _copy_config()
    cfg.output.strip_metadata = True
    cfg.job.allow_changed_settings = True
    again = _run([(str(src / "b.png"), "b.png")], out, protector, cfg)
    assert again["b.png"]["status"] == "copied"


def test_absolute_and_relative_file_inputs_map_alike(tmp_path, monkeypatch):
    d = tmp_path / "d"
    _blank(d / "sub" / "a.jpg")
    monkeypatch.chdir(d)
    rel = common.list_inputs(["sub/a.jpg"], files_by_name=True)
    ab = common.list_inputs([str(d / "sub" / "a.jpg")], files_by_name=True)
    dot = common.list_inputs(["./sub/../sub/a.jpg"], files_by_name=True)
    assert rel[0][1] == ab[0][1] == dot[0][1] == "a.jpg"
    out = str(tmp_path / "out")
    targets = {writer.plan_outputs(x, out, "png")[0][2] for x in (rel, ab, dot)}
    assert targets == {os.path.join(out, "a.png")}


def test_output_in_the_input_files_folder_is_refused(tmp_path, protector):
    """--input=/d/a.jpg --output=/d used to replace an unrelated /d/a.png."""
    d = tmp_path / "d"
    _blank(d / "a.jpg")
    (d / "a.png").write_bytes(b"unrelated")
    with pytest.raises(protect.UsageError, match="contains the input"):
        _run(common.list_inputs([str(d / "a.jpg")], files_by_name=True), d, protector)
    assert (d / "a.png").read_bytes() == b"unrelated"


def test_outputs_overlapping_input_folders_or_the_list_folder_are_refused(tmp_path, protector):
    src = tmp_path / "photos"
    _blank(src / "x.png")
    inputs = [(str(src / "x.png"), "x.png")]
    for out, why in ((src, "is the input folder"), (src / "out", "is inside the input folder"),
                     (tmp_path, "contains the input folder")):
        with pytest.raises(protect.UsageError, match=why):
            _run(inputs, out, protector, input_roots=[str(src)])
    lst = tmp_path / "lists" / "photos.txt"
    lst.parent.mkdir()
    _blank(lst.parent / "x.png")
    lst.write_text("x.png\n")
    listed = jobs.read_input_list(str(lst))
    for out in (lst.parent, lst.parent / "protected"):
        with pytest.raises(protect.UsageError, match="input folder"):
            _run(listed, out, protector, guard_folders=[str(lst.parent)])
    assert not (lst.parent / "protected").exists()


def test_cli_refuses_output_beside_the_input_list(tmp_path):
    lst = tmp_path / "photos.txt"
    _blank(tmp_path / "x.png")
    lst.write_text("x.png\n")
    p = _cli([f"--input_list={lst}", f"--output={tmp_path}", "--config=tiny"])
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("usage error:") and "input folder" in p.stderr
    assert len(p.stderr.strip().splitlines()) <= 2  # one line (+ the pointer to --help)


def test_same_stem_inputs_get_distinct_outputs():
    planned = writer.plan_outputs([("in/a.jpg", "a.jpg"), ("in/a.png", "a.png"),
                                    ("in/b.jpg", "b.jpg"), ("in/s/a.jpg", "s/a.jpg")], "out", "png")
    assert [t for _, _, t, _ in planned] == [os.path.join("out", "a.jpg.png"),
                                            os.path.join("out", "a.png.png"),
                                            os.path.join("out", "b.png"),
                                            os.path.join("out", "s", "a.png")]
    assert all(e is None for *_, e in planned)


def test_only_its_own_temporaries_are_removed(tmp_path, protector):
    src, out = tmp_path / "in", tmp_path / "out"
    _blank(src / "sub" / "a.png")
    (src / ".tmp-user").write_text("the user's")
    recs = _run([(str(src / "sub" / "a.png"), "sub/a.png")], out, protector)
    assert recs["sub/a.png"]["status"] == "copied"
    stale = out / "sub" / (images.TMP_PREFIX + "crashed.png")
    foreign = out / "sub" / ".tmp-user-file"
    elsewhere = out / "other" / (images.TMP_PREFIX + "x.png")
    for f in (stale, foreign, elsewhere):
        f.parent.mkdir(exist_ok=True)
        f.write_text("x")
        os.utime(f, (1e9, 1e9))
    _run([(str(src / "sub" / "a.png"), "sub/a.png")], out, protector)
    assert not stale.exists()  # its own pattern, in a folder it writes
    assert foreign.exists() and elsewhere.exists() and (src / ".tmp-user").exists()


# -------------------------------------------------------------------------- job integrity
def test_one_job_per_output_folder(tmp_path, protector):
    out = tmp_path / "out"
    first = writer.JobDir(str(out), "s1")
    try:
        with pytest.raises(jobs.UsageError, match="another idguardian-protect job"):
            writer.JobDir(str(out), "s1")
        _blank(tmp_path / "a.png")
        with pytest.raises(protect.UsageError, match="another idguardian-protect job"):
            _run([(str(tmp_path / "a.png"), "a.png")], out, protector)
    finally:
        first.close()
    writer.JobDir(str(out), "s1").close()  # free again


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "idguardian_summary.jsonl").write_text('{"path": "a.png", "status": "copied"}\n'
                                                  '{"path": "b.png", "sta')
    job = writer.JobDir(str(out), "s")
    job.append({"path": "c.png", "status": "copied"})
    job.close()
    got = [r["path"] for r in writer.read_jsonl(str(out / "idguardian_summary.jsonl"))]
    assert got == ["a.png", "c.png"]


def test_every_output_setting_is_in_the_settings_hash():
    base = settings.settings_hash(tiny.get_config())
    for field, value in (("on_no_face", "copy"), ("quality", 80), ("keep_location", True),
                         ("strip_metadata", True), ("max_pixels", 10)):
        cfg = tiny.get_config()
        cfg.output[field] = value
        assert settings.settings_hash(cfg) != base, field


def test_a_corrupt_job_file_is_refused(tmp_path, protector):
    out = tmp_path / "out"
    out.mkdir()
    _blank(tmp_path / "a.png")
    for junk in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        (out / writer.JOB_FILE).write_bytes(junk)
        with pytest.raises(protect.UsageError, match="job file"):
            _run([(str(tmp_path / "a.png"), "a.png")], out, protector)
        assert (out / writer.JOB_FILE).read_bytes() == junk


def test_report_merge_survives_a_full_disk(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "idguardian_summary.jsonl").write_text('{"path": "a.png", "status": "copied"}\n')

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jsonio, "write_json_atomic", full)
    got = writer.merge_reports(str(out))
    assert got["photos"] == 1 and "No space left" in got["error"]
    assert "cannot write the report" in capsys.readouterr().err


@pytest.mark.faces
def test_output_renamed_before_a_crash_is_adopted(tmp_path, faces_dir, protector):
    im = Image.open(os.path.join(faces_dir, "n000050_A_0003_01.png")).convert("RGB")
    src = tmp_path / "in"
    src.mkdir()
    im.resize((160, 160), Image.LANCZOS).save(src / "face.png")
    out = tmp_path / "out"
    first = _run([(str(src / "face.png"), "face.png")], out, protector, tiny.get_config())
    assert first["face.png"]["status"] == "protected"
    written = (out / "face.png").read_bytes()
    # the crash: the PNG was renamed into place, its record never appended
    (out / "idguardian_summary.jsonl").write_text("")
    again = _run([(str(src / "face.png"), "face.png")], out, protector, tiny.get_config())
    assert again["face.png"]["status"] == "protected" and again["face.png"].get("recovered")
    assert (out / "face.png").read_bytes() == written


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("field,value,needle", [
    ("budget", float("nan"), "finite"), ("budget", float("inf"), "finite"),
    ("budget", -0.1, "> 0"), ("budget", 1.5, "<= 1"), ("budget", 0.0, "> 0"),
    ("attack.steps", -5, ">= 1"), ("attack.steps", 0, ">= 1"), ("diffusion.t_min", 1200, "0..999"),
    ("attack.step_size", -0.01, "> 0"), ("attack.step_size", 0.0, "> 0"),
    ("attack.optimizer", "sgd", "one of"), ("batch.per_device", 0, ">= 1"),
    ("output.on_no_face", "move", "one of"), ("output.quality", 0, "1..100"),
    ("seed", -1, ">= 0"), ("objective.eot.jpeg_quality", (95.0, 50.0), "low <= high"),
])
def test_bad_settings_are_one_line_naming_the_field(field, value, needle):
    from idguardian_jax import settings

    cfg = tiny.get_config()
    node, leaf = cfg, field
    if "." in field:
        head, leaf = field.rsplit(".", 1)
        for part in head.split("."):
            node = node[part]
    node[leaf] = value
    with pytest.raises(settings.SettingsError) as e:
        settings.validate(cfg)
    msg = str(e.value)
    assert msg.startswith(f"--config.{field}:") and needle in msg and "\n" not in msg, msg


def test_shipped_configs_are_valid():
    from idguardian_jax import settings

    for name in settings.shipped_config_names():
        mod = __import__(f"idguardian_jax.configs.{name}", fromlist=["get_config"])
        settings.validate(mod.get_config())


def test_protect_files_checks_settings_before_any_work(tmp_path):
    cfg = tiny.get_config()
    cfg.attack.steps = 0
    out = tmp_path / "out"
    with pytest.raises(protect.UsageError, match="--config.attack.steps"):
        protect.protect_files([("nope.png", "nope.png")], str(out), cfg, progress=False)
    assert not out.exists()


@pytest.mark.slow
def test_cli_usage_errors_are_one_line_exit_2(tmp_path):
    _blank(tmp_path / "a.png")
    base = [f"--input={tmp_path / 'a.png'}", f"--output={tmp_path / 'out'}"]
    cases = [(["--config=nope.py"], "--config=nope.py: cannot load"),
             (["--config.nope=1"], "--config.nope: no such config field"),
             (["--config=tiny", "--config.budget=nan"], "--config.budget:"),
             (["--config=tiny", "--config.attack.step_size=-0.01"], "--config.attack.step_size:"),
             (["--num_processes=2", "--process_id=2"], "--process_id must be in 0..1")]
    for extra, needle in cases:
        p = _cli(extra + base)
        assert p.returncode == 2, (extra, p.stderr)
        first = p.stderr.strip().splitlines()[0]
        assert first.startswith("usage error:") and needle in first, (extra, p.stderr)
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()


def test_bad_input_lists_and_identities_files(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"path": 5}\n')
    with pytest.raises(jobs.UsageError, match="line 1.*must be a non-empty string"):
        jobs.read_input_list(str(m))
    t = tmp_path / "l.txt"
    t.write_bytes(b"caf\xe9.jpg\n")
    with pytest.raises(jobs.UsageError, match="not UTF-8"):
        jobs.read_input_list(str(t))
    ids = tmp_path / "ids.csv"
    ids.write_bytes(b"file,person\n\xff\xfe,x\n")
    with pytest.raises(eval_inputs.InputError, match="not UTF-8"):
        eval_inputs.read_identities(str(ids))


def test_embed_output_unwritable_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _blank(tmp_path / "a.png")
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "idguardian_jax.cli.embed", str(tmp_path / "a.png"),
                        f"--output={blocker / 'faces.json'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "cannot write" in p.stderr


# ----------------------------------------------------------------------------------- help
@pytest.mark.slow
def test_help_lists_flags_and_config_fields_and_configs_by_name(tmp_path):
    p = _cli(["--help"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for needle in ("--output", "--input_list", "--config.budget=", "--config.attack.steps=100",
                   "L_inf budget", "PGD steps", "robust"):
        assert needle in p.stdout, needle
    p = _cli(["-h", "--config=robust"], cwd=tmp_path)  # by name, from another folder
    assert p.returncode == 0 and "--config.attack.steps=100" in p.stdout, p.stderr
    p = _cli(["-h", "--config=configs/tiny.py"], cwd=tmp_path)
    assert p.returncode == 0 and "--config.attack.steps=3" in p.stdout, p.stderr


def test_config_names_resolve_to_the_package():
    from idguardian_jax import settings

    assert settings.resolve_config_path("robust").endswith(os.path.join("configs", "robust.py"))
    assert os.path.isfile(settings.resolve_config_path("configs/tiny.py"))
    assert settings.resolve_config_path("nope.py") == "nope.py"


# ---------------------------------------------------------------------- privacy, modes
def _exif_with_gps():
    exif = Image.Exif()
    exif[0x013B] = "Jane Doe"  # Artist
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
    return exif.tobytes()


def test_location_is_dropped_by_default_and_kept_on_request(tmp_path):
    src = tmp_path / "gps.jpg"
    Image.new("RGB", (32, 32), (120, 80, 60)).save(src, exif=_exif_with_gps())
    photo = images.read_photo(src)
    assert Image.open(src).getexif().get_ifd(0x8825)  # the input has a position
    images.write_photo(tmp_path / "out.png", photo.rgb, photo)
    e = Image.open(tmp_path / "out.png").getexif()
    assert 0x8825 not in e and not e.get_ifd(0x8825) and e.get(0x013B) == "Jane Doe"
    images.write_photo(tmp_path / "keep.png", photo.rgb, photo, keep_location=True)
    assert Image.open(tmp_path / "keep.png").getexif().get_ifd(0x8825)


def test_outputs_honour_the_umask(tmp_path, monkeypatch):
    rgb = np.zeros((4, 4, 3), np.uint8)
    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        monkeypatch.setattr(images, "UMASK", mask)
        images.write_photo(tmp_path / f"{mask}.png", rgb)
        assert os.stat(tmp_path / f"{mask}.png").st_mode & 0o777 == mode
        jsonio.write_json_atomic(tmp_path / f"{mask}.json", {})
        assert os.stat(tmp_path / f"{mask}.json").st_mode & 0o777 == mode


# ------------------------------------------------------------------------- omissions
def test_what_a_folder_listing_skips_is_said(tmp_path, monkeypatch, capsys):
    src = tmp_path / "in"
    _blank(src / "ok.png")
    (src / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (src / "locked").mkdir()
    _blank(src / "locked" / "x.png")
    os.symlink(src, src / "loop")  # a folder link back to its parent
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    problems = []
    got = common.list_inputs([str(src)], problems)
    monkeypatch.undo()
    assert [rel for _, rel in got] == ["ok.png"]
    text = "\n".join(problems)
    assert "phone.heic: HEIC photos are not read" in text
    assert "locked: cannot read the folder (Permission denied)" in text
    assert "loop: a symbolic link to a folder; not followed" in text
    assert len(problems) == 3 and "error:" in capsys.readouterr().err


def test_a_symlink_loop_is_named(tmp_path):
    loop = tmp_path / "loop.jpg"
    os.symlink(loop, loop)
    with pytest.raises(images.ImageReadError, match="symbolic link loop"):
        images.read_photo(loop)
    broken = tmp_path / "broken.jpg"
    os.symlink(tmp_path / "gone.jpg", broken)
    with pytest.raises(images.ImageReadError, match="broken symbolic link"):
        images.read_photo(broken)


# ------------------------------------------------------------------------- evaluation
def test_evaluation_trusts_no_record_by_default_or_without_matching_checksums(tmp_path):
    import inspect

    from idguardian_jax.evaluate import core
    from idguardian_jax.cli import evaluate as cli_evaluate  # noqa: F401 (defines the flag)
    from absl import flags

    sig = inspect.signature(core.Evaluator.evaluate_folders)
    assert sig.parameters["reuse_protect_records"].default is False
    assert flags.FLAGS["reuse_protect_records"].default is False
    clean, prot = tmp_path / "a.png", tmp_path / "a_protected.png"
    _blank(clean, 10)
    _blank(prot, 10)  # an unprotected copy planted in the protected folder
    rec = {"status": "protected", "input_sha256": cache.file_sha256(str(clean)),
           "output_sha256": "0" * 64, "faces": [{"box": [0, 0, 5, 5], "score": 1.0}]}
    records = {rec["input_sha256"]: rec}
    assert eval_inputs.reusable_boxes(records, str(clean), str(prot)) is None
    assert eval_inputs.reusable_boxes(records, str(clean), None) is None
    rec["output_sha256"] = cache.file_sha256(str(prot))
    assert eval_inputs.reusable_boxes(records, str(clean), str(prot)) == [((0, 0, 5, 5), 1.0)]
