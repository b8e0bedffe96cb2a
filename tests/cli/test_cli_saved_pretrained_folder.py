"""inspect / compare / bench of a folder written by save_pretrained of a mono-quant model (its layers
are in config.json, not in a manifest of the file): they reported "plain safetensors, 0 quantized
layers", compared its float tensors only ("lowest SQNR inf", exit 0) or said "a float checkpoint?";
they say what the file is and what to do, and exit 1."""
import pytest

pytest.importorskip("transformers")
import hf_models  # noqa: E402

from mono_quant.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("saved")
    hf_models.loaded_quantized("llama", base / "float", dtype="int8").save_pretrained(base / "q")
    return base


@pytest.mark.parametrize("args", [["inspect", "q/model.safetensors"], ["compare", "float", "q"],
                                  ["bench", "q/model.safetensors"]], ids=["inspect", "compare", "bench"])
def test_a_saved_pretrained_folder_is_named_with_what_to_do(folders, args, capsys):
    argv = [args[0]] + [str(folders / a) for a in args[1:]]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "saved by save_pretrained" in err and "config.json" in err and "from_pretrained" in err


def test_the_float_folder_still_inspects(folders, capsys):
    assert main(["inspect", str(folders / "float" / "model.safetensors")]) == 0
    assert "0 quantized layers" in capsys.readouterr().out


def test_other_files_and_configs_are_left_alone(folders, tmp_path, capsys):
    # a float checkpoint of the same model in that folder is no such file; nor is any file beside a
    # config.json whose quantization_config is not mono-quant's, or not a mapping at all
    import json
    import shutil

    import torch

    from safetensors.torch import save_file

    float_copy = folders / "q" / "float.safetensors"
    shutil.copy(folders / "float" / "model.safetensors", float_copy)
    assert main(["inspect", str(float_copy)]) == 0
    for odd in ("bitsandbytes", ["x"], 3, {"quant_method": ["mono_quant"]}):
        (tmp_path / "config.json").write_text(json.dumps({"quantization_config": odd}))
        save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
        assert main(["inspect", str(tmp_path / "model.safetensors")]) == 0
    capsys.readouterr()
