"""The report's byte totals count a tied tensor once: quantize(state_dict) summed every entry (a tied
embedding / head twice: 2.31 MB reported for a 1.29 MB model), and Report.bytes_before / bytes_after
summed the rows of layers sharing one weight.  to_dict() is JSON without NaN / Infinity."""
import json

from torch import nn

import mono_quant as mq


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.mid, self.head = nn.Embedding(100, 64), nn.Linear(64, 64), nn.Linear(64, 100, bias=False)
        self.head.weight = self.emb.weight


def _bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def test_a_tied_state_dict_counts_its_tensor_once():
    model = _Tied()
    sd = model.state_dict()
    report = mq.quantize(sd, "int8").report
    assert report.model_bytes_before == _bytes(model.parameters())  # parameters() lists a tied one once
    assert report.model_bytes_before == mq.quantize(model, "int8").report.model_bytes_before


def test_layers_sharing_a_weight_count_it_once_in_the_totals():
    a, b = nn.Linear(64, 64), nn.Linear(64, 64)
    b.weight = a.weight
    report = mq.quantize(nn.Sequential(a, nn.ReLU(), b), "int8").report
    rows = {r.name: r for r in report.layers}
    assert rows["0"].bytes_before == rows["2"].bytes_before  # each row shows its layer's own
    assert report.bytes_before == _bytes([a.weight, a.bias, b.bias])
    assert report.bytes_after < rows["0"].bytes_after + rows["2"].bytes_after


def test_to_dict_is_strict_json():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    report = mq.quantize(model, "bf16").report
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["layers"][0]["weight_sqnr_db"] is None or data["layers"][0]["weight_sqnr_db"] > 0
    assert data["bytes_before"] == report.bytes_before and "tied" in data
