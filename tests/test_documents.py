"""A clinical note kept as a Word or Writer document, given as a prompt (``generate --prompt
@note.docx``, chat's ``/file``): its text, paragraphs and table rows a line each, without its
letterhead, comments or deleted text. Word files are written by python-docx (test-only), Writer
files by odfpy; tracked changes, which neither writes, as Word writes them; PDFs object by object
(tests/_formats.write_pdf), locked by pypdf."""
import sys
import zipfile

import pytest

from prefopt.cli import main
from prefopt.documents import document_text
from prefopt.interactive import prompt_file_text
from tests._formats import write_pdf


def test_a_word_note_reads_as_its_paragraphs_and_table_rows(tmp_path):
    docx = pytest.importorskip("docx")
    doc = docx.Document()
    doc.sections[0].header.paragraphs[0].text = "St Mary's Hospital, ward 3"  # the letterhead: not the note
    doc.add_heading("Discharge summary", level=1)
    p = doc.add_paragraph("54-year-old man, chest pain ")
    p.add_run("for two hours").bold = True
    p.add_run().add_break()
    p.add_run("Troponin\t0.8 ng/mL")
    table = doc.add_table(rows=2, cols=2)
    for r, row in enumerate([("BP", "150/90"), ("HR", "112")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    plan = doc.add_paragraph("Plan: admit to cardiology.")
    doc.add_comment(plan.runs, text="check the dose", author="RN")  # a reviewer's remark: not the note
    doc.save(tmp_path / "note.docx")
    assert prompt_file_text(tmp_path / "note.docx") == ("Discharge summary\n54-year-old man, chest pain for two hours\n"
                                                         "Troponin\t0.8 ng/mL\nBP\t150/90\nHR\t112\n"
                                                         "Plan: admit to cardiology.")


def test_tracked_changes_read_as_the_note_now_stands(tmp_path):
    """Word keeps a deletion's text as ``w:delText`` in ``w:del``, an insertion's runs in ``w:ins``,
    moved text at both places (``w:moveFrom``, ``w:moveTo``): the note reads as it now stands."""
    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    body = (f'<w:document {w}><w:body><w:p><w:r><w:t xml:space="preserve">Aspirin </w:t></w:r>'
            '<w:del w:id="1" w:author="MD"><w:r><w:delText>300</w:delText></w:r></w:del>'
            '<w:ins w:id="2" w:author="MD"><w:r><w:t>75</w:t></w:r></w:ins>'
            '<w:r><w:t xml:space="preserve"> mg daily</w:t></w:r>'
            '<w:moveFrom w:id="3" w:author="MD"><w:r><w:t> at night</w:t></w:r></w:moveFrom></w:p>'
            '<w:p><w:moveTo w:id="4" w:author="MD"><w:r><w:t>At night.</w:t></w:r></w:moveTo></w:p>'
            '<w:p><w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r><w:instrText> DATE </w:instrText></w:r>'
            '<w:r><w:fldChar w:fldCharType="separate"/></w:r><w:r><w:t>2026-12-05</w:t></w:r>'
            '<w:r><w:fldChar w:fldCharType="end"/></w:r></w:p></w:body></w:document>')
    with zipfile.ZipFile(tmp_path / "tracked.docx", "w") as z:
        z.writestr("word/document.xml", body)
    assert document_text(tmp_path / "tracked.docx") == "Aspirin 75 mg daily\nAt night.\n2026-12-05"


def test_a_writer_note_reads_as_its_paragraphs_lists_and_table_rows(tmp_path):
    pytest.importorskip("odf")
    from odf.office import Annotation
    from odf.opendocument import OpenDocumentText
    from odf.table import Table, TableCell, TableColumn, TableRow
    from odf.text import H, LineBreak, List, ListItem, Note, NoteBody, NoteCitation, P, S, Span, Tab

    doc = OpenDocumentText()
    doc.text.addElement(H(outlinelevel=1, text="Triage note"))
    p = P(text="Fever")
    p.addElement(S(c=2))
    p.addText("and rash")
    p.addElement(Tab())
    p.addElement(Span(text="since Monday"))
    p.addElement(LineBreak())
    p.addText("no travel")
    note = Note(noteclass="footnote")
    note.addElement(NoteCitation(text="1"))
    body = NoteBody()
    body.addElement(P(text="a footnote"))
    note.addElement(body)
    p.addElement(note)
    remark = Annotation()
    remark.addElement(P(text="ask about pets"))
    p.addElement(remark)
    doc.text.addElement(p)
    items = List()
    for text in ("paracetamol", "fluids"):
        item = ListItem()
        item.addElement(P(text=text))
        items.addElement(item)
    doc.text.addElement(items)
    table = Table()
    table.addElement(TableColumn(numbercolumnsrepeated=2))
    for row_values in (("SpO2", "97%"), ("Temp", "38.9")):
        row = TableRow()
        for value in row_values:
            cell = TableCell()
            cell.addElement(P(text=value))
            row.addElement(cell)
        table.addElement(row)
    doc.text.addElement(table)
    doc.save(str(tmp_path / "note.odt"))
    assert document_text(tmp_path / "note.odt") == ("Triage note\nFever  and rash\tsince Monday\nno travel\n"
                                                     "paracetamol\nfluids\nSpO2\t97%\nTemp\t38.9")


def test_a_document_that_is_not_text_says_how_to_give_it(tmp_path, capsys):
    (tmp_path / "old.doc").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")
    with pytest.raises(ValueError, match=r"old.doc: a Word 97-2003 document, not text a model reads; save it as "
                                         r".docx, .odt or plain text \(.txt\), or paste its text"):
        prompt_file_text(tmp_path / "old.doc")
    (tmp_path / "old.docx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")  # a .doc renamed
    with pytest.raises(ValueError, match=r"old.docx: not a readable .docx document \(BadZipFile"):
        prompt_file_text(tmp_path / "old.docx")
    assert main(["generate", "--model", "unused", "--prompt", f"@{tmp_path / 'old.doc'}"]) == 2
    assert "old.doc: a Word 97-2003 document, not text a model reads" in capsys.readouterr().err


def test_a_pdf_letter_reads_as_its_pages_text(tmp_path):
    """A discharge letter saved as PDF (the way most reach a clinic): each page's lines in order,
    a blank line between pages, accents, degree signs, brackets and backslashes as printed; it
    was refused as not text."""
    pytest.importorskip("pypdf")
    letter = write_pdf(tmp_path / "letter.pdf", [["Discharge letter (cardiology)", "Temp 38.9 °C, café-au-lait spots",
                                                  "Plan: aspirin 75 mg \\ day"], [], ["Follow-up in 6 weeks."]])
    assert prompt_file_text(letter) == ("Discharge letter (cardiology)\nTemp 38.9 °C, café-au-lait spots\n"
                                        "Plan: aspirin 75 mg \\ day\n\nFollow-up in 6 weeks.")


def test_a_pdf_without_text_or_locked_or_damaged_says_what_to_do(tmp_path, capsys, monkeypatch):
    pypdf = pytest.importorskip("pypdf")
    scan = write_pdf(tmp_path / "scan.pdf", [[], []])
    with pytest.raises(ValueError, match=r"scan.pdf: a PDF with no text in it \(2 pages: a scan, whose pages are "
                                         r"pictures\?\); run text recognition \(OCR\) on it"):
        prompt_file_text(scan)
    assert main(["generate", "--model", "unused", "--prompt", f"@{scan}"]) == 2  # before any model loads
    assert "scan.pdf: a PDF with no text in it" in capsys.readouterr().err
    for name, user in (("locked.pdf", "secret"), ("no_edits.pdf", "")):  # a password to open it; one to edit it only
        writer = pypdf.PdfWriter(clone_from=write_pdf(tmp_path / "plain.pdf", [["Chest pain."]]))
        writer.encrypt(user_password=user, owner_password="owner", algorithm="RC4-128")
        writer.write(tmp_path / name)
    with pytest.raises(ValueError, match=r"locked.pdf: a PDF locked with a password; open it, print it to PDF or "
                                         r"save a copy without the password"):
        prompt_file_text(tmp_path / "locked.pdf")
    assert prompt_file_text(tmp_path / "no_edits.pdf") == "Chest pain."
    (tmp_path / "cut.pdf").write_bytes(b"%PDF-1.7\n")
    with pytest.raises(ValueError, match=r"cut.pdf: not a readable PDF \(\w+: .*\); save it as .docx, .odt or "
                                         r"plain text"):
        prompt_file_text(tmp_path / "cut.pdf")
    monkeypatch.setitem(sys.modules, "pypdf", None)  # as if not installed
    with pytest.raises(ImportError, match=r"reading a PDF's text needs the optional package 'pypdf'.*"
                                          r"pip install 'prefopt\[pdf\]'"):
        prompt_file_text(scan)


def test_a_table_within_a_writer_table_cell_is_read_once(tmp_path):
    """A table's rows are its own (in row groups too), not those of a table inside one of its
    cells, which that cell's text holds."""
    pytest.importorskip("odf")
    from odf.opendocument import OpenDocumentText
    from odf.table import Table, TableCell, TableHeaderRows, TableRow
    from odf.text import P

    def row(*cells):
        r = TableRow()
        for c in cells:
            cell = TableCell()
            for block in (c if isinstance(c, tuple) else (P(text=c),)):
                cell.addElement(block)
            r.addElement(cell)
        return r

    inner = Table()
    inner.addElement(row("K", "4.1"))
    outer = Table()
    header = TableHeaderRows()
    header.addElement(row("Test", "Result"))
    outer.addElement(header)
    outer.addElement(row("Labs", (P(text="electrolytes"), inner)))
    doc = OpenDocumentText()
    doc.text.addElement(outer)
    doc.save(str(tmp_path / "labs.odt"))
    assert document_text(tmp_path / "labs.odt") == "Test\tResult\nLabs\telectrolytes K\t4.1"
