"""Writing run outputs safely, and reading back what a run directory holds.

Every file of an output directory is untrusted when read again (a shared run directory, a
colleague's run): reads refuse links and non-regular files, and writes never follow a link.
Files are replaced atomically (a temporary sibling created with ``O_EXCL``, then renamed), so an
interrupted write leaves the previous version; appends open with ``O_NOFOLLOW`` and refuse a file
that is linked elsewhere. Created files and directories follow the process umask.
:class:`DirectoryLock` keeps a second run off an output directory that one is writing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode new files get under the process umask (0644 under umask 022)."""
    return 0o666 & ~_umask()


def directory_mode() -> int:
    return 0o777 & ~_umask()


def _check_regular(descriptor: int, path: Path) -> os.stat_result:
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path} is not a regular file: remove it, or choose another output")
    if info.st_nlink > 1:
        raise ValueError(f"{path} is linked from elsewhere (hard link): remove it, or choose another output")
    return info


def _open(path: Path, flags: int, mode: int = 0o666) -> int:
    try:
        return os.open(path, flags | _NOFOLLOW, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link: remove it, or choose another output") from None
        raise


def write_atomically(path: str | Path, data: bytes | str) -> None:
    """Replace ``path`` by ``data`` in one step: written to a fresh temporary sibling (never an
    existing file or link), flushed to disk, then renamed over ``path`` (a link there is replaced,
    not followed)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(descriptor, file_mode())
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def append_durably(path: str | Path, data: bytes | str) -> int:
    """Append ``data`` to ``path`` (created if missing) and flush it to disk; refuses a link.
    Returns the file's size afterwards."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    descriptor = _open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode())
    try:
        _check_regular(descriptor, path)
        os.write(descriptor, data)
        os.fsync(descriptor)
        return os.fstat(descriptor).st_size
    finally:
        os.close(descriptor)


def truncate(path: str | Path, size: int) -> None:
    """Cut ``path`` (a regular file, not a link) to ``size`` bytes."""
    path = Path(path)
    descriptor = _open(path, os.O_WRONLY)
    try:
        _check_regular(descriptor, path)
        os.ftruncate(descriptor, size)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_untrusted(path: str | Path, limit: int = 1 << 30) -> bytes:
    """The bytes of ``path``, which must be a regular file (no link) of at most ``limit`` bytes."""
    path = Path(path)
    descriptor = _open(path, os.O_RDONLY)
    try:
        info = _check_regular(descriptor, path)
        if info.st_size > limit:
            raise ValueError(f"{path} holds {info.st_size} bytes, more than the {limit} expected: it is not "
                             "a file this program wrote")
        with os.fdopen(os.dup(descriptor), "rb") as handle:
            return handle.read(limit + 1)[:limit]
    finally:
        os.close(descriptor)


def make_directory(path: str | Path) -> Path:
    """Create ``path`` and its parents (modes from the umask); refuses a link or a file there."""
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link: choose another output")
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_directory(path: str | Path) -> Path:
    """Create the directory a level database is written to, before the expensive pass that fills
    it: a :class:`~optishear_moo.errors.SettingError` naming ``database_dir`` if it cannot be
    (a link, a file there, no permission)."""
    from .errors import SettingError, param

    try:
        return make_directory(path)
    except (OSError, ValueError) as error:
        raise SettingError(f"{param('database_dir')} {path} cannot hold the database ({error}): "
                           "choose another directory") from None


def remove(path: str | Path) -> None:
    """Remove a file, link or directory tree at ``path`` without following links."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def save_directory(directory: str | Path, write) -> Path:
    """Fill a fresh staging directory with ``write(staging)`` and move it to ``directory`` only
    once complete (what was there is replaced); the result follows the umask."""
    directory = Path(directory)
    make_directory(directory.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        os.chmod(staging, directory_mode())
        write(staging)
        for file in staging.rglob("*"):
            if file.is_file() and not file.is_symlink():
                os.chmod(file, file_mode())
        remove(directory)
        staging.rename(directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return directory


class DirectoryLock:
    """An exclusive lock on an output directory, held while a run writes there.

    The lock is ``directory/.lock`` under ``flock``: the system releases it when its process ends,
    so a run that was killed leaves no stale lock. A second run is refused at once with a message
    naming the process that holds it. Locks are re-entrant within one process (a driver called
    by the command line takes the lock the command already holds).
    """

    _held: dict[Path, list] = {}  # directory -> [descriptor, count]: this process's locks

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).absolute()

    def acquire(self) -> DirectoryLock:
        import fcntl

        held = self._held.get(self.directory)
        if held is not None:
            held[1] += 1
            return self
        make_directory(self.directory)
        path = self.directory / ".lock"
        descriptor = _open(path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            _check_regular(descriptor, path)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "another process"
                raise ValueError(f"another run (process {owner}) is writing to {self.directory}: wait for it "
                                 "to end, or choose another output") from None
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        except BaseException:
            os.close(descriptor)
            raise
        self._held[self.directory] = [descriptor, 1]
        return self

    def release(self) -> None:
        held = self._held.get(self.directory)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del self._held[self.directory]
            os.close(held[0])  # closing releases the flock

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class OutputDirectory:
    """The output directory of one run, held for the run's length.

    Entering checks that ``path`` is (or can become) a writable directory, takes its lock, and
    without ``resume`` refuses one that holds anything unless ``overwrite`` (then empties it).
    Leaving on an error removes the directory if this run created it, so nothing half-written
    stays; an interrupted run keeps what it saved (``resumable()``: a checkpoint to resume from),
    and loses a directory it created and saved nothing into.
    """

    def __init__(self, path: str | Path, overwrite: bool = False, resume: bool = False):
        self.path, self.overwrite, self.resume = Path(path), overwrite, resume
        self.created, self.lock = False, None

    CHECKPOINTS = ("state.json", "checkpoint/training_state.json")
    """Files whose presence makes an interrupted run resumable (a search's, a post-training's)."""

    def resumable(self) -> bool:
        return any((self.path / name).is_file() for name in self.CHECKPOINTS)

    def __enter__(self) -> OutputDirectory:
        from .errors import SettingError, param

        path = self.path
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise SettingError(f"{param('output')} {str(path)!r} is a file or link, not a directory: choose "
                               f"another {param('output')}")
        _check_writable(path)
        existed = path.exists()
        self.lock = DirectoryLock(path).acquire()
        self.created = not existed
        try:
            contents = [p for p in path.iterdir() if p.name != ".lock"]
            if contents and not self.resume and not self.overwrite:
                raise SettingError(f"{param('output')} {str(path)!r} already exists: choose another "
                                   f"{param('output')} or pass {param('overwrite')}")
            for item in contents if not self.resume else ():
                remove(item)
        except BaseException:
            self._leave(remove_created=True)
            raise
        return self

    def _leave(self, remove_created: bool) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if remove_created and self.created:
            remove(self.path)

    def __exit__(self, kind, error, traceback) -> bool:
        failed = kind is not None and not getattr(kind, "keeps_output", False)
        interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
        self._leave(remove_created=failed and not (interrupted and self.resumable()))
        return False


def _check_writable(path: Path) -> None:
    """``path`` can be created and written: a probe folder is made (and removed) in the nearest
    existing ancestor."""
    from .errors import SettingError, param

    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SettingError(f"cannot create {param('output')} {str(path)!r}: {str(ancestor)!r} is a file")
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=".optishear-moo-probe-", dir=ancestor))
    except OSError as error:
        raise SettingError(f"cannot write {param('output')} {str(path)!r} ({error.strerror or error}): "
                           f"choose a writable {param('output')}") from None
