"""Importing official IPT checkpoints: outputs equal the official model's, workdirs load, bad files refused.

The fixtures (tests/fixtures/make_ipt_fixture.py) are official IPT models with random weights at a
small size, with their own outputs computed by the official PyTorch code.
"""
import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib

import jax
import numpy as np
import pytest

from mtl import restoration, run_folder, run_state, tasks
from mtl.models import ipt, ipt_import, torch_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
# Same float32 computation in another order: outputs up to ~300 agree to a few ulps x depth (~1e-4).
TOLERANCE = 1e-3


def _official(name):
  return np.load(os.path.join(FIXTURES, name.replace("_legacy", "") + ".npz"))


def _max_differences(cfg, names, params, reference, only=None):
  model = ipt.IPT(cfg, tasks.get_all(names))
  out = {}
  for i, task in enumerate(names):
    if only and task != only:
      continue
    x = reference[f"input_{i}"].transpose(0, 2, 3, 1)  # official NCHW -> mtl NHWC
    y = np.asarray(model.apply(params, task, x)).transpose(0, 3, 1, 2)
    assert y.shape == reference[f"output_{i}"].shape
    out[task] = float(np.abs(y - reference[f"output_{i}"]).max())
  return out


@pytest.mark.parametrize("name, expected_tasks", [
    ("ipt_pretrain6", ipt_import.PRETRAINED_TASKS),
    ("ipt_pretrain6_legacy", ipt_import.PRETRAINED_TASKS),  # torch 1.4's non-zip format
    ("ipt_finetune1", ("sr_x2",)),
])
def test_import_reproduces_the_official_outputs(name, expected_tasks):
  cfg, names, params = ipt_import.load(os.path.join(FIXTURES, name + ".pt"), num_heads=2)
  assert names == expected_tasks
  assert (cfg.n_feats, cfg.patch_size, cfg.patch_dim, cfg.num_encoder_layers, cfg.mlp_ratio) == (
      8, 12, 3, 1, 4)
  diffs = _max_differences(cfg, names, params, _official(name))
  print(name, diffs)
  assert max(diffs.values()) < TOLERANCE, diffs


def test_the_feature_permutations_matter(monkeypatch):
  # Without the unfold / pixel-shuffle reorderings the outputs are far off: the check can fail.
  path = os.path.join(FIXTURES, "ipt_pretrain6.pt")
  reference = _official("ipt_pretrain6")
  identity = lambda n, *r: np.arange(n * (r[0] ** 2))
  for helper in ("_token_permutation", "_shuffle_permutation"):
    with monkeypatch.context() as m:
      m.setattr(ipt_import, helper, identity)
      cfg, names, params = ipt_import.load(path, num_heads=2)
      diffs = _max_differences(cfg, names, params, reference, only="sr_x2")
    assert diffs["sr_x2"] > 1.0, (helper, diffs)


def test_reader_matches_the_layout_and_dtypes():
  state = torch_file.read_state_dict(os.path.join(FIXTURES, "ipt_finetune1.pt"))
  legacy = torch_file.read_state_dict(os.path.join(FIXTURES, "ipt_pretrain6_legacy.pt"))
  assert state["body.position_encoding.position_ids"].dtype == np.int64
  assert state["head.0.0.weight"].shape == (8, 3, 3, 3)
  assert state["body.query_embed.weight"].shape == (1, 16 * 72)
  assert legacy["body.query_embed.weight"].shape == (6, 16 * 72)
  np.testing.assert_array_equal(legacy["add_mean.bias"], ipt.DIV2K_RGB_MEAN.astype(np.float32))


