"""A static int8 model sent to another process by torch.multiprocessing (an mp.Queue, a Process
argument, a spawn DataLoader's dataset): its pickling moves every buffer into shared memory, which
freed the memory the layers' cached NumPy views (and the one-call program) pointed at, so the
sender and the copy computed garbage (1e20 and more).  Both give the same bits now."""
import warnings

import pytest
import torch
from multiprocessing.reduction import ForkingPickler
from torch import nn

import mono_quant as mq


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x)).mean((2, 3))
        if y.sum() > -1e9:  # (data-dependent: the per-layer fallback)
            y = y + 0
        return self.fc(y)


MODELS = {
    "program": (lambda: nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1,
                                                                                          groups=16),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)),
                lambda: torch.randn(16, 3, 8, 8)),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.Conv1d(8, 8, 3, groups=8)),
               lambda: torch.randn(16, 3, 20)),
    "per-layer": (Untraceable, lambda: torch.randn(16, 3, 8, 8)),
}


@pytest.mark.parametrize("case", MODELS)
@pytest.mark.parametrize("as_program", [True, False], ids=["one-call", "op-by-op"])
def test_sender_and_copy_keep_their_bits(case, as_program):
    make, data = MODELS[case]
    torch.manual_seed(0)
    model = make().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(model, "int8", activations="static", calibration=[data() for _ in range(2)]).model
    if hasattr(qmodel, "run_as_program"):
        qmodel.run_as_program = as_program
    elif not as_program:
        pytest.skip("the per-layer fallback has no one-call program")
    x = data()[:2]
    with torch.no_grad():
        ref = qmodel(x)
        copy = ForkingPickler.loads(ForkingPickler.dumps(qmodel))  # (what an mp.Queue sends)
        assert torch.equal(qmodel(x), ref)
        assert torch.equal(copy(x), ref)
        assert torch.equal(qmodel(x), ref)
