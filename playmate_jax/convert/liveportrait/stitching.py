"""LivePortrait's stitching_retargeting_module.pth -> params of renderer.stitching.StitchingRetargeting.

The file holds three state dicts (retarget_shoulder -> .stitching, retarget_mouth -> .lip, retarget_eye ->
.eye), each an `nn.Sequential` named `mlp` whose Linear layers sit at the even indices (ReLUs between them
have no weights). Keys arrive with the DDP `module.` prefix already stripped.
"""

import itertools
from typing import Any, Mapping

from playmate_jax.convert.common import SourceDict, take_linear
from playmate_jax.errors import UserError
from playmate_jax.renderer.stitching import PARTS, mlp_sizes


def convert_mlp(source: SourceDict, mlp_cfg: Mapping[str, Any], part: str = "mlp") -> dict[str, Any]:
  """Params of one RetargetMLP (sizes from its {input_size, hidden_sizes, output_size}); calls finish()."""
  input_size, hidden, output_size = mlp_sizes(mlp_cfg, part)
  sizes = [input_size, *hidden, output_size]
  layers = {}
  for i, (cin, cout) in enumerate(itertools.pairwise(sizes)):
    layers[i] = take_linear(source, f"mlp.{2 * i}", cin, cout)
  source.finish()
  return {"layers": layers}


def convert(sources: Mapping[str, SourceDict], cfg: Mapping[str, Any]) -> dict[str, Any]:
  """Params of StitchingRetargeting(cfg); `sources` maps 'stitching', 'lip', 'eye' to their state dicts."""
  missing = [part for part in PARTS if part not in sources]
  if missing:
    raise UserError(f"the retargeting weights lack the {missing[0]!r} network; the file should hold "
                    "retarget_shoulder, retarget_mouth and retarget_eye.")
  return {part: convert_mlp(sources[part], cfg.get(part), part) for part in PARTS}
