"""Weights with no values the kernels can read - on the meta device, or sparse - are skipped
with that reason on every path (a model, a state_dict, a state_dict with a skeleton), refused
by quantize_weight() and named in a checkpoint, never a torch internal error."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
NO_DATA = {"meta": lambda: torch.empty(64, 64, device="meta"), "sparse_coo": lambda: torch.randn(64, 64).to_sparse(),
           "sparse_csr": lambda: torch.randn(64, 64).to_sparse_csr()}


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
@pytest.mark.parametrize("kind", NO_DATA)
def test_a_state_dict_entry_without_data_is_skipped(kind, dtype):
    sd = {"a.weight": NO_DATA[kind](), "b.weight": torch.randn(64, 64)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mq.quantize(sd, dtype)
    assert [(s.name, s.type) for s in result.skipped] == [("a", "Linear")]
    assert kind.split("_")[0] in result.skipped[0].reason
    assert [layer.name for layer in result.report.layers] == ["b"]


def test_a_meta_entry_for_a_skeleton_layer_is_skipped():
    sd = {"0.weight": torch.empty(64, 64, device="meta"), "0.bias": torch.zeros(64),
          "1.weight": torch.randn(64, 64), "1.bias": torch.zeros(64)}
    result = mq.quantize(sd, model=nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)))
    assert [s.name for s in result.skipped] == ["0"] and "meta" in result.skipped[0].reason
    assert isinstance(result.model[1], mq.QuantizedModule)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
@pytest.mark.parametrize("kind", NO_DATA)
def test_quantize_weight_refuses_a_tensor_without_data(kind, dtype):
    with pytest.raises(ValueError, match=kind.split("_")[0]):
        mq.quantize_weight(NO_DATA[kind](), dtype)


@pytest.mark.parametrize("kind", ["meta", "sparse_coo"])
def test_a_checkpoint_entry_without_data_is_named(tmp_path, kind):
    src = tmp_path / "m.pt"
    torch.save({"a.weight": NO_DATA[kind](), "b.weight": torch.randn(64, 64)}, src)
    with pytest.raises(mq.CheckpointError, match=f"tensor 'a.weight' is .*{kind.split('_')[0]}"):
        mq.quantize_checkpoint(src, tmp_path / "out.safetensors")


@pytest.mark.parametrize("kind", ["sparse_coo", "sparse_csr"])
def test_a_model_holding_a_sparse_layer_quantizes_the_others(kind):
    """deepcopy refuses sparse tensors (preserve_format): the model's copy takes a clone of them."""
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    model[0].weight = nn.Parameter(NO_DATA[kind](), requires_grad=False)
    model.register_buffer("mask", torch.eye(4).to_sparse())
    result = mq.quantize(model)
    assert [s.name for s in result.skipped] == ["0"] and "sparse" in result.skipped[0].reason
    assert isinstance(result.model[1], mq.QuantizedModule)
    copied = result.model[0].weight
    assert copied is not model[0].weight and copied.layout == model[0].weight.layout
    assert torch.equal(copied.to_dense(), model[0].weight.to_dense()) and not copied.requires_grad
    assert result.model.mask is not model.mask and torch.equal(result.model.mask.to_dense(), torch.eye(4))


def test_a_sparse_buffer_keeps_requires_grad_in_the_copy():
    model = nn.Sequential(nn.Linear(64, 64))
    model.register_buffer("b", torch.randn(4, 4).to_sparse().requires_grad_())
    copied = mq.quantize(model).model.b
    assert copied is not model.b and copied.requires_grad and copied.layout == torch.sparse_coo
