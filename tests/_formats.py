"""Synthetic rows in the real datasets' file formats (the real files live in ../shared/data, which a
fresh clone may lack): made up, only for checking that each reader, prompt and metric runs."""
import csv
import json
from pathlib import Path

DRUGS = ["aspirin", "heparin", "insulin", "atropine", "naloxone", "adenosine"]
COMPLAINTS = ["chest pain", "abdominal pain", "headache", "fever", "ankle sprain", "dyspnea", "laceration"]
KTAS_HEADER = ("Group;Sex;Age;Patients number per hour;Arrival mode;Injury;Chief_complain;Mental;Pain;NRS_pain;SBP;DBP;"
               "HR;RR;BT;Saturation;KTAS_RN;Diagnosis in ED;Disposition;KTAS_expert;Error_group;Length of stay_min;"
               "KTAS duration_min;mistriage")


def medqa_rows(n: int) -> list[dict]:
    """MedQA (``medqa_usmle_4options.jsonl``): question, options A-D, answer_idx."""
    return [{"question": f"Patient {i} has symptom {i % 5}. Which drug is first line?",
             "options": {k: DRUGS[(i + j) % len(DRUGS)] for j, k in enumerate("ABCD")},
             "answer_idx": "ABCD"[i % 4]} for i in range(n)]


def meqsum_rows(n: int) -> list[dict]:
    """MeQSum (``meqsum.jsonl``): File, CHQ (the consumer's question), Summary."""
    return [{"File": f"{i}.txt", "CHQ": f"SUBJECT: drug {i}\nMESSAGE: my doctor gave me drug {i}, is it safe with milk?",
             "Summary": f"Is drug {i} safe with milk?"} for i in range(n)]


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_abstracts(path: Path, n: int) -> Path:
    """Medical Abstracts (``medical_tc.csv``): condition_label 1-5, medical_abstract."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["condition_label", "medical_abstract"])
        w.writerows([i % 5 + 1, f"Abstract {i}: {COMPLAINTS[i % len(COMPLAINTS)]} in {20 + i} adults, outcomes at "
                     f"{i + 1} years."] for i in range(n))
    return path


def write_uci(folder: Path, n: int) -> Path:
    """UCI Heart Disease (``processed.*.data``, 14 columns, no header, '?' where missing), two files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("cleveland", range(0, n, 2)), ("hungarian", range(1, n, 2))):
        lines = [f"{40 + i},{i % 2}.0,{i % 4 + 1}.0,{120 + i},{200 + 3 * i},0.0,{i % 3}.0,{150 - i},{i % 2}.0,"
                 f"{i % 3 / 2},{'?' if name == 'hungarian' else '2.0'},{'?' if i % 3 else '0.0'},"
                 f"{'?' if name == 'hungarian' else '3.0'},{i % 5}" for i in rows]
        (folder / f"processed.{name}.data").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return folder


def write_ktas(path: Path, n: int) -> Path:
    """KTAS (``data.csv``: ``;``-separated, latin-1, decimal commas, blanks where not recorded)."""
    rows = [f"{i % 2 + 1};{i % 2 + 1};{30 + 3 * i};{i % 9 + 1};{i % 3 + 1};{i % 2 + 1};{COMPLAINTS[i % len(COMPLAINTS)]};"
            f"{i % 4 + 1};{i % 2};{'' if i % 4 == 0 else i % 10};{110 + i};{70 + i};{80 + i};{18 + i % 4};"
            f"{36 + i % 3},{i % 10};{'' if i % 5 == 0 else 95 + i % 5};{i % 5 + 1};diagnosis {i};{i % 4 + 1};"
            f"{i % 5 + 1};{i % 3};{100 + i};{i % 7},50;{i % 2 + 1}" for i in range(n)]
    path.write_text("\n".join([KTAS_HEADER, *rows]) + "\n", encoding="latin-1")
    return path


def write_workbook(path: Path, sheets: dict) -> Path:
    """An .xlsx file of ``{title: rows}`` (each row a list of cell values), as Excel saves one;
    skipped where openpyxl is not installed."""
    import pytest

    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        ws = book.create_sheet(title)
        for row in rows:
            ws.append(row)
    book.save(path)
    return path


_ODS_NS = " ".join(f'xmlns:{k}="urn:oasis:names:tc:opendocument:xmlns:{k}:{v}"' for k, v in {
    "office": "1.0", "style": "1.0", "text": "1.0", "table": "1.0", "of": "1.2"}.items()) + \
    ' xmlns:calcext="urn:org:documentfoundation:names:experimental:calc:xmlns:calcext:1.0"'


