"""load(path, model=skeleton) keeps the skeleton's forward / backward hooks on the layers it
replaces, as quantize() does (module_hooks.carry_hooks): a hook registered by the architecture
(an output scale, a logger) is part of what the saved model computed.  They used to be dropped,
so the loaded model's outputs differed from the saved one's with no error."""
import pytest
import torch
from torch import nn

import mono_quant as mq


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.lstm = nn.LSTM(64, 32)
        self.attn = nn.MultiheadAttention(32, 4)
        self.out = nn.Linear(32, 8)
        self.fc.register_forward_hook(lambda m, args, out: out * 0.5)  # part of the architecture
        self.lstm.register_forward_hook(lambda m, args, out: (out[0] * 2.0, out[1]))
        self.attn.register_forward_pre_hook(lambda m, args: tuple(a * 0.25 for a in args))

    def forward(self, x):
        h, _ = self.lstm(torch.relu(self.fc(x)))
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out(a)


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_loaded_layers_keep_the_skeletons_hooks(tmp_path, device, dtype):
    torch.manual_seed(0)
    result = mq.quantize(Net().eval(), dtype=dtype)
    assert not result.skipped
    path = mq.save(result, tmp_path / "m.safetensors")
    with torch.device(device):
        skeleton = Net().eval()
    hooks_before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in skeleton.modules()]
    loaded = mq.load(path, model=skeleton)
    assert [len(m._forward_hooks) for m in (loaded.fc, loaded.lstm)] == [1, 1]
    assert len(loaded.attn._forward_pre_hooks) == 1
    assert loaded.fc._forward_hooks is not skeleton.fc._forward_hooks  # tables of its own
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in skeleton.modules()] == hooks_before
    x = torch.randn(5, 3, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))


def test_a_root_layer_keeps_its_hooks(tmp_path):
    torch.manual_seed(0)

    def build():
        layer = nn.Linear(64, 64)
        layer.register_forward_hook(lambda m, args, out: out + 1.0)
        return layer

    qmodel, _ = mq.quantize(build())
    path = mq.save(qmodel, tmp_path / "m.safetensors")
    loaded = mq.load(path, model=build())
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))


def test_a_state_dict_file_keeps_the_hooks_too(tmp_path):
    torch.manual_seed(0)

    def build():
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))
        model[0].register_forward_hook(lambda m, args, out: out * 0.5)
        return model

    model = build()
    result = mq.quantize(model.state_dict())
    path = mq.save(result, tmp_path / "sd.safetensors")
    loaded = mq.load(path, model=build())
    expected = mq.quantize(model.state_dict(), model=build()).model
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected(x))


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_pruned_skeleton_loads_its_float_layers_pruned(tmp_path, device):
    """A pruned layer left float (a 2-output head) in a pruned skeleton: deepcopy refused the
    skeleton's weight_orig * weight_mask (a grad_fn); the loaded layer's weight is computed from the
    file's tensors, and its hook still recomputes it at each call."""
    import torch.nn.utils.prune as prune

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)).eval()
        prune.global_unstructured([(model[0], "weight"), (model[2], "weight")], prune.L1Unstructured, amount=0.3)
        return model

    result = mq.quantize(build())
    assert [s.name for s in result.skipped] == ["2"]
    path = mq.save(result, tmp_path / "m.safetensors")
    with torch.device(device):
        skeleton = build() if device == "cpu" else nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    if device == "meta":
        prune.identity(skeleton[2], "weight")  # (the pruning methods read the weights: meta has none)
    loaded = mq.load(path, model=skeleton)
    head = loaded[2]
    assert torch.equal(head.weight, head.weight_orig * head.weight_mask) and head.weight.device.type == "cpu"
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
