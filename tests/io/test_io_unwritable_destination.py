"""A destination that cannot be written (a read-only folder, a full disk) raises the documented OSError
naming the destination, from save(), quantize_checkpoint() and the CLI: safetensors' SafetensorError
(an Exception only) escaped save(), and messages named the hidden temporary file
('dir/.x.safetensors.29211.2d163be9.tmp').  Nothing is left behind."""
import errno
import os

import pytest
import safetensors.torch
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.cli import main
from mono_quant.io import checkpoint as checkpoint_module
from mono_quant.io.atomic import atomic_output

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def _qmodel():
    torch.manual_seed(0)
    return mq.quantize(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))).model


def _float_checkpoint(folder):
    torch.manual_seed(0)
    path = folder / "model.safetensors"
    save_file(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16)).state_dict(), os.fspath(path))
    return path


def _assert_names_the_destination(exc, dst, reason):
    message = str(exc)
    assert f"cannot write {dst}: {reason}" in message, message
    assert ".tmp" not in message, message


# -- a full disk ---------------------------------------------------------

def test_full_disk_in_save_is_an_os_error_naming_the_destination(tmp_path, monkeypatch):
    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise SafetensorError(f'Error while serializing: I/O error: No space left on device (os error 28) '
                              f'at path "{os.path.dirname(filename)}/.tmpAbC123"')

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    dst = tmp_path / "m.safetensors"
    with pytest.raises(OSError) as raised:
        mq.save(_qmodel(), dst)
    assert raised.value.errno == errno.ENOSPC
    assert isinstance(raised.value.__cause__.__cause__, SafetensorError)  # the package's own error, kept as the cause
    _assert_names_the_destination(raised.value, dst, "No space left on device")
    assert list(tmp_path.iterdir()) == []  # the temporary file is removed


def test_other_safetensors_write_errors_are_os_errors_too(tmp_path, monkeypatch):
    def fails(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: something else")

    monkeypatch.setattr(safetensors.torch, "save_file", fails)
    dst = tmp_path / "m.safetensors"
    with pytest.raises(OSError, match=f"cannot write {dst}: Error while serializing: something else"):
        mq.save(_qmodel(), dst)
    assert list(tmp_path.iterdir()) == []


def test_full_disk_while_streaming_names_the_destination(tmp_path):
    """An errno without a file name (what write() raises) is the write's failure: named for dst."""
    dst = tmp_path / "q.safetensors"
    with pytest.raises(OSError) as raised:
        with atomic_output(dst) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert raised.value.errno == errno.ENOSPC
    _assert_names_the_destination(raised.value, dst, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_errors_about_other_files_pass_unchanged(tmp_path):
    other = os.fspath(tmp_path / "source.safetensors")
    with pytest.raises(FileNotFoundError) as raised:
        with atomic_output(tmp_path / "q.safetensors"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", other)
    assert raised.value.filename == other
    with pytest.raises(OSError, match="^disk full$"):  # a message-only error: nothing to rename
        with atomic_output(tmp_path / "q.safetensors"):
            raise OSError("disk full")


# -- a read-only folder -------------------------------------------------------------------------------------------

@pytest.fixture
def read_only_folder(tmp_path):
    if os.name != "posix" or os.geteuid() == 0:
        pytest.skip("needs a non-root POSIX user: chmod does not stop root from writing")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def test_save_into_a_read_only_folder(read_only_folder):
    dst = read_only_folder / "x.safetensors"
    with pytest.raises(PermissionError) as raised:
        mq.save(_qmodel(), dst)
    _assert_names_the_destination(raised.value, dst, "Permission denied")
    assert list(read_only_folder.iterdir()) == []


def test_quantize_checkpoint_into_a_read_only_folder(tmp_path, read_only_folder):
    dst = read_only_folder / "x.safetensors"
    with pytest.raises(PermissionError) as raised:
        mq.quantize_checkpoint(_float_checkpoint(tmp_path), dst)
    _assert_names_the_destination(raised.value, dst, "Permission denied")
    assert list(read_only_folder.iterdir()) == []


def test_cli_into_a_read_only_folder(tmp_path, read_only_folder, capsys):
    dst = read_only_folder / "x.safetensors"
    assert main(["quantize", os.fspath(_float_checkpoint(tmp_path)), "-o", os.fspath(dst), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mono-quant quantize: error: ") and len(err.strip().splitlines()) == 1
    _assert_names_the_destination(err, dst, "Permission denied")


# -- a read-only file system (simulated: runs as root too) --------------------------------------------------------

@pytest.fixture
def read_only_file_system(tmp_path, monkeypatch):
    """Creating or unlinking any file in ``folder`` fails with EROFS, as on a read-only mount
    (where unlinking even a file that does not exist fails so)."""
    folder = tmp_path / "mounted-ro"
    folder.mkdir()
    real_open, real_unlink = open, os.unlink

    def inside(path):
        return os.path.dirname(os.path.abspath(os.fsdecode(path))) == os.fspath(folder)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def ro_open(path, mode="r", *args, **kwargs):
        if inside(path) and any(c in mode for c in "wax+"):
            refuse(path)
        return real_open(path, mode, *args, **kwargs)

    def ro_unlink(path, *args, **kwargs):
        if inside(path):
            refuse(path)
        return real_unlink(path, *args, **kwargs)

    def ro_save_file(tensors, filename, metadata=None):
        if inside(filename):  # what safetensors 0.8 raises there (it writes its own temporary beside filename)
            raise SafetensorError(f"Error while serializing: I/O error: Read-only file system (os error 30) at "
                                  f"path \"{os.path.dirname(filename)}/.tmpXyZ\"")
        raise AssertionError("not reached")

    monkeypatch.setattr(checkpoint_module, "open", ro_open, raising=False)  # quantize_checkpoint opens its temporary
    monkeypatch.setattr(os, "unlink", ro_unlink)
    monkeypatch.setattr(safetensors.torch, "save_file", ro_save_file)
    return folder


def test_save_onto_a_read_only_file_system(read_only_file_system):
    dst = read_only_file_system / "x.safetensors"
    with pytest.raises(OSError) as raised:
        mq.save(_qmodel(), dst)
    assert raised.value.errno == errno.EROFS  # not the cleanup's EROFS for the temporary, which was never created
    _assert_names_the_destination(raised.value, dst, "Read-only file system")


def test_quantize_checkpoint_onto_a_read_only_file_system(tmp_path, read_only_file_system):
    dst = read_only_file_system / "x.safetensors"
    with pytest.raises(OSError) as raised:
        mq.quantize_checkpoint(_float_checkpoint(tmp_path), dst)
    assert raised.value.errno == errno.EROFS
    _assert_names_the_destination(raised.value, dst, "Read-only file system")


def test_cli_onto_a_read_only_file_system(tmp_path, read_only_file_system, capsys):
    dst = read_only_file_system / "x.safetensors"
    assert main(["quantize", os.fspath(_float_checkpoint(tmp_path)), "-o", os.fspath(dst), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err == f"mono-quant quantize: error: [Errno 30] cannot write {dst}: Read-only file system\n"
