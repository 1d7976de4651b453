"""Data: the `playmate_clips` TFDS dataset (ArrayRecord, no TensorFlow), its statistics, the demo dataset
and the Grain input pipelines.

The names below are imported from their modules on first use, so that what needs only the statistics (sampling,
animation) does not import TFDS, Grain and SciPy with the pipelines.
"""

import importlib

_EXPORTS = {
    "builder": ("MOTION_KEYS", "NAME", "VERSION", "PlaymateClips", "features", "version_dir", "write_dataset"),
    "demo": ("DemoSpec", "demo_data_dir", "ensure_demo_dataset"),
    "pipeline": ("OpenedDataset", "RandomWindow", "batch_spec", "data_dir", "load_dataset_info", "load_eval_clips",
                 "load_stats", "make_train_iterator", "open_dataset"),
    "stats": ("DatasetStats", "StatsAccumulator", "identity_vector", "motion_vector", "save_stats"),
}
_ALIASES = {"read_stats_file": ("stats", "load_stats")}
_WHERE = {name: (module, name) for module, names in _EXPORTS.items() for name in names} | _ALIASES

__all__ = sorted(_WHERE)


def __getattr__(name: str):
  if name not in _WHERE:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  module, attr = _WHERE[name]
  value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_WHERE))
