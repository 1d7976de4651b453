"""Test setup: eight fake CPU devices, so that sharding is exercised on any machine."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import pytest  # noqa: E402


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """With PLAYMATE_REQUIRE_PARITY=1, a parity test that skips for any reason is reported as a failure."""
  outcome = yield
  report = outcome.get_result()
  if (os.environ.get("PLAYMATE_REQUIRE_PARITY") == "1" and report.skipped
      and ("parity" in item.keywords or "parity" in item.name)):
    report.outcome = "failed"
    report.longrepr = f"parity test skipped but PLAYMATE_REQUIRE_PARITY=1: {report.longrepr}"
