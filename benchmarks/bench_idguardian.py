r"""IDGuardian (Algorithm 1) step cost: seconds per PGD step, per photo, and peak memory, in JAX
and in a plain PyTorch re-statement with diffusers, on the same machine and models.

  # CPU, tiny random models (what CI machines can run)
  python benchmarks/bench_idguardian.py --sizes=64 --steps=5
  # GPU, real architectures with random weights built in memory (no files, no checkpoints:
  # speed does not depend on weight values): SDXL base UNet + IP-Adapter Plus-Face layers and
  # resampler, SD VAE, CLIP ViT-H/14 vision tower, FaceNet; JAX and PyTorch (CUDA)
  python benchmarks/bench_idguardian.py --random=sdxl --sizes=224,512 --steps=10 --dtype=bfloat16
  python benchmarks/bench_idguardian.py --random=sd15 --sizes=224,512 --steps=10 --dtype=bfloat16
  # GPU, local checkpoints
  python benchmarks/bench_idguardian.py --pipeline=SDXL_DIR --ip_adapter=PLUS_FACE.safetensors \
      --clip=IMAGE_ENCODER_DIR --facenet=vggface2.pt --sizes=224,512 --steps=10 --dtype=bfloat16 \
      --no_torch

--random=NAME (sdxl | sd15): the UNet of tests/diffusion_reference.REAL_UNETS ('sdxl-base' /
'sd15'; its parameter count is checked against REAL_UNET_PARAMS and printed) with IP-Adapter
Plus cross-attention layers (to_k_ip / to_v_ip) and resampler (SDXL Plus-Face: dim 1280, depth 4,
20 heads, 16 queries; SD 1.5 Plus: dim 768, 12 heads; both read CLIP ViT-H/14's 1280-wide hidden
states), the SD VAE (128-256-512-512), CLIP ViT-H/14 and FaceNet. JAX: parameter trees from the
modules' shapes (jax.eval_shape), each leaf filled with normal noise generated on the default
device directly in --dtype (kernels ~ N(0, 1/fan_in), norm scales / variances ~ 1 + N(0, 0.02^2),
the rest ~ N(0, 0.02^2)). Text conditioning: random prompt embeddings of the real shapes (SDXL:
(1, 77, 2048), pooled (1, 1280), time ids (1, 6); SD 1.5: (1, 77, 768)) instead of text
encoders. PyTorch: diffusers' UNet2DConditionModel / AutoencoderKL and transformers'
CLIPVisionModelWithProjection from configs (built on CUDA when available, in --dtype), the
adapter put in by diffusers' own IP-Adapter loader from random tensors, facenet-pytorch's
InceptionResnetV1; the step is tests/diffusion_reference.torch_algorithm1_direction_on_device.
PyTorch's models are built after JAX's first step (less memory at once where both share host
memory). On CPU --random is only a smoke test: --random=sd15 at 64 px runs in ~17 GiB of host
memory (the JAX step's float32 copies of bfloat16 weights dominate); the SDXL step needs ~26 GiB
with bfloat16 weights, ~18 GiB with float32 (XLA's memory analysis, 64 px), and PyTorch's
bfloat16 convs / matmuls are slow on CPUs without bfloat16 units.

The PyTorch side runs for the tiny and the random models (not for --pipeline). JAX's --dtype is
the weights' storage dtype (the step's convs / matmuls compute in float32: deflection calls the
UNet with its default Options); PyTorch computes in --dtype. Compile time (JAX's first call)
is reported apart; one untimed warm-up call for PyTorch. Per photo = per step x 200 (the
reference's step count). Peak memory: JAX's device memory statistics where the backend has them
(GPU; the largest so far in the run), else the compiled step's temporaries; PyTorch's
max_memory_allocated on CUDA (per size, weights included).
"""
import argparse
import functools
import math
import os
import sys
import tempfile
import time

