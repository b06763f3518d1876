"""A record's fields read from columns of other names: ``--columns prompt=question chosen=good``
for a spreadsheet whose headers are its own. Errors name the file's column, not the field."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..hints import did_you_mean
from .records import DataError

FIELDS = ("prompt", "completion", "messages", "chosen", "rejected")


def column_map(given: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``["prompt=question", ...]`` (or ``{"prompt": "question"}``) as ``{field: column}``. A
    ValueError lists every entry that is not ``FIELD=COLUMN`` with one of :data:`FIELDS`."""
    if not given:
        return {}
    pairs = list(given.items()) if isinstance(given, Mapping) else [
        tuple(part.strip() for part in entry.split("=", 1)) if "=" in entry else (entry, "") for entry in given]
    out, errors = {}, []
    for field, column in pairs:
        if field not in FIELDS:
            errors.append(f"{field}={column}: no field {field!r}" + (did_you_mean(field, FIELDS) or
                                                                     f" (fields: {', '.join(FIELDS)})"))
        elif not column:
            errors.append(f"{field!r}: expected FIELD=COLUMN, such as prompt=question")
        elif field in out:
            errors.append(f"{field!r} is given twice ({out[field]}, {column})")
        else:
            out[field] = column
    if errors:
        raise ValueError("columns: " + "; ".join(errors))
    return out


def with_columns(parse: Callable, columns: Mapping[str, str] | None) -> Callable:
    """``parse(row, path, line)`` reading each field from its column; its errors name the column."""
    if not columns:
        return parse

    def parse_renamed(row: dict, path, line: int):
        missing = [c for c in columns.values() if c not in row]
        if missing:
            raise DataError(path, line, missing[0], f"missing column (read as {_field_of(missing[0], columns)!r}; "
                                                    f"the record has: {', '.join(map(str, row))})")
        try:
            return parse(renamed(row, columns), path, line)
        except DataError as e:
            raise DataError(e.path, e.line, column_of(e.field, columns), e.reason) from None

    return parse_renamed


def renamed(row: dict, columns: Mapping[str, str]) -> dict:
    """``row`` with each field taken from its column (a column named like a field read from
    elsewhere is left out)."""
    out = {k: v for k, v in row.items() if k not in columns}
    out.update({field: row[column] for field, column in columns.items() if column in row})
    return out


def column_of(field: str | None, columns: Mapping[str, str] | None) -> str | None:
    """What the file calls ``field`` (``chosen[0].content`` → ``good[0].content``)."""
    if not field or not columns:
        return field
    head = field.split("[", 1)[0].split(".", 1)[0]
    return columns.get(head, head) + field[len(head):]


def _field_of(column: str, columns: Mapping[str, str]) -> str:
    return next(f for f, c in columns.items() if c == column)
