"""A cache of one entry point group, so a VM's start-up need not scan every installed
distribution.

Listing entry points means importing ``importlib.metadata`` (and with it ``email``,
``csv``, ``zipfile``...) and reading the metadata of every distribution on
``sys.path``; stevedore adds ``hashlib`` (OpenSSL's libcrypto, 3 MiB of RSS) for its
own cache key.  That was a tenth of the time from exec to the guest's first byte.
Here the group's entries are kept in a small file, valid for a *fingerprint* of what
is installed:

- the interpreter (``sys.executable``, ``sys.prefix``) and ``sys.path`` in order;
- each ``sys.path`` directory's modification time, which changes whenever a
  distribution's ``*.dist-info``/``*.egg-info`` directory is added, removed or
  renamed there (``pip install``, ``pip uninstall``, an upgrade);
- the modification time of each ``entry_points.txt`` in those directories (an
  entry point edited in place, e.g. an ``egg-info`` rebuilt in a source tree).

Any difference and the cache is not used: the caller scans (through stevedore)
and writes a new one.  A fingerprint is not written while any of its times is
within ``SETTLE_S`` seconds of now, so an install in the same clock tick as the
scan cannot hide behind an equal time stamp (the "racy" case git also guards).
The file lives in the cache directory of ``stratovmm.cachefile``, which says how it
is written and read; a cache that cannot be read or written is simply not used.
"""

from __future__ import annotations

import os
import sys
import time
import zlib
from typing import Any

from stratovmm.cachefile import cache_dir, read_private, write_private

SETTLE_S = 2.0
FORMAT = 2          # 1: JSON text; 2: marshal (stratovmm.cachefile)
_METADATA_SUFFIXES = (".dist-info", ".egg-info")

Entry = tuple[str, str, str]
"""(name, module, attribute path or "") of one entry point."""


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def fingerprint(path: list[str] | None = None) -> list[Any]:
    """What the cached entries depend on: ``[executable, prefix, [directory, mtime,
    [[metadata directory, mtime of its entry_points.txt], ...]], ...]``."""
    out: list[Any] = [sys.executable, sys.prefix]
    for directory in sys.path if path is None else path:
        where = directory or "."
        try:
            names = sorted(e.name for e in os.scandir(where)
                           if e.name.endswith(_METADATA_SUFFIXES))
        except OSError:
            names = []
        out.append([directory, _mtime(where),
                    [[n, _mtime(os.path.join(where, n, "entry_points.txt"))] for n in names]])
    return out


def _settled(print_: list[Any], now_ns: int) -> bool:
    """No time in the fingerprint is so recent that a change could share its tick."""
    limit = now_ns - int(SETTLE_S * 1e9)
    return all(mtime < limit and all(t < limit for _n, t in metadata)
               for _d, mtime, metadata in print_[2:])


def _file(group: str, print_: list[Any]) -> str:
    """One file per interpreter and path (``python -m`` puts the working directory first),
    so two installations do not keep overwriting each other's cache."""
    key = zlib.crc32(repr([print_[0], print_[1], [d for d, _m, _n in print_[2:]]]).encode())
    return os.path.join(cache_dir(), f"entry-points-{group}-{key:08x}.marshal")


def load(group: str, print_: list[Any]) -> list[Entry] | None:
    """The cached entries of ``group`` if the cache matches ``print_``; else None."""
    data = read_private(_file(group, print_))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    if data.get("fingerprint") != print_:
        return None
    entries = data.get("entries")
    if not isinstance(entries, list) or not all(
            isinstance(e, list) and len(e) == 3 and all(isinstance(x, str) for x in e)
            for e in entries):
        return None
    return [(e[0], e[1], e[2]) for e in entries]


def store(group: str, print_: list[Any], entries: list[Entry]) -> None:
    """Write the cache for ``group`` (skipped while the fingerprint is not settled, or when
    the directory is not writable)."""
    if not _settled(print_, time.time_ns()):
        return
    path = _file(group, print_)
    write_private(path, {"format": FORMAT, "fingerprint": print_,
                         "entries": [list(e) for e in entries]})
