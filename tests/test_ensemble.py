"""Cross-encoder identity confusion with CLIP + FaceNet (random weights in upstream formats)."""
import os

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import reference_models as rm  # noqa: E402  (tests/ is on sys.path under pytest)

from idguardian_jax.configs import idguardian_extract  # noqa: E402
from idguardian_jax import protect  # noqa: E402


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    clip_dir = str(d / "clip")
    rm.write_clip_folder(clip_dir, rm.random_clip(rm.CLIP_TINY, seed=0))
    facenet = str(d / "facenet.pt")
    torch.save(rm.random_facenet(0, classify_head=8631).state_dict(), facenet)
    return {"clip_vit": clip_dir, "facenet": facenet}


def test_extract_config_protects_with_the_ensemble(checkpoints, faces_dir):
    cfg = idguardian_extract.get_config()
    cfg.attack.steps = 3
    cfg.objective.checkpoints.clip_vit = checkpoints["clip_vit"]
    cfg.objective.checkpoints.facenet = checkpoints["facenet"]
    img = np.asarray(Image.open(os.path.join(faces_dir, "n000050_A_0003_01.png")).convert("RGB"))
    r, = protect.protect(img, config=cfg)
    assert r.status == "protected" and r.max_change <= 8
    face = r.faces[0]
    assert set(face.encoders) == {"clip_vit", "facenet"}
    for name, e in face.encoders.items():
        assert e["in_loop"] > 0 and e["after"] is not None, (name, e)
    assert r.losses[-1] < r.losses[0]


def test_missing_checkpoint_is_a_clear_error():
    cfg = idguardian_extract.get_config()
    with pytest.raises(protect.UsageError, match="checkpoints.clip_vit=PATH"):
        protect.Protector(cfg)
