"""Upstream reference models with random weights, written in the upstream checkpoint formats.

No real weights of these models can be had here, so the encoder ports are checked against the
upstream PyTorch implementations on random weights: these helpers build the reference model, give
it realistic random weights (batch-norm statistics calibrated on random images, so activations stay
O(1) through deep nets), and write the checkpoint the way the upstream projects ship it:

- FaceNet: facenet-pytorch's InceptionResnetV1 state dict (`torch.save`, a `.pt` file).
- ArcFace: an arcface_torch IResNet state dict (`.pt`), or an InsightFace-style ONNX file exported
  with torch's TorchScript exporter (convolutions with batch norm folded in, as in
  w600k_r50.onnx / glintr100.onnx) or exported without folding.
- CLIP: a Hugging Face CLIPVisionModelWithProjection folder (config.json + model.safetensors).

Also used for smoke runs: ``python tests/reference_models.py arcface-onnx r50 /tmp/r50.onnx``
(kinds: facenet OUT.pt | arcface-pt r50|r100 OUT.pth | arcface-onnx r50|r100 OUT.onnx |
clip vit-h|vit-l|vit-bigg|tiny FOLDER | counts).
Needs torch (and facenet-pytorch / transformers / onnx for the respective models); imports them
lazily so that `pytest.importorskip` in the tests decides what runs.
"""
from __future__ import annotations

import argparse
import sys
import types
from typing import Any, Sequence

import numpy as np

# ------------------------------------------------------------------------------------------
# Configurations of the real models (the numbers of encoders.md / the upstream configs)
# ------------------------------------------------------------------------------------------
IRESNET_LAYERS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3),
                  "r100": (3, 13, 30, 3)}

# HF CLIPVisionConfig fields of the encoders that the generation pipelines use.
CLIP_VIT_H_14 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                     num_attention_heads=16, patch_size=14, image_size=224, projection_dim=1024,
                     hidden_act="gelu", layer_norm_eps=1e-5)
CLIP_VIT_L_14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                     num_attention_heads=16, patch_size=14, image_size=224, projection_dim=768,
                     hidden_act="quick_gelu", layer_norm_eps=1e-5)
CLIP_VIT_BIGG_14 = dict(hidden_size=1664, intermediate_size=8192, num_hidden_layers=48,
                        num_attention_heads=16, patch_size=14, image_size=224,
                        projection_dim=1280, hidden_act="gelu", layer_norm_eps=1e-5)
CLIP_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 patch_size=7, image_size=28, projection_dim=24, hidden_act="gelu",
                 layer_norm_eps=1e-5)


def _torch():
    import torch

    return disable_onednn(torch)


def disable_onednn(torch):
    """Run torch's CPU reference without oneDNN (mkldnn) kernels; returns torch.

    Measured (torch 2.13.0+cpu, oneDNN 3.12, AMD EPYC with AVX-512): the backward pass of the
    tiny random IResNet (tests/test_encoder_arcface.py) dies with SIGSEGV inside oneDNN on every
    run, with one thread too, with or without JAX imported; with `torch.backends.mkldnn.enabled =
    False` (or ONEDNN_MAX_CPU_ISA=AVX2) the same pass runs and gives the same gradient. torch's
    native kernels are the reference we want anyway; the few ms they cost do not matter."""
    torch.backends.mkldnn.enabled = False
    return torch


# ------------------------------------------------------------------------------------------
# Random weights
# ------------------------------------------------------------------------------------------
def randomize_(model, seed: int, calib_input, prelu: tuple[float, float] = (0.1, 0.4),
               gamma_scale: dict[str, float] | None = None):
    """Random batch-norm affine parameters and PReLU slopes, then batch-norm running statistics
    set to the statistics of one train-mode pass over `calib_input`. Returns the model in eval
    mode. Convolution / linear weights keep torch's default random initialization.

    gamma_scale: module-name suffix -> factor on those batch norms' random gammas (e.g. the last
    BN of each residual branch, small as in trained ResNets)."""
    torch = _torch()
    nn = torch.nn
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.affine:
                    f = next((v for k, v in (gamma_scale or {}).items() if name.endswith(k)), 1.0)
                    m.weight.copy_(f * (0.5 + torch.rand(n, generator=g)))
                    m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.momentum = 1.0  # running stats := the calibration batch's stats
                m.reset_running_stats()
            elif isinstance(m, nn.PReLU):
                lo, hi = prelu
                m.weight.copy_(lo + (hi - lo) * torch.rand(m.weight.shape, generator=g))
        model.train()
        model(calib_input)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.1
    return model.eval()


