"""Stage 1: the audio-conditioned motion DiT.

Run (paper-scale model on your dataset):
  python launch.py --config=configs/stage1.py --workdir=/tmp/stage1 --config.data.data_dir=DATA_DIR
Demo (built-in synthetic dataset, a few minutes on a CPU, no downloads):
  python launch.py --config=configs/stage1.py:demo --workdir=/tmp/stage1_demo
Tests use `configs/stage1.py:tiny`.
Live (speech in as it is spoken: short windows, audio seen at most model.audio_lookahead frames ahead):
  python launch.py --config=configs/stage1.py:live --workdir=/tmp/stage1_live --config.data.data_dir=DATA_DIR
  (and :demo_live, :tiny_live); `pipelines/serve.py` then serves /v1/live from it.

Any value can be overridden on the command line, e.g. `--config.train.num_steps=2000`.
"""

import ml_collections

VARIANTS = ("default", "demo", "tiny", "live", "demo_live", "tiny_live")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r} of configs/stage1.py; use one of: {', '.join(VARIANTS)}.")
  live = variant.endswith("live")
  variant = {"live": "default"}.get(variant, variant.removesuffix("_live"))
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.stage = 1
  c.seed = 0

  # Data: a `playmate_clips` TFDS dataset (ArrayRecord) in data_dir, or the built-in demo dataset.
  c.data = ml_collections.ConfigDict()
  c.data.name = "playmate_clips"      # "playmate_clips" (preprocessed videos) or "demo" (built-in synthetic)
  c.data.data_dir = ""                # the TFDS dataset; for "demo", "" means ~/.cache/playmate_jax/demo/...
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.window = 80                  # L: frames generated per window (25 fps)
  c.data.prev_frames = 10             # K: previous frames of motion conditioning each window
  c.data.audio_context = 2            # audio frames of context on each side of the window
  c.data.batch_size = 256             # global batch, over all processes and devices
  c.data.worker_count = 12            # Grain worker processes per host (0: in the main process); a resumed run
                                      # must keep its count (Grain's saved iterator state depends on it)
  c.data.worker_buffer_size = 2
  c.data.read_threads = 4             # threads reading and windowing clips in each worker (Grain ReadOptions)
  c.data.read_buffer = 64             # clips prefetched by those threads
  c.data.shuffle_seed = 0
  # Independent random windows cut from each clip read, side by side in the batch (as repeated augmentation puts
  # several views of one image in a batch): reading and decoding a clip costs the loader most of a window's time,
  # so k windows per read give the loader about k times the rate (BENCHMARKS.md), with batches of B/k clips.
  # 1: one window per clip read.
  c.data.windows_per_clip = 4
  # The source (identity condition, and previous motion before a clip's start) is a frame of the clip: its pose,
  # and with "clip" its own expression, with "reference" the speaker's reference expression from the dataset
  # statistics (stage 2's choice, configs/stage2.py).
  c.data.source_expression = "clip"
  c.data.start_prob = 0.0             # share of training windows made sequence starts (previous motion = the source)

  # Audio features: the encoder that produced the dataset's `audio/features`.
  c.audio = ml_collections.ConfigDict()
  c.audio.encoder = "mel"             # "mel" (log-mel front end, librosa) or "wav2vec2" (wav2vec2 / HuBERT)
  c.audio.sample_rate = 16000
  c.audio.fps = 25
  c.audio.n_mels = 80                 # mel only, as are n_fft, fmin, fmax
  c.audio.n_fft = 1024
  c.audio.fmin = 55.0
  c.audio.fmax = 7600.0
  # wav2vec2 / HuBERT only: --config.audio.encoder=wav2vec2 --config.audio.weights=DIR, where DIR was written by
  # `python pipelines/convert.py wav2vec2 --src HF_MODEL_DIR --dst DIR`.
  c.audio.weights = ""                # the converted folder
  c.audio.layers = "-1"               # hidden states used, comma-separated: 0 = encoder input, i = layer i, -1 = last
  c.audio.layer_reduce = "single"     # "single" (one index) or "mean" (plain average of the listed ones)
  c.audio.chunk_seconds = 20.0        # long audio runs in windows keeping this much each ...
  c.audio.overlap_seconds = 2.0       # ... with this much context on each side
  c.audio.chunk_batch = 8             # windows per compiled call (shorter audio runs its windows one at a time)
  c.audio.dtype = "float32"           # compute dtype of the encoder: "float32" (HF's numbers) or "bfloat16"

  # Motion DiT (Conformer trunk, adaLN timestep conditioning, Pose-MLP and Exp-MLP heads).
  c.model = ml_collections.ConfigDict()
  c.model.dim = 512
  c.model.depth = 12
  c.model.num_heads = 8
  c.model.mlp_ratio = 4.0
  c.model.conv_kernel = 7             # depthwise temporal convolution of each Conformer block
  c.model.head_hidden = 512           # width of the Pose-MLP and Exp-MLP
  c.model.dropout = 0.1
  c.model.audio_drop_prob = 0.1       # audio condition replaced by a learned null during training (for CFG)
  c.model.prev_noise_std = 0.05       # noise added to the previous-motion condition during training
  c.model.dtype = "bfloat16"          # compute dtype; parameters stay float32
  c.model.attention = "auto"          # "auto" (cuDNN's fused kernel on a GPU in bf16/fp16, else "xla"), "xla", "cudnn"
  c.model.audio_lookahead = -1        # -1: offline (a window's whole audio); A >= 0: live, each frame sees A frames ahead
  c.model.residual_dtype = "float32"  # what the residual stream between sub-layers is stored in: float32 or bfloat16
  c.model.dropout_bits = 32           # 8: four dropout-mask elements per 32-bit random number; 32: one each
  c.model.remat = False               # recompute each block's activations in the backward pass (less memory)

  # Diffusion: DDPM training (noise prediction), DDIM sampling with classifier-free guidance.
  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.num_timesteps = 1000
  c.diffusion.schedule = "cosine"     # "cosine" or "linear"
  c.diffusion.beta_start = 1e-4       # linear schedule only
  c.diffusion.beta_end = 0.02         # linear schedule only

  c.sample = ml_collections.ConfigDict()
  c.sample.ddim_steps = 25
  c.sample.eta = 0.0
  c.sample.w_audio = 1.5              # audio guidance weight w_a
  c.sample.clip_x0 = 6.0              # clip each DDIM x0 estimate to +-this (normalized units; 0: off)
  c.sample.windows_per_call = 8       # windows sampled per device call (one compiled shape; no host round trip
                                      # between them); 1: one call per window

  # Optimizer: AdamW, linear warm-up then cosine decay, global-norm clipping, EMA of the weights.
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-4
  c.optim.end_lr_factor = 0.1
  c.optim.warmup_steps = 2000
  c.optim.weight_decay = 0.01
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.clip_norm = 1.0
  c.optim.ema_decay = 0.999
  c.optim.flatten = False             # clipping and Adam on all gradients as one vector (fewer, larger kernels);
                                      # a resumed run keeps the setting its checkpoints were written with

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 200_000
  c.train.log_every = 100
  c.train.ckpt_every = 5000
  c.train.keep_checkpoints = 3
  c.train.eval_every = 10_000
  c.train.progress_bar = True

  c.eval = ml_collections.ConfigDict()
  c.eval.num_clips = 16               # held-out clips sampled at each evaluation
  c.eval.max_frames = 500             # frames sampled per clip (from its start)
  c.eval.plot = True

  if variant == "demo":
    # Sized to learn the demo's audio-to-mouth rule in a few minutes on 2 CPU cores.
    c.data.name = "demo"
    c.data.window = 40
    c.data.prev_frames = 8
    c.data.batch_size = 16
    c.data.worker_count = 0
    c.data.windows_per_clip = 1       # small batches: one window per clip (the main process reads fast enough)
    c.model.dim = 96
    c.model.depth = 3
    c.model.num_heads = 4
    c.model.head_hidden = 96
    c.model.dropout = 0.0
    c.model.dtype = "float32"
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.ema_decay = 0.99
    c.train.num_steps = 2000
    c.train.log_every = 50
    c.train.ckpt_every = 500
    c.train.eval_every = 500
    c.eval.num_clips = 8
    c.eval.max_frames = 250
  elif variant == "tiny":
    c.data.name = "demo"
    c.data.window = 16
    c.data.prev_frames = 4
    c.data.batch_size = 8
    c.data.worker_count = 0
    c.data.windows_per_clip = 1
    c.model.dim = 32
    c.model.depth = 2
    c.model.num_heads = 2
    c.model.head_hidden = 32
    c.model.conv_kernel = 3
    c.model.dropout = 0.0
    c.model.dtype = "float32"
    c.diffusion.num_timesteps = 100
    c.sample.ddim_steps = 5
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 5
    c.optim.ema_decay = 0.9
    c.train.num_steps = 20
    c.train.log_every = 5
    c.train.ckpt_every = 10
    c.train.eval_every = 20
    c.train.progress_bar = False
    c.eval.num_clips = 2
    c.eval.max_frames = 60
  if live:
    # Live: a window is 8 frames (0.32 s), and frame j of it sees audio up to frame j + audio_lookahead; the audio
    # context carried with each window (8 frames) bounds the look-ahead one may set.
    c.variant = arg
    c.data.window = 8
    c.data.audio_context = 8
    c.model.audio_lookahead = 2
    if variant == "demo":
      c.data.batch_size = 64          # 5x shorter windows: 4x the windows per step (at 16, mouth_corr 0.90 vs 0.95)
  c.lock()
  return c