# PyTorch shares the GPU with JAX here: JAX allocates on demand instead of taking 75% up front
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from common import machine  # noqa: E402

# --random=NAME: the real architectures (the tests' configs), random weights built in memory
RANDOM = {
    "sdxl": dict(unet="sdxl-base", plus=dict(dim=1280, heads=20, num_queries=16),
                 vae_sample_size=1024, vae_scaling=0.13025),
    "sd15": dict(unet="sd15", plus=dict(dim=768, heads=12, num_queries=16),
                 vae_sample_size=512, vae_scaling=0.18215),
}
# AutoencoderKL config of SD 1.x / SDXL's VAE (sample_size / scaling_factor from RANDOM)
REAL_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, latent_channels=4, norm_num_groups=32)
CLIP_EMBEDDING_DIM = 1280  # CLIP ViT-H/14 hidden width: what IP-Adapter Plus reads


def _count(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _normal(key, shape, dtype, mean, std):
    return (mean + std * jax.random.normal(key, shape, dtype)).astype(dtype)


def _leaf_init(names, shape) -> tuple[float, float]:
    """(mean, std) of a random leaf: kernels N(0, 1/fan_in) (activations stay O(1): no overflow,
    no denormals), norm scales / batch-norm variances around 1, the rest small."""
    leaf = names[-1] if names else ""
    if leaf in ("scale", "var"):
        return 1.0, 0.02
    if leaf == "kernel":
        # Dense (in, out); stacked Dense (depth, in, out); Conv HWIO
        fan_in = {2: shape[0], 3: shape[1]}.get(len(shape), math.prod(shape[:-1]))
        return 0.0, 1.0 / math.sqrt(max(fan_in, 1))
    return 0.0, 0.02


def _random_like(shapes, key, dtype):
    """A tree of ShapeDtypeStructs -> arrays of random values, made on the default device in
    dtype, one leaf at a time (one small program per distinct shape: no float32 copy of the
    whole model, no host copy)."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, (path, s) in zip(keys, leaves):
        names = [getattr(p, "key", getattr(p, "name", str(p))) for p in path]
        mean, std = _leaf_init(names, tuple(s.shape))
        out.append(_normal(k, tuple(s.shape), dtype, mean, std))
    return jax.tree_util.tree_unflatten(tree, out)


def random_prompt_embeds(unet_cfg, seed: int = 0):
    """text.PromptEmbeds of the real shapes, random values: (77, cross_attention_dim) hidden
    states (+ SDXL's pooled (text_embeds_dim,)) in place of the text encoders' output."""
    from idguardian_jax.diffusion import text

    rng = np.random.default_rng(seed)
    embeds = rng.standard_normal((text.MAX_LENGTH, unet_cfg.cross_attention_dim[0]))
    pooled = (rng.standard_normal(unet_cfg.text_embeds_dim).astype(np.float32)
              if unet_cfg.is_sdxl_style else None)
    return text.PromptEmbeds(embeds.astype(np.float32), pooled)


def jax_random_models(name, dtype):
    """(pipe, proj, clip, fn_params, pe, info) for --random=name, weights random in dtype."""
    import diffusion_reference as dr
    import reference_models as rm
    from idguardian_jax.encoders import clip_vit, facenet
    from idguardian_jax.diffusion import ip_adapter as ipa
    from idguardian_jax.diffusion import loaders
    from idguardian_jax.diffusion import schedule as schedule_lib
    from idguardian_jax.diffusion import unet as unet_lib
    from idguardian_jax.diffusion import vae as vae_lib

    spec = RANDOM[name]
    t0 = time.perf_counter()
    base_cfg = unet_lib.UNetConfig.from_dict(dr.REAL_UNETS[spec["unet"]], spec["unet"])
    base = _count(unet_lib.expected_shapes(base_cfg))
    want = dr.REAL_UNET_PARAMS[spec["unet"]]
    if base != want:
        raise SystemExit(f"JAX UNet of {spec['unet']}: {base:,} parameters, diffusers' has "
                         f"{want:,}")
    plus = spec["plus"]
    pcfg = ipa.ImageProjConfig(ipa.PLUS, CLIP_EMBEDDING_DIM, base_cfg.cross_attention_dim[0],
                               plus["num_queries"], plus["dim"], 4, 64, plus["heads"], 4)
    ucfg = base_cfg.with_ip_adapter(pcfg.num_tokens, pcfg.output_dim)
    key = jax.random.PRNGKey(0)
    unet = unet_lib.UNetParams(
        {"params": _random_like(unet_lib.expected_shapes(ucfg)["params"],
                                jax.random.fold_in(key, 1), dtype)}, ucfg)
    proj = ipa.ImageProjParams(_random_like(ipa.expected_shapes(pcfg), jax.random.fold_in(key, 2),
                                            dtype), pcfg)
    vcfg = vae_lib.VAEConfig(**REAL_VAE,
                             sample_size=spec["vae_sample_size"],
                             scaling_factor=spec["vae_scaling"])
    vae = vae_lib.VAEParams({"params": _random_like(vae_lib.expected_shapes(vcfg)["params"],
                                                    jax.random.fold_in(key, 3), dtype)}, vcfg)
    ccfg = clip_vit.CLIPVisionConfig(**rm.CLIP_VIT_H_14)
    clip = clip_vit.CLIPParams(_random_like(clip_vit.expected_shapes(ccfg),
                                            jax.random.fold_in(key, 4), dtype), ccfg)
    fn_params = {"net": _random_like(facenet.variable_shapes(), jax.random.fold_in(key, 5),
                                     dtype)}
    jax.block_until_ready((unet, proj, vae, clip, fn_params))
    seconds = time.perf_counter() - t0
    kind = "sdxl" if ucfg.is_sdxl_style else "sd"
    pipe = loaders.Pipeline(f"<random {name}>", kind, unet, vae, schedule_lib.from_config())
    counts = dict(unet_base=base, unet_key=spec["unet"], unet=unet_lib.param_count(unet),
                  ip_layers=len(unet_lib.ip_layer_paths(ucfg)), proj=_count(proj.variables),
                  vae=_count(vae.variables), clip=clip_vit.param_count(clip),
                  facenet=_count(fn_params["net"]["params"]), seconds=seconds)
    return pipe, proj, clip, fn_params, random_prompt_embeds(ucfg), counts


def jax_models(kind, dtype):
    """kind 'tiny' (random tiny SDXL-style models written to a temp folder) or a tuple of local
    paths (diffusers folder, IP-Adapter file, CLIP folder, FaceNet file)."""
    from idguardian_jax.encoders import clip_vit, facenet
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
        added=(None if pe.added_cond(size, size) is None else
               {k: jnp.asarray(v) for k, v in pe.added_cond(size, size).items()}))
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
    if not bool(jnp.isfinite(xa).all()):
        print(f"warning: JAX step at {size} px gave non-finite values", file=sys.stderr)
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    if peak is None:
        ma = step.lower(x, x, p, fn_params, z0, tok, t, noise).compile().memory_analysis()
        peak = getattr(ma, "temp_size_in_bytes", None)
        what = "compiled temporaries"
    else:
        what = "device peak"
    return per, compile_s, peak, what


TORCH_DTYPES = ("float32", "bfloat16", "float16")


def torch_random_models(name, dtype_name):
    """(clip, unet, vae, scheduler), FaceNet and counts for --random=name: diffusers' /
    transformers' / facenet-pytorch's modules from configs with random weights, built on CUDA
    when available, in dtype_name; no files."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    import diffusion_reference as dr
    import reference_models as rm

    spec = RANDOM[name]
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dt = getattr(torch, dtype_name)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    ucfg = dr.REAL_UNETS[spec["unet"]]
    # created and initialized in float32 on dev (bfloat16 init is far slower on CPU), each model
    # cast to dt before the next is built
    with torch.device(dev):
        unet = UNet2DConditionModel(**ucfg).to(dt).eval()
        base = sum(p.numel() for p in unet.parameters())
        # IP-Adapter Plus in upstream's layout, random, put in by diffusers' own loader
        sd = dr.random_ip_adapter_plus(ucfg, dr.cross_attention_widths(unet), CLIP_EMBEDDING_DIM,
                                       seed=40, **spec["plus"])
        sd = {h: {k: torch.from_numpy(v) for k, v in d.items()} for h, d in sd.items()}
        unet._load_ip_adapter_weights([sd], low_cpu_mem_usage=False)
        del sd
        vae = AutoencoderKL(**REAL_VAE, sample_size=spec["vae_sample_size"],
                            scaling_factor=spec["vae_scaling"]).to(dt).eval()
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**rm.CLIP_VIT_H_14)).to(dt).eval()
    fn_model = rm.random_facenet(0).to(device=dev, dtype=dt).eval()
    sched = DDPMScheduler(**dr.SCHEDULER)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    proj = sum(p.numel() for p in unet.encoder_hid_proj.parameters())
    counts = dict(unet_base=base, ip=sum(p.numel() for p in unet.parameters()) - base - proj,
                  proj=proj, clip=sum(p.numel() for p in clip.parameters()),
                  seconds=time.perf_counter() - t0, device=str(dev))
    return (clip, unet, vae, sched), fn_model, counts


