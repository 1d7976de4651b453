"""pipelines/convert.py run as a user would, with wrong inputs: each ends in exactly one sentence naming the file
and the fix, exit status 2 (130 for Ctrl-C), no traceback, and no output left behind (an earlier conversion in the
output folder stays as it was). The checkpoints are tiny fakes in torch.save's zip format and in safetensors, built
here without torch.
"""

import json
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from pipelines import convert
from playmate_jax import shapes
from playmate_jax.convert.torch_io import save_torch_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = dict(model_type="wav2vec2", conv_dim=[8] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2],
              conv_stride=[5, 2, 2, 2, 2, 2, 2], hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=32, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
LP_FILES = ("base_models/appearance_feature_extractor.pth", "base_models/motion_extractor.pth",
            "base_models/warping_module.pth", "base_models/spade_generator.pth",
            "retargeting_models/stitching_retargeting_module.pth")


def w2v_tensors(config=CONFIG, seed=0) -> dict[str, np.ndarray]:
  """A complete HF state dict of the tiny wav2vec2 of `config` (group norm, weight norm as weight_g / weight_v)."""
  rng = np.random.default_rng(seed)
  r = lambda *shape: (0.1 * rng.standard_normal(shape)).astype(np.float32)
  d, c, ff = config["hidden_size"], config["conv_dim"], config["intermediate_size"]
  k = config["num_conv_pos_embeddings"]
  t = {f"feature_extractor.conv_layers.{i}.conv.weight": r(co, c[i - 1] if i else 1, kernel)
       for i, (co, kernel) in enumerate(zip(c, config["conv_kernel"]))}
  norms = {"feature_extractor.conv_layers.0.layer_norm": c[0], "feature_projection.layer_norm": c[-1],
           "encoder.layer_norm": d}
  t["feature_projection.projection.weight"], t["feature_projection.projection.bias"] = r(d, c[-1]), r(d)
  t["encoder.pos_conv_embed.conv.weight_g"] = 1 + r(1, 1, k)
  t["encoder.pos_conv_embed.conv.weight_v"] = r(d, d // config["num_conv_pos_embedding_groups"], k)
  t["encoder.pos_conv_embed.conv.bias"] = r(d)
  for layer in range(config["num_hidden_layers"]):
    p = f"encoder.layers.{layer}"
    for name, (out, inp) in {**{f"attention.{n}_proj": (d, d) for n in ("q", "k", "v", "out")},
                             "feed_forward.intermediate_dense": (ff, d), "feed_forward.output_dense": (d, ff)}.items():
      t[f"{p}.{name}.weight"], t[f"{p}.{name}.bias"] = r(out, inp), r(out)
    norms.update({f"{p}.layer_norm": d, f"{p}.final_layer_norm": d})
  for name, n in norms.items():
    t[f"{name}.weight"], t[f"{name}.bias"] = 1 + r(n), r(n)
  return t


def save_safetensors(path, tensors) -> None:
  header, blobs, offset = {}, [], 0
  for name, value in tensors.items():
    blob = np.ascontiguousarray(value, np.float32).tobytes()
    header[name] = {"dtype": "F32", "shape": list(value.shape), "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
  raw = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))


def hf_folder(path, tensors=None, config=CONFIG, weights="pytorch_model.bin"):
  """A Hugging Face model folder: config.json and the weights (None: the tiny model's)."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  tensors = w2v_tensors() if tensors is None else tensors
  (save_safetensors if weights.endswith(".safetensors") else save_torch_file)(os.path.join(path, weights), tensors)
  return str(path)


def lp_folder(path, state=None):
  """LivePortrait's released layout, every file holding `state` (default: one tensor, enough to fail on)."""
  for file in LP_FILES:
    os.makedirs(os.path.dirname(os.path.join(path, file)), exist_ok=True)
    save_torch_file(os.path.join(path, file), {"first.conv.weight": np.zeros((3, 3), np.float32)}
                    if state is None else state)
  return str(path)


def write(path, data: bytes, truncate: bool = True) -> None:
  """`data` over the file's start (and its rest dropped, with `truncate`)."""
  with open(path, "wb" if truncate else "r+b") as f:
    f.write(data)


