r"""IDGuardian (Algorithm 1) step cost: seconds per PGD step, per photo, and peak memory, in JAX
and in a plain PyTorch re-statement with diffusers, on the same machine and models.

  # CPU, tiny random models (what CI machines can run)
  python benchmarks/bench_idguardian.py --models=tiny --sizes=64 --steps=5
  # GPU, local checkpoints (real ones, or real-size random ones: speed does not depend on values)
  python benchmarks/bench_idguardian.py --pipeline=SDXL_DIR --ip_adapter=PLUS_FACE.safetensors \
      --clip=IMAGE_ENCODER_DIR --facenet=vggface2.pt --sizes=224,512 --steps=10 --dtype=bfloat16 \
      --no_torch

The PyTorch side (a plain re-statement of the reference step with diffusers) runs for the tiny
models. Per photo = per step x 200 (the reference's step count).
Peak memory: JAX's device memory statistics where the backend has them (GPU), else the
compiled step's temporaries; PyTorch's max_memory_allocated on CUDA.
"""
import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from common import machine  # noqa: E402


def _random_like(shapes, key, dtype, scale=0.02):
    leaves, tree = jax.tree_util.tree_flatten(shapes)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [(scale * jax.random.normal(k, s.shape)).astype(dtype) for k, s in zip(keys, leaves)])


def jax_models(kind, dtype):
    """kind 'tiny' (random tiny SDXL-style models written to a temp folder) or a tuple of local
    paths (diffusers folder, IP-Adapter file, CLIP folder, FaceNet file)."""
    from encoders import clip_vit, facenet
    from idguardian_jax.diffusion import loaders, text

    if kind == "tiny":
        import diffusion_reference as dr
        import reference_models as rm
        import torch

        root = tempfile.mkdtemp()
        paths = dr.write_pipeline("sdxl-tiny", root)
        fn_model = rm.random_facenet(0, classify_head=8631).eval()
        fn_path = os.path.join(root, "facenet.pt")
        torch.save(fn_model.state_dict(), fn_path)
        pipe, proj = loaders.load_pipeline(root, dtype=dtype, ip_adapter=paths["plus"])
        pe = text.encode_prompt(root, "A photo of a person")
        return (pipe, proj, clip_vit.load(paths["image_encoder"]), facenet.load(fn_path), pe,
                ("tiny", root, paths, fn_model))
    # local checkpoints (real ones, or real-size random ones written by the tests' tools)
    root, ip_path, clip_dir, fn_path = kind
    pipe, proj = loaders.load_pipeline(root, dtype=dtype, ip_adapter=ip_path)
    pe = text.encode_prompt(root, "A photo of a person")
    return pipe, proj, clip_vit.load(clip_dir), facenet.load(fn_path), pe, None


def bench_jax(pipe, proj, clip, fn_params, pe, size, steps, dtype):
    from idguardian_jax.losses import deflection

    p = deflection.DiffusionParams(
        unet=pipe.unet, vae=pipe.vae, proj=proj, clip=clip, schedule=pipe.schedule,
        text=jnp.asarray(pe.batch(1)),
        added={k: jnp.asarray(v) for k, v in pe.added_cond(size, size).items()})
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(1, size, size, 3)).astype(np.float32))
    z0, tok = jax.jit(deflection.clean_conditioning)(p, x)
    step = jax.jit(deflection.algorithm1_step)
    t = jnp.array([500], jnp.int32)
    noise = jnp.asarray(rng.standard_normal(z0.shape).astype(np.float32))
    t0 = time.perf_counter()
    xa = step(x, x, p, fn_params, z0, tok, t, noise).block_until_ready()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        xa = step(xa, x, p, fn_params, z0, tok, t, noise)
    xa.block_until_ready()
    per = (time.perf_counter() - t0) / steps
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    if peak is None:
        ma = step.lower(x, x, p, fn_params, z0, tok, t, noise).compile().memory_analysis()
        peak = getattr(ma, "temp_size_in_bytes", None)
        what = "compiled temporaries"
    else:
        what = "device peak"
    return per, compile_s, peak, what


def bench_torch(args_models, size, steps):
    import torch

    import diffusion_reference as dr
    from idguardian_jax.diffusion import text

    _, root, paths, fn_model = args_models
    pe = text.encode_prompt(root, "A photo of a person")
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPVisionModelWithProjection

    models = (CLIPVisionModelWithProjection.from_pretrained(paths["image_encoder"]).eval(),
              dr.torch_unet_with_ip(root, paths["plus"]),
              AutoencoderKL.from_pretrained(root, subfolder="vae").eval(),
              DDPMScheduler.from_pretrained(root, subfolder="scheduler"))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(1, size, size, 3)).astype(np.float32)
    t = np.array([500], np.int32)
    noise = rng.standard_normal((1, 4, size // 8, size // 8)).astype(np.float32)
    xa = x.copy()
    dr.torch_algorithm1_direction(root, paths, fn_model, pe, xa, x, t, noise, size, models)
    t0 = time.perf_counter()
    for _ in range(steps):
        total, _ = dr.torch_algorithm1_direction(root, paths, fn_model, pe, xa, x, t, noise, size,
                                                 models)
        xa = np.clip(x + np.clip(xa - 0.005 * np.sign(total) - x, -8 / 255, 8 / 255), 0, 1)
    per = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return per, peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", default=None, help="diffusers folder (default: tiny random)")
    ap.add_argument("--ip_adapter", default=None)
    ap.add_argument("--clip", default=None)
    ap.add_argument("--facenet", default=None)
    ap.add_argument("--sizes", default="64")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--no_torch", action="store_true")
    args = ap.parse_args()
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[args.dtype]
    kind = "tiny" if args.pipeline is None else (args.pipeline, args.ip_adapter, args.clip,
                                                 args.facenet)
    pipe, proj, clip, fn_params, pe, torch_args = jax_models(kind, dtype)
    no_torch = args.no_torch or torch_args is None
    label = "tiny random SDXL-style" if torch_args is not None else args.pipeline
    print(f"machine: {machine()}, date: {time.strftime('%Y-%m-%d')}, models: {label}, "
          f"dtype {args.dtype}, {args.steps} timed steps\n")
    print("| size | JAX s/step | JAX compile s | JAX s/photo (200 steps) | JAX peak memory | "
          "PyTorch s/step | PyTorch s/photo | PyTorch peak |")
    print("|---|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        per, comp, peak, what = bench_jax(pipe, proj, clip, fn_params, pe, size, args.steps, dtype)
        tper, tpeak = (None, None) if no_torch else bench_torch(torch_args, size, args.steps)
        mem = f"{peak / 2**20:.0f} MiB ({what})" if peak else "n/a"
        tp = "n/a" if tper is None else f"{tper:.3f}"
        tph = "n/a" if tper is None else f"{tper * 200:.1f}"
        tmem = "n/a (CPU)" if not tpeak else f"{tpeak / 2**20:.0f} MiB"
        print(f"| {size} | {per:.3f} | {comp:.1f} | {per * 200:.1f} | {mem} | {tp} | {tph} | {tmem} |",
              flush=True)


if __name__ == "__main__":
    main()
