"""quantize_checkpoint() refuses a state_dict mono-quant already quantized that was saved without its
manifest (torch.save(qmodel.state_dict()), or a plain .safetensors of those buffers), with the
AlreadyQuantizedError quantize() raises for it: it used to succeed, warning that nothing was quantized,
and wrote a "quantized" file holding the float entries."""
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.calibration import CalibrationWarning
from mono_quant.errors import AlreadyQuantizedError
from mono_quant.io import CheckpointError
from mono_quant.io.reader import CheckpointReader


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))


@pytest.mark.parametrize("kind", ["pt", "safetensors"])
def test_quantized_state_dict_without_manifest_is_refused_like_quantize(tmp_path, kind):
    qsd = mq.quantize(_model()).model.state_dict()
    src = tmp_path / f"q8.{kind}"
    if kind == "pt":
        torch.save(qsd, src)
    else:
        save_file({k: v.contiguous() for k, v in qsd.items()}, os.fspath(src))
    with pytest.raises(AlreadyQuantizedError) as from_memory:
        mq.quantize(qsd)
    with pytest.raises(AlreadyQuantizedError) as from_file:
        mq.quantize_checkpoint(src, tmp_path / "qq.safetensors")
    assert str(from_file.value) == f"{src}: {from_memory.value}"  # the same refusal, naming the file
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]  # no output, no temporary file


def test_refusal_reads_no_tensor(tmp_path, monkeypatch):
    """The check looks at the names only: the file is refused before any tensor is read."""
    save_file({k: v.contiguous() for k, v in mq.quantize(_model()).model.state_dict().items()},
              os.fspath(tmp_path / "q8.safetensors"))

    def no_reads(self, key):
        raise AssertionError(f"read {key}")

    monkeypatch.setattr(CheckpointReader, "get", no_reads)
    monkeypatch.setattr(CheckpointReader, "items", no_reads)
    with pytest.raises(AlreadyQuantizedError):
        mq.quantize_checkpoint(tmp_path / "q8.safetensors", tmp_path / "out.safetensors")


def test_a_file_with_its_manifest_is_still_a_checkpoint_error(tmp_path):
    save_file(_model().state_dict(), os.fspath(tmp_path / "m.safetensors"))
    mq.quantize_checkpoint(tmp_path / "m.safetensors", tmp_path / "q.safetensors")
    with pytest.raises(CheckpointError, match="already a mono-quant file"):
        mq.quantize_checkpoint(tmp_path / "q.safetensors", tmp_path / "qq.safetensors")


def test_a_static_int8_file_is_a_checkpoint_error(tmp_path):
    """A static model's file carries its own manifest key (mono_quant.static): it was read as float
    tensors, and the output lost the static graph."""
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)).eval()
    torch.manual_seed(0)
    with pytest.warns(CalibrationWarning):
        result = mq.quantize(model, "int8", activations="static", calibration=[torch.randn(4, 64)])
    mq.save(result, tmp_path / "static.safetensors")
    with pytest.raises(CheckpointError, match="already a mono-quant file"):
        mq.quantize_checkpoint(tmp_path / "static.safetensors", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_a_folder_holding_earlier_outputs_reads_its_float_shards(tmp_path):
    """Outputs written into the folder under other names are not shards of the float model."""
    folder = tmp_path / "model"
    folder.mkdir()
    model = _model()
    save_file(model.state_dict(), os.fspath(folder / "model.safetensors"))
    mq.quantize_checkpoint(folder, folder / "a.safetensors")
    second = mq.quantize_checkpoint(folder, folder / "b.safetensors", dtype="int4", group_size=32)
    assert [layer.name for layer in second.report.layers] == ["0", "2"]
    loaded = mq.load(folder / "b.safetensors", model=_model())
    x = torch.randn(3, 64)
    assert (loaded(x) - model(x)).abs().max() < 0.1
    only_ours = tmp_path / "only"  # a folder of mono-quant files only: read as it is (refused here as quantized)
    only_ours.mkdir()
    (folder / "a.safetensors").rename(only_ours / "a.safetensors")
    with pytest.raises(CheckpointError, match="already a mono-quant file"):
        mq.quantize_checkpoint(only_ours, tmp_path / "c.safetensors")


def test_a_folder_of_a_torch_save_file_and_an_earlier_output_reads_the_float_file(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save(_model().state_dict(), folder / "pytorch_model.bin")
    mq.quantize_checkpoint(folder, folder / "out.safetensors")
    second = mq.quantize_checkpoint(folder, folder / "out2.safetensors", dtype="int4", group_size=32)
    assert [layer.name for layer in second.report.layers] == ["0", "2"]