def cut_in_half(path) -> None:
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def rewrite_zip(path, edit) -> None:
  """The torch.save zip rewritten with `edit(entries)` applied to its {name: bytes} (a valid zip again)."""
  with zipfile.ZipFile(path) as z:
    entries = {n: z.read(n) for n in z.namelist()}
  edit(entries)
  with zipfile.ZipFile(path, "w") as z:
    for name, data in entries.items():
      z.writestr(name, data)


def corrupt_storage(path) -> None:
  """Bytes of a stored tensor overwritten in place: the zip reads, its CRC does not match."""
  with zipfile.ZipFile(path) as z:
    info = z.getinfo("archive/data/3")
  start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 4
  with open(path, "r+b") as f:
    f.seek(start)
    f.write(b"\xff" * 8)


def safetensors_with(path, header: dict, body: bytes = b"") -> None:
  raw = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(len(raw).to_bytes(8, "little") + raw + body)


def cases_under(t) -> dict:
  """Per wrong input: a function making it under the folder t and returning (command-line arguments, the file the
  sentence must name)."""
  w2v, lp = lambda **kw: hf_folder(t / "hf", **kw), lambda **kw: lp_folder(t / "liveportrait", **kw)
  bin_, pth = lambda: str(t / "hf" / "pytorch_model.bin"), lambda: str(t / "liveportrait" / LP_FILES[0])
  st = lambda: str(t / "hf" / "model.safetensors")
  cases = {
      "lp: no such folder": lambda: (["liveportrait", "--src", str(t / "nowhere")], str(t / "nowhere")),
      "lp: empty folder": lambda: (os.makedirs(t / "empty"), ["liveportrait", "--src", str(t / "empty")],
                                   str(t / "empty" / LP_FILES[0]))[1:],
      "lp: the folder above liveportrait/": lambda: (lp(), ["liveportrait", "--src", str(t)],
                                                      str(t / "liveportrait"))[1:],
      "lp: .pth cut in half": lambda: (lp(), cut_in_half(pth()), ["liveportrait", "--src", str(t / "liveportrait")],
                                       pth())[2:],
      "lp: .pth a plain pickle": lambda: (lp(), write(pth(), pickle.dumps({"w": np.zeros(3)})),
                                          ["liveportrait", "--src", str(t / "liveportrait")], pth())[2:],
      "lp: a wav2vec2 checkpoint": lambda: (["liveportrait", "--src", lp(state=w2v_tensors())], pth()),
      "lp: the retargeting file in F's place": lambda: (
          ["liveportrait", "--src", lp(state={"retarget_shoulder": {"mlp.0.weight": np.zeros(3, np.float32)}})], pth()),
      "lp: retargeting file not a dict": lambda: (
          lp(), save_torch_file(t / "liveportrait" / LP_FILES[-1], [1, 2]),
          ["liveportrait", "--src", str(t / "liveportrait")], str(t / "liveportrait" / LP_FILES[-1]))[2:],
      "lp: --models-yaml missing": lambda: (["liveportrait", "--src", lp(), "--models-yaml", str(t / "m.yaml")],
                                            str(t / "m.yaml")),
      "w2v: no such folder": lambda: (["wav2vec2", "--src", str(t / "nowhere")], str(t / "nowhere")),
      "w2v: folder without config.json": lambda: (os.makedirs(t / "empty"), ["wav2vec2", "--src", str(t / "empty")],
                                                  str(t / "empty"))[1:],
      "w2v: config.json without weights": lambda: (w2v(), os.remove(bin_()), ["wav2vec2", "--src", str(t / "hf")],
                                                   str(t / "hf"))[2:],
      "w2v: .bin cut in half": lambda: (w2v(), cut_in_half(bin_()), ["wav2vec2", "--src", str(t / "hf")], bin_())[2:],
      "w2v: .bin with damaged bytes": lambda: (w2v(), corrupt_storage(bin_()), ["wav2vec2", "--src", str(t / "hf")],
                                               bin_())[2:],
      "w2v: .bin storage shorter than its tensor": lambda: (
          w2v(), rewrite_zip(bin_(), lambda e: e.update({"archive/data/3": e["archive/data/3"][:8]})),
          ["wav2vec2", "--src", str(t / "hf")], bin_())[2:],
      "w2v: .bin pickling a function call": lambda: (
          w2v(), rewrite_zip(bin_(), lambda e: e.update({"archive/data.pkl": b"cos\nsystem\n(S'true'\ntR."})),
          ["wav2vec2", "--src", str(t / "hf")], bin_())[2:],
      "w2v: safetensors header garbage": lambda: (
          w2v(weights="model.safetensors"), write(st(), b"\xff" * 16, truncate=False),
          ["wav2vec2", "--src", str(t / "hf")], st())[2:],
      "w2v: safetensors header entry malformed": lambda: (
          w2v(weights="model.safetensors"), safetensors_with(st(), {"a": {"dtype": "F32", "shape": [2]}}),
          ["wav2vec2", "--src", str(t / "hf")], st())[2:],
      "w2v: safetensors bytes of another shape": lambda: (
          w2v(weights="model.safetensors"),
          safetensors_with(st(), {"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 8]}}, b"\0" * 8),
          ["wav2vec2", "--src", str(t / "hf")], st())[2:],
      "w2v: safetensors cut in half": lambda: (w2v(weights="model.safetensors"), cut_in_half(st()),
                                               ["wav2vec2", "--src", str(t / "hf")], st())[2:],
      "w2v: weights of wrong shapes": lambda: (
          ["wav2vec2", "--src", w2v(tensors={k: v.T.copy() if v.ndim == 2 else v for k, v in w2v_tensors().items()})],
          bin_()),
      "w2v: a LivePortrait checkpoint": lambda: (
          ["wav2vec2", "--src", w2v(tensors={"first.conv.weight": np.zeros((3, 3), np.float32)})], bin_()),
      "w2v: config.json value of the wrong type": lambda: (
          ["wav2vec2", "--src", w2v(config=dict(CONFIG, hidden_size="16"))], str(t / "hf" / "config.json")),
      "w2v: config.json of zero heads": lambda: (
          ["wav2vec2", "--src", w2v(config=dict(CONFIG, num_attention_heads=0))], str(t / "hf" / "config.json")),
      "w2v: config.json not JSON": lambda: (w2v(), write(t / "hf" / "config.json", b"{"),
                                            ["wav2vec2", "--src", str(t / "hf")], str(t / "hf" / "config.json"))[2:],
  }
  return cases


CASES = list(cases_under(pathlib.Path("unused")))  # the names (nothing is made until a case is called)


def one_sentence(capsys, code: int) -> str:
  """The command's stderr: one line `error: ...` ending in a period, exit status 2, no traceback."""
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
  assert err.startswith("error: ") and err.rstrip().endswith("."), err
  return err


def leftovers(folder) -> list[str]:
  """Temporary files or folders a conversion left in `folder` (its own hidden names)."""
  return [n for n in os.listdir(folder) if n.startswith(".") or n.endswith((".tmp.npz", ".old"))]


@pytest.mark.parametrize("case", CASES)
def test_wrong_input_is_one_sentence(case, tmp_path, capsys):
  args, file = cases_under(tmp_path)[case]()
  out = tmp_path / "weights" / "converted"
  err = one_sentence(capsys, convert.main(args + ["--dst", str(out)]))
  assert file in err
  assert not os.path.exists(tmp_path / "weights")  # nothing written, not even the parent folder


@pytest.mark.parametrize("case", ["a file", "under a file", "holds other files"])
def test_wrong_output_folder_is_one_sentence_before_any_work(case, tmp_path, capsys):
  src = hf_folder(tmp_path / "hf")
  (tmp_path / "file").write_text("mine")
  (tmp_path / "busy").mkdir()
  (tmp_path / "busy" / "notes.txt").write_text("mine")
  dst = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "w",
         "holds other files": tmp_path / "busy"}[case]
  err = one_sentence(capsys, convert.main(["wav2vec2", "--src", src, "--dst", str(dst)]))
  assert str(dst) in err
  assert (tmp_path / "file").read_text() == "mine" and os.listdir(tmp_path / "busy") == ["notes.txt"]
  assert leftovers(tmp_path) == []


def test_unwritable_output_folder_is_one_sentence(tmp_path, capsys, monkeypatch):
  """A folder that cannot be written; as root, whom permissions do not stop, the refusal is the file system's."""
  src = hf_folder(tmp_path / "hf")
  locked = tmp_path / "locked"
  locked.mkdir()
  if os.geteuid() == 0:
    import tempfile
    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kw):
      if dir is not None and os.path.abspath(dir) == str(locked):
        raise PermissionError(13, "Permission denied", dir)
      return real(*args, dir=dir, **kw)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
  else:
    locked.chmod(0o555)
  err = one_sentence(capsys, convert.main(["wav2vec2", "--src", src, "--dst", str(locked / "w")]))
  assert str(locked) in err and "--dst" in err and os.listdir(locked) == []


