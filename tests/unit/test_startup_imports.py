"""What a VM's start-up no longer does: run ``ldconfig`` (``ctypes.util.find_library``)
to find libc for thread names or libc and libseccomp for pyseccomp, which still loads
and resolves system calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# counts the child processes started (find_library runs ldconfig through subprocess)
PROBE = """
import _posixsubprocess, json
spawned = []
real = _posixsubprocess.fork_exec
def fork_exec(*args):
    spawned.append(args[0] if args else None)
    return real(*args)
_posixsubprocess.fork_exec = fork_exec
from stratovmm.host import sandbox, threadname
threadname.set_native_name("probe")
pyseccomp = sandbox._pyseccomp()
print(json.dumps({"spawned": len(spawned),
                  "read": int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "read")),
                  "restored": pyseccomp.__name__ == "pyseccomp"
                  and __import__("ctypes.util").util.find_library.__module__ == "ctypes.util"}))
"""


def test_no_child_process_to_find_libc_or_libseccomp(tmp_path: Path) -> None:
    """Naming a thread and importing pyseccomp start no child process; pyseccomp works
    (``read`` is syscall 0 on x86_64) and ``find_library`` is left as it was."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    assert out.stdout.strip() == '{"spawned": 0, "read": 0, "restored": true}', out.stderr
