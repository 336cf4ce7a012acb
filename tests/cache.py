"""
A cache, kept across test runs, of what tests build from sources in the
checkout (Go executables, mypy's incremental data).

Entries are named by a hash of everything that goes into them (the sources'
bytes, the tools' paths, sizes and modification times, the build flags), so
an entry is never stale: a changed input is a new name.  An entry is built
under a temporary name and renamed into place, so trial's C{-j} workers, or
two checkouts, building the same thing at once each get a whole file.

    binary = await cached_build("arithserver", [source_dir, go, flags], build)

The cache lives in C{RPCD_TEST_CACHE} if set, else in the system's temporary
directory (C{rpcd-tests-cache-UID}).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Awaitable, Callable, Iterable

CACHE_ENV = "RPCD_TEST_CACHE"


def cache_dir(*parts: str) -> Path:
    """
    @param parts: a subdirectory's path components.
    @return: that directory of the cache (created if missing).
    """
    base = os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(),
                                                       f"rpcd-tests-cache-{os.getuid()}")
    path = Path(base, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def fingerprint(inputs: Iterable[object]) -> str:
    """
    Hash what a build depends on.

    @param inputs: each a L{Path} (a file's bytes, or every file under a
        directory with its relative name), or anything else by its C{repr}
        (flags, names); a tool is best given as L{tool_stamp}.
    @return: a hex digest.
    """
    digest = hashlib.sha256()
    for item in inputs:
        if isinstance(item, Path) and item.is_dir():
            for file in sorted(p for p in item.rglob("*") if p.is_file()):
                digest.update(b"file\0" + file.relative_to(item).as_posix().encode() + b"\0"
                              + hashlib.sha256(file.read_bytes()).digest())
        elif isinstance(item, Path):
            digest.update(b"file\0" + item.name.encode() + b"\0"
                          + hashlib.sha256(item.read_bytes()).digest())
        else:
            digest.update(b"value\0" + repr(item).encode() + b"\0")
    return digest.hexdigest()


def tool_stamp(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """
    @param path: an executable or a directory (e.g. installed Go sources).
    @return: what identifies its version cheaply: the resolved path, size
        and modification time.
    """
    real = os.path.realpath(path)
    stat = os.stat(real)
    return (real, stat.st_size, stat.st_mtime_ns)


def _entry(name: str, inputs: Iterable[object]) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cache_dir("bin") / f"{safe}-{fingerprint(inputs)[:24]}"


def _temporary(final: Path) -> str:
    fd, path = tempfile.mkstemp(prefix=final.name + ".", suffix=".tmp", dir=final.parent)
    os.close(fd)
    os.unlink(path)
    return path


async def cached_build(name: str, inputs: Iterable[object],
                       build: Callable[[str], Awaitable[None]]) -> str:
    """
    Return the cached file built from C{inputs}, building it first if absent.

    @param name: a readable name for the entry.
    @param inputs: see L{fingerprint}.
    @param build: called with the path to write, when not cached; it fails
        (raises) when the build does, and then nothing is cached.
    @return: the file's path.
    """
    final = _entry(name, inputs)
    if not final.exists():
        target = _temporary(final)
        try:
            await build(target)
            os.replace(target, final)
        finally:
            if os.path.exists(target):
                os.unlink(target)
    return str(final)


def cached_build_sync(name: str, inputs: Iterable[object],
                      build: Callable[[str], None]) -> str:
    """
    L{cached_build} for a synchronous C{build}.
    """
    final = _entry(name, inputs)
    if not final.exists():
        target = _temporary(final)
        try:
            build(target)
            os.replace(target, final)
        finally:
            if os.path.exists(target):
                os.unlink(target)
    return str(final)
