"""A record's fields read from columns of other names: ``--columns prompt=question chosen=good``
for a spreadsheet whose headers are its own. Errors name the file's column, not the field."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..hints import did_you_mean, first_few
from .records import DataError, about_column

FIELDS = ("prompt", "completion", "messages", "text", "chosen", "rejected", "label", "system")


def field_columns(given: str | Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """FIELD=COLUMN entries (a list, or one text of them separated by commas; a column name may
    hold spaces) or a mapping, as ``{field: column}``; a ValueError for an entry without ``=`` or a
    field given twice."""
    if isinstance(given, Mapping):
        if all(isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
            return dict(given)
    else:
        entries = [e for e in given.split(",") if e.strip()] if isinstance(given, str) else given
        if isinstance(entries, (list, tuple)) and all(isinstance(e, str) for e in entries):
            out: dict[str, str] = {}
            for entry in entries:
                if "=" not in entry:
                    raise ValueError(f"{entry!r}: expected FIELD=COLUMN, such as prompt=question")
                field, column = (part.strip() for part in entry.split("=", 1))
                if field in out:
                    raise ValueError(f"{field!r} is given twice ({out[field]}, {column})")
                out[field] = column
            return out
    raise ValueError(f"expected FIELD=COLUMN entries or a mapping, got {given!r}")


def column_map(given: str | Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """:func:`field_columns`, each field checked: a ValueError lists every one that is not among
    :data:`FIELDS` or has no column."""
    out = field_columns(given) if given else {}
    errors = [f"{field}={column}: no field {field!r}" + (did_you_mean(field, FIELDS)
                                                         or f" (fields: {', '.join(FIELDS)})")
              for field, column in out.items() if field not in FIELDS]
    errors += [f"{field}=: no column given" for field, column in out.items() if field in FIELDS and not column]
    if errors:
        raise ValueError("columns: " + "; ".join(errors))
    return out


def with_columns(parse: Callable, columns: Mapping[str, str] | None) -> Callable:
    """``parse(row, path, line)`` reading each field from its column; its errors name the column."""
    if not columns:
        return parse
    columns = column_map(columns)

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
    """``row`` with each field taken from its column; the columns read so, and a column named
    like a field read from elsewhere, are left out (``prompt=text completion=label`` makes an SFT
    record of prompt and completion, not one that also holds a ``label``: KTO's field)."""
    out = {k: v for k, v in row.items() if k not in columns and k not in columns.values()}
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


def near_columns(row: dict) -> dict[str, str]:
    """``{field: column}`` for each field the record lacks but has a column for under another
    spelling: ``Prompt``, ``Rejected`` (a spreadsheet's headers): what ``--columns`` would read."""
    return _fields_under(row, spaced=False)


def spaced_keys(row: dict) -> dict[str, str]:
    """``{field: key}`` for each field the record lacks but has under a key with spaces around it
    (``" prompt"``, a hand-made JSON file's): ``--columns`` strips what it is given, so the file's
    key must change."""
    return _fields_under(row, spaced=True)


def _plain(key: str) -> str:
    """``key`` as a field would spell it: lower case, no spaces around it, underscores for spaces
    and hyphens (``" Patient-message"`` → ``patient_message``)."""
    return key.strip().lower().replace(" ", "_").replace("-", "_")


def _fields_under(row: dict, spaced: bool) -> dict[str, str]:
    """``{field: key}`` for each field the record lacks but has under another spelling of its name
    (another case, spaces or hyphens for underscores), among the keys with spaces around them
    (``spaced``) or those without."""
    out = {}
    for key in row:
        if isinstance(key, str) and (key != key.strip()) == spaced:
            plain_key = _plain(key)
            if plain_key in FIELDS and plain_key != key and plain_key not in row:
                out.setdefault(plain_key, key)
    return out


# Other names a file may give a field's column (lower case, underscores for spaces and hyphens):
# a guess offered with an error, never read without being asked (--columns). Names that are
# either side in some datasets stay out ("note": ACI-Bench's summary of a dialogue, elsewhere
# the text to classify; "context": the prompt's background in others).
SYNONYMS = {
    "prompt": ("question", "query", "instruction", "input", "message", "patient_message", "dialogue"),
    "completion": ("answer", "response", "output", "target", "summary", "reply"),
    "chosen": ("preferred", "accepted", "good", "better", "winner", "chosen_response"),
    "rejected": ("dispreferred", "bad", "worse", "loser", "rejected_response"),
}
SHOWN = 8  # of a record's columns, at most, in an error


def guessed_columns(row: dict, missing: str) -> dict[str, str]:
    """``{field: column}`` for each field that a record lacking ``missing`` needs (a preference
    record's where ``missing`` is ``chosen`` or ``rejected``, or is ``prompt`` and both are at hand;
    else an SFT record's) and lacks, where exactly one of its columns has a name :data:`SYNONYMS`
    gives for it (``question`` for ``prompt``). An SFT record's other side is its one other
    filled column (MeQSum's ``CHQ`` beside its ``Summary``, ACI-Bench's ``note`` beside its
    ``dialogue``), columns that only say what a record is (``File``, ``encounter_id``) aside;
    with no name to go by and two such columns, the longer cell is the prompt (a medical
    abstract beside its condition's label)."""
    out = {}
    for field, names in SYNONYMS.items():
        found = [k for k in row if isinstance(k, str) and _plain(k) in names]
        if field not in row and len(found) == 1:
            out[field] = found[0]
    pair = missing in ("chosen", "rejected") or (missing == "prompt" and {"chosen", "rejected"} <= {*row, *out})
    needed = ("prompt", "chosen", "rejected") if pair else ("prompt", "completion")
    out = {f: c for f, c in out.items() if f in needed}
    if not pair:
        rest = [k for k, v in row.items() if isinstance(k, str) and k not in FIELDS and k not in out.values()
                and not about_column(k) and _filled(v)]
        lacking = [f for f in needed if f not in row and f not in out]
        if len(lacking) == 1 and len(rest) == 1:
            out[lacking[0]] = rest[0]
        elif len(lacking) == 2 and len(rest) == 2:
            longer, shorter = sorted(rest, key=lambda k: len(str(row[k])), reverse=True)
            if len(str(row[longer])) > len(str(row[shorter])):
                out.update(prompt=longer, completion=shorter)
    return {f: out[f] for f in needed if f in out}


def _filled(value) -> bool:
    """A cell that may be a prompt or an answer: text, or a number (a class's code)."""
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _flags(columns: Mapping[str, str]) -> str:
    return " ".join(f'"{f}={c}"' if " " in c else f"{f}={c}" for f, c in columns.items())


def hinted(e: DataError, row, flag: str = "--columns", python: str = "columns") -> DataError:
    """``e`` with :func:`column_hint`'s words for ``row`` where it is a missing field's error and
    there are any (a spreadsheet's 'Prompt' header); else ``e`` itself."""
    if isinstance(row, dict) and e.reason.startswith("missing field") and (
            hint := column_hint(row, e.field, flag, python)):
        return DataError(e.path, e.line, e.field, e.reason + hint)
    return e


def column_hint(row: dict, missing: str | None = None, flag: str = "--columns", python: str = "columns") -> str:
    """``; it has 'Prompt', 'Chosen': --columns prompt=Prompt chosen=Chosen reads them ...`` where
    :func:`near_columns` finds any (the key it must be, where :func:`spaced_keys` finds any);
    else, where the ``missing`` field is one ``--columns`` reads and the record has columns no
    field is named after: those columns, and the ``--columns`` that :func:`guessed_columns`
    guesses where it guesses the missing field, else the form that would read it. Else ``""``.
    For the error of a missing field; ``flag`` and ``python`` name the setting that maps columns
    (compare's ``--pairs-columns``, ``pairs_columns``)."""
    if spaced := spaced_keys(row):
        return (f"; the record has {', '.join(map(repr, spaced.values()))}, with spaces around the name: the key "
                f"must be {', '.join(map(repr, spaced))}")
    near = near_columns(row)
    if near:
        return (f"; the record has {', '.join(map(repr, near.values()))}: {flag} {_flags(near)} reads them "
                f"({python}={near!r} in Python)")
    keys = [k for k in row if isinstance(k, str)]
    if missing not in FIELDS or all(k in FIELDS for k in keys):
        return ""
    shown = first_few([repr(k) for k in keys], SHOWN)
    guess = guessed_columns(row, missing)
    if missing in guess:
        them = "them, if they hold those fields" if len(guess) > 1 else "it, if it holds that field"
        return f"; the record has {shown}: {flag} {_flags(guess)} reads {them}"
    also = f" (and perhaps {_flags(guess)})" if guess else ""
    return f"; the record has {shown}: {flag} {missing}=COLUMN reads {missing!r} from a column of another name{also}"
