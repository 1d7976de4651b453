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
  stage1_variants = ("default", "demo", "tiny", "live", "demo_live", "tiny_live")
  if variant not in stage1_variants:
    raise ValueError(f"Unknown variant {variant!r} of configs/stage2.py; use one of: {', '.join(stage1_variants)}.")
  c = _stage1_config(arg)
  variant = {"live": "default"}.get(variant, variant.removesuffix("_live"))
  with c.unlocked():
    c.stage = 2
    c.init_from = ""                    # the stage-1 workdir (its newest checkpoint) or one checkpoints/<step> folder

    # Emotion controller: transformer blocks over the trunk's output plus an emotion embedding (8 MEAD emotions
    # + null), feeding the Exp-MLP only. Its width and heads are the model's (config.model.dim, num_heads).
    c.emotion = ml_collections.ConfigDict()
    c.emotion.depth = 2
    c.emotion.drop_prob = 0.1           # emotion replaced by the null embedding during training (for CFG)

    c.sample.w_emotion = 1.5            # emotion guidance weight w_e
    # Stochastic (DDPM-like) steps: deterministic DDIM keeps whatever expression the initial noise happens to
    # suggest (the model reads a window's constant emotion offset from x_t early), so the label's guidance is lost;
    # fresh noise at each step lets it add up (README, "Stage 2: emotion": 0.89 of the demo's swept emotions
    # recognised at eta 0, 0.98 at eta 1).
    c.sample.eta = 1.0

    # What the controller is trained to impose. A training clip's own frames carry its emotion, a user's portrait
    # usually does not: the source's expression is the speaker's reference expression from the dataset statistics
    # (its neutral clips' mean, else all its frames'), "clip" being stage 1's choice of the source frame's own.
    c.data.source_expression = "reference"
    # Share of training windows made sequence starts (previous motion = the source repeated, as the sampler gives
    # the first window). Not needed on the demo (README, "Stage 2: emotion").
    c.data.start_prob = 0.0

    # pipelines/evaluate.py's emotion classifier (softmax regression on per-clip expression features), trained on
    # the labelled clips of the train split.
    c.eval.classifier = ml_collections.ConfigDict()
    c.eval.classifier.steps = 500       # full-batch gradient steps
    c.eval.classifier.lr = 0.5
    c.eval.classifier.l2 = 1e-3         # L2 penalty on the weights
    c.eval.classifier.max_clips = 10_000   # labelled train clips used at most (the first, record order)

    c.optim.warmup_steps = 500
    c.train.num_steps = 50_000
    c.train.eval_every = 5000

    if variant == "demo":
      # The controller has learned what it will on the demo by 500 steps; longer training does no better.
      c.optim.lr = 1e-3
      c.optim.warmup_steps = 50
      c.train.num_steps = 500
      c.train.ckpt_every = 500
      c.train.eval_every = 500
    elif variant == "tiny":
      c.optim.warmup_steps = 5
      c.train.num_steps = 20
      c.train.eval_every = 20
  c.lock()
  return c
