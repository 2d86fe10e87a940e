"""``-daemonize`` and ``-pidfile``.

A KVM VM belongs to the process that created it, so the fork comes first,
before anything touches ``/dev/kvm`` (``start``): the parent stays attached to
the terminal and waits on a pipe; the child calls ``setsid`` and builds the
VM.  While it does, the child still has the terminal's stdio, so a set-up
error is printed by the child exactly as without ``-daemonize``; the child then
exits with the usual status, and the parent, seeing the pipe close without
``ready``, exits with that same status (or says which signal killed the child).
Once the VM is built and the QMP socket listens (``Session.detach``), the child
writes the pidfile and points stdin, stdout and stderr at ``/dev/null``; once
the seccomp filter is on (``Session.release``) it writes ``ready``, the parent
exits 0 and the shell gets its prompt back with the VM running, sandboxed.
One fork is enough: the child is a session leader without a
controlling terminal and never opens a terminal (``-serial stdio`` and ``-D``
without a path are refused with ``-daemonize``).  The working directory is kept,
so relative paths given later (QMP ``blockdev-add``) mean what the user meant.

The pidfile is written atomically (a temporary file in the same directory,
then ``link``, or ``rename`` over a stale file) with mode 0600, as StratoVirt and
QEMU create theirs.  The temporary has a random name and is created with
``O_CREAT|O_EXCL|O_NOFOLLOW`` (``tempfile.mkstemp``), and neither ``link`` nor
``rename`` follows a symlink at the final path, so a symlink planted in a shared
directory never makes the VMM write or truncate another file; reading an existing
pidfile does not follow one either.  It is removed on every exit that
runs Python code (``atexit``: the guest ends, QMP ``quit``, SIGTERM/SIGINT, a
fatal error), but only while it still names this process.  A
pidfile naming another live process is refused; one naming a dead process is
replaced.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import types

from stratovmm.errors import ConfigError

log = logging.getLogger(__name__)

READY = b"ready\n"
_EXIT_FAILURE = 1


def process_alive(pid: int) -> bool:
    """True when ``pid`` names a running (not zombie) process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def _read_head(path: str) -> bytes:
    """The first bytes of ``path``; ``OSError`` (ELOOP) if it is a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return os.read(fd, 32)
    finally:
        os.close(fd)


class PidFile:
    """``-pidfile PATH``: this process's pid, written atomically, removed at exit."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._written = False

    def holder(self) -> int | None:
        """The live process (other than us) the file names, if any."""
        try:
            pid = int(_read_head(self.path).strip() or b"0")
        except (OSError, ValueError):
            return None
        if pid == os.getpid() or not process_alive(pid):
            return None
        return pid

    def check(self) -> None:
        """Refuse a pidfile that another live process holds."""
        pid = self.holder()
        if pid is not None:
            raise ConfigError(f"-pidfile {self.path}: already names running process {pid}"
                              " (another VM?); remove it or choose another path")

    def write(self) -> None:
        """Write our pid (atomically) and remove the file again at exit."""
        self.check()
        directory, base = os.path.split(self.path)
        tmp = None
        try:
            import tempfile  # only with -pidfile (it brings shutil, random, bz2, lzma)

            fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                self.check()            # it appeared meanwhile: still a live holder?
                os.replace(tmp, self.path)
        except OSError as exc:
            raise ConfigError(f"-pidfile {self.path}: {exc.strerror}") from exc
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        self._written = True
        atexit.register(self.remove)
        log.info("pid %d written to %s", os.getpid(), self.path)

    def remove(self) -> None:
        """Remove the file if it still names us (another process may have replaced it)."""
        written, self._written = self._written, False
        if not written:
            return
        try:
            if _read_head(self.path).strip() == str(os.getpid()).encode():
                os.unlink(self.path)
        except OSError:
            pass


class Session:
    """What ``start`` hands the runner: the pidfile and, in a daemon, the pipe to the parent."""

    def __init__(self, pidfile: PidFile | None, ready_fd: int | None = None) -> None:
        self.pidfile = pidfile
        self._ready_fd = ready_fd

    @property
    def daemon(self) -> bool:
        """True in the detaching child of ``-daemonize``."""
        return self._ready_fd is not None

    def detach(self) -> None:
        """Set-up is done: write the pidfile; a daemon also closes stdio (both need calls the
        seccomp filter will not allow)."""
        signal.signal(signal.SIGTERM, _exit_before_run)
        if self.pidfile is not None:
            self.pidfile.write()
        if self._ready_fd is None:
            return
        _close_stdio()
        sys.excepthook = _log_uncaught

    def release(self) -> None:
        """A daemon tells the waiting parent it is ready, and the parent exits 0.  Called once
        the filter is on, so that when the command returns the VM runs sandboxed, and a
        failure to apply the filter is the parent's exit status, not a silent death."""
        fd, self._ready_fd = self._ready_fd, None
        if fd is None:
            return
        try:
            os.write(fd, READY)
        finally:
            os.close(fd)
        log.info("detached: running as daemon, pid %d", os.getpid())


def _exit_before_run(signum: int, _frame: types.FrameType | None) -> None:
    """SIGTERM after the pidfile exists but before the VM's own handler is in place.

    The default action would kill the process without running ``atexit`` (the
    pidfile would stay); the VM has not run yet, so a plain exit 0 is the orderly end.
    """
    log.info("VM shutting down: host-signal (signal %s before the vCPUs started)",
             signal.Signals(signum).name)
    raise SystemExit(0)


def _close_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in (0, 1, 2):
            os.dup2(null, fd)
    finally:
        os.close(null)


def _log_uncaught(kind: type[BaseException], exc: BaseException,
                  tb: types.TracebackType | None) -> None:
    """A daemon has no stderr: an uncaught exception goes to the log."""
    log.critical("uncaught exception", exc_info=(kind, exc, tb))


def start(pidfile_path: str | None, daemonize: bool) -> Session:
    """Check the pidfile (``-pidfile``); with ``-daemonize`` fork, and return only in the
    child."""
    pidfile = PidFile(pidfile_path) if pidfile_path else None
    if pidfile is not None:
        pidfile.check()
    if not daemonize:
        return Session(pidfile)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    for handler in logging.getLogger().handlers:
        handler.flush()
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child:
        os.close(write_fd)
        os._exit(_wait_for_child(read_fd, child))
    os.close(read_fd)
    os.setsid()
    return Session(pidfile, write_fd)


def _say(text: str) -> None:
    print(f"stratovmm: {text}", file=sys.stderr, flush=True)


def _wait_for_child(read_fd: int, child: int) -> int:
    """Parent side: 0 once the child is ready, else the child's own exit status."""
    message = b""
    try:
        while True:
            chunk = os.read(read_fd, 64)
            if not chunk:
                break
            message += chunk
            if message.startswith(READY):
                return 0
        _, status = os.waitpid(child, 0)
    except KeyboardInterrupt:
        os.kill(child, signal.SIGTERM)
        os.waitpid(child, 0)
        _say("interrupted during set-up; the VM process was stopped")
        return 128 + signal.SIGINT
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        _say(f"the VM process was killed by {signal.Signals(sig).name} during set-up")
        return 128 + sig
    code = os.WEXITSTATUS(status)
    if code == 0:
        _say("the VM process ended during set-up")
        return _EXIT_FAILURE
    return code
