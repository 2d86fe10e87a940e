"""The entry point cache: used while nothing installed has changed (no scan, no
importlib.metadata, no stevedore), rebuilt when a distribution appears, disappears or
edits its entry points, never trusted when corrupt, and never written while a time
stamp is too recent to tell a later change apart."""

from __future__ import annotations

import copy
import json
import marshal
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from stratovmm import entrypoints
from stratovmm.errors import PluginError
from stratovmm.plugin import NAMESPACE, _load_entries

OLD = time.time() - 60

# discover() in a fresh interpreter with ``extra`` first on sys.path; prints the plugin
# names and whether the scan's modules were imported
PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from stratovmm.plugin import discover
names = sorted(discover())
print(json.dumps({"names": names, "scanned": "importlib.metadata" in sys.modules
                  or "stevedore" in sys.modules}))
"""


def age(*paths: Path) -> None:
    """Make ``paths`` look a minute old (settled: the cache may be written)."""
    for path in paths:
        os.utime(path, (OLD, OLD))


def install(site: Path, dist: str, entry: str) -> None:
    """A distribution ``dist`` whose entry point ``entry`` (``name = module``) is in the
    stratovmm.devices group, with its module, in the path directory ``site``."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{NAMESPACE}]\n{entry}\n")
    module = entry.split("=")[1].strip()
    (site / f"{module}.py").write_text("STRATOVMM_API = '1.0'\n")
    age(info / "entry_points.txt", info, site)


def probe(site: Path, cache: Path) -> dict[str, Any]:
    """What discover() found, and whether it had to scan."""
    env = {**os.environ, "STRATOVMM_CACHE_DIR": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(site)], capture_output=True,
                         text=True, env=env, check=True, cwd=site)
    return dict(json.loads(out.stdout))


def test_installs_and_uninstalls_are_seen_and_the_cache_spares_the_scan(
        tmp_path: Path) -> None:
    """A plugin that appears, is edited or goes is found (or not) on the next start; in
    between, starts use the cache and import neither importlib.metadata nor stevedore."""
    site, cache = tmp_path / "site", tmp_path / "cache"
    site.mkdir()
    install(site, "fakeplug", "fake = fakeplug_mod")
    first = probe(site, cache)
    assert "fake" in first["names"] and first["scanned"]
    again = probe(site, cache)
    assert again == {"names": first["names"], "scanned": False}

    entry_points = site / "fakeplug-1.0.dist-info" / "entry_points.txt"
    entry_points.write_text(f"[{NAMESPACE}]\nrenamed = fakeplug_mod\n")
    os.utime(entry_points, (OLD + 1, OLD + 1))
    edited = probe(site, cache)
    assert "renamed" in edited["names"] and "fake" not in edited["names"] and edited["scanned"]

    for child in (site / "fakeplug-1.0.dist-info").iterdir():
        child.unlink()
    (site / "fakeplug-1.0.dist-info").rmdir()
    os.utime(site, (OLD + 2, OLD + 2))
    gone = probe(site, cache)
    assert "renamed" not in gone["names"] and gone["scanned"]
    assert probe(site, cache) == {"names": gone["names"], "scanned": False}


def test_a_fresh_install_is_not_cached_until_it_settles(tmp_path: Path) -> None:
    """With a time stamp within SETTLE_S of now nothing is written (the next start scans)."""
    site, cache = tmp_path / "site", tmp_path / "cache"
    site.mkdir()
    install(site, "fakeplug", "fake = fakeplug_mod")
    os.utime(site)  # just now
    assert probe(site, cache)["scanned"]
    assert probe(site, cache)["scanned"]
    assert not cache.exists() or not list(cache.iterdir())


def test_round_trip_and_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What is stored is loaded back for the same fingerprint, and only for it."""
    monkeypatch.setenv("STRATOVMM_CACHE_DIR", str(tmp_path / "c"))
    site = tmp_path / "site"
    site.mkdir()
    age(site)
    print_ = entrypoints.fingerprint([str(site)])
    entries = [("a", "mod_a", ""), ("b", "pkg.mod_b", "attr.sub")]
    entrypoints.store("group", print_, entries)
    assert entrypoints.load("group", print_) == entries
    assert entrypoints.load("other", print_) is None
    changed = copy.deepcopy(print_)
    changed[2][1] += 1
    assert entrypoints.load("group", changed) is None
    mode = (tmp_path / "c").stat().st_mode & 0o777, next((tmp_path / "c").iterdir()).stat()
    assert mode[0] == 0o700 and mode[1].st_mode & 0o777 == 0o600


PRINT = object()       # stands for the fingerprint in the corrupt caches below


@pytest.mark.parametrize("content", [
    b"", b"{", b"\xff" * 16, b'{"format": 2}', [], {"format": 2}, {"format": 1},
    {"format": 2, "fingerprint": PRINT, "entries": [[1, 2, 3]]},
    {"format": 2, "fingerprint": PRINT, "entries": "abc"},
    {"format": 1, "fingerprint": PRINT, "entries": [["a", "m", ""]]}])
def test_a_corrupt_cache_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     content: object) -> None:
    """Whatever the file holds (bytes that are not marshal data, or data of another shape
    or format), a cache that is not exactly ours is ignored."""
    monkeypatch.setenv("STRATOVMM_CACHE_DIR", str(tmp_path))
    print_ = entrypoints.fingerprint([str(tmp_path / "nothing")])
    entrypoints.store("group", print_, [("a", "m", "")])
    (path,) = tmp_path.glob("entry-points-group-*.marshal")
    if isinstance(content, dict):
        content = marshal.dumps({k: print_ if v is PRINT else v for k, v in content.items()})
    elif not isinstance(content, bytes):
        content = marshal.dumps(content)
    path.write_bytes(content)
    assert entrypoints.load("group", print_) is None


def test_a_cached_entry_that_fails_to_import_names_the_plugin() -> None:
    """A cached module that is gone or broken is a PluginError naming the plugin, as a
    stevedore load failure is; an entry naming a non-module is refused too."""
    with pytest.raises(PluginError, match="plugin ghost failed to load"):
        _load_entries([("ghost", "no_such_module_stratovmm_test", "")])
    with pytest.raises(PluginError, match="plugin fn: entry point must name a module"):
        _load_entries([("fn", "os.path", "join")])
    assert _load_entries([("p", "os", "path")])["p"] is os.path
