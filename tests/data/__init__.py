"""Data tests' shared helpers (the tokenizer fixture is in conftest.py)."""
import json


def write_jsonl(path, rows):
    """``rows`` as a JSONL file, one a line (a string is written as it is: a malformed line)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
