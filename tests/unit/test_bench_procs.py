"""Process figures: a name counts its whole process tree, unless told to count it alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.procs import ProcessSampler, totals


def test_a_process_tree_is_counted_with_its_children_unless_alone() -> None:
    # A child that burns CPU for the whole window.
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        sampler = ProcessSampler({"tree": os.getpid(), "alone": os.getpid()}, alone={"alone"})
        sampler.start()
        time.sleep(0.5)
        figures = sampler.stop()
    finally:
        child.kill()
        child.wait()
    assert figures["tree"]["processes"] >= 2 and figures["alone"]["processes"] == 1
    assert figures["tree"]["cpu_percent"] > figures["alone"]["cpu_percent"] + 30
    assert figures["tree"]["memory_mib"] > figures["alone"]["memory_mib"] > 0
    assert sampler.machine_cpu_percent is not None and sampler.machine_cpu_percent > 30
    summed = totals(figures)
    assert summed["cpu_s"] == round(figures["tree"]["cpu_s"] + figures["alone"]["cpu_s"], 3)


def test_a_process_that_is_gone_is_reported_not_running() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    sampler = ProcessSampler({"gone": gone.pid})
    sampler.start()
    figures = sampler.stop()
    assert figures["gone"] == {"pid": gone.pid, "alive": False}
    assert totals(figures) == {"cpu_percent": 0.0, "cpu_s": 0.0, "memory_mib": 0.0}
