"""Portal task records built by hand for the review tests: each ``(urgency, staff)`` labels."""
from prefopt.tasks.base import Record


def portal_records(labels: list[tuple[str, str]]) -> list[Record]:
    return [Record(f"r{i}", "", "", {"urgency": u, "staff": s}) for i, (u, s) in enumerate(labels)]