def test_workdir_round_trip(tmp_path):
  cfg, names, params = ipt_import.load(os.path.join(FIXTURES, "ipt_pretrain6.pt"), num_heads=2)
  workdir = str(tmp_path / "imported")
  run_state.write_workdir(params, cfg, names, workdir, source="x.pt")
  config, model, loaded, step = restoration.load_model(workdir)
  assert step == 0 and model.task_names == names
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded)):
    np.testing.assert_array_equal(a, np.asarray(b))
  with pytest.raises(ValueError, match="already holds a run"):
    run_state.write_workdir(params, cfg, names, workdir)


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_an_import_stopped_half_way_leaves_nothing_and_can_run_again(tmp_path):
  # it wrote config.json, then stopped in the checkpoint's save: re-import ("already holds a
  # run") and restore ("no checkpoint") both refused the folder
  cfg, names, params = ipt_import.load(os.path.join(FIXTURES, "ipt_finetune1.pt"), num_heads=2)
  workdir = str(tmp_path / "imported")
  broken = dict(params, body={})  # fails in the checkpoint's save, after config.json
  with pytest.raises(Exception):
    run_state.write_workdir(broken, cfg, names, workdir)
  assert os.listdir(workdir) == []  # not the hidden folder it was built in either
  os.makedirs(os.path.join(workdir, run_state.IMPORTING + "k1ll3d_x", "checkpoints"))  # killed
  run_state.write_workdir(params, cfg, names, workdir)
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "imported.json"]
  assert oct(os.stat(workdir).st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700
  # a folder of other files keeps every one, a killed import's folder among them included
  (tmp_path / "busy" / (run_state.IMPORTING + "k1ll3d_x")).mkdir(parents=True)
  (tmp_path / "busy" / "notes.txt").write_text("kept")
  with pytest.raises(ValueError) as error:
    run_state.write_workdir(params, cfg, names, str(tmp_path / "busy"))
  assert _one_line(error) == (f"workdir {tmp_path / 'busy'} holds other files; an import makes a "
                              "run folder of its own: choose a new --workdir")
  assert sorted(os.listdir(tmp_path / "busy")) == [run_state.IMPORTING + "k1ll3d_x", "notes.txt"]


def test_import_refuses_a_file_or_a_folder_of_images_as_workdir(tmp_path):
  cfg, names, params = ipt_import.load(os.path.join(FIXTURES, "ipt_finetune1.pt"), num_heads=2)
  (tmp_path / "afile").write_text("kept")
  with pytest.raises(ValueError, match=r"--workdir=.*afile is a file; give a folder") as error:
    run_state.write_workdir(params, cfg, names, str(tmp_path / "afile"))
  _one_line(error)
  (tmp_path / "photos").mkdir()
  (tmp_path / "photos" / "a.png").write_bytes(b"x")
  with pytest.raises(ValueError, match=r"photos holds images \(a.png\)") as error:
    run_state.write_workdir(params, cfg, names, str(tmp_path / "photos"))
  _one_line(error)
  assert (tmp_path / "afile").read_text() == "kept"
  assert sorted(os.listdir(tmp_path / "photos")) == ["a.png"]


def _one_line(error):
  message = str(error.value)
  assert "\n" not in message
  return message


def _zip_with_pickle(path, payload):
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", payload)
  return str(path)


def _tuple_key_pickle(depth, shared):
  """A protocol-2 pickle of {key: None}, key a tuple `depth` levels deep around the int 1: with
  `shared`, each level holds the one below twice through the memo (2**depth leaves in a few
  hundred bytes: hashing it takes 2**depth steps), else once (CPython's tuple hash recurses
  without a guard: 300,000 levels crash it)."""
  out = [b"\x80\x02}", b"K\x01", b"q\x00"]  # PROTO 2, EMPTY_DICT, BININT1 1, BINPUT 0
  level = b"h\x00\x86q\x00" if shared else b"\x85"  # x, BINGET 0, TUPLE2, BINPUT 0 | TUPLE1
  out += [level * depth, b"N", b"s", b"."]  # NONE, SETITEM, STOP
  return b"".join(out)


def test_keys_that_are_not_strings_and_sets_are_refused_before_they_are_hashed(tmp_path):
  # Each of these hung the import (2**24 hashing steps here; 2**40 in 743 bytes) or crashed
  # Python (a segmentation fault, no message) while the unpickler stored the key.
  cases = {
      "dag.pt": (_tuple_key_pickle(24, shared=True), "a dict key of type tuple"),
      "deep.pt": (_tuple_key_pickle(300_000, shared=False), "a dict key of type tuple"),
      "set.pt": (b"\x80\x04\x8f.", "the pickle builds a set"),  # PROTO 4, EMPTY_SET, STOP
      # a storage key the loader would turn into a string (the hash of a shared tuple again)
      "pid.pt": (b"\x80\x02}X\x01\x00\x00\x00w(X\x07\x00\x00\x00storageNK\x01K\x02\x86"
                 b"X\x03\x00\x00\x00cpuK\x04tQs.", "with a string key"),
  }
  for name, (payload, message) in cases.items():
    path = _zip_with_pickle(tmp_path / name, payload)
    with pytest.raises(ValueError) as error:
      torch_file.read_state_dict(path)
    assert _one_line(error).startswith(path) and message in _one_line(error), _one_line(error)


def test_a_pickle_setting_attributes_other_than_a_state_dict_s_metadata_is_refused(tmp_path):
  # BUILD on the state_dict could shadow its methods: values = OrderedDict let each 9-byte
  # reference to a storage copy it whole past the size check; on a function find_class hands
  # out, it changed that function for the rest of the process
  shadowed = collections.OrderedDict()
  shadowed.__dict__["values"] = collections.OrderedDict
  on_function = b"\x80\x02ctorch._utils\n_rebuild_tensor\n}X\x01\x00\x00\x00xK\x01sb."
  for name, payload, kind in (("shadow.pt", pickle.dumps(shadowed, protocol=2), "OrderedDict"),
                              ("function.pt", on_function, "function")):
    path = _zip_with_pickle(tmp_path / name, payload)
    with pytest.raises(ValueError) as error:
      torch_file.read_state_dict(path)
    assert _one_line(error) == (f"{path}: the pickle sets attributes on an object of type {kind} "
                                "(a state_dict has one attribute, its _metadata)")
  assert not hasattr(torch_file._rebuild_tensor, "x")
  # torch.save's own: an OrderedDict whose one attribute is _metadata
  state = collections.OrderedDict()
  state._metadata = collections.OrderedDict({"": {"version": 1}})
  assert torch_file.read_state_dict(
      _zip_with_pickle(tmp_path / "meta.pt", pickle.dumps(state, protocol=2))) == {}


def test_a_compressed_or_encrypted_member_and_a_stride_past_the_storage_are_one_line(
    tmp_path, monkeypatch):
  four = np.arange(4, dtype="<f4").tobytes()
  # size 1: the stride reaches nothing, but as_strided overflowed on it (a traceback)
  path = _torch_zip(tmp_path / "stride.pt", {"w": ("0", 0, (1,), (2**40,))}, {"0": (4, four)},
                    monkeypatch)
  with pytest.raises(ValueError) as error:
    torch_file.read_state_dict(path)
  assert _one_line(error) == (f"{path}: tensor 'w': strides (1099511627776,) step past a "
                              "storage of 4")
  # no tensor torch writes has an index past 2**63 or more than 64 dimensions: refused as read,
  # before a product of them is taken (2,000 sizes of 4,096 bits from memo references, a 5 KB
  # file, took 21 s; a 4,300-digit number also broke the message)
  for name, size, stride, said in (
      ("huge", (2**20000,), (1,), "sizes (<int of 20001 bits>,), strides (1,) (needs a storage "
                                  "and indices from 0 to 2**63 - 1)"),
      ("dims", (1,) * 65, (1,) * 65, "a tensor record of 65 dimensions (at most 64)")):
    path = _torch_zip(tmp_path / f"{name}.pt", {"w": ("0", 0, size, stride)}, {"0": (4, four)},
                      monkeypatch)
    with pytest.raises(ValueError) as error:
      torch_file.read_state_dict(path)
    assert _one_line(error).startswith(f"{path} is not a readable torch.save file: ")
    assert _one_line(error).endswith(said)
  good = _torch_zip(tmp_path / "good.pt", {"w": ("0", 0, (4,), (1,))}, {"0": (4, four)},
                    monkeypatch)
  data = bytearray(open(good, "rb").read())
  for flag, word in ((b"\x01", "encrypted"), (b"\x63", "compressed")):  # method 99: AES
    bad = bytearray(data)
    for start in (0, data.find(b"PK\x01\x02")):  # data.pkl's local and central headers
      field = start + (6 if start == 0 else 8) + (0 if word == "encrypted" else 2)
      bad[field:field + 1] = flag
    path = tmp_path / f"{word}.pt"
    path.write_bytes(bytes(bad))
    with pytest.raises(ValueError) as error:
      torch_file.read_state_dict(str(path))
    assert _one_line(error) == (f"{path}: member 'archive/data.pkl' is {word}; torch.save "
                                "stores its members plain")


def _overlapping_zip(path, count, payload):
  """A stored zip of data.pkl and `count` storages whose data overlap: each storage's bytes
  hold the next ones' local headers and the one payload, so the storages name about `count`
  times the file's bytes."""
  def header(name, size, crc):
    return struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, crc, size, size,
                       len(name), 0) + name
  pkl = pickle.dumps({}, protocol=2)
  members = [(b"archive/data.pkl", pkl)]
  tail = payload
  for i in reversed(range(count)):
    members.insert(1, (f"archive/data/{i}".encode(), tail))
    tail = header(members[1][0], len(tail), zlib.crc32(tail)) + tail
  body = header(members[0][0], len(pkl), zlib.crc32(pkl)) + pkl
  offsets = [0, len(body)]
  for name, data in members[1:-1]:
    offsets.append(offsets[-1] + 30 + len(name))
  body += tail
  central = b"".join(
      struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 0, 0, 0x21, zlib.crc32(data),
                  len(data), len(data), len(name), 0, 0, 0, 0, 0, at) + name
      for (name, data), at in zip(members, offsets))
  end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                    len(body), 0)
  path.write_bytes(body + central + end)
  return str(path)


