"""Stage 2: the emotion controller, trained on a frozen stage-1 motion DiT.

Run after stage 1 (W1: its workdir, meaning its newest checkpoint, or one W1/checkpoints/STEP folder):
  python launch.py --config=configs/stage2.py --workdir=/tmp/stage2 --config.init_from=W1 \
      --config.data.data_dir=DATA_DIR
Demo (after `python launch.py --config=configs/stage1.py:demo --workdir=/tmp/stage1_demo`):
  python launch.py --config=configs/stage2.py:demo --workdir=/tmp/stage2_demo --config.init_from=/tmp/stage1_demo
Tests use `configs/stage2.py:tiny` after `configs/stage1.py:tiny`.

The variant's stage-1 settings are those of configs/stage1.py with the same name; the model, diffusion, audio and
data.prev_frames / data.audio_context must be those of the stage-1 run (checked at the start). Only the controller
is trained: the stage-1 weights (its EMA weights) are restored, frozen and saved with every stage-2 checkpoint, so
a stage-2 workdir samples and resumes on its own.
"""

import importlib.util
import os

import ml_collections


def _stage1_config(variant: str) -> ml_collections.ConfigDict:
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stage1.py")
  spec = importlib.util.spec_from_file_location("_playmate_stage1_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "demo", "tiny"):
    raise ValueError(f"Unknown variant {variant!r} of configs/stage2.py; use one of: default, demo, tiny.")
  c = _stage1_config(arg)
  with c.unlocked():
    c.stage = 2
    c.init_from = ""                    # the stage-1 workdir (its newest checkpoint) or one checkpoints/<step> folder

    # Emotion controller: transformer blocks over the trunk's output plus an emotion embedding (8 MEAD emotions
    # + null), feeding the Exp-MLP only. Its width and heads are the model's (config.model.dim, num_heads).
    c.emotion = ml_collections.ConfigDict()
    c.emotion.depth = 2
    c.emotion.drop_prob = 0.1           # emotion replaced by the null embedding during training (for CFG)

    c.sample.w_emotion = 1.5            # emotion guidance weight w_e

    c.optim.warmup_steps = 500
    c.train.num_steps = 50_000
    c.train.eval_every = 5000

    if variant == "demo":
      c.optim.lr = 1e-3
      c.optim.warmup_steps = 50
      c.train.num_steps = 1000
      c.train.ckpt_every = 500
      c.train.eval_every = 500
    elif variant == "tiny":
      c.optim.warmup_steps = 5
      c.train.num_steps = 20
      c.train.eval_every = 20
  c.lock()
  return c