def ods_text(text: str) -> str:
    """A cell's text as LibreOffice Calc writes it: a ``text:p`` a line, a run of spaces after
    the first (or at a paragraph's start) as ``<text:s text:c="N"/>``, a tab as ``<text:tab/>``."""
    import re
    from xml.sax.saxutils import escape

    def spaces(m):
        start, k = m.start() == 0, len(m[0])
        rest = k if start else k - 1
        return ("" if start else " ") + (f'<text:s text:c="{rest}"/>' if rest > 1 else "<text:s/>" if rest else "")

    paragraphs = [re.sub(r" +", spaces, escape(line)).replace("\t", "<text:tab/>") for line in text.split("\n")]
    return "".join(f"<text:p>{p}</text:p>" for p in paragraphs)


def ods_cell(v) -> str:
    """A ``table:table-cell`` holding ``v`` (text, a number, TRUE/FALSE, a date, datetime or time)
    as LibreOffice Calc saves it: the value in attributes, what the cell shows in its paragraphs."""
    import datetime

    if v is None:
        return "<table:table-cell/>"
    if isinstance(v, bool):
        attrs, shown = f'office:value-type="boolean" office:boolean-value="{str(v).lower()}"', str(v).upper()
    elif isinstance(v, (int, float)):
        attrs, shown = f'office:value-type="float" office:value="{v!r}"', f"{v:g}"
    elif isinstance(v, datetime.datetime):
        attrs, shown = f'office:value-type="date" office:date-value="{v.isoformat()}"', v.strftime("%m/%d/%y %H:%M")
    elif isinstance(v, datetime.date):
        attrs, shown = f'office:value-type="date" office:date-value="{v.isoformat()}"', v.strftime("%m/%d/%y")
    elif isinstance(v, datetime.time):
        attrs, shown = (f'office:value-type="time" office:time-value="PT{v.hour:02d}H{v.minute:02d}M{v.second:02d}S"',
                        v.strftime("%I:%M:%S %p"))
    else:
        return f'<table:table-cell office:value-type="string" calcext:value-type="string">{ods_text(v)}' \
               "</table:table-cell>"
    return f'<table:table-cell {attrs}><text:p>{shown}</text:p></table:table-cell>'


def write_ods(path: Path, sheets: dict, hidden: tuple = (), trailer: bool = True) -> Path:
    """An OpenDocument spreadsheet of ``{title: rows}`` as LibreOffice Calc saves one: each row a
    list of cell values (:func:`ods_cell`) or a ``table:table-row`` element's XML as it is; the
    sheets named in ``hidden`` hidden (Sheet > Hide Sheet); ``trailer``: the empty rows to Calc's
    last, one element repeated a million times, as Calc writes them."""
    import zipfile

    styles = ('<office:automatic-styles><style:style style:name="ta1" style:family="table"><style:table-properties '
              'table:display="true"/></style:style><style:style style:name="ta2" style:family="table">'
              '<style:table-properties table:display="false"/></style:style></office:automatic-styles>')
    tables = []
    for title, rows in sheets.items():
        xml = [r if isinstance(r, str) else "<table:table-row>" + "".join(map(ods_cell, r)) + "</table:table-row>"
               for r in rows]
        if trailer:
            xml.append(f'<table:table-row table:number-rows-repeated="{1048576 - len(rows)}"><table:table-cell '
                       'table:number-columns-repeated="1024"/></table:table-row>')
        tables.append(f'<table:table table:name="{title}" table:style-name="{"ta2" if title in hidden else "ta1"}">'
                      '<table:table-column table:number-columns-repeated="1024"/>' + "".join(xml) + "</table:table>")
    content = (f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {_ODS_NS} office:version="1.3">'
               f'{styles}<office:body><office:spreadsheet>{"".join(tables)}</office:spreadsheet></office:body>'
               '</office:document-content>')
    manifest = ('<?xml version="1.0" encoding="UTF-8"?><manifest:manifest xmlns:manifest="urn:oasis:names:tc:'
                'opendocument:xmlns:manifest:1.0" manifest:version="1.3"><manifest:file-entry manifest:full-path="/" '
                'manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/><manifest:file-entry '
                'manifest:full-path="content.xml" manifest:media-type="text/xml"/></manifest:manifest>')
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), "application/vnd.oasis.opendocument.spreadsheet")
        z.writestr("META-INF/manifest.xml", manifest, zipfile.ZIP_DEFLATED)
        z.writestr("content.xml", content, zipfile.ZIP_DEFLATED)
    return path


def write_pdf(path: Path, pages: list[list[str]]) -> Path:
    """A PDF of ``pages``, each a list of lines set in Helvetica (WinAnsi: accents and degree
    signs), written object by object with its cross-reference table, as a word processor's
    "Save as PDF" lays out text; a page without lines has no text (a scanned page's picture)."""
    def string(line: str) -> bytes:
        return b"(" + line.encode("cp1252").replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"

    n = len(pages)
    kids = b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(n))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % n,
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"]
    for i, lines in enumerate(pages):
        stream = b"BT /F1 11 Tf 14 TL 72 760 Td " + b" T* ".join(string(line) + b" Tj" for line in lines) + b" ET" \
            if lines else b""
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                       b"/Contents %d 0 R >>" % (5 + 2 * i))
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path