def random_images(n: int, size: int, seed: int, channels_last: bool = True) -> np.ndarray:
    """Uniform [0, 1] float32 images (N, H, W, 3) (or NCHW)."""
    x = np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype(np.float32)
    return x if channels_last else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# ------------------------------------------------------------------------------------------
# ArcFace IResNet (insightface recognition/arcface_torch/backbones/iresnet.py, restated)
# ------------------------------------------------------------------------------------------
def make_iresnet(layers: Sequence[int] | str = "r50", widths: Sequence[int] = (64, 128, 256, 512),
                 num_features: int = 512, stem: int | None = None):
    """An IResNet as arcface_torch defines it (same module names, so its state dict has the
    upstream keys). `widths`/`num_features` other than the defaults give small test networks;
    input is 112x112, so the final map is 7x7."""
    torch = _torch()
    nn = torch.nn
    if isinstance(layers, str):
        layers = IRESNET_LAYERS[layers]
    stem = widths[0] if stem is None else stem

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
            self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
            self.prelu = nn.PReLU(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout, eps=1e-5))

        def forward(self, x):
            y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
            return y + (x if self.downsample is None else self.downsample(x))

    class IResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(stem, eps=1e-5)
            self.prelu = nn.PReLU(stem)
            cin = stem
            for i, (n, w) in enumerate(zip(layers, widths)):
                blocks = [Block(cin, w, 2)] + [Block(w, w, 1) for _ in range(n - 1)]
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
                cin = w
            self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
            self.dropout = nn.Dropout(p=0.0)
            self.fc = nn.Linear(cin * 7 * 7, num_features)
            self.features = nn.BatchNorm1d(num_features, eps=1e-5)

        def forward(self, x):
            x = self.prelu(self.bn1(self.conv1(x)))
            for i in range(len(layers)):
                x = getattr(self, f"layer{i + 1}")(x)
            x = torch.flatten(self.bn2(x), 1)
            return self.features(self.fc(self.dropout(x)))

    return IResNet()


def arcface_input(chips_nhwc: np.ndarray):
    """InsightFace's input blob from [0, 1] RGB chips: (255 x - 127.5) / 127.5, NCHW."""
    torch = _torch()
    x = (np.asarray(chips_nhwc, np.float32) * 255.0 - 127.5) / 127.5
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def random_iresnet(layers="r50", widths=(64, 128, 256, 512), num_features=512, seed=0):
    """An IResNet with random weights. The last BN of each residual branch gets gammas in
    0.1..0.3, as trained ResNets have them: with gammas near 1 a 100-layer random IResNet is so
    chaotic that torch's own float32 input gradient is 4e-3 away from its float64 one."""
    torch = _torch()
    torch.manual_seed(seed)
    model = make_iresnet(layers, widths, num_features)
    calib = arcface_input(random_images(8, 112, seed + 1000))
    return randomize_(model, seed, calib, gamma_scale={"bn3": 0.2})


def write_iresnet_state_dict(path: str, model) -> str:
    _torch().save(model.state_dict(), path)
    return path


def export_onnx(model, path: str, size: int, fold: bool = True, opset: int = 13) -> str:
    """TorchScript ONNX export (as InsightFace's models were made). fold=True lets the exporter
    fold each batch norm that follows a convolution into it (the released files look like that);
    fold=False keeps every BatchNormalization node."""
    torch = _torch()
    x = torch.zeros(1, 3, size, size)
    torch.onnx.export(model.eval(), (x,), path, dynamo=False, opset_version=opset,
                      input_names=["input.1"], output_names=["embedding"],
                      dynamic_axes={"input.1": {0: "N"}, "embedding": {0: "N"}},
                      training=torch.onnx.TrainingMode.EVAL if fold
                      else torch.onnx.TrainingMode.PRESERVE,
                      do_constant_folding=fold)
    return path


# ------------------------------------------------------------------------------------------
# FaceNet InceptionResnetV1 (facenet-pytorch)
# ------------------------------------------------------------------------------------------
def import_facenet_pytorch():
    """facenet_pytorch's InceptionResnetV1 class. The package imports torchvision for its MTCNN
    code only; if torchvision does not import, stub the two names it reads at import time."""
    stubs = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
             "torchvision.ops", "torchvision.ops.boxes")
    stubbed = False
    try:
        import torchvision  # noqa: F401
    except Exception:  # not installed, or a build that does not load beside this torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        for name in stubs:
            sys.modules[name] = types.ModuleType(name)
        sys.modules["torchvision.ops.boxes"].batched_nms = None
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
        sys.modules["torchvision.transforms"].functional = sys.modules[
            "torchvision.transforms.functional"]
        stubbed = True
    try:
        from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1
    except ImportError as e:
        if "pytest" in sys.modules:  # under the tests: a clear skip, not an error
            import pytest

            pytest.skip(f"facenet-pytorch is not importable ({e}); the README's test command "
                        "installs it (pip install --no-deps facenet-pytorch==2.6.0)")
        raise
    finally:
        if stubbed:  # other libraries (transformers) probe torchvision: leave no stub behind
            for name in stubs:
                sys.modules.pop(name, None)
    return InceptionResnetV1