def bench_torch(args_models, size, steps):
    """args_models: ('tiny', root, paths, fn_model) or ('random', models, fn_model, pe)."""
    import torch

    import diffusion_reference as dr

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(1, size, size, 3)).astype(np.float32)
    t = np.array([500], np.int32)
    noise = rng.standard_normal((1, 4, size // 8, size // 8)).astype(np.float32)
    if args_models[0] == "tiny":
        from diffusers import AutoencoderKL, DDPMScheduler
        from transformers import CLIPVisionModelWithProjection

        from idguardian_jax.diffusion import text

        _, root, paths, fn_model = args_models
        pe = text.encode_prompt(root, "A photo of a person")
        models = (CLIPVisionModelWithProjection.from_pretrained(paths["image_encoder"]).eval(),
                  dr.torch_unet_with_ip(root, paths["plus"]),
                  AutoencoderKL.from_pretrained(root, subfolder="vae").eval(),
                  DDPMScheduler.from_pretrained(root, subfolder="scheduler"))

        def direction(xa):
            return dr.torch_algorithm1_direction(root, paths, fn_model, pe, xa, x, t, noise, size,
                                                 models)[0]
    else:
        _, models, fn_model, pe = args_models

        def direction(xa):
            return dr.torch_algorithm1_direction_on_device(models, fn_model, pe, xa, x, t, noise,
                                                           size)[0]
    cuda = torch.cuda.is_available() and next(models[1].parameters()).is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    xa = x.copy()
    direction(xa)  # warm-up (untimed)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        total = direction(xa)
        xa = np.clip(x + np.clip(xa - 0.005 * np.sign(total) - x, -8 / 255, 8 / 255), 0, 1)
    if cuda:
        torch.cuda.synchronize()
    per = (time.perf_counter() - t0) / steps
    if steps and not np.isfinite(total).all():
        print(f"warning: PyTorch step at {size} px gave non-finite values", file=sys.stderr)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    return per, peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--random", default=None, choices=sorted(RANDOM),
                    help="real architecture with random weights built in memory (no files)")
    ap.add_argument("--pipeline", default=None, help="diffusers folder (default: tiny random)")
    ap.add_argument("--ip_adapter", default=None)
    ap.add_argument("--clip", default=None)
    ap.add_argument("--facenet", default=None)
    ap.add_argument("--sizes", default="64")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=list(TORCH_DTYPES))
    ap.add_argument("--no_torch", action="store_true")
    args = ap.parse_args()
    if args.random and args.pipeline:
        ap.error("--random and --pipeline exclude each other")
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[args.dtype]
    if args.random:
        pipe, proj, clip, fn_params, pe, c = jax_random_models(args.random, dtype)
        label = f"random {args.random} architecture (weights built in memory)"
        lines = [
            f"JAX models: {c['seconds']:.1f} s to build, weights {args.dtype} on "
            f"{jax.devices()[0].device_kind}",
            f"UNet: {c['unet']:,} parameters = {c['unet_base']:,} (REAL_UNET_PARAMS"
            f"['{c['unet_key']}'], diffusers' UNet2DConditionModel) + "
            f"{c['unet'] - c['unet_base']:,} IP-Adapter to_k_ip / to_v_ip in {c['ip_layers']} "
            f"cross-attention layers",
            f"IP-Adapter Plus resampler: {c['proj']:,} (dim {proj.config.dim}, depth "
            f"{proj.config.depth}, {proj.config.heads} heads, {proj.config.num_tokens} queries, "
            f"reads {proj.config.embedding_dim}-wide CLIP hidden states)",
            f"VAE encoder: {c['vae']:,}; CLIP ViT-H/14: {c['clip']:,}; FaceNet: {c['facenet']:,}",
        ]
        torch_args = None  # PyTorch's models: built at the first size, after JAX's first step
        no_torch = args.no_torch
    else:
        kind = "tiny" if args.pipeline is None else (args.pipeline, args.ip_adapter, args.clip,
                                                     args.facenet)
        pipe, proj, clip, fn_params, pe, torch_args = jax_models(kind, dtype)
        no_torch = args.no_torch or torch_args is None
        label = "tiny random SDXL-style" if torch_args is not None else args.pipeline
        lines = []
    print(f"machine: {machine()}, date: {time.strftime('%Y-%m-%d')}, models: {label}, "
          f"dtype {args.dtype}, {args.steps} timed steps")
    for line in lines:
        print(line)
    print()
    print("| size | JAX s/step | JAX compile s | JAX s/photo (200 steps) | JAX peak memory | "
          "PyTorch s/step | PyTorch s/photo | PyTorch peak |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    after = []
    for size in (int(s) for s in args.sizes.split(",")):
        per, comp, peak, what = bench_jax(pipe, proj, clip, fn_params, pe, size, args.steps, dtype)
        if not no_torch and torch_args is None:  # --random
            models, fn_model, tc = torch_random_models(args.random, args.dtype)
            torch_args = ("random", models, fn_model, pe)
            same = ("same as JAX" if (tc["unet_base"], tc["ip"], tc["proj"], tc["clip"]) ==
                    (c["unet_base"], c["unet"] - c["unet_base"], c["proj"], c["clip"])
                    else "DIFFERENT FROM JAX")
            after.append(f"PyTorch models: {tc['seconds']:.1f} s to build on {tc['device']} in "
                         f"{args.dtype}; UNet {tc['unet_base']:,} + IP layers {tc['ip']:,}, "
                         f"resampler {tc['proj']:,}, CLIP {tc['clip']:,} ({same})")
        tper, tpeak = (None, None) if no_torch else bench_torch(torch_args, size, args.steps)
        mem = f"{peak / 2**20:.0f} MiB ({what})" if peak else "n/a"
        tp = "n/a" if tper is None else f"{tper:.3f}"
        tph = "n/a" if tper is None else f"{tper * 200:.1f}"
        tmem = ("n/a" if tper is None else "n/a (CPU)") if not tpeak else f"{tpeak / 2**20:.0f} MiB"
        print(f"| {size} | {per:.3f} | {comp:.1f} | {per * 200:.1f} | {mem} | {tp} | {tph} | "
              f"{tmem} |", flush=True)
    if after:
        print()
    for line in after:
        print(line)


if __name__ == "__main__":
    main()
