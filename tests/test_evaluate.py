"""pipelines/evaluate.py and its parts: motion metrics, the emotion classifier, the clip evaluation, the CLI.

The metrics are checked where their answer is known (the ground truth against itself, a known shift, an oracle
sampler that returns the truth with a chosen demo emotion); the CLI runs on the tiny stage-1 and stage-2 runs of
tests/conftest.py, where it must give the numbers that training's evaluation logged, and refuses bad arguments
with one sentence.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import jax
import numpy as np
import pytest

from playmate_jax import configlib, motion
from playmate_jax.data import demo, loader
from playmate_jax.errors import UserError
from playmate_jax.train import emotion_classifier as classifier_lib
from playmate_jax.train import evaluate as eval_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEUTRAL = motion.EMOTIONS.index("neutral")


@pytest.fixture(scope="module")
def config():
  return configlib.load_config(os.path.join(ROOT, "configs", "stage2.py") + ":tiny")


@pytest.fixture(scope="module")
def stats(config):
  return loader.dataset_stats(config)


@pytest.fixture(scope="module")
def classifier(config, stats):
  """The classifier of pipelines/evaluate.py, trained on the demo's labelled train clips."""
  return evaluate_module().train_classifier(config, stats)


def evaluate_module():
  spec = importlib.util.spec_from_file_location("evaluate_pipeline", os.path.join(ROOT, "pipelines", "evaluate.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def fields_of(clip: dict) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in motion.unpack_motion(motion.denormalize_motion(clip["motion"],
                                                                                      clip["stats"])).items()}


# ---------------------------------------------------------------- metrics

def test_motion_metrics_of_the_truth_and_of_a_known_error(config):
  clip = loader.load_eval_clips(config, "test", 1, 80)[0]
  true = fields_of(clip)
  same = eval_lib.motion_metrics(true, true, clip["kp"])
  assert same["kp_dist"] == 0.0 and same["pose_dist"] == 0.0
  assert same["mouth_corr"] == pytest.approx(1.0, abs=1e-6)
  assert same["jitter"] == same["jitter_true"] > 0 and same["pose_std"] == same["pose_std_true"] > 0
  rot = np.stack([true[k] for k in ("pitch", "yaw", "roll")], -1)
  assert same["pose_std"] == pytest.approx(float(rot.std(0).mean()), rel=1e-6)

  # A translation by (0.03, 0.04) moves every keypoint by 0.05 and leaves the rest as it was.
  moved = dict(true, t=true["t"] + np.array([0.03, 0.04, 0.0], np.float32))
  m = eval_lib.motion_metrics(moved, true, clip["kp"])
  assert m["kp_dist"] == pytest.approx(0.05, rel=1e-4) and m["pose_dist"] == 0.0
  assert m["jitter"] == pytest.approx(same["jitter"], rel=1e-4)
  # Turning the head by 5 degrees of yaw: pose distance 5/3 (mean over the three angles), mouth untouched.
  turned = dict(true, yaw=true["yaw"] + 5.0)
  m = eval_lib.motion_metrics(turned, true, clip["kp"])
  assert m["pose_dist"] == pytest.approx(5.0 / 3.0, rel=1e-4) and m["kp_dist"] > 0.01
  assert m["mouth_corr"] == pytest.approx(1.0, abs=1e-6)
  # A mouth that moves against the truth correlates -1; a shaking head jitters more.
  flipped = dict(true, exp=true["exp"].copy())
  flipped["exp"][:, motion.LOWER_LIP_KP, 1], flipped["exp"][:, motion.UPPER_LIP_KP, 1] = (
      true["exp"][:, motion.UPPER_LIP_KP, 1], true["exp"][:, motion.LOWER_LIP_KP, 1])
  assert eval_lib.motion_metrics(flipped, true, clip["kp"])["mouth_corr"] == pytest.approx(-1.0, abs=1e-6)
  shaking = dict(true, yaw=true["yaw"] + 3.0 * (-1.0) ** np.arange(len(true["yaw"])))
  assert eval_lib.motion_metrics(shaking, true, clip["kp"])["jitter"] > 2 * same["jitter"]


