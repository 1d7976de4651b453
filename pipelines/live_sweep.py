"""The live model's trade-off on the demo: held-out mouth correlation and jitter against look-ahead and window length.

  python pipelines/live_sweep.py --root workdirs/live_sweep [--lookaheads 0,2,4,8] [--windows 8,16]
                                 [--plot live_sweep.png]

Trains configs/stage1.py:demo_live once per (window, look-ahead) pair (window 8 at every look-ahead, every window at
look-ahead 2) and the offline demo (configs/stage1.py:demo) for reference, each in ROOT/NAME with `launch.py`'s own
loop (a run already finished is not trained again; an interrupted one resumes), then reads each run's last held-out
evaluation (eval_metrics.jsonl) and writes ROOT/sweep.json and the plot. Each run is its config's whole demo training
(README gives the sweep's measured figures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from playmate_jax import cli, configlib  # noqa: E402
from playmate_jax.errors import UserError  # noqa: E402


def runs(lookaheads: list[int], windows: list[int]) -> list[dict]:
  """The runs of the sweep: name, config, overrides, window, look-ahead (None: offline)."""
  out = [dict(name="offline", config="configs/stage1.py:demo", overrides=[], window=40, lookahead=None)]
  pairs = [(8, a) for a in lookaheads] + [(w, 2) for w in windows if w != 8]
  for w, a in pairs:
    out.append(dict(name=f"live_L{w}_A{a}", config="configs/stage1.py:demo_live", window=w, lookahead=a,
                    overrides=[f"--config.data.window={w}", f"--config.model.audio_lookahead={a}"]))
  return out


def last_eval(workdir: str) -> dict | None:
  path = os.path.join(workdir, "eval_metrics.jsonl")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return rows[-1] if rows else None


def train(run: dict, root: str) -> dict:
  workdir = os.path.join(root, run["name"])
  done = last_eval(workdir)
  steps = configlib.load_config(os.path.join(ROOT, run["config"])).train.num_steps   # what a finished run reached
  if done is None or done.get("step") != steps:
    cmd = [sys.executable, os.path.join(ROOT, "launch.py"), f"--config={os.path.join(ROOT, run['config'])}",
           f"--workdir={workdir}", *run["overrides"]]
    print(" ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
      raise UserError(f"Training {run['name']} failed (see its output above); fix it and run the sweep again "
                      "(finished runs are kept).")
    done = last_eval(workdir)
  return dict(run, mouth_corr=done["mouth_corr"], jitter=done["jitter"], jitter_true=done["jitter_true"],
              pose_std=done["pose_std"], step=done["step"])


def plot(results: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  offline = next(r for r in results if r["lookahead"] is None)
  by_a = sorted((r for r in results if r["lookahead"] is not None and r["window"] == 8), key=lambda r: r["lookahead"])
  by_w = sorted((r for r in results if r["lookahead"] == 2), key=lambda r: r["window"])
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for ax, rows, x, label in ((axes[0], by_a, "lookahead", "look-ahead (frames; window 8)"),
                             (axes[1], by_w, "window", "window (frames; look-ahead 2)")):
    ax.plot([r[x] for r in rows], [r["mouth_corr"] for r in rows], "o-", label="live mouth_corr")
    ax.axhline(offline["mouth_corr"], color="gray", ls="--", label=f"offline (window 40) {offline['mouth_corr']:.3f}")
    ax.set_xlabel(label)
    ax.set_ylabel("held-out mouth_corr")
    ax.set_ylim(min(0.8, min(r["mouth_corr"] for r in rows) - 0.02), 1.0)   # from 0.8: differences at their scale
    twin = ax.twinx()
    twin.plot([r[x] for r in rows], [r["jitter"] for r in rows], "s:", color="tab:red", label="jitter")
    twin.axhline(offline["jitter"], color="tab:red", ls="--", lw=0.8)
    twin.set_ylabel("jitter (keypoints / frame^2)", color="tab:red")
    twin.set_ylim(0, 1.3 * max(r["jitter"] for r in rows))
    ax.legend(loc="lower right", fontsize=8)
  fig.suptitle("Live model on the demo: mouth correlation and jitter (dashed: the offline model)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--root", required=True, help="folder for the runs and sweep.json")
  p.add_argument("--lookaheads", default="0,2,4,8")
  p.add_argument("--windows", default="8,16")
  p.add_argument("--plot", default=None, help="the plot (default ROOT/sweep.png)")
  args = p.parse_args(argv)

  def run():
    os.makedirs(args.root, exist_ok=True)
    results = [train(r, args.root) for r in runs([int(a) for a in args.lookaheads.split(",")],
                                                  [int(w) for w in args.windows.split(",")])]
    cli.write_text(os.path.join(args.root, "sweep.json"), json.dumps(results, indent=1))
    plot(results, args.plot or os.path.join(args.root, "sweep.png"))
    for r in results:
      print(f"{r['name']:>14}: mouth_corr {r['mouth_corr']:.3f}, jitter {r['jitter']:.4f} (truth "
            f"{r['jitter_true']:.4f}), pose_std {r['pose_std']:.2f}")

  return cli.run(run, compile_cache=False)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