def facenet_input(chips_nhwc: np.ndarray, standardization: str = "idguardian"):
    torch = _torch()
    x = np.asarray(chips_nhwc, np.float32)
    x = x * 2.0 - 1.0 if standardization == "idguardian" else (x * 255.0 - 127.5) / 128.0
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def random_facenet(seed: int = 0, classify_head: int | None = None):
    """InceptionResnetV1(pretrained=None, classify=False) with random weights. classify_head=N
    adds a `logits` Linear(512, N) as in the released VGGFace2 (8631) / CASIA (10575) files."""
    torch = _torch()
    torch.manual_seed(seed)
    cls = import_facenet_pytorch()
    model = cls(pretrained=None, classify=False)
    if classify_head:
        model.logits = torch.nn.Linear(512, classify_head)
    calib = facenet_input(random_images(8, 160, seed + 1000))
    return randomize_(model, seed, calib)


# ------------------------------------------------------------------------------------------
# CLIP vision tower with projection (Hugging Face transformers)
# ------------------------------------------------------------------------------------------
def random_clip(config: dict[str, Any], seed: int = 0):
    import transformers

    torch = _torch()
    torch.manual_seed(seed)
    cfg = transformers.CLIPVisionConfig(**config)
    model = transformers.CLIPVisionModelWithProjection(cfg).eval()
    with torch.no_grad():  # LayerNorms: random affine (HF initializes them to 1 / 0)
        g = torch.Generator().manual_seed(seed)
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


def write_clip_folder(path: str, model) -> str:
    model.save_pretrained(path, safe_serialization=True)
    return path


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_input(chips_nchw, image_size: int):
    """The IDGuardian reference's CLIP preprocessing in torch: bilinear resize (align_corners
    False, no antialias) of the whole chip to image_size, then (x - mean) / std."""
    torch = _torch()
    x = chips_nchw
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                            align_corners=False)
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


# ------------------------------------------------------------------------------------------
# Comparing a reference with a port: outputs and input gradients of the same scalar
# ------------------------------------------------------------------------------------------
def torch_value_and_grad(fn, chips_nhwc: np.ndarray, w: np.ndarray, dtype=np.float32):
    """fn: torch NHWC [0, 1] chips -> (N, E) outputs. Returns (outputs, d sum(outputs * w) /
    d chips) as numpy, the gradient NHWC. Runs with oneDNN off (see `disable_onednn`)."""
    torch = _torch()
    disable_onednn(torch)
    x = torch.from_numpy(np.ascontiguousarray(chips_nhwc, dtype)).requires_grad_(True)
    out = fn(x)
    (out * torch.from_numpy(np.asarray(w, dtype))).sum().backward()
    return out.detach().numpy(), x.grad.numpy()


def jax_value_and_grad(apply, params, chips_nhwc: np.ndarray, w: np.ndarray):
    """The same for a JAX apply(params, chips) -> (N, E) (jitted; params passed as arguments,
    not baked into the program as constants)."""
    import jax
    import jax.numpy as jnp

    def loss(p, x):
        out = apply(p, x)
        return jnp.sum(out * w), out

    (_, out), g = jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True))(
        params, jnp.asarray(chips_nhwc))
    return np.asarray(out), np.asarray(g)


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| over the whole tensor."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# Input-gradient error that float32 rounding alone causes in the ReLU networks here: a ReLU whose
# input lies within float32 rounding of 0 switches its gradient on or off (two such units in a
# 2-image 80 px FaceNet pass, found by comparing torch float32 and float64 masks), which moves
# the input gradient by ~1e-3. Measured on the random-weight FaceNet: torch float32 vs torch
# float64 up to 4.3e-3, JAX likewise. (ArcFace's PReLU makes such flips ~1e3 times smaller.)
FLOAT32_GRAD_FLOOR = 5e-3


