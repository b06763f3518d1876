"""OpenDocument spreadsheets (.ods, LibreOffice Calc's own format) read as Excel workbooks are:
the files are written here as Calc writes them (tests/_formats.write_ods), and by odfpy, another
program's writer, read against pandas' reader of them."""
import datetime
import time
import zipfile

import pytest

from prefopt.data import load_sft
from prefopt.data.ods import _sheets
from prefopt.data.readers import read_rows
from prefopt.data.records import DataError
from prefopt.data.sheet_writer import write_sheet
from prefopt.data.sheets import reading_sheet
from tests._formats import ods_cell, write_ods, write_workbook

ROWS = [["prompt", "completion", "n"],
        ["Chest  pain   since\nthis morning", "ED now.", 1.0],
        [None, None, None],
        ["  indented", "a\ttab", 0.1 * 3],
        ["flag", "x", True],
        ["date", "x", datetime.date(2024, 3, 1)],
        ["datetime", "x", datetime.datetime(2024, 3, 1, 8, 30)],
        ["time", "x", datetime.time(8, 30)],
        ["big & <odd>", "'quoted' \"too\"", 1234567.125]]


def _row(*cells: str, **attrs) -> str:
    """A table-row's XML of raw cells, its attributes named with '_' for '-' (number_rows_repeated)."""
    a = "".join(f' table:{k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f"<table:table-row{a}>{''.join(cells)}</table:table-row>"


def test_an_ods_sheet_reads_as_the_same_sheet_saved_by_excel(tmp_path):
    """Text (runs of spaces, tabs, line breaks, XML's special characters), numbers (whole ones
    without ".0", 0.1*3 as 0.3), TRUE/FALSE, dates, times and blank rows: each read from Calc's
    file as from Excel's, with the same row numbers."""
    ods = list(read_rows(write_ods(tmp_path / "notes.ods", {"Sheet1": ROWS})))
    xlsx = list(read_rows(write_workbook(tmp_path / "notes.xlsx", {"Sheet1": ROWS})))
    assert ods == xlsx
    assert ods[0] == (2, {"prompt": "Chest  pain   since\nthis morning", "completion": "ED now.", "n": "1"})
    assert [n for n, _ in ods] == [2, 4, 5, 6, 7, 8, 9]
    assert [r["n"] for _, r in ods] == ["1", "0.3", "TRUE", "2024-03-01", "2024-03-01T08:30:00", "08:30:00",
                                        "1234567.125"]


def test_calcs_repeats_are_read_as_the_rows_and_cells_they_stand_for(tmp_path):
    """Calc writes equal neighbours once with a count: a row of the same cells twice, a run of
    empty cells before a value; and its million empty rows below the data, as one element, cost
    nothing to read."""
    rows = [["id", "text", "label"],
            _row(ods_cell("7"), ods_cell("same"), ods_cell("x"), number_rows_repeated=2),
            _row(ods_cell("9"), '<table:table-cell table:number-columns-repeated="1"/>', ods_cell("y"),
                 '<table:table-cell table:number-columns-repeated="16381"/>'),
            _row('<table:table-cell table:number-columns-repeated="2"/>', ods_cell("z")),
            _row('<table:table-cell table:number-columns-repeated="1024"/>', number_rows_repeated=5),
            ["11", "last"]]
    path = write_ods(tmp_path / "r.ods", {"Sheet1": rows})
    start = time.perf_counter()
    got = list(read_rows(path))
    assert time.perf_counter() - start < 2  # (the trailer's 1,048,566 rows are not made)
    assert got == [(2, {"id": "7", "text": "same", "label": "x"}), (3, {"id": "7", "text": "same", "label": "x"}),
                   (4, {"id": "9", "text": "", "label": "y"}), (5, {"id": "", "text": "", "label": "z"}),
                   (11, {"id": "11", "text": "last", "label": ""})]
    wide = _row(ods_cell("1"), '<table:table-cell table:number-columns-repeated="30000" office:value-type="string">'
                '<text:p>y</text:p></table:table-cell>', ods_cell("past"))
    (sheet,) = _sheets(write_ods(tmp_path / "wide.ods", {"Sheet1": [["id"], wide]}))
    assert len(sheet.rows[1][1]) == 16384 and sheet.rows[1][1][-1] == "y"  # cut at Calc's last column


def test_a_comment_on_a_cell_is_not_its_text_and_styled_runs_are(tmp_path):
    note = ('<table:table-cell office:value-type="string"><office:annotation><dc:creator xmlns:dc="http://purl.org/dc/'
            'elements/1.1/">RN</dc:creator><text:p>check this one</text:p></office:annotation><text:p>Short of '
            '<text:span text:style-name="T1">breath</text:span> <text:a xlink:href="x" xmlns:xlink="http://www.w3.org/'
            '1999/xlink">today</text:a><text:line-break/>since 3 am</text:p></table:table-cell>')
    path = write_ods(tmp_path / "c.ods", {"Sheet1": [["prompt", "completion"], _row(note, ods_cell("ED"))]})
    assert list(read_rows(path)) == [(2, {"prompt": "Short of breath today\nsince 3 am", "completion": "ED"})]


def test_a_formulas_value_is_the_one_calc_saved_and_a_failed_ones_error_is_refused(tmp_path, tok):
    """A formula reads as its saved value; a failed one as the error Calc shows (old files mark it
    as a number: its text says what it is), which the loaders refuse by file, line and field; one
    whose value was never saved (written by a program that does not calculate) stops the read."""
    saved = ('<table:table-cell table:formula="of:=[.A2]&amp;&quot; today&quot;" office:value-type="string" '
             'office:string-value="Fever today" calcext:value-type="string"><text:p>Fever today</text:p>'
             '</table:table-cell>')
    failed = ('<table:table-cell table:formula="of:=1/0" office:value-type="float" office:value="0" calcext:value-type='
              '"error"><text:p>#DIV/0!</text:p></table:table-cell>')
    old = ('<table:table-cell table:formula="of:=VLOOKUP([.A1];[.Z1:.Z2];2;0)" office:value-type="float" '
           'office:value="0"><text:p>Err:502</text:p></table:table-cell>')
    path = write_ods(tmp_path / "f.ods", {"Sheet1": [["prompt", "completion"], _row(saved, ods_cell("ED")),
                                                      _row(ods_cell("Rash"), failed), _row(ods_cell("Cough"), old)]})
    assert [r for _, r in read_rows(path)] == [{"prompt": "Fever today", "completion": "ED"},
                                               {"prompt": "Rash", "completion": "#DIV/0!"},
                                               {"prompt": "Cough", "completion": "Err:502"}]
    with pytest.raises(DataError, match=r"f.ods:3: field 'completion': #DIV/0!: a spreadsheet's error value"):
        load_sft(path, tok)
    unsaved = '<table:table-cell table:formula="of:=[.A2]*2"/>'
    path = write_ods(tmp_path / "u.ods", {"Sheet1": [["prompt", "completion"], _row(ods_cell("Rash"), unsaved),
                                                      _row(ods_cell("Itch"), unsaved)]})
    with pytest.raises(DataError, match=r"u.ods: sheet 'Sheet1', cells B2, B3: formulas with no saved value, read "
                                        r"as empty .*open it in LibreOffice Calc and save it"):
        list(read_rows(path))


def test_sheets_rows_hidden_and_merges_are_read_as_for_a_workbook(tmp_path):
    """A hidden sheet is not read, and said so; several sheets in view need --sheet; a row hidden
    by hand or by a filter is read and named; a value merged down over rows is read in each."""
    data = [["prompt", "completion"], ["Fever", "GP"]]
    path = write_ods(tmp_path / "h.ods", {"Records": data, "Lists": [["label"], ["GP"], ["ED"]]}, hidden=("Lists",))
    with pytest.warns(UserWarning, match=r"read sheet 'Records'; sheets hidden in LibreOffice \('Lists'\) hold data"):
        assert [r for _, r in read_rows(path)] == [{"prompt": "Fever", "completion": "GP"}]
    with pytest.raises(DataError, match=r"no sheet in view holds data \(hidden ones do: 'Records'\); unhide .* \(in "
                                        r"LibreOffice Calc, Sheet > Show Sheet\)"):
        list(read_rows(write_ods(tmp_path / "all.ods", {"Records": data}, hidden=("Records",))))
    both = write_ods(tmp_path / "two.ods", {"Train": data, "Test": [["prompt", "completion"], ["Cough", "ED"]]})
    with pytest.raises(DataError, match=r"2 sheets hold data \('Train', 'Test'\); name the one to read \(--sheet"):
        list(read_rows(both))
    with reading_sheet("test"):
        assert [r for _, r in read_rows(both)] == [{"prompt": "Cough", "completion": "ED"}]
    rows = [["prompt", "completion"], ["a", "GP"],
            _row(ods_cell("b"), ods_cell("ED"), visibility="collapse"),
            _row(ods_cell("c"), ods_cell("ED"), visibility="filter"),
            _row('<table:table-cell table:number-rows-spanned="2" office:value-type="string"><text:p>d</text:p>'
                 '</table:table-cell>', ods_cell("GP")),
            _row("<table:covered-table-cell/>", ods_cell("ED"))]
    path = write_ods(tmp_path / "v.ods", {"Sheet1": rows})
    with pytest.warns(UserWarning) as said:
        got = list(read_rows(path))
    assert [(n, r["prompt"]) for n, r in got] == [(2, "a"), (3, "b"), (4, "c"), (5, "d"), (6, "d")]
    said = " ".join(str(w.message) for w in said)
    assert "sheet 'Sheet1': rows 3, 4, hidden in LibreOffice (by hand or by a filter), read like the others" in said
    assert "range A5:A6 merged over rows: each row it covers read with its value" in said


def test_a_spreadsheet_that_cannot_be_read_says_why(tmp_path):
    (tmp_path / "x.ods").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100))
    with pytest.raises(DataError, match=r"x.ods: not a readable OpenDocument spreadsheet \(BadZipFile"):
        list(read_rows(tmp_path / "x.ods"))
    with zipfile.ZipFile(tmp_path / "locked.ods", "w") as z:  # Calc's manifest names each part's encryption
        z.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet")
        z.writestr("META-INF/manifest.xml", '<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:'
                   'manifest:1.0"><manifest:file-entry manifest:full-path="content.xml"><manifest:encryption-data/>'
                   '</manifest:file-entry></manifest:manifest>')
        z.writestr("content.xml", bytes(range(256)))
    with pytest.raises(DataError, match=r"locked.ods: a password-protected spreadsheet: in LibreOffice Calc, save"):
        list(read_rows(tmp_path / "locked.ods"))
    with zipfile.ZipFile(tmp_path / "text.ods", "w") as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.text")
    with pytest.raises(DataError, match=r"not a readable OpenDocument spreadsheet \(no content.xml; a file of "
                                        r"application/vnd.oasis.opendocument.text\)"):
        list(read_rows(tmp_path / "text.ods"))
    with zipfile.ZipFile(tmp_path / "cut.ods", "w") as z:
        z.writestr("content.xml", "<office:document-content xmlns:office='x'><office:body>")
    with pytest.raises(DataError, match=r"cut.ods: not a readable OpenDocument spreadsheet \(its content.xml: "):
        list(read_rows(tmp_path / "cut.ods"))
    odd = write_ods(tmp_path / "odd.ods", {"Sheet1": [["a"], _row(ods_cell("b"), number_rows_repeated="two")]})
    with pytest.raises(DataError, match=r"odd.ods: not a readable OpenDocument spreadsheet \(its content.xml: "
                                        r"invalid literal for int\(\)"):
        list(read_rows(odd))


