"""The animation service: models loaded once, an HTTP API, a web page, and jobs batched on the device.

`jobs.py` holds the jobs (a results folder on disk, a bounded queue, one worker that owns the device); `app.py` is
the HTTP API and the page (`static/`). `serve` is a top room beside `train` and `animate` and imports neither: the
entry point, `pipelines/serve.py`, hands it the Animator (`playmate_jax.animate.job`), whose methods prepare, run
and stream the jobs exactly as `pipelines/animate.py` runs them.
"""
