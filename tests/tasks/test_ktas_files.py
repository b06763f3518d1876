"""KTAS as published (``;``-separated latin-1) and as a copy Excel re-saved ("CSV UTF-8", in a
comma locale): the same records, the dataset's missing-value marks read as not recorded."""
import csv
import io
import os
from pathlib import Path

import pytest

from prefopt.tasks import get_task
from prefopt.tasks.triage import ktas_encoding
from tests import _formats as formats

SHARED_KTAS = Path(os.environ.get("PREFOPT_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data")
                   ) / "triage" / "ktas" / "data.csv"


def _published(path: Path) -> Path:
    """A small KTAS file as the dataset publishes it, one pain score the '#BOÞ!' mark."""
    formats.write_ktas(path, 6)
    lines = path.read_text(encoding="latin-1").splitlines()
    cells = lines[2].split(";")
    cells[9] = "#BOÞ!"  # NRS_pain
    lines[2] = ";".join(cells)
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
    return path


def _resaved(src: Path, dst: Path, delimiter: str) -> Path:
    """``src`` as Excel's "CSV UTF-8" saves it: a byte-order mark, ``delimiter`` between cells."""
    rows = list(csv.reader(io.StringIO(src.read_bytes().decode("latin-1")), delimiter=";"))
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    dst.write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8"))
    return dst


def _records(path) -> list:
    return [(r.id, r.prompt, r.target) for r in get_task("ktas", levels="ktas", disposition=True).read(str(path))]


def test_a_copy_resaved_as_utf8_reads_as_the_published_file(tmp_path):
    published = _published(tmp_path / "data.csv")
    want = _records(published)
    assert "pain score: not recorded" in want[1][1] and ktas_encoding(published) == "latin-1"
    for delimiter in (";", ","):  # a comma locale's Excel: ',' between cells, the decimal commas quoted
        copy = _resaved(published, tmp_path / f"copy{delimiter == ','}.csv", delimiter)
        assert ktas_encoding(copy) == "utf-8"
        assert _records(copy) == want  # read as latin-1, its pain score was '#BOÃ\x9e!'
    turkish = tmp_path / "turkish.csv"  # a Turkish Excel's own mark, re-saved as UTF-8
    turkish.write_bytes(published.read_bytes().decode("latin-1").replace("#BOÞ!", "#BOŞ!").encode("utf-8"))
    assert _records(turkish) == want


def test_the_shared_ktas_file_and_a_utf8_copy_give_the_same_records(tmp_path):
    if not SHARED_KTAS.is_file():
        pytest.skip(f"the KTAS dataset is not at {SHARED_KTAS}")
    want = _records(SHARED_KTAS)
    assert len(want) == 1000 and ktas_encoding(SHARED_KTAS) == "latin-1"
    assert _records(_resaved(SHARED_KTAS, tmp_path / "data.csv", ";")) == want
