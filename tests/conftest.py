"""Test setup: eight fake CPU devices, so that sharding is exercised on any machine."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import pytest  # noqa: E402

from playmate_jax import cli  # noqa: E402

# The persistent compilation cache the command-line tools use (cli.enable_compilation_cache): also for the models the
# tests build in-process, so that a program compiled by one test (or a launch.py run) loads in the next instead of
# compiling again (every new Trainer compiles its programs anew, even in the same process).
cli.enable_compilation_cache()


@pytest.fixture(scope="session")
def parity_dir():
  """The parity vectors: $PLAYMATE_PARITY_DIR, default ../shared/parity beside the project.

  Absent (as on a fresh clone) the parity tests skip with one line; with PLAYMATE_REQUIRE_PARITY=1 (as in
  .ci/run) they fail instead.
  """
  path = os.environ.get("PLAYMATE_PARITY_DIR", os.path.join(ROOT, "..", "shared", "parity"))
  if not os.path.isdir(path):
    reason = f"parity vectors not found at {path}; set PLAYMATE_PARITY_DIR"
    if os.environ.get("PLAYMATE_REQUIRE_PARITY") == "1":
      pytest.fail(reason + " (required: PLAYMATE_REQUIRE_PARITY=1)")
    pytest.skip(reason)
  return path


@pytest.fixture(scope="session")
def video_collection(tmp_path_factory):
  """(folder, {name: expectation}) of tests/videos.py's collection of good and broken videos, written once."""
  from tests import videos
  folder = tmp_path_factory.mktemp("video_collection")
  return folder, videos.write_collection(folder)


def _train_tiny(config_name: str, workdir, config: str = "tiny", **overrides) -> None:
  import jax
  from playmate_jax import configlib
  from playmate_jax.train import mesh as mesh_lib
  from playmate_jax.train.trainer import Trainer
  quick = {"train.num_steps": 10, "eval.num_clips": 1, "eval.max_frames": 16, "eval.plot": False, **overrides}
  config = configlib.apply_overrides(configlib.load_config(os.path.join(ROOT, "configs", config_name) + ":" + config),
                                     {k: str(v) for k, v in quick.items()})
  Trainer(config, str(workdir), mesh=mesh_lib.make_mesh(jax.devices()[:1])).run()


@pytest.fixture(scope="session")
def stage1_run(tmp_path_factory):
  """A tiny stage-1 workdir (configs/stage1.py:tiny, 10 steps, one device), shared by the tests that sample."""
  workdir = tmp_path_factory.mktemp("stage1_tiny")
  _train_tiny("stage1.py", workdir)
  return workdir


@pytest.fixture(scope="session")
def stage2_run(stage1_run, tmp_path_factory):
  """A tiny stage-2 workdir trained from stage1_run (configs/stage2.py:tiny, 10 steps, one device)."""
  workdir = tmp_path_factory.mktemp("stage2_tiny")
  _train_tiny("stage2.py", workdir, init_from=stage1_run)
  return workdir


@pytest.fixture(scope="session")
def live_run(tmp_path_factory):
  """A tiny live stage-1 workdir (configs/stage1.py:tiny_live: 8-frame windows, look-ahead 2), 10 steps."""
  workdir = tmp_path_factory.mktemp("live_tiny")
  _train_tiny("stage1.py", workdir, config="tiny_live")
  return workdir


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """With PLAYMATE_REQUIRE_PARITY=1, a parity test that skips for any reason is reported as a failure."""
  outcome = yield
  report = outcome.get_result()
  if (os.environ.get("PLAYMATE_REQUIRE_PARITY") == "1" and report.skipped
      and ("parity" in item.keywords or "parity" in item.name)):
    report.outcome = "failed"
    report.longrepr = f"parity test skipped but PLAYMATE_REQUIRE_PARITY=1: {report.longrepr}"
