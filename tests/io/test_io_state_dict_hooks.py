"""save() of a model whose state_dict hooks rename, add or drop keys (legacy-name compatibility,
torch's _register_state_dict_hook) writes a file load() reads back: the file holds the tensors
by module name, as its manifest and load(model=skeleton) name them.  It used to store
model.state_dict()'s renamed keys beside a manifest of module names: save succeeded and every
load failed ("the manifest disagrees with the tensors")."""
import pytest
import torch
from torch import nn

import mono_quant as mq


class Root(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = nn.Linear(64, 64)
        self.norm = nn.LayerNorm(64)
        self._register_state_dict_hook(Root._rename)
        self._register_load_state_dict_pre_hook(Root._unrename)
        self.norm._register_state_dict_hook(Root._drop_bias)

    @staticmethod
    def _rename(module, sd, prefix, local):
        for key in list(sd):
            if key.startswith(prefix + "a."):
                sd[prefix + "alpha." + key[len(prefix) + 2:]] = sd.pop(key)
        sd[prefix + "version"] = torch.tensor(2)

    @staticmethod
    def _unrename(sd, prefix, *args):
        for key in list(sd):
            if key.startswith(prefix + "alpha."):
                sd[prefix + "a." + key[len(prefix) + 6:]] = sd.pop(key)
        sd.pop(prefix + "version", None)

    @staticmethod
    def _drop_bias(module, sd, prefix, local):
        sd.pop(prefix + "bias", None)

    def forward(self, x):
        return self.norm(self.b(self.a(x)))


@pytest.mark.parametrize("dtype", ["int8", "int4", "bf16"])
def test_a_model_with_state_dict_hooks_saves_a_loadable_file(tmp_path, dtype):
    torch.manual_seed(0)
    model = Root().eval()
    with torch.no_grad():
        model.norm.bias.add_(0.5)
    result = mq.quantize(model, dtype=dtype, exclude=["b"])
    path = mq.save(result, tmp_path / "m.safetensors")
    qsd = mq.load(path)
    assert {"a.bias", "b.weight", "norm.bias"} <= set(qsd) and "alpha.bias" not in qsd
    loaded = mq.load(path, model=Root().eval())
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
    assert "alpha.bias" in result.model.state_dict()  # the model's own state_dict() still runs its hooks
