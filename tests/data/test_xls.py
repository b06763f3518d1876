"""Excel 97-2003 workbooks (.xls) read as .xlsx ones are: the files written by xlwt (the
format's own writer for Python, test-only), read through xlrd; and files named .xls that hold
something else, as systems' "Export to Excel" write them, named before xlrd is needed."""
import datetime
import zipfile

import pytest

from prefopt.data import load_sft
from prefopt.data.readers import read_rows
from prefopt.data.records import DataError
from prefopt.data.sheets import reading_sheet
from prefopt.evaluate.new_records import table_format
from tests._formats import write_ods, write_workbook
from tests.data.test_ods import ROWS

xlwt = pytest.importorskip("xlwt")
pytest.importorskip("xlrd")

FORMATS = {datetime.datetime: "YYYY-MM-DD hh:mm", datetime.date: "YYYY-MM-DD", datetime.time: "hh:mm:ss"}


def write_xls(path, sheets: dict, hidden=(), hidden_rows=(), merged=(), errors=()):
    """An .xls of ``{title: rows}``; ``hidden_rows``, ``merged`` ((first row, last row, column),
    0-based) and ``errors`` ((row, column, an error code: 0x2A is #N/A)) on the first sheet."""
    book = xlwt.Workbook()
    for i, (title, rows) in enumerate(sheets.items()):
        ws = book.add_sheet(title)
        ws.visibility = int(title in hidden)
        for r, values in enumerate(rows):
            for c, v in enumerate(values):
                if v is not None and not (i == 0 and any(m[0] < r <= m[1] and m[2] == c for m in merged)):
                    style = next((xlwt.easyxf(num_format_str=f) for t, f in FORMATS.items() if isinstance(v, t)), None)
                    ws.write(r, c, v, *([style] if style else []))
        if i == 0:
            for first, last, column in merged:
                ws.merge(first, last, column, column)
            for r in hidden_rows:
                ws.row(r).hidden = True
            for r, c, text in errors:
                ws.row(r).set_cell_error(c, text)
    book.save(str(path))
    return path


def test_an_xls_sheet_reads_as_the_same_sheet_saved_as_xlsx_and_as_ods(tmp_path):
    xls = list(read_rows(write_xls(tmp_path / "notes.xls", {"Sheet1": ROWS})))
    assert xls == list(read_rows(write_workbook(tmp_path / "notes.xlsx", {"Sheet1": ROWS})))
    assert xls == list(read_rows(write_ods(tmp_path / "notes.ods", {"Sheet1": ROWS})))
    assert [r["n"] for _, r in xls] == ["1", "0.3", "TRUE", "2024-03-01", "2024-03-01T08:30:00", "08:30:00",
                                        "1234567.125"]


def test_sheets_hidden_rows_merges_and_errors_are_read_as_for_an_xlsx(tmp_path, tok):
    rows = [["prompt", "completion"], ["a", "GP"], ["b", "ED"], ["c", "ED"], ["d", "GP"], [None, "ED"], ["f", None]]
    path = write_xls(tmp_path / "n.xls", {"Records": rows, "Lists": [["label"], ["GP"]]}, hidden=("Lists",),
                     hidden_rows=(2,), merged=((4, 5, 0),), errors=((6, 1, 0x2A),))
    with pytest.warns(UserWarning) as said:
        got = list(read_rows(path))
    assert [(n, r["prompt"], r["completion"]) for n, r in got] == [
        (2, "a", "GP"), (3, "b", "ED"), (4, "c", "ED"), (5, "d", "GP"), (6, "d", "ED"), (7, "f", "#N/A")]
    said = " ".join(str(w.message) for w in said)
    assert "read sheet 'Records'; sheets hidden in Excel ('Lists') hold data too and are not read" in said
    assert "sheet 'Records': row 3, hidden in Excel (by hand or by a filter), read like the others" in said
    assert "range A5:A6 merged over rows: each row it covers read with its value" in said
    with pytest.raises(DataError, match=r"n.xls:7: field 'completion': #N/A: a spreadsheet's error value"):
        load_sft(path, tok)
    with reading_sheet("lists"):
        assert [r for _, r in read_rows(path)] == [{"label": "GP"}]
    with pytest.raises(DataError, match=r"no sheet 'Test' \(its sheets: 'Records', 'Lists' \(hidden\)\)"):
        list(read_rows(path, sheet="Test"))


@pytest.mark.parametrize("head, said", [
    (b"<html><body><table><tr><td>prompt</td></tr></table>",
     r"an HTML table named .xls \(as many systems' \"Export to Excel\" write one\), not a workbook: open it in Excel"),
    ("\ufeff<table border=1><tr><th>note</th></tr>".encode("utf-16"), r"an HTML table named .xls"),
    (b'<?xml version="1.0"?>\n<?mso-application progid="Excel.Sheet"?>\n<Workbook xmlns="urn:schemas-microsoft-com:'
     b'office:spreadsheet">', r"an XML Spreadsheet 2003 file named .xls, not a workbook: open it in Excel and save"),
    (b"prompt\tcompletion\nChest pain\tED\n", r"tab-separated text named .xls, not a workbook: rename it .tsv"),
    (b"prompt;completion\nChest pain;ED\n",
     r"comma- or semicolon-separated text named .xls, not a workbook: rename it .csv"),
    (b"\x00\x01\x02garbage", r"not an Excel 97-2003 workbook \(nor a file that an \"Export to Excel\" names so\)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), r"not a readable Excel 97-2003 workbook \(")])
def test_a_file_named_xls_that_is_no_workbook_says_what_it_is(tmp_path, head, said):
    (tmp_path / "export.xls").write_bytes(head)
    with pytest.raises(DataError, match=r"export.xls: " + said):
        list(read_rows(tmp_path / "export.xls"))


def test_an_xlsx_named_xls_and_a_locked_workbook_are_named(tmp_path, monkeypatch):
    write_workbook(tmp_path / "renamed.xlsx", {"Sheet1": [["a"], ["b"]]}).rename(tmp_path / "renamed.xls")
    assert zipfile.is_zipfile(tmp_path / "renamed.xls")
    with pytest.raises(DataError, match=r"renamed.xls: an .xlsx workbook \(a zip\) named .xls: rename it .xlsx"):
        list(read_rows(tmp_path / "renamed.xls"))
    import xlrd

    def locked(*a, **k):  # what xlrd raises for a workbook saved with a password to open it
        raise xlrd.XLRDError("Workbook is encrypted")

    monkeypatch.setattr(xlrd, "open_workbook", locked)
    path = write_xls(tmp_path / "locked.xls", {"Sheet1": [["a"], ["b"]]})
    with pytest.raises(DataError, match=r"locked.xls: a password-protected workbook: in Excel, save a copy"):
        list(read_rows(path))


def test_predictions_for_an_xls_are_an_xlsx(tmp_path):
    assert table_format(tmp_path / "inbox.xls") == "xlsx"


def test_without_xlrd_an_xls_says_how_to_get_it(tmp_path, monkeypatch):
    import sys

    from prefopt._deps import MissingDependencyError

    path = write_xls(tmp_path / "n.xls", {"Sheet1": [["a"], ["b"]]})
    monkeypatch.setitem(sys.modules, "xlrd", None)
    with pytest.raises(MissingDependencyError, match=r"reading .xls data files needs the optional package 'xlrd'.*"
                                                     r"pip install 'prefopt\[excel\]'"):
        list(read_rows(path))
