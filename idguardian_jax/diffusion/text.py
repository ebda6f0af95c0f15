"""Text conditioning of SD / SDXL: prompt -> encoder hidden states (+ SDXL's pooled embedding),
with transformers' Flax CLIP text encoders (transformers < 5), computed once per (prompt, model)
and cached as .npz.

As diffusers' pipelines do (no classifier-free guidance, clip_skip None):
- SD 1.x / 2.x: tokenizer pads / truncates to 77; embeds = text_encoder(ids).last_hidden_state
  (B, 77, 768 / 1024).
- SDXL: for text_encoder (CLIPTextModel) and text_encoder_2 (CLIPTextModelWithProjection):
  hidden_states[-2] of each, concatenated on the feature axis (B, 77, 768 + 1280 = 2048);
  pooled = text_encoder_2's text_embeds (B, 1280) -> added_cond 'text_embeds'. (The refiner has
  only text_encoder_2.)

Cache: `$IDGUARDIAN_CACHE_DIR` (checkpoints.cache), file `text-<sha256(prompt, model hash)>.npz`;
the model hash covers the config, tokenizer and weight files of the text encoders (content
hashes, remembered per (path, size, mtime)). A cache hit loads no model.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np

from idguardian_jax.checkpoints import cache as cache_lib
from idguardian_jax.checkpoints.tensors import CheckpointError
from idguardian_jax.diffusion import adapter

CACHE_VERSION = 1
MAX_LENGTH = 77
_ENCODERS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))


@dataclasses.dataclass(frozen=True)
class PromptEmbeds:
    embeds: np.ndarray               # (T, D) encoder hidden states of one prompt
    pooled: np.ndarray | None = None  # (P,) SDXL's pooled text embedding, else None

    def batch(self, n: int = 1) -> np.ndarray:
        return np.broadcast_to(self.embeds, (n,) + self.embeds.shape)

    def added_cond(self, height: int, width: int, n: int = 1) -> dict[str, np.ndarray] | None:
        """SDXL's added_cond for an image of height x width (time ids [h, w, 0, 0, h, w])."""
        if self.pooled is None:
            return None
        ids = np.asarray([height, width, 0, 0, height, width], np.float32)
        return {"text_embeds": np.broadcast_to(self.pooled, (n,) + self.pooled.shape),
                "time_ids": np.broadcast_to(ids, (n, 6))}


def _parts(root: str) -> list[tuple[str, str]]:
    """(text encoder folder, tokenizer folder) pairs present under root."""
    out = []
    for te, tok in _ENCODERS:
        d, t = os.path.join(root, te), os.path.join(root, tok)
        if os.path.isfile(os.path.join(d, "config.json")):
            if not os.path.isdir(t):
                raise FileNotFoundError(f"{root}: {te}/ without {tok}/")
            out.append((d, t))
    if not out:
        raise FileNotFoundError(f"{root}: no text_encoder/config.json or "
                                f"text_encoder_2/config.json")
    return out


def _hash_file(path: str, memo: dict) -> str:
    st = os.stat(path)
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
    if key not in memo:
        memo[key] = cache_lib.file_sha256(path)
    return memo[key]


def model_hash(root: str) -> str:
    """Content hash of the text encoders' and tokenizers' files (memoized on disk)."""
    memo_path = os.path.join(cache_lib.cache_dir(), "file-hashes.json")
    try:
        with open(memo_path) as fh:
            memo = json.load(fh)
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    n0 = len(memo)
    h = hashlib.sha256()
    for te, tok in _parts(root):
        for folder in (te, tok):
            for name in sorted(os.listdir(folder)):
                p = os.path.join(folder, name)
                if os.path.isfile(p):
                    h.update(f"{os.path.basename(folder)}/{name}:{_hash_file(p, memo)}\n".encode())
    if len(memo) != n0:
        try:
            os.makedirs(os.path.dirname(memo_path), exist_ok=True)
            tmp = memo_path + f".tmp{os.getpid()}"
            with open(tmp, "w") as fh:
                json.dump(memo, fh)
            os.replace(tmp, memo_path)
        except OSError:
            pass
    return h.hexdigest()


