"""torch.export with dynamic image sizes of an int8 conv whose two routes (packed kernel, torch's conv)
both stay in the graph under torch.cond: a strided conv without padding failed to export (torch.cond
refused its branches' strides, Max(1, (H - 3) // 2 + 1)) where the float conv exports."""
import pytest
import torch
from torch import nn
from torch.export import Dim

import mono_quant as mq


@pytest.mark.parametrize("make", [lambda: nn.Conv2d(8, 16, 3, stride=2), lambda: nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                  lambda: nn.Conv2d(8, 16, (3, 5), stride=(2, 3))], ids=["s2", "s2p1", "s23"])
def test_a_strided_conv_exports_with_dynamic_image_sizes(make):
    torch.manual_seed(0)
    q = mq.quantize(nn.Sequential(make()).eval(), "int8").model
    spec = ({0: Dim("B", min=1, max=64), 2: Dim("H", min=8, max=224), 3: Dim("W", min=8, max=224)},)
    program = torch.export.export(q, (torch.randn(2, 8, 32, 32),), dynamic_shapes=spec).module()
    with torch.no_grad():
        for shape in [(1, 8, 8, 8), (3, 8, 40, 33), (2, 8, 224, 224)]:
            x = torch.randn(*shape)
            torch.testing.assert_close(program(x), q(x), rtol=0, atol=1e-5)