def test_a_file_odfpy_wrote_reads_as_pandas_reads_it(tmp_path):
    """Another program's writer (odfpy: its own spaces, line breaks and repeats), read against
    another program's reader (pandas' odf engine, which uses odfpy)."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("odf")
    from odf.opendocument import OpenDocumentSpreadsheet
    from odf.table import Table, TableCell, TableRow
    from odf.text import LineBreak, P

    doc, table = OpenDocumentSpreadsheet(), Table(name="Portal")

    def cell(v):
        c = TableCell(valuetype="float", value=v) if isinstance(v, float) else TableCell(valuetype="string")
        p = P(text=str(v).split("\n")[0])
        for line in str(v).split("\n")[1:]:
            p.addElement(LineBreak())
            p.addText(line)
        c.addElement(p)
        return c

    messages = [f"Message {i}:  pain   {'x' * i}\nsince {i} days" for i in range(6)]
    for values in [["message", "urgency", "age"], *[[m, "ED" if i % 2 else "GP", 30.0 + i / 4]
                                                    for i, m in enumerate(messages)]]:
        row = TableRow()
        for v in values:
            row.addElement(cell(v))
        table.addElement(row)
    doc.spreadsheet.addElement(table)
    doc.save(str(tmp_path / "o.ods"))
    ours = [r for _, r in read_rows(tmp_path / "o.ods")]
    theirs = pd.read_excel(tmp_path / "o.ods", engine="odf").to_dict("records")
    assert [r["message"] for r in ours] == [r["message"] for r in theirs] == messages
    assert [float(r["age"]) for r in ours] == [r["age"] for r in theirs]
    assert [r["urgency"] for r in ours] == [r["urgency"] for r in theirs]


def test_a_table_written_as_ods_reads_back_by_prefopt_and_by_pandas(tmp_path):
    """predict's answers to a Calc file are written as one: text, numbers, TRUE/FALSE and JSON
    read back as written; what XML cannot hold is named and replaced; the header row frozen, as
    in an Excel workbook."""
    rows = [{"mrn": "00123", "message": "Chest  pain\nsince  noon\t(left)\r\n", "predicted": "emergency",
             "confidence": 0.875, "finished": True, "options": {"A": "x"}},
            {"mrn": "00124", "message": " Refill", "predicted": "", "confidence": None, "finished": False,
             "extra": 3}]
    path = tmp_path / "predictions.ods"
    with pytest.warns(UserWarning, match=r"predictions.ods: cell B4 \(message\): control characters"):
        write_sheet(path, [*rows, {"mrn": "9", "message": "x\x0cy"}], "predictions")
    with zipfile.ZipFile(path) as z:
        assert z.infolist()[0].filename == "mimetype" and z.infolist()[0].compress_type == zipfile.ZIP_STORED
    back = [r for _, r in read_rows(path)]
    assert back[0] == {"mrn": "00123", "message": "Chest  pain\nsince  noon\t(left)\r\n", "predicted": "emergency",
                       "confidence": "0.875", "finished": "TRUE", "options": '{"A": "x"}', "extra": ""}
    assert back[1]["message"] == " Refill" and back[1]["finished"] == "FALSE" and back[1]["extra"] == "3"
    assert back[2]["message"] == "x\ufffdy"
    (sheet,) = _sheets(path)
    assert sheet.title == "predictions"
    odf = pytest.importorskip("odf.opendocument")
    from odf.config import ConfigItem, ConfigItemMapEntry

    doc = odf.load(str(path))  # odfpy reads the header row's freeze where Calc does: the sheet's view settings
    (view,) = [e for e in doc.settings.getElementsByType(ConfigItemMapEntry) if e.getAttribute("name") == "predictions"]
    assert {i.getAttribute("name"): str(i) for i in view.getElementsByType(ConfigItem)} == {
        "VerticalSplitMode": "2", "VerticalSplitPosition": "1", "ActiveSplitRange": "2", "PositionTop": "0",
        "PositionBottom": "1"}
    with zipfile.ZipFile(path) as z:
        assert b'manifest:full-path="settings.xml"' in z.read("META-INF/manifest.xml")
    pd = pytest.importorskip("pandas")
    pytest.importorskip("odf")
    theirs = pd.read_excel(path, engine="odf", dtype={"mrn": str})
    assert list(theirs["mrn"]) == ["00123", "00124", "9"] and list(theirs["confidence"])[0] == 0.875
    assert list(theirs["message"])[:2] == ["Chest  pain\nsince  noon(left)\r\n", " Refill"]  # (pandas drops a tab)
    assert list(theirs["finished"])[:2] == [True, False]
