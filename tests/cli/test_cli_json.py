"""--json output is strict JSON (no Infinity / NaN tokens, which jq and JavaScript reject),
and Python still reads an identical tensor's SQNR back as inf."""
import json
import math
import os

import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.cli import main


def _strict(text):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_compare_and_inspect_json_are_strict(tmp_path, capsys):
    torch.manual_seed(0)
    src = tmp_path / "model.safetensors"
    save_file(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).state_dict(), os.fspath(src))
    dst = tmp_path / "q.safetensors"
    mq.quantize_checkpoint(src, dst, "int8")
    assert main(["compare", os.fspath(src), os.fspath(dst), "--json"]) == 0
    out = capsys.readouterr().out
    rows = {r["name"]: r for r in _strict(out)["rows"]}
    assert rows["0.bias"]["sqnr_db"] > 1e308  # an identical tensor: 1e999 in the text
    assert math.isinf({r["name"]: r for r in json.loads(out)["rows"]}["0.bias"]["sqnr_db"])
    assert 30 < rows["0.weight"]["sqnr_db"] < 80
    assert main(["inspect", os.fspath(dst), "--json"]) == 0
    _strict(capsys.readouterr().out)
