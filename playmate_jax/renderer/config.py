"""Renderer sizes: LivePortrait's `model_params` (names and nesting of its released models.yaml).

`RELEASED_MODEL_PARAMS` are the sizes of the released checkpoints (the motion extractor's ConvNeXt-V2 `tiny`
depths and dims are implied by `backbone`); `TINY_MODEL_PARAMS` are consistent reduced sizes for fast tests
and demos (any crop size divisible by 32 works with them, e.g. 64). `load_models_yaml` reads a models.yaml.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from playmate_jax.errors import UserError

RELEASED_MODEL_PARAMS: dict[str, Any] = {
    "appearance_feature_extractor_params": {
        "image_channel": 3, "block_expansion": 64, "num_down_blocks": 2, "max_features": 512,
        "reshape_channel": 32, "reshape_depth": 16, "num_resblocks": 6,
    },
    "motion_extractor_params": {"num_kp": 21, "backbone": "convnextv2_tiny"},
    "warping_module_params": {
        "num_kp": 21, "block_expansion": 64, "max_features": 512, "num_down_blocks": 2, "reshape_channel": 32,
        "estimate_occlusion_map": True,
        "dense_motion_params": {"block_expansion": 32, "max_features": 1024, "num_blocks": 5, "reshape_depth": 16,
                                "compress": 4},
    },
    "spade_generator_params": {"upscale": 2, "block_expansion": 64, "max_features": 512, "num_down_blocks": 2},
    "stitching_retargeting_module_params": {
        "stitching": {"input_size": 126, "hidden_sizes": [128, 128, 64], "output_size": 65},
        "lip": {"input_size": 65, "hidden_sizes": [128, 128, 64], "output_size": 63},
        "eye": {"input_size": 66, "hidden_sizes": [256, 256, 128, 128, 64], "output_size": 63},
    },
}

TINY_MODEL_PARAMS: dict[str, Any] = {
    "appearance_feature_extractor_params": {
        "image_channel": 3, "block_expansion": 8, "num_down_blocks": 2, "max_features": 16,
        "reshape_channel": 4, "reshape_depth": 4, "num_resblocks": 1,
    },
    "motion_extractor_params": {"num_kp": 21, "backbone": "convnextv2_tiny", "depths": [1, 1, 1, 1],
                                "dims": [8, 16, 32, 64]},
    "warping_module_params": {
        "num_kp": 21, "block_expansion": 4, "max_features": 16, "num_down_blocks": 2, "reshape_channel": 4,
        "estimate_occlusion_map": True,
        "dense_motion_params": {"block_expansion": 4, "max_features": 16, "num_blocks": 2, "reshape_depth": 4,
                                "compress": 2},
    },
    "spade_generator_params": {"upscale": 2, "block_expansion": 4, "max_features": 16, "num_down_blocks": 2},
    # The MLPs' input and output sizes are fixed by the 21 keypoints; only the hidden sizes shrink.
    "stitching_retargeting_module_params": {
        "stitching": {"input_size": 126, "hidden_sizes": [16], "output_size": 65},
        "lip": {"input_size": 65, "hidden_sizes": [16], "output_size": 63},
        "eye": {"input_size": 66, "hidden_sizes": [16], "output_size": 63},
    },
}


def load_models_yaml(path: str | os.PathLike) -> dict[str, Any]:
  """`model_params` of a LivePortrait models.yaml (at the top level or under `model_params`); UserError
  naming the file if it is unreadable or lacks them."""
  path = os.fspath(path)
  try:
    with open(path) as f:
      data = yaml.safe_load(f)
  except OSError as e:
    raise UserError(f"{path} could not be read ({e.strerror}); pass LivePortrait's models.yaml.") from None
  except yaml.YAMLError:
    raise UserError(f"{path} is not valid YAML; pass LivePortrait's models.yaml.") from None
  params = data.get("model_params", data) if isinstance(data, dict) else None
  missing = [k for k in RELEASED_MODEL_PARAMS if not isinstance(params, dict) or k not in params]
  if missing:
    raise UserError(f"{path} has no model_params.{missing[0]}; pass LivePortrait's models.yaml "
                    "(src/config/models.yaml in its repository).")
  return params
