"""MonoQuantConfig: a misspelled option warns (naming the closest one) instead of being dropped
silently, and activations="static" (which needs calibration data) is refused at construction."""
import warnings

import pytest

pytest.importorskip("transformers")

import mono_quant as mq  # noqa: E402
from mono_quant.integrations.transformers import MonoQuantConfig  # noqa: E402


def test_misspelled_option_warns_with_the_closest_name():
    with pytest.warns(UserWarning, match=r"unknown option 'dtpye' ignored \(did you mean 'dtype'\?\)"):
        config = MonoQuantConfig(dtpye="int4")
    assert config.dtype == "int8"


def test_keys_transformers_adds_and_a_saved_config_round_trip_quietly():
    config = MonoQuantConfig(dtype="int4", group_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = MonoQuantConfig(**config.to_dict())
        MonoQuantConfig(quant_method="mono_quant", _private=1)
    assert again.dtype == "int4" and again.group_size == 64


def test_static_activations_are_refused():
    with pytest.raises(mq.ConfigError, match=r"activations='static'\) is not supported"):
        MonoQuantConfig(activations="static")
