"""idguardian-convert: upstream checkpoint -> verified Flax .safetensors, read by every loader."""
import subprocess
import sys

import numpy as np
import pytest

from idguardian_jax import encoders
from idguardian_jax.checkpoints import tensors
from idguardian_jax.cli import convert

torch = pytest.importorskip("torch")
import reference_models as rm  # noqa: E402


@pytest.mark.slow
def test_facenet_state_dict_converts_and_loads_without_torch_format(tmp_path):
    src = tmp_path / "vggface2.pt"
    torch.save(rm.random_facenet(0, classify_head=8631).state_dict(), src)
    out = tmp_path / "facenet.safetensors"
    r = convert.convert("facenet", str(src), str(out))
    assert r["params"] == 23_482_624 and len(r["sha256"]) == 64 and r["max_abs_diff"] == 0.0
    name, tree, meta = tensors.read_flax(out)
    assert name == "facenet"
    a = encoders.load_params("facenet", str(src))
    b = encoders.load_params("facenet", str(out))
    x = np.random.default_rng(1).uniform(size=(1, 160, 160, 3)).astype(np.float32)
    enc = encoders.get("facenet")
    np.testing.assert_array_equal(np.asarray(enc.apply(a, x)), np.asarray(enc.apply(b, x)))
    with pytest.raises(tensors.CheckpointError, match="a converted facenet checkpoint, not arcface"):
        encoders.load_params("arcface", str(out))


@pytest.mark.slow
def test_clip_folder_and_dlib_bundled(tmp_path):
    folder = tmp_path / "clip"
    rm.write_clip_folder(str(folder), rm.random_clip(rm.CLIP_TINY, seed=3))
    r = convert.convert("clip_vit", str(folder), str(tmp_path / "clip.safetensors"))
    assert r["max_abs_diff"] == 0.0
    params = encoders.load_params("clip_vit", str(tmp_path / "clip.safetensors"))
    assert params.config.hidden_size == rm.CLIP_TINY["hidden_size"]
    r = convert.convert("dlib_resnet", None, str(tmp_path / "dlib.safetensors"))
    assert r["params"] == 5_614_592


@pytest.mark.slow
def test_cli_errors(tmp_path):
    cmd = [sys.executable, "-m", "idguardian_jax.cli.convert"]
    p = subprocess.run(cmd + ["--encoder=nope", f"--output={tmp_path / 'x.safetensors'}"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "unknown encoder 'nope'" in p.stderr
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    p = subprocess.run(cmd + ["--encoder=facenet", f"--checkpoint={bad}",
                              f"--output={tmp_path / 'y.safetensors'}"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and str(bad) in p.stderr
    assert not (tmp_path / "y.safetensors").exists()