def _load_encoder(folder: str):
    """(Flax model, params, with_projection) of a text_encoder folder (config.json +
    model[.fp16].safetensors), the PyTorch tensors mapped onto transformers' Flax tree here
    (no random init, no torch): 'a.b.N.c.weight' -> ('a', 'b', 'N', 'c', kernel (W^T) | scale |
    embedding)."""
    import jax

    from idguardian_jax.diffusion import state_dicts

    CLIPTextConfig, FlaxCLIPTextModel, FlaxCLIPTextModelWithProjection = adapter.clip_text_models()
    adapter.silence_transformers_flax_warnings()
    cfg_path = os.path.join(folder, "config.json")
    try:
        with open(cfg_path) as fh:
            d = json.load(fh)
    except ValueError as e:
        raise CheckpointError(f"{cfg_path}: not JSON ({e})") from None
    if not isinstance(d, dict) or d.get("model_type", "clip_text_model") not in (
            "clip_text_model", "clip"):
        raise CheckpointError(f"{cfg_path}: not a CLIP text model config")
    archs = d.get("architectures") or []
    with_proj = any("WithProjection" in a for a in archs)
    cls = FlaxCLIPTextModelWithProjection if with_proj else FlaxCLIPTextModel
    config = CLIPTextConfig.from_dict(d)
    model = cls(config, _do_init=False)
    shapes = jax.eval_shape(lambda r: model.init_weights(r, (1, 1)), jax.random.PRNGKey(0))
    exp = {tuple(k): v for k, v in _flatten(shapes).items()}
    files = state_dicts.weight_files(folder, "model")
    where = files[0] if len(files) == 1 else folder
    params: dict[tuple[str, ...], np.ndarray] = {}
    for key, file, get in state_dicts.iter_safetensors(files):
        parts = tuple(key.split("."))
        mods, leaf = parts[:-1], parts[-1]
        if key == "text_model.embeddings.position_ids":
            continue  # a buffer in older checkpoints
        target = None
        for name in (("kernel", "scale", "embedding") if leaf == "weight" else (leaf,)):
            if mods + (name,) in exp:
                target = mods + (name,)
                break
        if target is None:
            raise CheckpointError(f"{file}: not the text encoder of {cfg_path}: unexpected tensor "
                                  f"{key!r}")
        v = np.asarray(get(), np.float32)
        if target[-1] == "kernel":
            v = v.T
        if v.shape != tuple(exp[target].shape):
            raise CheckpointError(f"{file}: not the text encoder of {cfg_path}: {key!r} has shape "
                                  f"{np.shape(get())}")
        params[target] = v
    missing = [k for k in exp if k not in params]
    if missing:
        m = missing[0]
        leaf = "weight" if m[-1] in ("kernel", "scale", "embedding") else m[-1]
        raise CheckpointError(f"{where}: not the text encoder of {cfg_path}: missing tensor "
                              f"{'.'.join(m[:-1] + (leaf,))!r}")
    tree: dict[str, Any] = {}
    for k, v in params.items():
        node = tree
        for p in k[:-1]:
            node = node.setdefault(p, {})
        node[k[-1]] = v
    return model, tree, with_proj


def _flatten(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _tokenize(tok_folder: str, prompts: list[str]) -> np.ndarray:
    tok = adapter.clip_tokenizer().from_pretrained(tok_folder, local_files_only=True)
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="np").input_ids
    return np.asarray(ids, np.int32)


def compute_prompt_embeds(root: str, prompt: str) -> PromptEmbeds:
    """Runs the text encoder(s) (no cache)."""
    parts = _parts(root)
    sdxl = len(parts) == 2 or os.path.basename(parts[0][0]) == "text_encoder_2"
    embeds, pooled = [], None
    for te, tok in parts:
        model, params, with_proj = _load_encoder(te)
        ids = _tokenize(tok, [prompt])
        out = model(ids, params=params, output_hidden_states=True)
        if sdxl:
            embeds.append(np.asarray(out.hidden_states[-2], np.float32)[0])
            if with_proj:
                pooled = np.asarray(out.text_embeds, np.float32)[0]
        else:
            embeds.append(np.asarray(out.last_hidden_state, np.float32)[0])
    if sdxl and pooled is None:
        raise CheckpointError(f"{root}: SDXL text_encoder_2 is not a CLIPTextModelWithProjection")
    return PromptEmbeds(np.concatenate(embeds, axis=-1), pooled)


def encode_prompt(root: str | os.PathLike, prompt: str, *, use_cache: bool = True) -> PromptEmbeds:
    """Prompt embeddings of a pipeline folder's text encoder(s), cached per (prompt, model)."""
    root = os.fspath(root)
    if not use_cache:
        return compute_prompt_embeds(root, prompt)
    key = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "prompt": prompt,
                                     "model": model_hash(root)}).encode()).hexdigest()
    path = os.path.join(cache_lib.cache_dir(), f"text-{key[:40]}.npz")
    if os.path.isfile(path):
        try:
            arrays, _ = cache_lib.load_npz(path)
            return PromptEmbeds(arrays["embeds"], arrays.get("pooled"))
        except Exception:  # damaged cache entry: recompute
            pass
    pe = compute_prompt_embeds(root, prompt)
    arrays: dict[str, Any] = {"embeds": pe.embeds}
    if pe.pooled is not None:
        arrays["pooled"] = pe.pooled
    try:
        cache_lib.save_npz_atomic(path, arrays, {"prompt": prompt, "root": os.path.abspath(root)})
    except OSError:
        pass
    return pe
