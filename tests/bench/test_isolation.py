"""The benchmark's phase isolation on real processes (no mocks): a peer-like process tree is
paused and resumed as a whole, stopped without orphans, and its CPU is attributed to the
right side by bench.machine. CPU figures come from /proc, so the assertions are bounds with
room for a loaded machine (a paused process uses exactly nothing)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import machine, procs

# A parent that starts three polling children (as LitServe's workers poll while idle): one
# ignores SIGTERM, one leaves the process group (setsid) and ignores SIGTERM too; the parent
# exits on SIGTERM without waiting for them: stopped by its PID, it would leave all behind.
PEER = """
import signal, subprocess, sys, time
CHILD = '''
import signal, sys, time
import os
if sys.argv[1] in ("stubborn", "escaped"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if sys.argv[1] == "escaped":
    os.setsid()
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < 0.002:  # busy 2 ms, idle 2 ms: about half a core
        pass
    time.sleep(0.002)
'''
kids = [subprocess.Popen([sys.executable, "-c", CHILD, kind])
        for kind in ("polite", "stubborn", "escaped")]
with open(sys.argv[1], "w") as f:
    f.write(" ".join(str(k.pid) for k in kids))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(0.05)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cpu(pids: list[int]) -> float:
    snap = machine.snapshot()
    return sum(snap.procs[p].cpu_s for p in pids if p in snap.procs)


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[procs.ServerProc, list[int]]]:
    """A started peer-like tree: (its ServerProc, [parent, polite, stubborn, escaped] PIDs)."""
    script, pids_file = tmp_path / "peer.py", tmp_path / "pids"
    script.write_text(PEER)
    proc = procs.start("peer-like", [str(script), str(pids_file)], {}, 0, tmp_path)
    deadline = time.monotonic() + 30
    while not (pids_file.exists() and len(pids_file.read_text().split()) == 3):
        assert time.monotonic() < deadline, proc.tail()
        time.sleep(0.05)
    kids = [int(p) for p in pids_file.read_text().split()]
    try:
        yield proc, [proc.proc.pid, *kids]
    finally:
        proc.stop()


def test_stop_leaves_no_process_of_the_tree(peer: tuple[procs.ServerProc, list[int]]) -> None:
    proc, pids = peer
    time.sleep(0.3)  # the escaped child calls setsid as it starts
    assert sorted(procs.group_members(proc.proc.pid)) == sorted(pids[:3])
    assert list(proc.escaped()) == [pids[3]]
    assert proc in procs.live()
    proc.stop()
    assert [p for p in pids if _alive(p)] == []  # the SIGTERM-deaf and escaped ones too
    assert procs.group_members(proc.proc.pid) == []
    assert proc not in procs.live()


def test_stop_of_a_paused_tree(peer: tuple[procs.ServerProc, list[int]]) -> None:
    proc, pids = peer
    proc.pause()
    proc.stop()
    assert [p for p in pids if _alive(p)] == []


def test_isolate_pauses_every_other_tree_and_resumes_it(
    peer: tuple[procs.ServerProc, list[int]],
) -> None:
    proc, pids = peer
    with procs.isolate(None) as paused:
        assert paused == [proc]
        time.sleep(0.1)  # let a signal in flight land
        states = {p: Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] for p in pids}
        assert set(states.values()) == {"T"}, states  # stopped, every process of the group
        before = _cpu(pids)
        time.sleep(0.5)
        assert _cpu(pids) - before <= 0.011  # nothing, to the clock tick
    before = _cpu(pids)
    time.sleep(0.6)
    assert _cpu(pids) - before > 0.0  # running again
    with procs.isolate(proc) as paused:  # the one under test is not paused
        assert proc not in paused


def test_machine_usage_attributes_by_process_group(
    peer: tuple[procs.ServerProc, list[int]],
) -> None:
    proc, pids = peer
    before = machine.snapshot()
    t = time.thread_time()
    while time.thread_time() - t < 0.3:  # this process: the load generator's side
        pass
    time.sleep(0.5)
    after = machine.snapshot()

    tested = machine.usage(before, after, proc.proc.pid, proc.escaped())
    assert tested.generator >= 0.3 / tested.wall_s * 0.9
    assert tested.under_test > 0.05  # three half-core pollers, one outside the group
    assert not any(k.endswith(tuple(f"[{p}]" for p in pids)) for k in tested.others)

    # the same tree, not under test: it is the "others" that mark a phase
    other = machine.usage(before, after, None)
    tree = sum(v for k, v in other.others.items() if k.endswith(tuple(f"[{p}]" for p in pids)))
    assert tree == pytest.approx(tested.under_test, abs=1e-9)
    assert other.others_total >= tree
    assert other.marked()
    assert other.marked(limit=other.others_total + 1) is False


def test_machine_usage_counts_a_process_that_came_and_went() -> None:
    """A process that starts and ends between the snapshots is in no /proc/PID/stat of
    either: its CPU shows as unattributed machine time, so it still marks the phase."""
    before = machine.snapshot()
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"
    assert os.spawnv(os.P_WAIT, sys.executable, [sys.executable, "-c", code]) == 0
    after = machine.snapshot()
    use = machine.usage(before, after, None)
    assert use.unattributed * use.wall_s >= 0.3
    assert use.marked()
