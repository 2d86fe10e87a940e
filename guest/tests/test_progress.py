"""The build's progress lines: stages announced and timed, and the kernel's make output
(recorded Kbuild lines) counted and reported at most once per interval."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
from stratovmm_guest import kernel
from stratovmm_guest.cli import main
from stratovmm_guest.common import BuildError, run
from stratovmm_guest.progress import INTERVAL, KbuildProgress, duration, stage

# Kbuild 6.1's quiet output for the first objects of an x86_64 bzImage build, as make -j2
# writes it (two jobs interleave; a compiler warning sits between the steps).
RECORDED_MAKE = """\
  SYNC    include/config/auto.conf
  HOSTCC  scripts/basic/fixdep
  WRAP    arch/x86/include/generated/uapi/asm/bpf_perf_event.h
  UPD     include/generated/uapi/linux/version.h
  HOSTCC  scripts/kconfig/conf.o
  CC      scripts/mod/empty.o
  CC      kernel/bounds.s
  CC      arch/x86/kernel/asm-offsets.s
  CALL    scripts/checksyscalls.sh
  AS      arch/x86/entry/entry_64.o
  CC      init/main.o
init/main.c: In function 'start_kernel':
init/main.c:960:9: warning: unused variable 'x' [-Wunused-variable]
  CC      init/do_mounts.o
  CC [M]  drivers/virtio/virtio_balloon.o
  AR      init/built-in.a
  LD      vmlinux.o
"""
OBJECTS = 5  # empty.o, entry_64.o, main.o, do_mounts.o, virtio_balloon.o (not .s, not HOSTCC)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        """The current reading."""
        return self.now


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0 s"), (42.9, "42 s"), (60, "1 min 00 s"), (185, "3 min 05 s"),
    (3599, "59 min 59 s"), (3720, "1 h 02 min"),
])
def test_duration_reads_as_minutes_and_seconds(seconds: float, text: str) -> None:
    """Elapsed times are whole seconds under a minute, then minutes and seconds, then hours."""
    assert duration(seconds) == text


def test_recorded_make_output_is_counted() -> None:
    """Only what CC and AS make as objects counts; host tools, listings and warnings do not;
    the step shown is the last Kbuild step."""
    clock = FakeClock()
    progress = KbuildProgress(lambda line: None, clock=clock)
    for line in RECORDED_MAKE.splitlines(keepends=True):
        progress.feed(line)
    assert progress.objects == OBJECTS
    clock.now += 185
    assert progress.status() == f"kernel: {OBJECTS} objects compiled, 3 min 05 s (LD vmlinux.o)"
    assert progress.summary() == f"kernel: make compiled {OBJECTS} objects in 3 min 05 s"


def test_reports_come_at_most_once_per_interval() -> None:
    """One line per INTERVAL however fast make writes, none before the first interval ends."""
    clock = FakeClock()
    reports: list[str] = []
    progress = KbuildProgress(reports.append, clock=clock)
    lines = itertools.cycle(RECORDED_MAKE.splitlines())
    for _ in range(200):            # 200 lines over 20 intervals' time, 10 per interval
        progress.feed(next(lines))
        clock.now += INTERVAL / 10
    assert 18 <= len(reports) <= 20, reports
    assert reports[0].startswith("kernel: ") and " objects compiled, 5 s (" in reports[0]
    counts = [int(r.split()[1]) for r in reports]
    assert counts == sorted(counts) and counts[-1] <= progress.objects


def test_silent_make_reports_nothing() -> None:
    """No line from make, no report: progress lines come from make's output, not a timer."""
    clock = FakeClock()
    reports: list[str] = []
    KbuildProgress(reports.append, clock=clock)
    clock.now += 10 * INTERVAL
    assert reports == []


def test_stage_is_announced_and_timed(capsys: pytest.CaptureFixture[str]) -> None:
    """A stage prints its number and name when it starts, and its time when it ends."""
    clock = FakeClock()
    with stage("kernel", 2, 4, clock=clock):
        clock.now += 754
    err = capsys.readouterr().err.splitlines()
    assert err == ["[stratovmm-guest] stage 2/4: kernel",
                   "[stratovmm-guest] kernel: done in 12 min 34 s"]


def test_failed_stage_reports_no_time(capsys: pytest.CaptureFixture[str]) -> None:
    """A stage that fails is not reported done; the error says what failed."""
    with pytest.raises(BuildError), stage("disks", 4, 4):
        raise BuildError("mkfs.ext4 failed")
    assert "done" not in capsys.readouterr().err


def test_logged_run_streams_lines_to_the_log_and_the_parser(tmp_path: Path) -> None:
    """A logged command's output reaches the log file whole and the callback line by line."""
    seen: list[str] = []
    log = tmp_path / "build.log"
    script = "import sys; sys.stdout.write(sys.argv[1]); sys.stderr.write('  LD      vmlinux\\n')"
    run([sys.executable, "-c", script, RECORDED_MAKE], log_to=log, on_line=seen.append)
    assert log.read_text() == RECORDED_MAKE + "  LD      vmlinux\n"
    assert seen == log.read_text().splitlines(keepends=True)


def test_logged_failure_shows_the_tail(tmp_path: Path) -> None:
    """A failing logged command raises with its exit status, its last lines and the log."""
    log = tmp_path / "build.log"
    script = "print('  CC      init/main.o'); print('error: boom'); raise SystemExit(2)"
    with pytest.raises(BuildError, match="exit status 2") as exc:
        run([sys.executable, "-c", script], log_to=log, on_line=lambda line: None)
    assert "error: boom" in str(exc.value) and str(log) in str(exc.value)


def test_build_prints_each_stage_and_the_total(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``build`` numbers the selected stages in order, times each, and ends with the total."""
    ran: list[str] = []
    monkeypatch.setattr("stratovmm_guest.deps.missing_packages", lambda packages: [])
    monkeypatch.setattr("stratovmm_guest.cli.build_initramfs", lambda out, work: ran.append("i"))
    monkeypatch.setattr("stratovmm_guest.cli.build_disks", lambda out, work: ran.append("d"))
    assert main(["build", "--out", str(tmp_path), "--stages", "disks,initramfs"]) == 0
    assert ran == ["i", "d"]
    err = [line.removeprefix("[stratovmm-guest] ") for line in capsys.readouterr().err.splitlines()]
    assert err[:4] == ["stage 1/2: initramfs", "initramfs: done in 0 s",
                       "stage 2/2: disks", "disks: done in 0 s"]
    assert err[4] == f"done in 0 s: {tmp_path.resolve()}"


def test_build_help_gives_the_one_time_estimate(capsys: pytest.CaptureFixture[str]) -> None:
    """``build --help`` states how long a first build takes, from the one constant."""
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    assert kernel.FIRST_BUILD_TIME in " ".join(capsys.readouterr().out.split())