def test_classifier_recognises_the_demo_emotions(config, stats, classifier):
  """Trained on the train split's ground truth, it recognises the held-out clips' emotions; it is deterministic;
  it does not work without the expression (a constant feature gives one class)."""
  held_out = loader.load_labelled_expressions(config, "test")
  feats = np.stack([classifier_lib.clip_feature(c["exp"], stats.reference_expression(c["speaker_id"]))
                    for c in held_out])
  labels = [c["emotion"] for c in held_out]
  assert len(held_out) >= 10 and classifier.accuracy(feats, labels) >= 0.9
  again = evaluate_module().train_classifier(config, stats)
  np.testing.assert_array_equal(again.weights, classifier.weights)
  assert len(set(classifier.predict(np.zeros_like(feats)).tolist())) == 1
  with pytest.raises(ValueError, match="labels"):
    classifier_lib.train_classifier(feats, [9] * len(feats))


# ---------------------------------------------------------------- evaluate_clips with an oracle sampler

def oracle_sampler(clips: list[dict], null_is_neutral: bool = True):
  """A `BatchSampleFn` that returns each clip's true motion, its demo emotion offset replaced by the requested
  emotion's (null: neutral's, or the clip's own), and whose audio-free samples are still: it knows clips by audio."""
  offsets = demo.emotion_offsets(demo.DemoSpec().seed)
  by_audio = {c["audio"][:4].tobytes(): c for c in clips}

  def sample(audio, identity, key, w_audio, emotion):
    out = np.zeros(audio.shape[:2] + (motion.MOTION_DIM,), np.float32)
    for b in range(len(audio)):
      c = by_audio[audio[b, :4].tobytes()]
      v = np.array(motion.denormalize_motion(c["motion"], c["stats"]))
      wanted = int(emotion[b]) if emotion is not None else NEUTRAL if null_is_neutral else c["emotion"]
      v[:, :motion.EXP_DIM] += offsets[wanted] - offsets[c["emotion"]]
      if w_audio == 0.0:
        v[:] = v[0]
      out[b, :len(v)] = motion.normalize_motion(v, c["stats"])
    return out

  return sample


def test_evaluate_clips_scores_an_oracle(config, stats, classifier):
  clips = [c for c in loader.load_eval_clips(config, "test", 24, 60) if c["emotion"] >= 0][:10]
  references = {c["speaker_id"]: stats.reference_expression(c["speaker_id"]) for c in clips}
  metrics, curves = eval_lib.evaluate_clips(oracle_sampler(clips), clips, jax.random.key(0), w_audio=1.5,
                                            emotion=True, classifier=classifier, references=references, batch_size=4)
  assert metrics["num_labelled_clips"] == 10 and len(curves) == 10
  assert metrics["mouth_corr"] == pytest.approx(1.0, abs=1e-4) and metrics["kp_dist"] < 1e-5
  assert metrics["pose_dist"] < 1e-4 and abs(metrics["mouth_corr_no_audio"]) < 1e-3 and metrics["exp_l1"] < 1e-5
  # The null samples carry neutral's offset: wrong expression (but for the neutral clips), the same mouth.
  assert metrics["exp_l1_no_emotion"] > 1e-4 and metrics["mouth_corr_null"] == pytest.approx(1.0, abs=1e-4)
  assert metrics["emotion_acc"] == metrics["emotion_acc_sweep"] == metrics["classifier_acc_true"] == 1.0
  neutral = np.mean([c["emotion"] == NEUTRAL for c in clips])
  assert metrics["emotion_acc_null"] == pytest.approx(neutral)   # null = neutral offset: right only for neutral clips
  assert metrics["pose_shift_by_emotion"] < 1e-4                 # the oracle never moves the pose
  assert metrics["pose_std_change_by_emotion"] < 1e-4 and metrics["pose_shift_by_seed"] < 1e-4   # nor its noise
  assert set(metrics["pose_by_emotion"]) == set(motion.EMOTIONS) | {"null"}
  confusion = np.asarray(metrics["emotion_confusion"]["sweep"])
  np.testing.assert_array_equal(confusion, np.eye(8) * 10)

  # A stage-1 model (emotion False, no classifier) gets the motion metrics only.
  metrics, _ = eval_lib.evaluate_clips(oracle_sampler(clips, null_is_neutral=False), clips, jax.random.key(0),
                                       w_audio=1.5, batch_size=3)
  assert set(metrics) == MOTION_KEYS and metrics["kp_dist"] < 1e-5
  with pytest.raises(ValueError, match="stage-2"):
    eval_lib.evaluate_clips(oracle_sampler(clips), clips, jax.random.key(0), w_audio=1.5, classifier=classifier,
                            references=references)


