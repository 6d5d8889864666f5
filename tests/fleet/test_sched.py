"""``fleet/sched.py``: a process moved into SCHED_IDLE has every thread there, those it had and those
it starts later. In a child process: the class cannot be left unprivileged, and pytest's must stay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fleet.sched import wanted_class

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import os, threading, time
from fleet.sched import run_in_background
stop = threading.Event()
before = threading.Thread(target=stop.wait); before.start()
print(run_in_background())
after = threading.Thread(target=stop.wait); after.start()
print(sorted({os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")}))
stop.set()
"""


def test_every_thread_before_and_after_the_move_is_in_sched_idle():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         check=True).stdout.splitlines()
    assert out[0] == "SCHED_IDLE (2 threads)"             # the main thread and the one started before
    assert out[1] == str([os.SCHED_IDLE])                # all three now, the one started after too
    assert os.sched_getscheduler(0) == os.SCHED_OTHER    # pytest's own process untouched


def test_auto_is_background_only_on_the_controllers_node():
    assert wanted_class("auto", "node-a", "node-a") == "background"
    assert wanted_class("auto", "node-b", "node-a") == "normal"
    assert wanted_class("auto", "node-a", None) == "normal"           # a controller that did not say
    assert wanted_class("background", "node-b", "node-a") == "background"
    assert wanted_class("normal", "node-a", "node-a") == "normal"