def compare(label: str, torch_fn, jax_apply, params, chips, w, torch_fn64=None,
            want=None) -> dict[str, float]:
    """float32 parity of outputs (max-abs) and of input gradients (relative, whole tensor) of
    sum(outputs * w). `want` overrides the reference outputs (e.g. onnxruntime's).

    When the gradient gap exceeds 1e-3 and `torch_fn64` (the reference in float64) is given, the
    float64 gradient is computed too, to tell float32 near-tie flips (see FLOAT32_GRAD_FLOOR;
    the same test also runs `compare_f64`, which shows the functions are equal) from a porting
    error."""
    gout, gwant = torch_value_and_grad(torch_fn, chips, w)
    want = gout if want is None else want
    got, g = jax_value_and_grad(jax_apply, params, chips, w)
    r = {"max_abs": max_abs(got, want), "out_scale": float(np.abs(want).max()),
         "grad_rel": rel_err(g, gwant)}
    if r["grad_rel"] > 1e-3 and torch_fn64 is not None:
        _, g64 = torch_value_and_grad(torch_fn64, chips, w, np.float64)
        r["grad_rel_vs_f64"] = rel_err(g, g64)
        r["torch_f32_grad_rel_vs_f64"] = rel_err(gwant, g64)
    print(f"{label}: " + ", ".join(f"{k} {v:.2e}" for k, v in r.items()))
    return r


def assert_parity(r: dict[str, float], out_tol: float = 1e-4, grad_tol: float = 1e-3) -> None:
    """Outputs within out_tol; gradients within grad_tol of torch's float32 gradient, or, where a
    float32 near-tie flipped (in either implementation), within the float32 floor of the float64
    gradient."""
    assert r["max_abs"] <= out_tol, r
    if r["grad_rel"] > grad_tol:
        assert r.get("grad_rel_vs_f64", np.inf) <= FLOAT32_GRAD_FLOOR, r


def compare_f64(label: str, torch_model, torch_fn, jax_apply, params, chips, w) -> dict:
    """The same comparison in float64 on both sides (torch model copied to double, params cast):
    shows the port is the same function, free of float32 rounding."""
    import copy

    import jax
    import jax.numpy as jnp

    m64 = copy.deepcopy(torch_model).double()
    want, gwant = torch_value_and_grad(torch_fn(m64), chips, w, np.float64)
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        got, g = jax_value_and_grad(jax_apply, p64, np.asarray(chips, np.float64),
                                    np.asarray(w, np.float64))
    assert got.dtype == np.float64 and g.dtype == np.float64
    r = {"max_abs": max_abs(got, want), "grad_rel": rel_err(g, gwant)}
    print(f"{label} (float64): " + ", ".join(f"{k} {v:.2e}" for k, v in r.items()))
    return r


def nchw(x):
    """torch NHWC -> NCHW."""
    return x.permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------
# Parameter counts of the upstream models (no weights allocated)
# ------------------------------------------------------------------------------------------
def upstream_param_counts() -> dict[str, int]:
    """Trainable-parameter counts (torch `parameters()`, buffers excluded) of the upstream models,
    built on the meta device."""
    torch = _torch()
    import transformers

    out = {}
    with torch.device("meta"):
        out["facenet"] = sum(p.numel() for p in import_facenet_pytorch()(
            pretrained=None, classify=False).parameters())
        for name in ("r50", "r100"):
            out[f"arcface_{name}"] = sum(p.numel() for p in make_iresnet(name).parameters())
        for name, cfg in (("clip_vit_h_14", CLIP_VIT_H_14), ("clip_vit_l_14", CLIP_VIT_L_14),
                          ("clip_vit_bigg_14", CLIP_VIT_BIGG_14)):
            m = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**cfg))
            out[name] = sum(p.numel() for p in m.parameters())
    return out


# ------------------------------------------------------------------------------------------
# Command line: write a random-weight checkpoint for smoke runs
# ------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["facenet", "arcface-pt", "arcface-onnx", "clip", "counts"])
    p.add_argument("variant", nargs="?", default="",
                   help="arcface: r50/r100; clip: vit-h/vit-l/vit-bigg/tiny")
    p.add_argument("out", nargs="?", help="output file (folder for clip)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.kind == "counts":
        for k, v in upstream_param_counts().items():
            print(f"{k}: {v}")
        return
    if a.kind == "facenet" and a.variant and not a.out:
        a.variant, a.out = "", a.variant
    if not a.out:
        p.error("an output path is needed")
    if a.kind == "facenet":
        _torch().save(random_facenet(a.seed, classify_head=8631).state_dict(), a.out)
    elif a.kind.startswith("arcface"):
        model = random_iresnet(a.variant or "r50", seed=a.seed)
        if a.kind == "arcface-pt":
            write_iresnet_state_dict(a.out, model)
        else:
            export_onnx(model, a.out, 112)
    else:
        cfg = {"vit-h": CLIP_VIT_H_14, "vit-l": CLIP_VIT_L_14, "vit-bigg": CLIP_VIT_BIGG_14,
               "tiny": CLIP_TINY}[a.variant or "tiny"]
        write_clip_folder(a.out, random_clip(cfg, a.seed))
    print(a.out)


if __name__ == "__main__":
    main()
