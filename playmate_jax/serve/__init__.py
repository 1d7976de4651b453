"""The animation service: models loaded once, an HTTP API, a web page, and jobs batched on the device.

`jobs.py` holds the jobs (a results folder on disk, a bounded queue, one worker that owns the device) over the
animation code that `pipelines/animate.py` runs (`playmate_jax.animate.job`); `app.py` is the HTTP API and the page
(`static/`), started by `pipelines/serve.py`. It stands on `animate`, never on `train`.
"""
