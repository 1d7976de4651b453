"""The README's demo commands train models that measurably learn what the demo data holds: stage 1 the
audio-to-mouth rule; stage 2, on top of it, the emotion labels, without moving the head pose or the lips.

These are the slowest tests (a few minutes on 2 CPU cores): they run exactly what a new user runs, and share one
stage-1 run.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from playmate_jax.motion import EMOTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
# Every held-out clip (24, 3 per emotion, 21 of them labelled), its first 100 frames, sampled 24 at a time.
EVAL_ARGS = ("--num-clips", "24", "--max-frames", "100", "--batch-size", "24")


def run(*args: str, timeout: int) -> subprocess.CompletedProcess:
  result = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def stage1_demo(tmp_path_factory):
  """The README's stage-1 demo run (configs/stage1.py:demo through launch.py)."""
  workdir = tmp_path_factory.mktemp("demo_stage1")
  run("launch.py", "--config=configs/stage1.py:demo", f"--workdir={workdir}", timeout=1500)
  return workdir


def evaluate(workdir, out) -> dict:
  run("pipelines/evaluate.py", "--checkpoint", str(workdir), "--out", str(out), *EVAL_ARGS, timeout=600)
  return json.load(open(out / "metrics.json"))


@pytest.mark.slow
def test_demo_learns_mouth_from_audio(stage1_demo):
  rows = [json.loads(line) for line in open(stage1_demo / "eval_metrics.jsonl")]
  final = rows[-1]
  assert final["step"] == 2000
  assert final["mouth_corr"] >= 0.8, rows                 # sampled mouth follows the held-out audio
  assert abs(final["mouth_corr_no_audio"]) < 0.2, rows    # and only because of the audio
  assert 0.3 < final["pose_std"] / final["pose_std_true"] < 3.0, rows  # head moves about as much as in the data
  assert rows[0]["mouth_corr"] < final["mouth_corr"]       # it improved with training
  assert (stage1_demo / "eval" / "step_00002000.png").exists()


@pytest.mark.slow
def test_demo_stage2_learns_emotion(stage1_demo, tmp_path):
  """configs/stage2.py:demo after stage 1, then pipelines/evaluate.py on both runs: the label sets the emotion that
  the motion-space classifier recognises, dropping it gives about chance, and the lips and the head pose stay."""
  stage2 = tmp_path / "stage2"
  run("launch.py", "--config=configs/stage2.py:demo", f"--workdir={stage2}", f"--config.init_from={stage1_demo}",
      timeout=900)
  one, two = evaluate(stage1_demo, tmp_path / "eval1"), evaluate(stage2, tmp_path / "eval2")
  summary = {k: v for k, v in two.items() if isinstance(v, float)}
  assert two["run"]["w_emotion"] == 1.5 and two["num_labelled_clips"] >= 15
  assert two["classifier_acc_true"] >= 0.95, summary      # the yardstick reads the ground truth's emotions
  assert two["emotion_acc"] >= 0.9, summary               # sampled with its label, a clip shows that emotion
  assert two["emotion_acc_sweep"] >= 0.9, summary         # and so does every clip under every emotion
  assert two["emotion_acc_null"] <= 0.3, summary          # without the label: about chance (1/8)
  assert abs(two["mouth_corr"] - one["mouth_corr"]) <= 0.05, (one["mouth_corr"], summary)
  assert two["mouth_corr"] >= 0.8 and two["mouth_corr_sweep"] >= 0.8, summary
  # The head pose, over the same clips and noise, hardly moves with the requested emotion: its spread not at all, its
  # mean by less than 0.6 of the spread (the frozen stage-1 trunk reads the generated expression when it predicts
  # the pose; the controller's output never reaches the Pose-MLP).
  pose = two["pose_by_emotion"]
  limit = 0.6 * np.asarray(pose["null"]["std"])
  for name in EMOTIONS:
    assert np.all(np.abs(np.subtract(pose[name]["mean"], pose["null"]["mean"])) <= limit), (name, pose)
    assert np.all(np.abs(np.divide(pose[name]["std"], pose["null"]["std"]) - 1.0) <= 0.1), (name, pose)
  assert (tmp_path / "eval2" / "emotion.png").exists() and (tmp_path / "eval2" / "curves.png").exists()