def test_zip_members_that_overlap_are_refused_before_any_is_read(tmp_path):
  # 400 storages from one 4 MB payload held 1.6 GB in memory, then the file was accepted
  path = _overlapping_zip(tmp_path / "overlap.pt", 50, b"\0" * (1 << 16))
  with zipfile.ZipFile(path) as archive:  # a valid zip: every member reads, its CRC checked
    read = sum(len(archive.read(name)) for name in archive.namelist())
  assert read > 40 * os.path.getsize(path)
  with pytest.raises(ValueError) as error:
    torch_file.read_state_dict(path)
  held = sum(i.file_size for i in zipfile.ZipFile(path).infolist())
  assert _one_line(error) == (f"{path}: its members hold {held:,} bytes in a file of "
                              f"{os.path.getsize(path):,}: they overlap (torch.save writes them "
                              "apart)")


def test_bad_files_are_refused_with_one_line(tmp_path):
  junk = tmp_path / "junk.pt"
  junk.write_bytes(b"not a checkpoint at all")
  with pytest.raises(ValueError) as error:
    torch_file.read_state_dict(str(junk))
  assert "not a torch.save file" in _one_line(error)
  plain = tmp_path / "plain.pt"  # one pickle of a dict: no legacy magic number first
  plain.write_bytes(pickle.dumps({"weight": [1.0]}, protocol=2))
  with pytest.raises(ValueError) as error:
    torch_file.read_state_dict(str(plain))
  assert _one_line(error).endswith("plain.pt is neither a zip nor a legacy torch.save file (bad "
                                   "magic number)")
  # A pickle naming any other callable (here os.system) is refused, never run.
  evil = _zip_with_pickle(tmp_path / "evil.pt", b"cos\nsystem\n(S'touch " +
                          str(tmp_path / "ran").encode() + b"'\ntR.")
  with pytest.raises(ValueError) as error:
    torch_file.read_state_dict(evil)
  assert "os.system" in _one_line(error) and not (tmp_path / "ran").exists()
  with pytest.raises(ValueError) as error:
    torch_file.read_state_dict(_zip_with_pickle(tmp_path / "list.pt", pickle.dumps([1, 2])))
  assert "state_dict of tensors" in _one_line(error)
  with pytest.raises(FileNotFoundError):
    torch_file.read_state_dict(str(tmp_path / "missing.pt"))
  cut = tmp_path / "cut.pt"  # a zip whose end (its directory) is lost: damaged, not unknown
  whole = _zip_with_pickle(tmp_path / "whole.pt", pickle.dumps({}))
  cut.write_bytes(open(whole, "rb").read()[:-30])
  with pytest.raises(ValueError) as error:
    torch_file.read_state_dict(str(cut))
  assert _one_line(error) == (f"{cut} is a damaged torch.save file (a zip cut short or broken: "
                              "its directory is unreadable); copy or download it again")


