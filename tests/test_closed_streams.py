"""A process started with stdin, stdout or stderr closed (by a daemon that closed them before
starting it, or ``2>&-``): a line's own files must not take those numbers.

Files opened later get the lowest free number, so without care a holder's ticket becomes its
stderr. Then a daemon's usual next step, pointing its standard streams at ``/dev/null`` with
``dup2``, closes the ticket and frees the turn while its holder goes on; anything written to
stderr lands in the ticket; and ``inturn run`` had nowhere to write and stopped with a
traceback. Each test starts its process with the three closed, through ``sh`` (``<&- >&-
2>&-``), so that the interpreter itself starts without them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import inturn

from conftest import REPORT_TIMEOUT, Where, child_env, inturn_cmd, until
from observer import assert_exclusive

CLOSED = ["sh", "-c", 'exec "$@" <&- >&- 2>&-', "sh"]  # runs the rest with 0, 1 and 2 closed

# The holder: started with no standard streams, it takes its turn, then makes itself a daemon's
# standard streams (/dev/null on 0, 1 and 2, as daemon(3) and python-daemon do) and writes to
# stderr, says so on the report pipe, and holds until the test writes to the go pipe.
HOLDER = textwrap.dedent(
    """
    import os, sys
    import inturn
    from observer import Recorder

    report, go = int(sys.argv[1]), int(sys.argv[2])
    with inturn.turn("daemon") as turn:
        recorder = Recorder(sys.argv[3])  # opened now, so that it is not one of 0, 1 and 2
        recorder.enter("holder")
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.write(2, b"a line a daemon's library writes to stderr\\n")
        os.write(report, f"inside {turn.ticket}\\n".encode())
        os.read(go, 1)
        recorder.exit("holder")
    os.write(report, b"left\\n")
    """
)


# The late arrival: takes its turn once it may, and says whether it was told "abandoned".
LATE = textwrap.dedent(
    """
    import sys
    import inturn
    from observer import Recorder

    recorder = Recorder(sys.argv[1])
    with inturn.turn("daemon") as turn:
        recorder.enter("late")
        recorder.exit("late")
    print("abandoned", "yes" if turn.abandoned else "no", flush=True)
    """
)


def _started_closed(*argv: str, **how: object) -> subprocess.Popen[str]:
    how.setdefault("env", child_env())
    return subprocess.Popen([*CLOSED, *argv], text=True, **how)  # type: ignore[call-overload]


def test_a_holder_started_without_standard_streams_keeps_its_turn_through_dup2(
    where: Where, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    holder = _started_closed(
        sys.executable,
        "-c",
        HOLDER,
        str(report_w),
        str(go_r),
        str(log),
        pass_fds=(report_w, go_r),
    )
    os.close(report_w)
    os.close(go_r)
    reports = os.fdopen(report_r)
    late = None
    try:
        assert reports.readline().split()[0] == "inside"
        line = inturn.Line("daemon")
        holders = [t.pid for t in line.status().holders]
        late = subprocess.Popen(
            [sys.executable, "-c", LATE, str(log)],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        # In line behind the holder, or (the fault) already inside beside it.
        until(
            lambda: len(line.status().waiters) == 1 or "late" in log.read_text(),
            "the late arrival to join the line",
        )
        os.write(go_w, b"g")
        said = reports.read()  # to its end: the holder has ended
        holder_code = holder.wait(REPORT_TIMEOUT)
        late_said = late.communicate(timeout=REPORT_TIMEOUT)[0].split()
    finally:
        os.close(go_w)
        reports.close()
        for process in (holder, late):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert_exclusive(log, expected=2)
    assert holders == [holder.pid]  # after its dup2s
    assert (said, holder_code) == ("left\n", 0)
    assert (late_said, late.returncode) == (["abandoned", "no"], 0)


# The command: where its descriptors 0, 1 and 2 lead, written to the file named by argv[1].
SHOW_STREAMS = textwrap.dedent(
    """
    import os, sys
    def target(fd):
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return "closed"
    with open(sys.argv[1], "w") as out:
        out.write(" ".join(target(fd) for fd in (0, 1, 2)))
    sys.exit(3)
    """
)


def test_inturn_run_without_standard_streams_runs_its_command_on_dev_null(
    lines_dir: Path, tmp_path: Path
) -> None:
    shown = tmp_path / "streams"
    run = _started_closed(
        *inturn_cmd("run", "quiet-daemon", "--", sys.executable, "-c", SHOW_STREAMS, str(shown))
    )
    assert run.wait(REPORT_TIMEOUT) == 3  # the command's own code: it ran, and inturn ended well
    assert shown.read_text().split() == [os.devnull] * 3
    status = inturn.Line("quiet-daemon").status()
    assert status.holders == status.waiters == ()


def test_the_other_commands_without_standard_streams_end_with_their_own_codes(
    lines_dir: Path,
) -> None:
    assert _started_closed(*inturn_cmd("status")).wait(REPORT_TIMEOUT) == 0
    assert _started_closed(*inturn_cmd("wait", "nobody-here")).wait(REPORT_TIMEOUT) == 0
    assert (
        _started_closed(*inturn_cmd("run", "--slots", "0", "x", "--", "true")).wait(REPORT_TIMEOUT)
        == 2
    )
