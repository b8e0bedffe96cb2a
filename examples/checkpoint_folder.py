"""Quantize a sharded safetensors checkpoint folder without loading the model, then load it.

`quantize_checkpoint` streams one tensor (int8: one part of a tensor) at a
time, so a checkpoint bigger than RAM works; `mono-quant quantize` is the
same from a shell.

    python examples/checkpoint_folder.py [--small]
"""
import argparse
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq


def make_model(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)).eval()


def write_sharded(model: nn.Module, folder: Path) -> None:
    """Two shards and a Hugging Face style *.index.json, as hubs publish them."""
    weight_map, shards = {}, [{}, {}]
    for i, (name, tensor) in enumerate(model.state_dict().items()):
        shards[i % 2][name] = tensor.contiguous()
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file(shard, str(folder / file))
        weight_map.update({name: file for name in shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the test suite runs this)")
    args = parser.parse_args()
    torch.manual_seed(0)
    dim = 64 if args.small else 1024
    model = make_model(dim)
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "float", Path(tmp) / "model-int4.safetensors"
        folder.mkdir()
        write_sharded(model, folder)
        report = mq.quantize_checkpoint(folder, out, "int4", group_size=64).report
        print(f"{len(report.layers)} layers quantized: {report.model_bytes_before} -> "
              f"{report.model_bytes_after} bytes")
        qmodel = mq.load(out, model=make_model(dim))  # or model=... built on the meta device
        x = torch.randn(4, dim)
        with torch.no_grad():
            err = (qmodel(x) - model(x)).norm() / model(x).norm()
        print(f"relative output error of the int4 model: {err:.4f}")


if __name__ == "__main__":
    main()