def _evil(marker):
  """A protocol-2 pickle that calls os.system('touch MARKER') when plainly unpickled."""
  return b"\x80\x02cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


@pytest.mark.parametrize("record", ["magic", "protocol", "sys_info", "object", "keys"])
def test_no_pickle_of_the_legacy_format_runs_code(tmp_path, record):
  # torch's pre-1.6 stream is five pickles in a row; a crafted file can put a callable in any one.
  marker = tmp_path / "ran"
  valid = {"magic": pickle.dumps(torch_file._LEGACY_MAGIC, protocol=2),
           "protocol": pickle.dumps(1001, protocol=2),
           "sys_info": pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
           "object": pickle.dumps({}, protocol=2),
           "keys": pickle.dumps([], protocol=2)}
  valid[record] = _evil(marker)
  path = tmp_path / f"evil_{record}.pt"
  path.write_bytes(b"".join(valid.values()))
  with pytest.raises(ValueError) as error:
    torch_file.read_state_dict(str(path))
  assert "os.system" in _one_line(error) and str(path) in _one_line(error)
  assert not marker.exists()
  # The same payload as the zip format's data.pkl is refused too.
  with pytest.raises(ValueError):
    torch_file.read_state_dict(_zip_with_pickle(tmp_path / "evil.zip.pt", _evil(marker)))
  assert not marker.exists()


