"""save(..., overwrite=True) keeps the replaced file's mode and owner; a new file gets the
umask, like open() (issue 14, finding 5)."""
import os
import stat

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.io.atomic import atomic_output

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _qmodel():
    torch.manual_seed(0)
    return mq.quantize(nn.Linear(8, 16))[0]  # (16 outputs: narrower layers stay float, narrow.py)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444, 0o755])
def test_overwrite_keeps_the_mode(tmp_path, mode):
    path = tmp_path / "m.safetensors"
    mq.save(_qmodel(), path)
    os.chmod(path, mode)
    mq.save(_qmodel(), path, overwrite=True)
    assert _mode(path) == mode
    assert mq.load(path).layers  # and it is the new, complete file


def test_new_file_gets_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        mq.save(_qmodel(), tmp_path / "a.safetensors")
        with open(tmp_path / "b", "w"):
            pass
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.safetensors") == _mode(tmp_path / "b") == 0o600


def test_overwrite_through_atomic_output_keeps_mode_of_a_checkpoint(tmp_path):
    src = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.randn(4, 8)}, os.fspath(src))
    dst = tmp_path / "q.safetensors"
    dst.write_bytes(b"old")
    os.chmod(dst, 0o600)
    mq.quantize_checkpoint(src, dst, overwrite=True)
    assert _mode(dst) == 0o600


def test_owner_is_restored_when_it_differs(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"old")
    real_stat = os.stat
    st = real_stat(path)
    calls = []

    class _Other:
        def __init__(self, s):
            self._s = s

        def __getattr__(self, name):
            if name == "st_uid":
                return self._s.st_uid + 1
            return getattr(self._s, name)

    def fake_stat(p, *a, **k):
        s = real_stat(p, *a, **k)
        return _Other(s) if os.fspath(p) == os.fspath(path) else s

    def fake_chown(p, uid, gid):
        calls.append((uid, gid))
        raise PermissionError("not root")

    monkeypatch.setattr(os, "stat", fake_stat)
    monkeypatch.setattr(os, "chown", fake_chown)
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert calls == [(st.st_uid + 1, st.st_gid)]  # tried, and a refusal is not an error
    assert path.read_bytes() == b"new"
