"""Data: the `playmate_clips` TFDS dataset (builder.py; ArrayRecord, no TensorFlow), its statistics (stats.py), the
demo dataset (demo.py), the Grain input pipeline (loader.py) and the preprocessing of raw videos (preprocess.py,
decode.py, videostore.py, tracking.py). Import the module you need: inference needs only stats.py, which pulls in
neither TFDS nor Grain."""