def test_an_unknown_pickle_protocol_names_the_file(tmp_path):
  path = tmp_path / "random.pt"
  path.write_bytes(b"\x80\xa4" + bytes(range(64)))
  with pytest.raises(ValueError) as error:
    torch_file.read_state_dict(str(path))
  assert str(path) in _one_line(error)


def test_mismatches_are_refused_with_one_line():
  path = os.path.join(FIXTURES, "ipt_pretrain6.pt")
  with pytest.raises(ValueError) as error:
    ipt_import.load(path, size="paper")
  assert "n_feats=8 (size paper: 64)" in _one_line(error)
  with pytest.raises(ValueError) as error:
    ipt_import.load(path)
  assert "heads" in _one_line(error)
  with pytest.raises(ValueError) as error:
    ipt_import.load(path, task_names=("sr_x2", "sr_x3", "sr_x4", "denoise_30", "derain"), num_heads=2)
  assert "scales" in _one_line(error)
  state = torch_file.read_state_dict(path)
  cfg, names, _ = ipt_import.load(path, num_heads=2)
  shifted = dict(state, **{"sub_mean.bias": state["sub_mean.bias"] + 5.0})
  with pytest.raises(ValueError) as error:
    ipt_import.convert(shifted, cfg, names)
  assert "DIV2K mean shift" in _one_line(error)
  extra = dict(state, **{"body.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(ValueError) as error:
    ipt_import.convert(extra, cfg, names)
  assert "body.extra.weight" in _one_line(error)
  partial = {k: v for k, v in state.items() if k != "body.query_embed.weight"}
  with pytest.raises(ValueError) as error:
    ipt_import.infer_layout(partial)
  assert "body.query_embed.weight" in _one_line(error)


def test_launcher_imports_and_refuses(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  launcher = os.path.join(ROOT, "launch", "import_ipt.py")
  bad = subprocess.run([sys.executable, launcher, f"--checkpoint={FIXTURES}/ipt_finetune1.pt",
                        f"--workdir={tmp_path}/w"], capture_output=True, text=True, env=env,
                       timeout=120)
  assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0
  assert "does not have the 'paper' size" in bad.stderr
  good = subprocess.run([sys.executable, launcher, f"--checkpoint={FIXTURES}/ipt_finetune1.pt",
                         f"--workdir={tmp_path}/w", "--size=", "--num_heads=2"],
                        capture_output=True, text=True, env=env, timeout=120)
  assert good.returncode == 0, good.stderr
  assert "tasks sr_x2" in good.stdout
  assert os.path.isfile(tmp_path / "w" / run_folder.CONFIG_FILE)
  assert os.path.isdir(tmp_path / "w" / "checkpoints" / "0")


def test_reader_dtypes_and_strided_views():
  state = torch_file.read_state_dict(os.path.join(FIXTURES, "dtypes.pt"))
  expected = np.load(os.path.join(FIXTURES, "dtypes.npz"))
  assert sorted(state) == sorted(expected.files)
  for name in expected.files:
    assert state[name].shape == expected[name].shape, name
    np.testing.assert_array_equal(state[name].astype(expected[name].dtype), expected[name])
  assert state["half"].dtype == np.float16 and state["long"].dtype == np.int64


@pytest.mark.parametrize("name, shape", [
    ("body.linear_encoding.weight", (72, 73)),  # oversized: the permutation would cut it to 72x72
    ("body.encoder.layers.0.norm1.weight", (80,)),  # oversized norm
    ("body.linear_encoding.weight", (72, 71)),  # undersized: the permutation would index past it
    ("tail.0.0.0.weight", (28, 8, 3, 3)),  # x2 upsampler: 28 channels where 4x8 are needed
    ("head.1.1.body.0.weight", (8, 8, 3, 3)),  # a 3x3 conv where the model has 5x5
])
def test_every_tensor_shape_is_checked_before_any_reordering(name, shape):
  path = os.path.join(FIXTURES, "ipt_pretrain6.pt")
  state = torch_file.read_state_dict(path)
  cfg, names, _ = ipt_import.load(path, num_heads=2)
  bad = dict(state, **{name: np.zeros(shape, np.float32)})
  with pytest.raises(ValueError) as error:
    ipt_import.convert(bad, cfg, names, path)
  message = _one_line(error)
  assert f"{name} has shape {shape}" in message and str(state[name].shape) in message, message


def test_non_finite_weights_are_refused():
  path = os.path.join(FIXTURES, "ipt_finetune1.pt")
  state = torch_file.read_state_dict(path)
  cfg, names, _ = ipt_import.load(path, num_heads=2)
  weight = state["body.decoder.layers.0.linear2.weight"].copy()
  weight[3, 5] = np.nan
  with pytest.raises(ValueError) as error:
    ipt_import.convert(dict(state, **{"body.decoder.layers.0.linear2.weight": weight}), cfg, names,
                       path)
  assert "'body.decoder.layers.0.linear2.weight' holds 1 non-finite" in _one_line(error)


def test_a_missing_tensor_or_a_name_with_a_newline_is_one_line():
  path = os.path.join(FIXTURES, "ipt_finetune1.pt")
  state = torch_file.read_state_dict(path)
  cfg, names, _ = ipt_import.load(path, num_heads=2)
  cut = {k: v for k, v in state.items() if k != "tail.0.1.bias"}  # was a KeyError traceback
  with pytest.raises(ValueError) as error:
    ipt_import.convert(cut, cfg, names, path)
  assert _one_line(error) == (f"{path}: tensors missing: tail.0.1.bias (1 of the 1-task model's "
                              f"{len(state)}; a damaged or cut file?)")
  forged = dict(state, **{"body.extra\nerror: nothing is wrong": state["tail.0.1.bias"]})
  with pytest.raises(ValueError) as error:
    ipt_import.convert(forged, cfg, names, path)
  assert _one_line(error) == (f"{path}: tensors not mapped: "
                              "'body.extra\\nerror: nothing is wrong'")


def _torch_zip(path, tensors, storages, monkeypatch, compress=False):
  """A torch.save zip built without torch: stand-in `torch` modules let pickle name torch's own
  rebuild function and storage class. tensors: {name: (storage key, offset, size, stride[,
  fields the pickle then sets on the record (a BUILD)])}; storages: {key: (declared elements,
  float32 bytes)}."""
  import collections
  import types
  utils, torch_module = types.ModuleType("torch._utils"), types.ModuleType("torch")

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called while pickling")
  _rebuild_tensor_v2.__module__ = "torch._utils"
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  storage_class = type("FloatStorage", (), {"__module__": "torch",
                                            "__qualname__": "FloatStorage"})
  torch_module.FloatStorage, torch_module._utils = storage_class, utils
  monkeypatch.setitem(sys.modules, "torch", torch_module)
  monkeypatch.setitem(sys.modules, "torch._utils", utils)

  class Key(str):
    pass

  class Tensor:
    def __init__(self, key, offset, size, stride, fields=None):
      self.args = (Key(key), offset, size, stride, False, collections.OrderedDict())
      self.fields = fields

    def __reduce__(self):
      return (_rebuild_tensor_v2, self.args) + ((self.fields,) if self.fields else ())

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, Key):
        return ("storage", storage_class, str(obj), "cpu", storages[str(obj)][0])
      return None

  buffer = io.BytesIO()
  Pickler(buffer, protocol=2).dump(collections.OrderedDict(
      (name, Tensor(*record)) for name, record in tensors.items()))
  kind = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
  with zipfile.ZipFile(path, "w", kind) as archive:
    archive.writestr("archive/data.pkl", buffer.getvalue())
    for key, (_, data) in storages.items():
      archive.writestr(f"archive/data/{key}", data)
  return str(path)


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path, monkeypatch):
  """Offsets, sizes and strides come from an untrusted file: a tensor that names elements past
  its storage's bytes (numpy would read, or crash on, whatever memory lies there) is refused;
  so is a storage holding fewer elements than it declares, and a compressed member."""
  four = np.arange(4, dtype="<f4").tobytes()
  good = _torch_zip(tmp_path / "good.pt", {"w": ("0", 1, (3,), (1,))}, {"0": (4, four)},
                    monkeypatch)
  np.testing.assert_array_equal(torch_file.read_state_dict(good)["w"], [1, 2, 3])
  cases = {
      "stride.pt": ({"w": ("0", 0, (4,), (100,))}, {"0": (4, four)},
                    "tensor 'w': sizes (4,), strides (100,) and offset 0 reach element 300 of a "
                    "storage of 4"),
      "offset.pt": ({"w": ("0", 4, (), ())}, {"0": (4, four)},
                    "reach element 4 of a storage of 4"),
      "short.pt": ({"w": ("0", 0, (4096,), (1,))}, {"0": (4096, four)},
                   "storage '0' declares 4096 elements and holds 4"),
      "negative.pt": ({"w": ("0", 0, (4,), (-1,))}, {"0": (4, four)},
                      "needs a storage and indices from 0 to 2**63 - 1"),
      # fields set after the record is checked (a BUILD): a stride of -1 read the heap before
      "build.pt": ({"w": ("0", 0, (4,), (1,), {"stride": (-1,)})}, {"0": (4, four)},
                   "the pickle sets the fields of a tensor record (torch.save never does)"),
      # zero strides: a few hundred bytes that would ask for any amount of memory
      "expanded.pt": ({"w": ("0", 0, (4, 4), (0, 1))}, {"0": (4, four)},
                      "tensor 'w': sizes (4, 4) name 16 elements of a storage of 4"),
      "huge.pt": ({"w": ("0", 0, (100000, 100000), (0, 0))}, {"0": (4, four)},
                  "its tensors name 40,000,000,000 bytes from a file of"),
  }
  for name, (tensors, storages, message) in cases.items():
    path = _torch_zip(tmp_path / name, tensors, storages, monkeypatch)
    with pytest.raises(ValueError) as error:
      torch_file.read_state_dict(path)
    assert _one_line(error).startswith(path) and message in _one_line(error), _one_line(error)
  # a storage's fields likewise: MARK 'storage' torch.FloatStorage '0' 'cpu' 4 TUPLE BINPERSID,
  # then {'array': None} BUILD
  storage_build = _zip_with_pickle(
      tmp_path / "storage_build.pt",
      b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000"
      b"X\x03\x00\x00\x00cpuK\x04tQ}X\x05\x00\x00\x00arrayNsb.")
  with pytest.raises(ValueError) as error:
    torch_file.read_state_dict(storage_build)
  assert _one_line(error) == (f"{storage_build}: the pickle sets the fields of a storage record "
                              "(torch.save never does)")
  bomb = _torch_zip(tmp_path / "bomb.pt", {"w": ("0", 0, (4,), (1,))},
                    {"0": (4, four), "1": (0, bytes(16 << 20))}, monkeypatch, compress=True)
  with pytest.raises(ValueError) as error:
    torch_file.read_state_dict(bomb)
  assert _one_line(error) == (f"{bomb}: member 'archive/data.pkl' is compressed; torch.save "
                              "stores its members plain")  # so none inflates past the file