# ---------------------------------------------------------------- the CLI on tiny runs: training's numbers

MOTION_KEYS = {"mouth_corr", "mouth_corr_no_audio", "kp_dist", "pose_std", "pose_std_true", "pose_dist", "jitter",
               "jitter_true", "exp_l1"}
STAGE2_KEYS = {"mouth_corr_null", "exp_l1_no_emotion"}
EMOTION_KEYS = {"mouth_corr_sweep", "emotion_acc", "emotion_acc_null", "emotion_acc_sweep", "classifier_acc_true",
                "emotion_chance", "num_labelled_clips", "pose_by_emotion", "pose_shift_by_emotion",
                "pose_shift_by_seed", "pose_std_change_by_emotion", "emotion_confusion"}


def logged_evaluation(workdir) -> dict:
  """The last row of a training run's eval_metrics.jsonl."""
  return [json.loads(line) for line in open(workdir / "eval_metrics.jsonl")][-1]


def test_evaluate_py_gives_the_numbers_training_logged(stage1_run, stage2_run, tmp_path, capsys):
  """Training's evaluation (Trainer.evaluate at the last step) and evaluate.py with its defaults on that step's
  checkpoint sample the same clips from the same seed through one function: the same metrics, to the last bit.
  Another seed gives other numbers, so the equality is the noise's, not an accident of the tiny model."""
  module = evaluate_module()
  for run, stage in ((stage1_run, 1), (stage2_run, 2)):
    out = tmp_path / f"stage{stage}"
    assert module.main(["--checkpoint", str(run), "--out", str(out)]) == 0
    assert "evaluated 1 clips of split 'test'" in capsys.readouterr().out
    metrics, logged = json.load(open(out / "metrics.json")), logged_evaluation(run)
    assert metrics["run"]["step"] == logged.pop("step") == 10 and metrics["run"]["stage"] == stage
    assert set(logged) == (MOTION_KEYS | STAGE2_KEYS if stage == 2 else MOTION_KEYS)
    assert {k: metrics[k] for k in logged} == logged
    assert set(metrics) == set(logged) | {"num_clips", "run"} | (EMOTION_KEYS if stage == 2 else set())
    assert (out / "curves.png").stat().st_size > 0 and (out / "emotion.png").exists() == (stage == 2)

  seed = metrics["run"]["seed"] + 1
  other = module.evaluate_checkpoint(str(stage1_run), seed=seed, out=str(tmp_path / "seed"), progress=False)
  logged = logged_evaluation(stage1_run)
  assert other["mouth_corr"] != logged["mouth_corr"] and other["pose_std"] != logged["pose_std"]


def test_cli_flags(stage1_run, tmp_path, capsys):
  """--num-clips, --max-frames, --batch-size (3 clips in batches of 2) and a config override are honoured."""
  out = tmp_path / "out"
  assert evaluate_module().main(["--checkpoint", str(stage1_run), "--num-clips", "3", "--max-frames", "20",
                                 "--batch-size", "2", "--config.sample.ddim_steps=2", "--out", str(out)]) == 0
  assert "evaluated 3 clips of split 'test'" in capsys.readouterr().out
  metrics = json.load(open(out / "metrics.json"))
  assert metrics["num_clips"] == 3 and metrics["run"]["max_frames"] == 20
  assert all(np.isfinite(metrics[k]) for k in MOTION_KEYS)


