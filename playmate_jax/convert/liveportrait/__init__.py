"""LivePortrait's released PyTorch weights -> one converted-weights folder for `playmate_jax.renderer`.

The released layout (HF `KwaiVGI/LivePortrait`, folder `liveportrait/`):

    base_models/appearance_feature_extractor.pth   F
    base_models/motion_extractor.pth               M (keys `detector.*`)
    base_models/warping_module.pth                 W
    base_models/spade_generator.pth                G
    retargeting_models/stitching_retargeting_module.pth
        {retarget_shoulder, retarget_mouth, retarget_eye}: the stitching, lip and eye MLPs (DDP `module.` keys)

Sizes come from `models.yaml` (`model_params`, LivePortrait's own config file; `--models-yaml`), else from a
`models.yaml` beside the weights, else the released sizes. Each component converter takes every source key
exactly once and checks every shape; the result must cover every parameter of the renderer.
"""

import os
from typing import Any, Mapping

from playmate_jax import shapes
from playmate_jax.convert import common
from playmate_jax.convert.liveportrait import appearance, motion_extractor, spade, stitching, warping
from playmate_jax.convert.torch_io import load_torch_file
from playmate_jax.errors import UserError
from playmate_jax.renderer.config import RELEASED_MODEL_PARAMS, load_models_yaml
from playmate_jax.renderer.networks import abstract_params  # the layout the renderer loads

KIND = "liveportrait"
BASE_FILES = {  # renderer component -> (file, converter)
    "appearance_feature_extractor": ("base_models/appearance_feature_extractor.pth", appearance.convert),
    "motion_extractor": ("base_models/motion_extractor.pth", motion_extractor.convert),
    "warping_module": ("base_models/warping_module.pth", warping.convert),
    "spade_generator": ("base_models/spade_generator.pth", spade.convert),
}
RETARGETING_FILE = "retargeting_models/stitching_retargeting_module.pth"
RETARGETING_PARTS = {"stitching": "retarget_shoulder", "lip": "retarget_mouth", "eye": "retarget_eye"}
DDP_PREFIX = "module."


def model_params_for(src: str, models_yaml: str | None) -> dict[str, Any]:
  """--models-yaml, else models.yaml beside the weights, else the released sizes."""
  if models_yaml:
    return load_models_yaml(models_yaml)
  beside = os.path.join(src, "models.yaml")
  if os.path.isfile(beside):
    return load_models_yaml(beside)
  return dict(RELEASED_MODEL_PARAMS)


def convert_state_dicts(base: Mapping[str, Mapping], retargeting: Mapping[str, Mapping],
                        model_params: Mapping[str, Any], src: str = "") -> dict[str, Any]:
  """Converted params from already-loaded state dicts (base: component -> state dict; retargeting: as saved)."""
  params: dict[str, Any] = {}
  for name, (file, convert) in BASE_FILES.items():
    source = common.SourceDict(base[name], os.path.join(src, file), strip_prefixes=(DDP_PREFIX,))
    params[name] = convert(source, model_params[f"{name}_params"])
  path = os.path.join(src, RETARGETING_FILE)
  sources = {}
  for part, saved_name in RETARGETING_PARTS.items():
    if saved_name not in retargeting:
      raise UserError(f"{path} has no {saved_name!r} entry; it should hold {', '.join(RETARGETING_PARTS.values())}.")
    sources[part] = common.SourceDict(retargeting[saved_name], f"{path}[{saved_name}]", strip_prefixes=(DDP_PREFIX,))
  extra = sorted(set(retargeting) - set(RETARGETING_PARTS.values()))
  if extra:
    raise UserError(f"{path} has an unexpected entry {extra[0]!r}; it should hold only "
                    f"{', '.join(RETARGETING_PARTS.values())}.")
  params["stitching_retargeting_module"] = stitching.convert(
      sources, model_params["stitching_retargeting_module_params"])
  return params


def _missing(path: str, src: str) -> UserError:
  """The sentence for a released file missing from `src`, pointing to its liveportrait/ subfolder if it has one."""
  hint = ""
  if os.path.isdir(os.path.join(src, KIND, "base_models")):
    hint = f" (here: --src {os.path.join(src, KIND)})"
  return UserError(f"{path} is missing; --src must be LivePortrait's released `liveportrait` folder{hint} "
                   "holding base_models/ and retargeting_models/.")


def load_state_dicts(src: str) -> tuple[dict[str, Mapping], Mapping]:
  """The released files' state dicts: (component -> state dict, the retargeting file's dict of three)."""
  if not os.path.isdir(src):
    state = "is a file, not a folder" if os.path.exists(src) else "is missing"
    raise UserError(f"--src {src} {state}; pass LivePortrait's released `liveportrait` folder (holding "
                    "base_models/ and retargeting_models/).")
  paths = [os.path.join(src, file) for file, _ in BASE_FILES.values()] + [os.path.join(src, RETARGETING_FILE)]
  for path in paths:  # every file there before the first (slow) read
    if not os.path.isfile(path):
      raise _missing(path, src)
  base = {name: load_torch_file(path) for name, path in zip(BASE_FILES, paths)}
  return base, load_torch_file(paths[-1])


def convert_dir(src: str | os.PathLike, dst: str | os.PathLike, models_yaml: str | None = None) -> dict[str, Any]:
  """Convert the released folder `src` into `dst` (checked first, written whole: common.publish); returns the
  converted params."""
  src, dst = os.fspath(src), os.fspath(dst)
  common.check_destination(dst)
  model_params = model_params_for(src, models_yaml)
  base, retargeting = load_state_dicts(src)
  if not isinstance(retargeting, Mapping):
    raise UserError(f"{os.path.join(src, RETARGETING_FILE)} holds a value of type {type(retargeting).__name__}, not "
                    f"the dict of {', '.join(RETARGETING_PARTS.values())}; re-download it.")
  params = convert_state_dicts(base, retargeting, model_params, src)
  shapes.check_covers(abstract_params(model_params), params, f"LivePortrait weights in {src}")
  common.publish(dst, KIND, model_params, params, src)
  return params
