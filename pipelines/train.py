"""Training: the loop every config reuses (`launch.py` at the repository's root runs this).

  python launch.py --config=configs/stage1.py[:demo|:tiny] --workdir=DIR [--config.KEY=VALUE ...]
  python launch.py --config=configs/stage2.py[:demo|:tiny] --workdir=DIR2 --config.init_from=DIR [...]

Stage 2 trains the emotion controller on the frozen stage-1 model of DIR (its newest checkpoint). Rerunning the
same command resumes from the newest checkpoint in its --workdir.
Several processes (one per host, or per GPU): give each the same --coordinator_address and --num_processes and its
own --process_id, or pass --distributed under a cluster manager JAX detects by itself (Slurm, Open MPI, Kubernetes).
"""

from __future__ import annotations

import argparse
import sys

from playmate_jax import cli


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="configs/NAME.py or configs/NAME.py:variant")
  parser.add_argument("--workdir", required=True, help="checkpoints, metrics and plots go here; reruns resume")
  parser.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() from the cluster env")
  parser.add_argument("--coordinator_address", default=None, help="host:port of process 0 (multi-process runs)")
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--log_level", default="INFO")
  return parser.parse_known_args(argv)  # the rest: --config.KEY=VALUE overrides


def main(argv: list[str]) -> int:
  args, overrides = parse_args(argv)
  cli.setup_logging(args.log_level)

  def train():
    import jax
    if args.coordinator_address or args.distributed:
      jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    from playmate_jax import configlib
    from playmate_jax.train.trainer import Trainer
    config = configlib.apply_overrides(configlib.load_config(args.config), configlib.parse_overrides(overrides))
    Trainer(config, args.workdir).run()

  return cli.run(train, oom_fix="lower --config.data.batch_size (the global batch), or add "
                 "--config.model.remat=true (recompute activations in the backward pass)")


def console() -> None:
  """The installed command (pyproject's [project.scripts])."""
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  console()
