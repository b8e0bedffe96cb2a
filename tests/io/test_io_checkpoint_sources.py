"""What quantize_checkpoint() reads of a source: a rerun onto an earlier output inside the source folder
does not read that output as a shard; suffixes match in any case; a folder scan without an index takes
weight files only (training_args.bin and optimizer.pt were read as shards and failed)."""
import json
import os
import struct
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.io import CheckpointError
from mono_quant.io.plan import is_weight_file_name


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))


def _assert_same_as_quantize(path, sd):
    expected = mq.quantize(sd).state_dict()
    qsd = mq.load(path)
    assert set(qsd) == set(expected)
    for key, value in expected.items():
        assert qsd[key].dtype == value.dtype and torch.equal(qsd[key], value), key


# -- an earlier output inside the source folder ------------------------------------------------------------

def test_rerun_into_the_source_folder_does_not_read_the_earlier_output(tmp_path):
    sd = _model().state_dict()
    save_file(sd, os.fspath(tmp_path / "model.safetensors"))
    dst = tmp_path / "model-int8.safetensors"
    mq.quantize_checkpoint(tmp_path, dst, overwrite=True)
    first = dst.read_bytes()
    result = mq.quantize_checkpoint(tmp_path, dst, overwrite=True)  # was: "'0.bias' is in two shards"
    assert len(result.report.layers) == 2
    assert dst.read_bytes() == first
    _assert_same_as_quantize(dst, sd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-int8.safetensors", "model.safetensors"]


def test_rerun_beside_pytorch_model_bin(tmp_path):
    """Without the earlier output the folder has no .safetensors file: the scan falls back to the .bin."""
    sd = _model().state_dict()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    dst = tmp_path / "model-int8.safetensors"
    mq.quantize_checkpoint(tmp_path, dst)
    mq.quantize_checkpoint(tmp_path, dst, dtype="int4", min_weight_numel=0, overwrite=True)
    assert {layer["dtype"] for layer in mq.load(dst).layers} == {"int4"}


def test_a_float_shard_as_destination_is_still_refused(tmp_path):
    """Only a file mono-quant wrote is left out of the scan: a float shard stays in it, so that
    overwriting it (and losing its weights) is refused."""
    sd = _model().state_dict()
    keys = list(sd)
    save_file({k: sd[k] for k in keys[:2]}, os.fspath(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: sd[k] for k in keys[2:]}, os.fspath(tmp_path / "model-00002-of-00002.safetensors"))
    before = (tmp_path / "model-00002-of-00002.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="is the checkpoint being quantized"):
        mq.quantize_checkpoint(tmp_path, tmp_path / "model-00002-of-00002.safetensors", overwrite=True)
    assert (tmp_path / "model-00002-of-00002.safetensors").read_bytes() == before


# -- suffixes in any case ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["model.SAFETENSORS", "model.Safetensors", "model.PT", "pytorch_model.BIN"])
def test_upper_case_suffixes_are_read(tmp_path, name):
    sd = _model().state_dict()
    if name.lower().endswith(".safetensors"):
        save_file(sd, os.fspath(tmp_path / name))
    else:
        torch.save(sd, tmp_path / name)
    mq.quantize_checkpoint(tmp_path / name, tmp_path / "a.safetensors")
    _assert_same_as_quantize(tmp_path / "a.safetensors", sd)
    folder = tmp_path / "folder"
    folder.mkdir()
    os.replace(tmp_path / name, folder / name)
    mq.quantize_checkpoint(folder, tmp_path / "b.safetensors")  # found by a folder scan too
    _assert_same_as_quantize(tmp_path / "b.safetensors", sd)


# -- a folder scan takes weight files only --------------------------------------------------------------------

def test_folder_scan_leaves_training_state_out(tmp_path):
    sd = _model().state_dict()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    torch.save({"learning_rate": 1e-3, "output_dir": "out"}, tmp_path / "training_args.bin")
    torch.save({"state": {}, "param_groups": []}, tmp_path / "optimizer.pt")
    torch.save({"python": 1}, tmp_path / "rng_state.pth")
    mq.quantize_checkpoint(tmp_path, tmp_path / "q.safetensors")
    _assert_same_as_quantize(tmp_path / "q.safetensors", sd)


def test_folder_scan_takes_hugging_face_bin_shards(tmp_path):
    sd = _model().state_dict()
    keys = list(sd)
    torch.save({k: sd[k] for k in keys[:2]}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({k: sd[k] for k in keys[2:]}, tmp_path / "pytorch_model-00002-of-00002.bin")
    torch.save({"learning_rate": 1e-3}, tmp_path / "training_args.bin")
    mq.quantize_checkpoint(tmp_path, tmp_path / "q.safetensors")
    _assert_same_as_quantize(tmp_path / "q.safetensors", sd)


def test_folder_without_weight_files_says_what_it_considered(tmp_path):
    torch.save({"learning_rate": 1e-3}, tmp_path / "training_args.bin")
    torch.save(_model().state_dict(), tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors, pytorch_model\*\.bin .*\(considered "
                                              r"checkpoint\.pt, training_args\.bin: .*pass the state_dict file itself"):
        mq.quantize_checkpoint(tmp_path, tmp_path / "q.safetensors")
    mq.quantize_checkpoint(tmp_path / "checkpoint.pt", tmp_path / "q.safetensors")  # the file itself is read


def test_a_folder_of_one_torch_save_file_reads_it(tmp_path):
    sd = _model().state_dict()
    torch.save(sd, tmp_path / "checkpoint.pt")
    mq.quantize_checkpoint(tmp_path, tmp_path / "q.safetensors")
    _assert_same_as_quantize(tmp_path / "q.safetensors", sd)


def test_weight_file_names():
    for name in ("pytorch_model.bin", "pytorch_model-00001-of-00003.bin", "model.pt", "Model.PTH", "model-1.bin"):
        assert is_weight_file_name(name), name
    for name in ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt",
                 "model.safetensors", "pytorch_model.bin.index.json"):
        assert not is_weight_file_name(name), name


# ---- a folder's own files, remote code, empty tensors with huge sides ----------------------------------------


def test_a_folders_index_and_config_are_not_overwritten(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file({"a.weight": torch.randn(16, 32)}, str(folder / "model-00001-of-00001.safetensors"))
    index = {"metadata": {}, "weight_map": {"a.weight": "model-00001-of-00001.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text("{}")
    for name in ("model.safetensors.index.json", "config.json"):
        before = (folder / name).read_bytes()
        with pytest.raises(mq.CheckpointError, match="is the checkpoint being quantized"):
            mq.quantize_checkpoint(folder, folder / name, overwrite=True)
        assert (folder / name).read_bytes() == before


def test_remote_code_of_a_folder_never_runs(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    asked = []
    original = transformers.AutoConfig.from_pretrained

    def recording(*args, **kwargs):  # (a prompt, "run the custom code? [y/N]", would wait on stdin)
        asked.append(kwargs.get("trust_remote_code"))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", recording)

    marker = tmp_path / "ran"
    (tmp_path / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                        "from transformers import PretrainedConfig\n"
                                        "class C(PretrainedConfig):\n    model_type = 'made_up_kind'\n")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "made_up_kind", "architectures": ["X"],
                                                      "auto_map": {"AutoConfig": "custom.C"}}))
    save_file({"a.weight": torch.randn(16, 32)}, str(tmp_path / "model.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mq.quantize_checkpoint(tmp_path, tmp_path.parent / "q.safetensors")  # as a plain state_dict
    assert asked == [False] and not marker.exists()


def test_an_empty_tensor_claiming_a_huge_side_is_refused(tmp_path):

    for shape in ([1 << 25, 0], [0, 1 << 63]):
        header = json.dumps({"a.weight": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}).encode()
        path = tmp_path / f"empty{shape[0]}.safetensors"
        path.write_bytes(struct.pack("<Q", len(header)) + header)
        with pytest.raises(mq.CheckpointError, match="holds no element"):
            mq.quantize_checkpoint(path, tmp_path / "q.safetensors")


def test_an_empty_tensor_claiming_a_huge_side_in_a_pt_file_is_refused(tmp_path):
    torch.save({"a.weight": torch.empty(1 << 25, 0)}, tmp_path / "empty.pt")
    with pytest.raises(mq.CheckpointError, match="holds no element"):
        mq.quantize_checkpoint(tmp_path / "empty.pt", tmp_path / "q.safetensors")


def test_an_unreadable_torch_file_says_what_it_is(tmp_path):
    """torch's own messages spoke of mmap options ("please torch.save your checkpoint with this option")
    for any file that is no zip archive, and of records for a broken one."""
    import zipfile

    (tmp_path / "legacy.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match=r"not a torch.save zip archive: a legacy torch.save file"):
        mq.quantize_checkpoint(tmp_path / "legacy.pt", tmp_path / "a.safetensors")
    with zipfile.ZipFile(tmp_path / "broken.pt", "w") as archive:
        archive.writestr("broken/data.pkl", b"not a pickle")
    with pytest.raises(CheckpointError, match=r"a zip archive that torch.load\(weights_only=True\) cannot read") as info:
        mq.quantize_checkpoint(tmp_path / "broken.pt", tmp_path / "b.safetensors")
    assert "Could this error message be improved" not in str(info.value)
    assert not list(tmp_path.glob("*.safetensors"))
