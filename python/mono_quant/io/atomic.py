"""Atomic file output: write to a temporary file beside the destination,
then publish it with one rename, so ``dst`` is either absent, the old file,
or the complete new file - never a truncated one."""
from __future__ import annotations

import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["PICKLE_SUFFIXES", "atomic_output", "check_destination"]


# names that say "pickled torch.save file" (io/shards.py reads .pt / .pth / .bin that way)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


def check_destination(dst, overwrite: bool) -> Path:
    """Raise before any work is done if ``dst`` can't be written: ``ValueError`` for a
    pickle's name (.pt / .pth / .bin ...), ``FileExistsError`` when it exists and
    ``overwrite`` is false, ``IsADirectoryError`` for a directory,
    ``FileNotFoundError`` when its folder doesn't exist."""
    dst = Path(os.fspath(dst))
    if dst.suffix.lower() in PICKLE_SUFFIXES:  # what we write is safetensors, whatever its name says
        raise ValueError(f"{dst}: mono-quant writes safetensors files; a {dst.suffix} name makes tools (and "
                         f"torch.load) read it as a pickled state_dict: name it {dst.with_suffix('.safetensors').name}")
    if dst.is_dir():
        raise IsADirectoryError(f"{dst} is a directory; give a file name")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists (pass overwrite=True, or --force, to replace it)")
    if not dst.parent.is_dir():
        raise FileNotFoundError(f"folder {dst.parent} does not exist")
    return dst


@contextmanager
def atomic_output(dst, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``dst``'s folder; when the block succeeds it is
    fsynced and renamed to ``dst``, when it raises (or is interrupted) it is
    deleted.  A replaced ``dst`` keeps its mode (and owner, where the process may
    set it); a new one gets the umask's mode, as with open().  Without ``overwrite`` an existing ``dst`` is never replaced,
    even one created while the block ran (``FileExistsError``).  A system error writing the
    temporary (an unwritable folder, a full disk) is raised as an ``OSError`` of the same errno
    naming ``dst``: "cannot write <dst>: <reason>"."""
    dst = check_destination(dst, overwrite)
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _take_permissions(tmp, dst if overwrite else None)
        _publish(tmp, dst, overwrite)
    except OSError as exc:
        if not _about_the_write(exc, tmp):
            raise
        # the hidden temporary's name is not one the caller knows: say which file could not be written
        raise OSError(exc.errno, f"cannot write {dst}: {exc.strerror}") from exc
    finally:
        _remove(tmp)


def _about_the_write(exc: OSError, tmp: Path) -> bool:
    """Whether ``exc`` is a failure to write ``tmp``: a system error naming it (open, rename) or
    naming no file (a write, fsync); errors naming another file (a source) and our own
    message-only errors (FileExistsError from :func:`_publish`) pass unchanged."""
    return exc.errno is not None and exc.filename in (None, os.fspath(tmp))


def _remove(tmp: Path) -> None:
    """Delete ``tmp`` if it is there: on a read-only file system unlink fails with EROFS even
    for a file that was never created, which must not hide the error that stopped the write."""
    try:
        os.unlink(tmp)
    except OSError:
        if os.path.lexists(tmp):
            raise


def _take_permissions(tmp: Path, replaced) -> None:
    """Give ``tmp`` the mode (and, best effort, the owner) of the file it replaces, so a
    0600 model stays 0600; a new file gets what a plain open() would give (0666 less the
    umask), whoever wrote ``tmp``."""
    try:
        old = os.stat(replaced) if replaced is not None else None
    except FileNotFoundError:
        old = None
    if old is None:
        os.chmod(tmp, 0o666 & ~_umask())
        return
    mine = os.stat(tmp)
    if (old.st_uid, old.st_gid) != (mine.st_uid, mine.st_gid) and hasattr(os, "chown"):
        try:
            os.chown(tmp, old.st_uid, old.st_gid)
        except OSError:  # only root may give a file away; the group may still be refused
            pass
    os.chmod(tmp, stat.S_IMODE(old.st_mode))  # after chown, which may clear set-id bits


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish(tmp: Path, dst: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)  # fails if dst appeared meanwhile, unlike rename
    except FileExistsError:
        raise FileExistsError(f"{dst} already exists (pass overwrite=True, or --force, to replace it)") from None
    except OSError:  # file system without hard links
        if dst.exists():
            raise FileExistsError(f"{dst} already exists (pass overwrite=True, or --force, to replace it)") from None
        os.replace(tmp, dst)
