"""The start-up benchmark's pseudo-terminal probe: it sees terminal output and stops the process."""

from __future__ import annotations

import math
import sys

from bench.cli_startup import first_output_s


def test_the_probe_sees_text_written_to_the_terminal_and_kills_the_process() -> None:
    # Writes the text only when stderr is a terminal, as rich's progress does, then hangs.
    child = (
        "import sys, time\n"
        "if sys.stderr.isatty(): sys.stderr.write('work: 0/3'); sys.stderr.flush()\n"
        "time.sleep(600)\n"
    )
    wall_s, cpu_s = first_output_s([sys.executable, "-c", child], b"work: 0/3", timeout_s=60)
    assert math.isfinite(wall_s) and 0 <= cpu_s <= wall_s + 1


def test_a_process_that_ends_without_the_text_is_infinitely_slow() -> None:
    got = first_output_s([sys.executable, "-c", "print('other')"], b"work:", timeout_s=60)
    assert got == (math.inf, math.inf)
