"""Writes the fixtures of tests/io/test_io_previous_layout.py with the code of the day.

Run once (``python tests/data/make_layout_v1_fixtures.py``) and commit the
files: they are kept as they were written, so a later change to save() /
quantize_checkpoint() that can no longer read them fails that test.  Do not
regenerate them to make the test pass.
"""
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq

HERE = Path(__file__).resolve().parent


class FixtureNet(nn.Module):
    """One layer of each kind the files describe; the test rebuilds it on meta."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 32)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 64, bias=False)
        self.head = nn.Linear(64, 3)

    def forward(self, tokens, image):
        x = torch.relu(self.conv(image)).flatten(1)
        x = torch.relu(self.fc1(x)) + self.emb(tokens).mean(1)
        return self.head(torch.relu(self.fc2(x)))


def main() -> None:
    torch.manual_seed(0)
    net = FixtureNet().eval()
    tokens = torch.randint(0, 20, (2, 5))
    image = torch.randn(2, 2, 4, 4)
    expected = {"tokens": tokens, "image": image}
    for tag, options in {"int8": dict(dtype="int8", embeddings=True),
                         "int4": dict(dtype="int4", group_size=32, method="rtn")}.items():
        result = mq.quantize(net, **options)
        mq.save(result, HERE / f"layout_v1_{tag}_model.safetensors", overwrite=True)
        with torch.no_grad():
            expected[f"{tag}_output"] = result.model(tokens, image)
    float_path = HERE / "layout_v1_float.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, float_path)
    checkpoint = HERE / "layout_v1_checkpoint_int8.safetensors"
    mq.quantize_checkpoint(float_path, checkpoint, dtype="int8", exclude=["emb"], overwrite=True)
    float_path.unlink()
    with torch.no_grad():
        expected["checkpoint_output"] = mq.load(checkpoint, model=FixtureNet())(tokens, image)
    save_file(expected, HERE / "layout_v1_expected.safetensors")


if __name__ == "__main__":
    main()
