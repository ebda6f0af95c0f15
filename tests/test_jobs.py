"""Dataset jobs: 2 processes x 4 devices under jax.distributed, kill -9 and resume, input lists."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from PIL import Image

from idguardian_jax.configs import tiny
from idguardian_jax import images, jobs, writer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = ("n000050_A_0003_01.png", "n000050_A_0010_01.png", "n000050_A_0075_01.png",
          "n000050_A_0408_01.png", "obama.jpg")


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory, faces_dir):
    """Five real face photos, small (written to a temp folder only). Sizes chosen so that every
    face region falls in one shape bucket (128 px): each process compiles the loop once."""
    d = tmp_path_factory.mktemp("in")
    for name in PHOTOS:
        im = Image.open(os.path.join(faces_dir, name)).convert("RGB")
        side = 256 if name == "obama.jpg" else 160
        im.thumbnail((side, side), Image.LANCZOS)
        im.save(d / (os.path.splitext(name)[0] + ".png"))
    (d / "sub").mkdir()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(d / "sub" / "blank.png")
    return d


def _env(devices):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.pop("IDGUARDIAN_FACES_DIR", None)
    return env


def _cmd(inp, out, *extra):
    return [sys.executable, "-m", "idguardian_jax.cli.protect", "--config=" + tiny.__file__,
            f"--input={inp}", f"--output={out}", "--progress=false", *extra]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digests(out):
    got = {}
    for root, _, files in os.walk(out):
        for f in files:
            if f.endswith(".png"):
                p = os.path.join(root, f)
                got[os.path.relpath(p, out)] = hashlib.sha256(
                    Image.open(p).convert("RGB").tobytes()).hexdigest()
    return got


@pytest.fixture(scope="module")
def reference(small_photos, tmp_path_factory):
    """One uninterrupted single-process run (8 forced devices)."""
    out = tmp_path_factory.mktemp("ref")
    subprocess.run(_cmd(small_photos, out), env=_env(8), check=True, timeout=900,
                   capture_output=True)
    return _digests(out)


@pytest.mark.slow
def test_two_processes_four_devices_each_match_one_process(small_photos, reference, tmp_path):
    out = tmp_path / "out"
    port = _free_port()
    procs = [subprocess.Popen(_cmd(small_photos, out, f"--coordinator_address=127.0.0.1:{port}",
                                   "--num_processes=2", f"--process_id={i}"),
                              env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert _digests(out) == reference and len(reference) == len(PHOTOS)
    shards = [f for f in os.listdir(out) if f.startswith("idguardian_summary.p")]
    assert len(shards) == 2  # each process recorded its own shard
    report = json.loads((out / writer.REPORT_FILE).read_text())
    assert report["counts"] == {"protected": len(PHOTOS), "no_face": 1}
    paths = [r["path"] for r in report["records"]]
    assert len(paths) == len(set(paths)) == len(PHOTOS) + 1


@pytest.mark.slow
def test_kill_and_resume_loses_and_duplicates_nothing(small_photos, reference, tmp_path):
    out = tmp_path / "out"
    summary = out / "idguardian_summary.jsonl"
    p = subprocess.Popen(_cmd(small_photos, out), env=_env(8), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:
        if summary.exists() and len(summary.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert p.poll() is None, "the job finished before it could be interrupted"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    first = [json.loads(l)["path"] for l in summary.read_text().splitlines() if l.strip()]
    assert 2 <= len(first) < len(PHOTOS) + 1
    r = subprocess.run(_cmd(small_photos, out), env=_env(8), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    assert _digests(out) == reference  # exactly the inputs with faces, byte-identical
    recs = [json.loads(l) for l in summary.read_text().splitlines() if l.strip()]
    finished = {}
    for rec in recs:
        if rec["status"] in ("protected", "no_face"):
            assert rec["path"] not in finished or rec.get("recovered"), rec["path"]
            finished[rec["path"]] = rec
    assert len(finished) == len(PHOTOS) + 1
    assert not [f for _, _, fs in os.walk(out) for f in fs if f.startswith(images.TMP_PREFIX)]


def test_shards_are_disjoint_stable_and_order_free():
    names = [f"dir/{i:04d}.jpg" for i in range(200)]
    parts = [{n for n in names if jobs.shard_of(n, 3) == i} for i in range(3)]
    assert set().union(*parts) == set(names) and sum(map(len, parts)) == 200
    assert all(len(p) > 40 for p in parts)
    assert {n: jobs.shard_of(n, 3) for n in reversed(names)} == {n: jobs.shard_of(n, 3) for n in names}


def test_input_lists(tmp_path):
    (tmp_path / "a.txt").write_text("x/1.jpg\n# comment\n/abs/2.png\n")
    assert jobs.read_input_list(str(tmp_path / "a.txt")) == [
        (str(tmp_path / "x/1.jpg"), "x/1.jpg"), ("/abs/2.png", "2.png")]
    (tmp_path / "m.csv").write_text("path,person\n1.jpg,ann\n")
    assert jobs.read_input_list(str(tmp_path / "m.csv"))[0][1] == "1.jpg"
    (tmp_path / "m.jsonl").write_text('{"path": "q.png"}\n')
    assert jobs.read_input_list(str(tmp_path / "m.jsonl"))[0][1] == "q.png"
    (tmp_path / "bad.csv").write_text("file\n1.jpg\n")
    with pytest.raises(jobs.UsageError, match="needs a 'path' column"):
        jobs.read_input_list(str(tmp_path / "bad.csv"))
