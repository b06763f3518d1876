"""``prefopt predict --data FOLDER``: a folder of documents (letters, notes) is the records of a
task whose records are one free text, a record each, in name order, its text read as ``generate
--prompt @FILE`` reads a document; each is asked exactly as the same text in a table's row. Such
records have no labels, so eval, compare and check-data refuse the folder; an empty document or
one that is not text stops the read with the file named; a folder of data files, or of no
documents, is refused as before."""
import csv

import pytest

from prefopt.cli import main
from prefopt.tasks import get_task
from tests import _formats as formats

LETTERS = {"a_chest.txt": "Crushing chest pain for an hour, left arm numb.\n",
           "b_refill.md": "Could you renew my blood pressure prescription?",
           "c_rash.odt": "A rash on both legs since Monday.\nNo fever.",
           "d_fever.pdf": "Temp 38.9 °C since last night.\nShould I come in?"}


def _folder(tmp_path):
    """A folder of the four letters (the Writer one made by odfpy, the PDF read by pypdf: test
    extras), beside files that are no records: a hidden one, Word's lock file, a subfolder's."""
    odf = pytest.importorskip("odf.opendocument")
    pytest.importorskip("pypdf")
    from odf.text import P

    folder = tmp_path / "letters"
    folder.mkdir()
    for name, text in LETTERS.items():
        if name.endswith(".odt"):
            doc = odf.OpenDocumentText()
            for line in text.split("\n"):
                doc.text.addElement(P(text=line))
            doc.save(str(folder / name))
        elif name.endswith(".pdf"):
            formats.write_pdf(folder / name, [text.split("\n")])
        else:
            (folder / name).write_text(text)
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / "~$a_chest.docx").write_bytes(b"lock")
    (folder / "older").mkdir()
    (folder / "older" / "d.txt").write_text("not read: in a subfolder")
    return folder


@pytest.mark.parametrize("task,options,column", [("portal", {}, "message"),
                                                 ("text_classification", {"labels": "urgent,routine"}, "text"),
                                                 ("summarization", {}, "source")])
def test_a_folder_of_documents_is_asked_as_the_same_texts_in_a_table(task, options, column, tmp_path):
    folder = _folder(tmp_path)
    records = get_task(task, **options).read(str(folder), labelled=False)
    assert [r.meta["row"]["file"] for r in records] == sorted(LETTERS)
    texts = [text.strip() for _, text in sorted(LETTERS.items())]
    table = formats.write_jsonl(tmp_path / "same.jsonl", [{column: t} for t in texts])
    assert [r.prompt for r in records] == [r.prompt for r in get_task(task, **options).read(str(table),
                                                                                           labelled=False)]
    with pytest.raises(ValueError, match=f"{folder}: a folder of documents, which hold no labels: prefopt predict "
                                         "answers them"):
        get_task(task, **options).read(str(folder))


def test_predict_answers_each_document_into_a_csv_that_names_its_file(tiny_model, tmp_path, capsys):
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    assert main(["predict", "--task", "portal", "--model", str(tiny_model), "--data", str(folder), "--output",
                 str(out), "--max-new-tokens", "2"]) == 0
    with open(out / "predictions.csv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["file"], r["message"]) for r in rows] == [(k, v.strip()) for k, v in sorted(LETTERS.items())]
    assert {"predicted_urgency", "predicted_staff", "model_output"} <= set(rows[0])
    assert "prefopt predict: 4 records;" in capsys.readouterr().out
    for command in (["eval", "--task", "portal", "--output", str(tmp_path / "e")],
                    ["check-data", "--task", "portal"]):
        assert main([*command, "--model", str(tiny_model), "--data", str(folder)]) == 2
        assert "a folder of documents, which hold no labels" in capsys.readouterr().err


@pytest.mark.parametrize("name,content,error", [
    ("empty.txt", b"  \n", "empty.txt: an empty document: no text to answer"),
    ("old.doc", b"\xd0\xcf", "old.doc: a Word 97-2003 document, not text a model reads; save it as .docx"),
    ("cp1252.txt", b"caf\xe9", "cp1252.txt:1: not utf-8 text (byte 0xe9 at column 4); save the file as UTF-8, or "
                               "name the encoding it was saved in (--task-option encoding=cp1252"),
])
def test_a_document_that_cannot_be_read_stops_the_read_with_its_file_named(name, content, error, tmp_path):
    folder = tmp_path / "letters"
    folder.mkdir()
    (folder / "good.txt").write_text("A cough for a week.")
    (folder / name).write_bytes(content)
    with pytest.raises(ValueError) as e:
        get_task("portal").read(str(folder), labelled=False)
    assert str(e.value).startswith(f"{folder / name}") and error in str(e.value)
    if name == "cp1252.txt":  # read in the encoding given
        records = get_task("portal", encoding="cp1252").read(str(folder), labelled=False)
        assert [r.meta["row"]["message"] for r in records] == ["café", "A cough for a week."]


def test_a_folder_of_data_files_or_of_no_documents_is_refused_as_before(tmp_path):
    """A folder is documents only where it holds documents and no data file: a folder of CSVs (a
    dataset's splits, shards) is refused with its files named, as is one of pictures alone."""
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "scan.png").write_bytes(b"\x89PNG")
    with pytest.raises(FileNotFoundError, match=r"scans: a folder, not a data file; pass one of its files \(it holds "
                                                r"no .jsonl"):
        get_task("summarization").read(str(tmp_path / "scans"), labelled=False)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "notes.csv").write_text("source\nA cough.\n")
    (mixed / "readme.txt").write_text("what the columns mean")
    for labelled in (False, True):
        with pytest.raises(FileNotFoundError, match=r"mixed: a folder, not a data file; pass one of its files "
                                                    r"\(notes.csv\)"):
            get_task("summarization").read(str(mixed), labelled=labelled)


