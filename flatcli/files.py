"""Atomic file writes, and the one-line errors of a write that fails.

Every table part, checkpoint, sidecar and run.json is written to a hidden temp file beside its
target and renamed over it, so nothing flatcli writes is seen half-written."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from flatcli.errors import UsageError, WriteError

# The causes a user fixes outside flatcli (space, quota, permissions, a read-only mount, a bad
# disk): one line naming the path, never an internal error.
STORAGE_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO, errno.EACCES, errno.EPERM,
}
_ERRNO_RE = re.compile(r"\[Errno (\d+)\]")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Create or replace `path` with what `write(tmp_path)` writes; returns `path`.

    A full disk, an exceeded quota, a read-only file system and the like raise `WriteError`
    naming `path` and the cause; the temp file is removed and `path` keeps what it held.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0o600; others on a cluster may read
        os.replace(tmp, path)
    except OSError as err:  # pyarrow's IO errors are OSErrors too, sometimes without errno
        code = storage_errno(err)
        if code is None:
            raise
        raise WriteError(
            f"cannot write {path}: {os.strerror(code)} ({errno.errorcode.get(code, code)})"
        ) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


def storage_errno(err: OSError) -> int | None:
    """The errno of a storage fault (STORAGE_ERRNOS) behind `err`, else None."""
    code = err.errno
    if code is None:
        found = _ERRNO_RE.search(str(err))
        code = int(found.group(1)) if found else None
    return code if code in STORAGE_ERRNOS else None


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def ensure_writable(out) -> None:
    """Create the directory `out` or fail with one line (UsageError) before any work starts."""
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"--out {out}: not writable ({err.strerror or err})") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"--out {out}: not writable")
