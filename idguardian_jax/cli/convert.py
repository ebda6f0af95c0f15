r"""idguardian-convert: an upstream checkpoint in, a verified Flax checkpoint out.

  idguardian-convert --encoder=facenet --checkpoint=20180402-114759-vggface2.pt --output=facenet.safetensors
  idguardian-convert --encoder=arcface --checkpoint=glintr100.onnx --output=arcface_r100.safetensors
  idguardian-convert --encoder=clip_vit --checkpoint=models/image_encoder --output=clip_h14.safetensors
  idguardian-convert --encoder=dlib_resnet --output=dlib_resnet.safetensors   # the bundled file

The upstream file is read by the encoder's own loader (a facenet-pytorch state dict, an InsightFace
ONNX or arcface_torch state dict, a Hugging Face CLIP folder, a dlib .dat), its parameters are
written as one .safetensors file holding the Flax parameter tree (plus the model config in its
metadata), the written file is read back, and both are run on the same random chips: the
embeddings must be identical. Prints the parameter count and the file's sha256, so a cluster
converts once and checks the checksum everywhere. Every loader (`--config.objective.checkpoints.*`,
`idguardian-embed --checkpoint`) reads the converted file directly, without torch or onnx.

Exit status: 0 converted and verified, 1 the checkpoint could not be read or did not verify,
2 usage error.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from idguardian_jax.checkpoints import cache
from idguardian_jax.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("encoder", None, "Registered encoder name (dlib_resnet, facenet, arcface, clip_vit).")
flags.DEFINE_string("checkpoint", None, "Upstream checkpoint (file or folder); dlib_resnet: default bundled.")
flags.DEFINE_string("output", None, "Output .safetensors file (written atomically; never an input).")


def convert(encoder: str, checkpoint: str | None, output: str) -> dict:
    """Convert and verify; returns {'params', 'sha256', 'max_abs_diff'}."""
    import jax
    import numpy as np

    from idguardian_jax import encoders
    from idguardian_jax.checkpoints import tensors

    enc = encoders.get(encoder)
    if not output.endswith(".safetensors"):
        raise ValueError(f"{output}: the output must be a .safetensors file")
    if checkpoint and os.path.exists(output) and os.path.realpath(output) == os.path.realpath(checkpoint):
        raise ValueError(f"{output}: would overwrite the input checkpoint")
    params = encoders.load_params(encoder, checkpoint)
    tree, meta = enc.to_tree(params)
    tensors.save_flax(output, jax.device_get(tree), encoder, meta)
    again = encoders.load_params(encoder, output)
    chips = np.random.default_rng(0).uniform(size=(2, enc.chip_size, enc.chip_size, 3)).astype(np.float32)
    a = np.asarray(enc.apply(params, chips))
    b = np.asarray(enc.apply(again, chips))
    diff = float(np.abs(a - b).max())
    if diff != 0.0:
        raise ValueError(f"{output}: verification failed: embeddings differ by {diff}")
    n = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))
    module = sys.modules[enc.load.__module__]
    trainable = int(module.param_count(params)) if hasattr(module, "param_count") else n
    return {"params": trainable, "values": n, "sha256": cache.file_sha256(output), "max_abs_diff": diff}


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}", exitcode=common.EXIT_USAGE)
    if not FLAGS.encoder or not FLAGS.output:
        raise app.UsageError("give --encoder=NAME and --output=FILE.safetensors",
                             exitcode=common.EXIT_USAGE)
    from idguardian_jax import encoders

    if FLAGS.encoder not in encoders.names():
        raise app.UsageError(f"unknown encoder {FLAGS.encoder!r}; available: "
                             f"{', '.join(encoders.names())}", exitcode=common.EXIT_USAGE)
    try:
        r = convert(FLAGS.encoder, FLAGS.checkpoint, FLAGS.output)
    except (OSError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return common.EXIT_SOME_FAILED
    print(f"{FLAGS.output}: {FLAGS.encoder}, {r['params']:,} parameters ({r['values']:,} stored "
          f"values incl. normalization statistics), verified (identical embeddings), "
          f"sha256 {r['sha256']}")
    return common.EXIT_OK


def run():
    app.run(common.one_line_usage_errors(main), flags_parser=common.parse_flags_or_exit)


if __name__ == "__main__":
    run()