def test_predict_and_eval_name_the_records_that_run_past_the_models_context(tmp_path, capsys):
    """A letter longer than the model's context (positions it never trained on) is warned of
    before any answer, by record and file, with how many tokens, once (generate's own warning,
    which names no record, is not said again); eval says it of a table's rows alike; a task that
    cuts its texts says how to cut more."""
    from prefopt import load_tokenizer
    from prefopt.evaluate.runner import past_context_line
    from tests._tiny import build_hf_model

    model = tmp_path / "short-context"
    build_hf_model(model, max_position_embeddings=400)  # (the short letter's prompt: 225 tokens)
    folder = tmp_path / "letters"
    folder.mkdir()
    (folder / "a_short.txt").write_text("A cough.")
    (folder / "b_long.txt").write_text("pain " * 200)
    assert main(["predict", "--task", "portal", "--model", str(model), "--data", str(folder), "--output",
                 str(tmp_path / "out"), "--max-new-tokens", "2", "--no-confidence"]) == 0
    err = capsys.readouterr().err
    assert ("prefopt predict: warning: 1 of 2 records' prompts and answers run past the model's context of 400 "
            "tokens (record 'portal:2', b_long.txt: ") in err
    assert "prompt tokens + 2 to answer): positions it never trained on" in err and "shorten those texts" in err
    assert "runs past the model's context" not in err  # (generate's)
    table = formats.write_jsonl(tmp_path / "labelled.jsonl", [
        {"message": (folder / name).read_text(), "urgency": "urgent", "staff": "nurse"}
        for name in ("a_short.txt", "b_long.txt")])
    assert main(["eval", "--task", "portal", "--model", str(model), "--data", str(table), "--split", "all",
                 "--output", str(tmp_path / "eval"), "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err  # eval says it alike, of a table's row
    assert ("prefopt eval: warning: 1 of 2 records' prompts and answers run past the model's context of 400 tokens "
            "(record 'portal:2': ") in err and "runs past the model's context" not in err
    tok = load_tokenizer(model)
    task = get_task("text_classification", labels="a,b", max_chars=100000)
    records = task.read(str(formats.write_jsonl(tmp_path / "t.jsonl", [{"text": "word " * (50 * i)}
                                                                      for i in range(1, 7)])), labelled=False)
    lengths = [len(tok.apply_chat_template(task.messages(r), add_generation_prompt=True)) for r in records]
    context = lengths[2] + 16 - 1  # (the third and longer run past it)
    line = past_context_line(tok, task, records, context, 16)
    assert line.startswith(f"4 of 6 records' prompts and answers run past the model's context of {context} tokens "
                           f"(record 't.jsonl:3': {lengths[2]} prompt tokens + 16 to answer; record 't.jsonl:4': ")
    assert line.endswith(", and 1 more): positions it never trained on, so their answers are not to be trusted; a "
                         "lower --task-option max_chars cuts them")
    assert past_context_line(tok, task, records[:2], context, 16) is None
    assert past_context_line(tok, task, records, None, 16) is None
