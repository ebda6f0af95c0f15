"""configs/idguardian.py end to end on CPU with tiny random models written by the tests' tools."""
import os

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import diffusion_reference as dr  # noqa: E402
import reference_models as rm  # noqa: E402

from idguardian_jax.configs import idguardian  # noqa: E402
from idguardian_jax import protect, settings  # noqa: E402


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sdxl"))
    paths = dr.write_pipeline("sdxl-tiny", root)
    fn = os.path.join(root, "facenet.pt")
    torch.save(rm.random_facenet(0, classify_head=8631).state_dict(), fn)
    return root, paths, fn


def _config(checkpoints, steps=2):
    root, paths, fn = checkpoints
    cfg = idguardian.get_config()
    cfg.attack.steps = steps
    cfg.objective.checkpoints.clip_vit = paths["image_encoder"]
    cfg.objective.checkpoints.facenet = fn
    cfg.diffusion.model_dir = root
    cfg.diffusion.ip_adapter = paths["plus"]
    return cfg


def test_idguardian_config_runs_end_to_end(checkpoints, faces_dir, tmp_path):
    cfg = _config(checkpoints)
    img = np.asarray(Image.open(os.path.join(faces_dir, "n000050_A_0003_01.png")).convert("RGB"))
    img = np.asarray(Image.fromarray(img).resize((256, 256), Image.LANCZOS))
    pr = protect.Protector(cfg)
    r, = protect.protect(img, protector=pr)
    assert r.status == "protected" and r.max_change <= 8 and r.max_change > 0
    assert set(r.faces[0].encoders) == {"clip_vit", "facenet"}
    # the deflection changes the result (same seed, same steps, without it)
    cfg2 = _config(checkpoints)
    cfg2.diffusion.enabled = False
    plain, = protect.protect(img, protector=protect.Protector(cfg2, models=protect.Models(
        pr.models.faces, pr.models.params)))
    assert not np.array_equal(plain.protected, r.protected)


@pytest.mark.slow
def test_deflection_needs_its_files(checkpoints):
    cfg = _config(checkpoints)
    cfg.diffusion.ip_adapter = ""
    with pytest.raises(protect.UsageError, match="diffusion.ip_adapter"):
        protect.Protector(cfg)


@pytest.mark.parametrize("name", ["baseline_advdm", "baseline_photoguard"])
def test_baselines_run_and_move_their_objective(checkpoints, faces_dir, name):
    import importlib

    import jax.numpy as jnp

    from idguardian_jax.diffusion import vae

    root, paths, fn = checkpoints
    cfg = importlib.import_module(f"idguardian_jax.configs.{name}").get_config()
    cfg.attack.steps = 3
    cfg.diffusion.model_dir = root
    img = np.asarray(Image.open(os.path.join(faces_dir, "n000050_A_0003_01.png")).convert("RGB"))
    img = np.asarray(Image.fromarray(img).resize((256, 256), Image.LANCZOS))
    pr = protect.Protector(cfg)
    assert "clip_vit" not in pr.models.params  # a view only: no CLIP weights needed
    r, = protect.protect(img, protector=pr)
    assert r.status == "protected" and 0 < r.max_change <= 8
    assert r.losses[-1] < r.losses[0]  # the baseline's own loss goes down


@pytest.mark.parametrize("name", sorted(
    f[:-3] for f in os.listdir(os.path.join(os.path.dirname(__file__), "..", "configs"))
    if f.endswith(".py") and f != "__init__.py"))
def test_every_config_builds_its_loop(name, checkpoints, faces_dir):
    """Each shipped config's settings, and one PGD step of its loop traced (jax.eval_shape: the
    whole objective, direction and update, no compile) with its files pointed at tiny models."""
    import importlib

    import jax

    from idguardian_jax.attack import engine

    cfg = importlib.import_module(f"idguardian_jax.configs.{name}").get_config()
    ec = settings.engine_config(cfg)
    assert 0 < ec.pgd.eps <= 8 / 255 + 1e-9
    b = cfg.diffusion.get("baseline", "")
    assert (ec.objective.baseline is not None) == bool(b)
    assert (ec.deflection is not None) == bool(cfg.diffusion.enabled)
    root, paths, fn = checkpoints
    cfg.objective.installed_encoders = "none"
    names = [n for n, _ in cfg.objective.encoders]
    if "clip_vit" in names:
        cfg.objective.checkpoints.clip_vit = paths["image_encoder"]
    if "facenet" in names:
        cfg.objective.checkpoints.facenet = fn
    if settings.diffusion_wanted(cfg):
        cfg.diffusion.model_dir = root
        cfg.diffusion.ip_adapter = paths["plus"]
    pr = protect.Protector(cfg)
    img = np.asarray(Image.open(os.path.join(faces_dir, "n000050_A_0003_01.png")).convert("RGB"))
    img = np.asarray(Image.fromarray(img).resize((192, 192), Image.LANCZOS))
    p = pr.prepare(0, img)
    assert p.plan is not None
    x, support, l2, views, targets, key = pr._inputs(p)
    carry = engine._init_single(x, support, l2, key, cfg=pr.cfg)
    (delta, _, _), loss = jax.eval_shape(
        lambda c: engine._step_single(pr.models.surrogates, c, 0, x, support, l2, views, targets,
                                      groups=p.plan.groups, cfg=pr.cfg), carry)
    assert delta.shape == x.shape and loss.shape == ()
