"""Training entry point: python launch.py --config=configs/stage1.py --workdir=DIR (see pipelines/train.py)."""

from pipelines.train import console, main  # noqa: F401  (main: for callers that pass argv)

if __name__ == "__main__":
  console()