# ---------------------------------------------------------------- the CLI refuses bad arguments with one sentence

BAD_ARGUMENTS = [  # (arguments after --checkpoint; {s1} {s2} {tmp}: the tiny runs and a fresh folder), the message
    pytest.param(["{tmp}/nowhere"], "Checkpoint {tmp}/nowhere does not exist", id="missing checkpoint"),
    pytest.param(["{tmp}/no_config"], "No readable checkpoint in {tmp}/no_config", id="checkpoint without config"),
    pytest.param(["{tmp}/no_stats"], "Normalization statistics {tmp}/dataset_stats.json are missing",
                 id="run without its statistics"),
    pytest.param(["{s1}", "--config.data.name=playmate_clips", "--config.data.data_dir={tmp}/data"],
                 "No playmate_clips dataset in {tmp}/data", id="missing dataset"),
    pytest.param(["{s1}", "--num-clips", "0"], "--num-clips 0 must be at least 1", id="no clips"),
    pytest.param(["{s1}", "--num-clips", "1000"], "--num-clips 1000 is more than the 24 clips of split 'test'",
                 id="more clips than the split"),
    pytest.param(["{s1}", "--max-frames", "0"], "--max-frames 0 must be at least 1", id="no frames"),
    pytest.param(["{s1}", "--batch-size", "0"], "--batch-size 0 must be at least 1", id="empty batches"),
    pytest.param(["{s1}", "--split", "validation"], "has no split 'validation'; pass --split with one of test, train",
                 id="unknown split"),
    pytest.param(["{s1}", "--config.stage=2"], "--config.stage=2 does not apply: {s1} holds a stage-1 model",
                 id="stage-1 run as stage 2"),
    pytest.param(["{s1}", "--config.sample.w_emotion=2.0"], "--config.sample.w_emotion does not apply: {s1} holds a "
                 "stage-1 model, which has no emotion controller", id="emotion of a stage-1 run"),
    pytest.param(["{s2}", "--config.stage=1"], "--config.stage=1 does not apply: {s2} holds a stage-2 model",
                 id="stage-2 run as stage 1"),
    pytest.param(["{s1}", "--config.sample.nope=1"], "Unknown config key sample.nope", id="unknown config key"),
    pytest.param(["{s1}", "--out", "{tmp}/missing/out"], "Output folder {tmp}/missing does not exist",
                 id="output in a missing folder"),
    pytest.param(["{s1}", "--out", "{tmp}/file"], "--out {tmp}/file is a file", id="output is a file"),
]


@pytest.mark.parametrize("args, message", BAD_ARGUMENTS)
def test_cli_refuses_bad_arguments(stage1_run, stage2_run, tmp_path, capsys, args, message):
  """Exit status 2, one line `error: <sentence naming the flag or file>` (no traceback), and nothing written."""
  names = {"s1": stage1_run, "s2": stage2_run, "tmp": tmp_path}
  args, message = [a.format(**names) for a in args], message.format(**names)
  if args[0].endswith("no_config"):   # a run's checkpoints without their config
    shutil.copytree(stage1_run / "checkpoints", args[0], ignore=lambda _, files: ["config"] if "state" in files else [])
    shutil.copy(stage1_run / "dataset_stats.json", tmp_path)   # the run's statistics are there: only configs lack
  if args[0].endswith("no_stats"):    # a run's checkpoints without the statistics beside them: not "unreadable"
    shutil.copytree(stage1_run / "checkpoints", args[0])
  (tmp_path / "file").write_text("not a folder")
  if "--out" not in args:
    args += ["--out", str(tmp_path / "out")]
  before = sorted(p for p in tmp_path.rglob("*"))
  assert evaluate_module().main(["--checkpoint", *args]) == 2
  err = capsys.readouterr().err
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err, err
  assert message in errors[0], errors[0]
  assert sorted(p for p in tmp_path.rglob("*")) == before and (tmp_path / "file").read_text() == "not a folder"