def test_an_earlier_conversion_is_replaced_whole(tmp_path, capsys):
  """Converting again into the same folder replaces it; what is there is a conversion, never a mix of two."""
  dst = tmp_path / "w"
  assert convert.main(["wav2vec2", "--src", hf_folder(tmp_path / "a"), "--dst", str(dst)]) == 0
  first = shapes.load_converted(dst, "wav2vec2")[1]
  assert convert.main(["wav2vec2", "--src", hf_folder(tmp_path / "b", w2v_tensors(seed=1)), "--dst", str(dst)]) == 0
  second = shapes.load_converted(dst, "wav2vec2")[1]
  assert sorted(os.listdir(dst)) == sorted([shapes.MANIFEST_FILE, shapes.PARAMS_FILE])
  assert not np.array_equal(first["encoder"]["norm"]["scale"], second["encoder"]["norm"]["scale"])
  assert json.load(open(dst / shapes.MANIFEST_FILE))["source"] == str(tmp_path / "b")
  assert oct(os.stat(dst).st_mode & 0o777) == oct(0o777 & ~_umask())  # a folder's usual mode, not mkdtemp's 0700
  assert leftovers(tmp_path) == []


def _umask() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return umask


# A convert.py whose params.npz write stops half-way (half the bytes written) and waits for a signal.
_SLOW_WRITE = """
import os, sys, time
import numpy as np
real, marker = np.savez, sys.argv[-1]
def savez(file, **arrays):
  real(file, **arrays)
  with open(file, "r+b") as f:
    f.truncate(os.path.getsize(file) // 2)
  open(marker, "w").close()
  time.sleep(60)
np.savez = savez
sys.argv = sys.argv[1:-1]   # python -c CODE convert.py ARGS... MARKER -> convert.py ARGS...
import runpy
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _ctrl_c_as_in_a_shell():
  """The child's SIGINT as a shell leaves it (default action, not blocked), whatever the test worker's state: a
  process that inherits SIGINT ignored or blocked (the full suite's workers have been seen so) never hears Ctrl-C,
  and Python then installs no KeyboardInterrupt handler."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.parametrize("earlier", [False, True])
def test_ctrl_c_mid_write_leaves_no_partial_output(tmp_path, earlier):
  """Ctrl-C while params.npz is half-written: exit 130 with one line; the output folder is as before (absent, or
  the earlier conversion unchanged) and no temporary file or folder is left."""
  src, dst, marker = hf_folder(tmp_path / "hf"), tmp_path / "w", tmp_path / "writing"
  if earlier:
    assert convert.main(["wav2vec2", "--src", src, "--dst", str(dst)]) == 0
    before = {n: (dst / n).read_bytes() for n in os.listdir(dst)}
  proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITE, os.path.join(ROOT, "pipelines", "convert.py"),
                           "wav2vec2", "--src", src, "--dst", str(dst), str(marker)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, preexec_fn=_ctrl_c_as_in_a_shell)
  deadline = time.time() + 60
  while not marker.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert marker.exists(), proc.communicate()[1].decode()[-2000:]
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  err = err.decode()
  assert proc.returncode == 130 and err.count("\n") == 1 and err.startswith("interrupted: "), err
  if earlier:
    assert {n: (dst / n).read_bytes() for n in os.listdir(dst)} == before
  else:
    assert not dst.exists()
  assert leftovers(tmp_path) == []


def test_a_real_process_prints_no_traceback(tmp_path):
  """The installed command's path (a fresh interpreter) for a checkpoint cut in half."""
  src = lp_folder(tmp_path / "liveportrait")
  cut_in_half(tmp_path / "liveportrait" / LP_FILES[2])
  result = subprocess.run([sys.executable, os.path.join(ROOT, "pipelines", "convert.py"), "liveportrait", "--src", src,
                           "--dst", str(tmp_path / "out")], capture_output=True, text=True)
  assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
  assert LP_FILES[2] in result.stderr and not (tmp_path / "out").exists()
