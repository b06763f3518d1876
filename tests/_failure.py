"""What a failed subprocess said, for a test's assertion message: its exit code, the passage where
its first error began and the end of its stderr. Under torchrun the end alone is the launcher's
summary ("Signal 6 (SIGABRT) received by PID ..."), and the reason a rank died, printed earlier, would
be cut."""
import re
import subprocess

# the first line of a Python traceback (under torchrun after "[rank1]: "), a C++ abort (gloo, NCCL),
# or a CLI's error line
FIRST_ERROR = re.compile(r"^(\[rank\d+\]: *)?(Traceback \(most recent call last\)|terminate called|\S*: error: )",
                         re.MULTILINE)


def failure(done: subprocess.CompletedProcess, keep: int = 3000) -> str:
    """``done``'s exit code and stderr: ``keep`` characters from its first error on, and its last
    ``keep`` characters where they are not among those."""
    err = done.stderr or ""
    found = FIRST_ERROR.search(err)
    start = found.start() if found else len(err)
    first = err[start:start + keep]
    tail = err[max(start + keep, len(err) - keep):]
    gap = "\n[...]\n" if start + keep < len(err) - keep else ""
    head = f"exit code {done.returncode}\n"
    return head + (f"first error:\n{first}{gap}{tail}" if first else err[-keep:])
