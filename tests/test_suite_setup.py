"""The environment ``tests/conftest.py`` gives every process of the suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# One thread formats tracebacks (as py4j's finalizer thread does when it logs a retried connection
# reset) while this one parses source, with a finalizer running Python code during the parse (as
# a JavaObject's does): on CPython 3.11 with column positions every parse can fail.
RACE = textwrap.dedent(
    """
    import ast, textwrap, threading, time, traceback

    source = open(textwrap.__file__).read()
    done = False

    class Garbage:
        def __init__(self):
            self.cycle = self

        def __del__(self):
            time.sleep(0)

    def format_tracebacks():
        while not done:
            try:
                {}["missing"] + 1  # a part of the line: 3.11 parses it to underline it
            except KeyError:
                traceback.format_exc()

    threading.Thread(target=format_tracebacks, daemon=True).start()
    failed = 0
    for _ in range(10):
        for _ in range(50):
            Garbage()
        try:
            ast.parse(source)
        except SystemError:
            failed += 1
    done = True
    print(failed)
    """
)


def test_tracebacks_formatted_in_other_threads_never_break_a_parse(tmp_path: Path) -> None:
    # A file, not `python -c`: a traceback shows (and underlines) only lines it can read.
    script = tmp_path / "race.py"
    script.write_text(RACE)
    # The child inherits this process's environment, the one conftest.py set.
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0"], out.stdout + out.stderr
