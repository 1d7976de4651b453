"""The package's layers: a module imports only its own layer or the ones below (DESIGN.md, "Layout").

Bottom up: foundation (errors, timing, profiling, shapes, configlib, cli, video) < motion < the models (renderer,
audio, generator, face) < data and convert < run < the top rooms (train, animate, serve), which never import each other (the entry point hands the service
its Animator).
Every import counts, also one inside a function. The entry points (launch.py, pipelines/) sit above all of it.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {"errors": 0, "timing": 0, "profiling": 0, "shapes": 0, "configlib": 0, "cli": 0, "video": 0,
          "motion": 1, "renderer": 2, "audio": 2, "generator": 2, "face": 2, "data": 3, "convert": 3, "run": 4,
          "train": 5, "animate": 5, "serve": 5}
TOP = 5


def _room(module: str) -> str | None:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 and parts[0] == "playmate_jax" else None


def _imports(tree: ast.AST, module: str, is_package: bool):
  """(line, imported module) for every import in a module's tree, relative imports resolved."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
      yield node.lineno, base
      for alias in node.names:  # `from playmate_jax import train` names a room too
        yield node.lineno, f"{base}.{alias.name}"


def violations(package_dir: str) -> list[str]:
  """Every import of a module under package_dir that reaches above its own layer (or across the top rooms), and
  every room that no layer names."""
  found = []
  root = os.path.dirname(package_dir)
  for dirpath, _, files in os.walk(package_dir):
    for name in sorted(files):
      if not name.endswith(".py"):
        continue
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, root)
      module = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
      me = _room(module)
      if me is None:
        continue
      if me not in LAYERS:
        found.append(f"{rel}: room {me!r} has no layer")
        continue
      with open(path) as f:
        tree = ast.parse(f.read())
      for line, target in _imports(tree, module, name == "__init__.py"):
        other = _room(target)
        if other is None or other == me or other not in LAYERS:
          continue
        if LAYERS[other] > LAYERS[me] or (LAYERS[me] == LAYERS[other] == TOP):
          found.append(f"{rel}:{line} {me} -> {other}")
  return sorted(set(found))


def test_no_module_reaches_a_layer_above_it():
  assert violations(os.path.join(ROOT, "playmate_jax")) == []


def test_the_check_finds_an_upward_import(tmp_path):
  """The checker itself: a model importing the run layer, and one top room importing another, are found."""
  pkg = tmp_path / "playmate_jax"
  for sub in ("renderer", "train", "animate"):
    (pkg / sub).mkdir(parents=True)
    (pkg / sub / "__init__.py").write_text("")
  (pkg / "__init__.py").write_text("")
  (pkg / "run.py").write_text("import numpy\n")
  (pkg / "renderer" / "api.py").write_text("import os\n\ndef load():\n  from playmate_jax import run\n")
  (pkg / "animate" / "x.py").write_text("from ..train import loop\n")
  (pkg / "train" / "loop.py").write_text("from playmate_jax.renderer import api\n")  # downward: fine
  assert violations(str(pkg)) == ["playmate_jax/animate/x.py:1 animate -> train",
                                  "playmate_jax/renderer/api.py:4 renderer -> run"]


@pytest.mark.parametrize("room", sorted(LAYERS))
def test_every_layer_names_a_real_module(room):
  """The table above stays true: each name is a module or a package of playmate_jax."""
  base = os.path.join(ROOT, "playmate_jax", room)
  assert os.path.isdir(base) or os.path.isfile(base + ".py")
