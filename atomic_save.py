"""Writing a saved-model directory so that no save can lose data.

`staged_directory(target, overwrite=..., protected=...)` is a context manager that
yields a fresh, private staging directory beside `target` (same parent, so the final
rename stays on one filesystem). The caller writes every file into it; on a normal
exit every file and the directory are fsynced and the staging directory replaces
`target` in one step: `renameat2(RENAME_EXCHANGE)` swaps the two directories
atomically where the kernel and filesystem support it, else `target` is renamed aside
and the staging directory renamed into place; only then is the earlier save removed.
An exception or an interrupt while writing removes the staging directory and leaves
`target` exactly as it was; a process killed outright leaves `target` either the old
save or the new one, never a mixture (and a stale staging directory, which the next
save into the same parent removes once its process is gone).

Before anything is written, `target` is refused (`SavedModelError`) when
- it is a symlink (saving never follows one: nothing outside the directory can be
  overwritten through it), or exists and is not a directory;
- it holds the model being compiled (`protected`), even with `overwrite=True`;
- it holds anything but an earlier requant save (`manifest.looks_like_a_save`), unless
  `overwrite=True`: the user's own files are never deleted without being asked.

Files are created in the staging directory, which this process made (mode 0700) and
which therefore holds no symlink; `write_new_file` creates with O_EXCL | O_NOFOLLOW
anyway. The final directory gets the permissions a `mkdir` would (0777 less the umask).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from requant.errors import SavedModelError
from requant.manifest import MANIFEST, looks_like_a_save

__all__ = ["staged_directory", "write_new_file", "refusal_to_replace"]

logger = logging.getLogger(__name__)

_STAGING_MARK = ".requant-staging-"
_RENAME_EXCHANGE = 2  # linux/fs.h
_ASIDE = "earlier-save"  # where the fallback path parks the earlier save, inside a staging-named directory


def _staging_prefix(target: Path) -> str:
    return f".{target.name}{_STAGING_MARK}{os.getpid()}-"


def refusal_to_replace(target: Path, *, overwrite: bool, protected: Iterable[Path] = ()) -> str | None:
    """Why saving into `target` must not go ahead, or None (module docstring)."""
    if target.is_symlink():
        return f"{target} is a symlink; save into a real directory (saving never follows symlinks)"
    if not target.exists():
        return None
    if not target.is_dir():
        return f"{target} exists and is not a directory"
    resolved = target.resolve()
    for source in protected:
        try:
            inside = Path(source).resolve().is_relative_to(resolved)
        except OSError:
            inside = False
        if inside:
            return (f"{target} holds the model being compiled ({source}); saving replaces the whole directory: "
                    f"choose another output directory")
    if overwrite or not any(target.iterdir()) or looks_like_a_save(target):
        return None
    return (f"{target} holds files that are not an earlier requant save; saving replaces the whole directory: "
            f"choose an empty or new directory, or pass overwrite=True (`--force`) to replace it")


def write_new_file(path: Path, data: bytes) -> None:
    """Create `path` (which must not exist, nor be a symlink) holding `data`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, (os.O_RDONLY | (os.O_DIRECTORY if directory else 0)) | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a directory
        if not directory or exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for entry in os.scandir(root):
        if entry.is_file(follow_symlinks=False):
            _fsync_path(Path(entry.path))
    _fsync_path(root, directory=True)


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # the portable way to read it: set and restore
    os.umask(mask)
    return mask


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (Linux renameat2); False when unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _remove_stale_staging(parent: Path, name: str) -> None:
    """Staging directories of `name` whose process is gone (killed mid-save)."""
    prefix = f".{name}{_STAGING_MARK}"
    for entry in parent.iterdir():
        if not entry.name.startswith(prefix) or entry.is_symlink() or not entry.is_dir():
            continue
        pid_text = entry.name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # still running: another save in progress
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        old = entry / _ASIDE
        if old.is_dir() and not old.is_symlink() and not os.path.lexists(parent / name):
            # killed between moving the earlier save aside and installing the new one
            logger.warning("restoring %s, which an interrupted save had moved aside", parent / name)
            os.rename(old, parent / name)
        logger.info("removing %s, left by an interrupted save", entry)
        shutil.rmtree(entry, ignore_errors=True)


def _install(staging: Path, target: Path) -> None:
    """Put the complete `staging` directory at `target`, then drop what was there."""
    os.chmod(staging, 0o777 & ~_umask())
    if not os.path.lexists(target):
        try:
            os.rename(staging, target)
            return
        except OSError as exc:  # created meanwhile: replace it like an existing one
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if _exchange(staging, target):
        shutil.rmtree(staging)  # now the earlier save
        return
    aside = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), dir=target.parent))
    os.rename(target, aside / _ASIDE)
    os.rename(staging, target)
    shutil.rmtree(aside)


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike, *, overwrite: bool = False,
                     protected: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield a staging directory; on success it becomes `target` (module docstring)."""
    target = Path(target)
    reason = refusal_to_replace(target, overwrite=overwrite, protected=protected)
    if reason:
        raise SavedModelError(f"cannot save into {reason}")
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(parent, target.name)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), dir=parent))
    installed = False
    try:
        yield staging
        if not (staging / MANIFEST).is_file():
            raise SavedModelError(f"cannot save into {target}: the save wrote no {MANIFEST}")
        _fsync_tree(staging)
        # a second check: the directory may have changed while the model was written
        reason = refusal_to_replace(target, overwrite=overwrite, protected=protected)
        if reason:
            raise SavedModelError(f"cannot save into {reason}")
        _install(staging, target)
        installed = True
        _fsync_path(parent, directory=True)
    finally:
        if not installed:
            shutil.rmtree(staging, ignore_errors=True)
