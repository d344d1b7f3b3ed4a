"""What every command-line tool and benchmark shares: where console scripts live, and running one."""
import logging
import os
import shlex
import subprocess
import sys
from typing import Callable, Optional, Sequence


class ToolError(RuntimeError):
    """A command failed; the message names it, its exit code and the end of its output."""


def tool(name: str) -> str:
    """A console script (fairseq-train, ...) of this Python's environment (the venv's bin folder)."""
    return os.path.join(os.path.dirname(sys.executable), name)


def run(cmd: Sequence[str], capture: bool = False, log: Optional[str] = None, quiet: bool = False,
        show: Optional[Callable[[str], Optional[str]]] = None) -> str:
    """Run ``cmd`` and return its standard output.

    capture: stdout is only returned (stderr kept for the error message); otherwise stdout and
    stderr go, line by line, to the terminal (or what ``show(line)`` makes of each, None to skip)
    and to the file ``log`` (appended) if given. A non-zero exit raises ToolError."""
    cmd = [str(c) for c in cmd]
    if not quiet:
        print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    if capture:
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode:
            raise ToolError(f"{os.path.basename(cmd[0])} failed with exit code {result.returncode}:\n"
                            f"{(result.stdout + result.stderr)[-3000:]}")
        return result.stdout
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process, \
            open(log or os.devnull, "a", encoding="utf-8") as copy:
        for line in process.stdout:
            lines.append(line)
            copy.write(line)
            shown = show(line) if show else line
            if shown is not None:
                sys.stdout.write(shown)
                sys.stdout.flush()
    if process.returncode:
        raise ToolError(f"{os.path.basename(cmd[0])} failed with exit code {process.returncode}:\n"
                        f"{''.join(lines[-40:])}")
    return "".join(lines)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, its font-search DEBUG lines silenced
    (fairseq's logging setup passes them on)."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
