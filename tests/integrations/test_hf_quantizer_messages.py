"""Messages of the transformers integration: another quantizer's skip list (modules_to_not_convert)
points to exclude=, and model.dequantize() says why not (transformers' "raise an issue on GitHub")."""

import pytest

pytest.importorskip("transformers")
import hf_models  # noqa: E402

import mono_quant as mq  # noqa: E402


@pytest.mark.parametrize("key", ["modules_to_not_convert", "llm_int8_skip_modules"])
def test_other_quantizers_skip_lists_point_to_exclude(key):
    with pytest.warns(UserWarning, match=rf"'{key}' \(another quantizer's option\) ignored: .* exclude="):
        mq.MonoQuantConfig(dtype="int8", **{key: ["lm_head"]})


def test_dequantize_says_why_not(tmp_path):
    model = hf_models.loaded_quantized("llama", tmp_path / "float", dtype="int8")
    with pytest.raises(NotImplementedError, match="not dequantized in place"):
        model.dequantize()
