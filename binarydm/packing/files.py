"""Writing files so that nothing is lost, and a directory's checksum file.

Files are written through :func:`atomic_path`: a temporary file in the destination directory, flushed
and fsynced, given the mode the umask asks for, then renamed over the destination, so a kill at any
instant leaves either the old file or the new one. A student directory carries ``SHA256SUMS``
(``sha256sum -c`` format) over its weights and configs, checked when it is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


class PackedFormatError(ValueError):
    """A checkpoint that cannot be read: truncated, corrupted, another format or another architecture."""


# ---- writing files: atomic, durable, following the umask -----------------------------------------
# Temporary files are named ".<final name>.<random>.binarydm-tmp" in the destination directory: the
# rename is then atomic (same file system), and a kill leaves only files that clean_stale_temp finds.
TMP_SUFFIX = ".binarydm-tmp"


def file_mode() -> int:
    """The mode a newly created file gets under the current umask (mkstemp's files are 0600)."""
    try:  # Linux: read it without changing it (os.umask would, briefly, for every thread)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(directory: PathLike) -> None:
    """Make a rename in ``directory`` durable (the directory entry itself is flushed)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not fsync directories
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced, given the umask's mode and
    renamed to ``path``; on any error (or a kill) ``path`` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[Any]:
    """``open(path, mode)`` that replaces ``path`` atomically when the block ends without an error."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()


def clean_stale_temp(directory: PathLike, recursive: bool = False) -> list[Path]:
    """Remove the temporary files a killed writer left in ``directory``; returns what was removed.
    Call it only where no other live process writes (a locked run directory, an output being replaced)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = directory.rglob(f".*{TMP_SUFFIX}") if recursive else directory.glob(f".*{TMP_SUFFIX}")
    removed = []
    for p in found:
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def check_output_path(path: PathLike, key: str, *, directory: bool) -> Path:
    """Raise UsageError (naming ``key``) unless ``path`` can be created or written: an existing
    ``path`` of the right kind that is writable, or a nonexistent one whose nearest existing ancestor is a
    writable directory. Writes nothing, so it can run before any work starts."""
    from ..errors import UsageError

    path = Path(path).expanduser()
    kind = "directory" if directory else "file"
    if path.exists():
        if directory and not path.is_dir():
            raise UsageError(f"{key}={path}: exists and is not a directory; choose another {key}=")
        if not directory and path.is_dir():
            raise UsageError(f"{key}={path}: is a directory; {key}= must name a file")
        if not os.access(path if directory else path.parent, os.W_OK | os.X_OK):
            raise UsageError(f"{key}={path}: the {kind} is not writable (permission denied); choose another {key}=")
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{key}={path}: {parent} is not a directory, so the {kind} cannot be created; choose another "
                         f"{key}=")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{key}={path}: cannot create it, {parent} is not writable (permission denied); choose "
                         f"another {key}=")
    return path


# ---- a directory's checksum file ------------------------------------------------------------------
CHECKSUM_FILE = "SHA256SUMS"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(directory: PathLike, names: Optional[list[str]] = None) -> Path:
    """``directory/SHA256SUMS`` over ``names`` (default: every regular file in it but the sums file),
    in the format ``sha256sum -c`` reads."""
    directory = Path(directory)
    if names is None:
        names = sorted(p.name for p in directory.iterdir()
                       if p.is_file() and p.name != CHECKSUM_FILE and not p.name.startswith("."))
    lines = [f"{_sha256_file(directory / n)}  {n}\n" for n in sorted(names)]
    with atomic_write(directory / CHECKSUM_FILE, "w") as f:
        f.write("".join(lines))
    return directory / CHECKSUM_FILE


def verify_checksums(directory: PathLike) -> bool:
    """Check ``directory/SHA256SUMS`` (when there is one: directories written before it existed load
    unchecked; returns False then). Raises PackedFormatError naming the first file that differs."""
    directory = Path(directory)
    sums = directory / CHECKSUM_FILE
    if not sums.is_file():
        return False
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        name = name.strip()
        file = directory / name
        if not name or "/" in name or not file.is_file():
            raise PackedFormatError(f"{sums}: lists {name!r}, which is not a file in {directory}; export the "
                                    "student again")
        if _sha256_file(file) != digest.strip():
            raise PackedFormatError(f"{file}: does not match its checksum in {sums} (corrupted or edited after "
                                    "export); export the student again")
    return True



__all__ = ["CHECKSUM_FILE", "PackedFormatError", "PathLike", "TMP_SUFFIX", "atomic_path", "atomic_write",
           "check_output_path", "clean_stale_temp", "file_mode", "fsync_dir", "verify_checksums", "write_checksums"]
