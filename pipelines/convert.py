"""Convert released PyTorch weights into this project's format, with no PyTorch installed.

  python pipelines/convert.py liveportrait --src DIR --dst DIR [--models-yaml FILE]
      DIR is LivePortrait's released `liveportrait/` folder (base_models/*.pth, retargeting_models/*.pth);
      the result is what `--renderer DIR` of reenact.py and animate.py loads.
  python pipelines/convert.py wav2vec2 --src DIR --dst DIR
      DIR is a Hugging Face model folder (config.json plus model.safetensors or pytorch_model.bin) of wav2vec2 or
      HuBERT, e.g. facebook/wav2vec2-base-960h; use the result with --config.audio.encoder=wav2vec2
      --config.audio.weights=DIR.

Conversion is strict: every source tensor is used exactly once and every shape is checked, so a checkpoint of
another model or size fails with one sentence naming the file and the tensor. --dst is checked before the work (a
new or empty folder, or an earlier conversion, which is replaced) and written whole: interrupted, it is left as it
was.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from playmate_jax import cli  # noqa: E402


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="kind", required=True)
  lp = sub.add_parser("liveportrait", help="LivePortrait's renderer (F, M, W, G, stitching/retargeting)")
  lp.add_argument("--src", required=True, help="the released liveportrait/ folder")
  lp.add_argument("--dst", required=True, help="output folder")
  lp.add_argument("--models-yaml", default=None, help="LivePortrait's models.yaml (default: beside --src, "
                                                      "else the released sizes)")
  w2v = sub.add_parser("wav2vec2", help="wav2vec2 or HuBERT speech encoder (HF model folder)")
  w2v.add_argument("--src", required=True, help="HF folder with config.json and the weights")
  w2v.add_argument("--dst", required=True, help="output folder")
  args = parser.parse_args(argv)

  def run():
    if args.kind == "liveportrait":
      from playmate_jax.convert.liveportrait import convert_dir
      convert_dir(args.src, args.dst, args.models_yaml)
    else:
      from playmate_jax.convert.wav2vec2 import convert_dir
      convert_dir(args.src, args.dst)
    print(f"Converted {args.kind} weights from {args.src} into {args.dst}.")

  return cli.run(run)


def console() -> None:
  """The installed command (pyproject's [project.scripts])."""
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  console()
