"""What every build stage shares: errors, logging, subprocess, shipped inputs, caching.

Caching is by content, not by timestamps: a stage hashes its inputs into a
digest and stores it beside its outputs (``OUT/.stamps/STAGE``).  A re-run
whose digest matches and whose outputs exist does nothing, so a second
``stratovmm-guest build`` takes seconds, and changing a shipped input (the
kernel config, a patch, ``init.sh``) rebuilds exactly the stages that read it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

from stratovmm.errors import StratoVmmError


class BuildError(StratoVmmError):
    """A build step failed; the message says which and what to do about it."""


def log(message: str) -> None:
    """Progress goes to stderr so ``stratovmm-guest path`` output stays clean."""
    print(f"[stratovmm-guest] {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None,
        stdin: bytes | None = None, env: Mapping[str, str] | None = None,
        log_to: Path | None = None, on_line: Callable[[str], None] | None = None) -> None:
    """Run a host tool; a failure becomes a BuildError naming the command.

    ``log_to`` captures long outputs (the kernel build) in a file and shows
    only its tail on failure, where the actual compiler error is; ``on_line``
    then sees each line as it is written (for progress).  Otherwise the
    tool's stdout goes to fd 2, like our progress lines.
    """
    words = [os.fspath(a) for a in argv]
    full_env = {**os.environ, **env} if env else None
    try:
        if log_to is None:
            returncode = subprocess.run(words, cwd=cwd, input=stdin, env=full_env,
                                        stdout=2, check=False).returncode
        else:
            returncode = _run_logged(words, cwd, full_env, log_to, on_line)
    except FileNotFoundError as exc:
        raise BuildError(f"{words[0]}: not found (install it, or run the 'deps' stage)") from exc
    if returncode != 0:
        detail = ""
        if log_to is not None:
            tail = log_to.read_text(errors="replace").splitlines()[-40:]
            detail = "\n" + "\n".join(tail) + f"\n(full log: {log_to})"
        raise BuildError(f"{' '.join(words)} failed with exit status {returncode}{detail}")


def _run_logged(words: list[str], cwd: Path | None, env: Mapping[str, str] | None,
                log_to: Path, on_line: Callable[[str], None] | None) -> int:
    """Run ``words`` with stdout and stderr going line by line to ``log_to`` and
    ``on_line``; returns the exit status."""
    with log_to.open("wb") as out, subprocess.Popen(words, cwd=cwd, env=env,
                                                    stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            out.write(raw)
            if on_line is not None:
                on_line(raw.decode(errors="replace"))
        return proc.wait()


def shipped(name: str) -> bytes:
    """A build input shipped in the package (``stratovmm_guest/data/NAME``).

    Read through importlib.resources so it works from a wheel as well as
    from the editable checkout.
    """
    return resources.files("stratovmm_guest").joinpath("data", name).read_bytes()


def shipped_patches() -> list[tuple[str, bytes]]:
    """The kernel patches in apply order (their names start with a sequence number)."""
    folder = resources.files("stratovmm_guest").joinpath("data", "patches")
    found = [(e.name, e.read_bytes()) for e in folder.iterdir() if e.name.endswith(".patch")]
    return sorted(found)


def write_if_changed(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Write atomically, but leave an identical file (and its mtime) alone."""
    if path.is_file() and path.read_bytes() == data:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)
    return True


def digest(parts: Iterable[bytes | str]) -> str:
    """One hash over several inputs, with lengths so that boundaries count."""
    h = hashlib.sha256()
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part
        h.update(b"%d:" % len(raw))
        h.update(raw)
    return h.hexdigest()


def tree_digest(root: Path) -> str:
    """Hash of a staging tree: every path, its type and permissions, its bytes."""
    parts: list[bytes | str] = []
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        parts += [path.relative_to(root).as_posix(), oct(st.st_mode)]
        if stat.S_ISLNK(st.st_mode):
            parts.append(os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            parts.append(path.read_bytes())
    return digest(parts)


class Stamp:
    """The input digest a stage last built from, kept in ``OUT/.stamps/NAME``."""

    def __init__(self, out: Path, name: str) -> None:
        self.path = out / ".stamps" / name

    def fresh(self, value: str, outputs: Iterable[Path]) -> bool:
        """True when the stage last built from ``value`` and all its outputs exist."""
        if not all(p.exists() for p in outputs):
            return False
        return self.path.is_file() and self.path.read_text().strip() == value

    def record(self, value: str) -> None:
        """Remember ``value``; called only after every output has been written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_if_changed(self.path, value.encode() + b"\n")
