"""Data: the `playmate_clips` TFDS dataset (ArrayRecord, no TensorFlow), its statistics, the demo dataset
and the Grain input pipelines."""

from playmate_jax.data.builder import MOTION_KEYS, NAME, VERSION, PlaymateClips, features, version_dir, write_dataset
from playmate_jax.data.demo import DemoSpec, demo_data_dir, ensure_demo_dataset
from playmate_jax.data.pipeline import (OpenedDataset, RandomWindow, batch_spec, data_dir, load_dataset_info, load_eval_clips,
                                        load_stats, make_train_iterator, open_dataset)
from playmate_jax.data.stats import (DatasetStats, StatsAccumulator, identity_vector, load_stats as read_stats_file,
                                    motion_vector, save_stats)

__all__ = [
    "MOTION_KEYS", "NAME", "VERSION", "PlaymateClips", "features", "version_dir", "write_dataset", "DemoSpec",
    "demo_data_dir", "ensure_demo_dataset", "OpenedDataset", "RandomWindow", "batch_spec", "data_dir", "load_dataset_info",
    "load_eval_clips", "load_stats", "make_train_iterator", "open_dataset", "DatasetStats", "StatsAccumulator",
    "read_stats_file", "save_stats", "motion_vector", "identity_vector",
]
