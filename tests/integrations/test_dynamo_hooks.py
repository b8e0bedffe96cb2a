"""``import mono_quant`` leaves torch._dynamo unimported (dynamo_hooks): the decorations that need it
(the RNN's PackedSequence helpers kept out of graphs, the traced forward's constants) are made when
torch.compile / torch.export import it, and then work as if made at import."""
import subprocess
import sys

CODE = r"""
import sys
import torch
import mono_quant as mq
assert "torch._dynamo" not in sys.modules, "import mono_quant imported torch._dynamo"
from torch.nn.utils.rnn import pack_padded_sequence

torch.manual_seed(0)
linear = mq.quantize(torch.nn.Sequential(torch.nn.Linear(16, 8)), dtype="int8")[0]
x = torch.randn(4, 16)
with torch.no_grad():
    eager = linear(x)
    compiled = torch.compile(linear, fullgraph=True)(x)  # (imports torch._dynamo: the hooks run)
assert torch.equal(compiled, eager), "a fullgraph compile of a quantized Linear differs from eager"

class Wrap(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0].data

lstm = mq.quantize(torch.nn.LSTM(12, 8), dtype="int8")[0]
packed = pack_padded_sequence(torch.randn(6, 3, 12), torch.tensor([6, 2, 4]), enforce_sorted=False)
try:
    torch.compile(Wrap(lstm), fullgraph=True)(packed)
except Exception as e:
    assert "rnn(padded, hx, lengths=lengths)" in str(e), str(e)[-2000:]
else:
    raise AssertionError("a PackedSequence under fullgraph=True compiled")
with torch.no_grad():
    torch._dynamo.reset()
    got = torch.compile(Wrap(lstm))(packed)
    torch.testing.assert_close(got, Wrap(lstm)(packed))
print("ok")
"""


def test_dynamo_is_imported_by_compile_not_by_the_package():
    run = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout[-2000:] + run.stderr[-4000:]


def test_the_hook_runs_now_when_dynamo_is_already_imported():
    import torch._dynamo  # noqa: F401  (the test process may have imported it already)

    from mono_quant.dynamo_hooks import when_dynamo_imported

    ran = []
    when_dynamo_imported(lambda: ran.append(1))
    assert ran == [1]
