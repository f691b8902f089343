"""Writing to disk so that nothing is half-written: files fsynced, a directory published by renames
only when complete, a full disk said in one line, free space checked before the work.

Used by checkpoints and by the run directory; imports nothing of imgtune but ``errors``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from imgtune.errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL_BYTES = 1 << 20  # libraries that hide errno (safetensors, torch's C++ streams) are judged by this


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file below ``root``, then every directory, so a rename of ``root`` publishes durable content."""
    for path in sorted(root.rglob("*"), reverse=True):
        fsync(path)
    fsync(root)


def disk_full(err: BaseException, where: Path) -> bool:
    if isinstance(err, OSError) and err.errno in DISK_FULL:
        return True
    if "No space left on device" in str(err) or "Disk quota exceeded" in str(err):
        return True
    try:  # torch.save fails with "basic_ios::clear", safetensors with its own error type
        return shutil.disk_usage(existing_parent(where)).free < NEARLY_FULL_BYTES
    except OSError:
        return False


@contextlib.contextmanager
def writing(where: Path) -> Iterator[None]:
    """A full disk while writing ``where`` becomes one line for the user; any other failure is left as it is."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # the libraries that write raise OSError, RuntimeError or their own types
        if disk_full(err, where):
            raise UserError(f"no space left on device while writing {where}: free some space and run again") from None
        raise


def existing_parent(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())


def check_free_space(path: Path, needed: int, what: str) -> None:
    """Refuse before the work when the file system holding ``path`` has less than ``needed`` bytes free."""
    free = shutil.disk_usage(existing_parent(path)).free
    if free < needed:
        raise UserError(
            f"only {free / 2**20:.1f} MiB free for {what} {path}, about {needed / 2**20:.1f} MiB "
            "are needed: free some space or choose another place"
        )


def publish_dir(final: Path, fill: Callable[[Path], None], carry: tuple[str, ...] = ()) -> None:
    """Write a directory through ``fill(tmp)`` into a temporary sibling, fsync it, and rename it into place.

    An earlier directory at ``final`` stays whole until the new one is complete; then it is moved aside,
    the new one renamed in, the entries named in ``carry`` (a run's checkpoints/ and logs/, which live in
    the final directory while training) moved across, and the old one removed. A reader of ``final``
    sees the old directory, the new one, or (for an instant, or after a crash between two renames)
    none, never a mix. A failure while filling removes the temporary directory."""
    final = final.expanduser()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    aside = final.with_name(f".{final.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with writing(final):
            fill(tmp)
            fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        os.replace(final, aside)
    os.replace(tmp, final)
    for name in carry:
        if (aside / name).exists():
            os.replace(aside / name, final / name)
    fsync(final.parent)
    shutil.rmtree(aside, ignore_errors=True)
