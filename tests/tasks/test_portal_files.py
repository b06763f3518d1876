"""The portal task on a team's own messages: columns named otherwise and a spreadsheet export's
encoding and delimiter, read as the generic tasks read theirs; the bundled messages as they are."""
import json

import pytest

from prefopt.cli import main
from prefopt.data import DataError
from prefopt.data.readers import read_rows
from prefopt.tasks import get_task

ROWS = [("Fièvre depuis hier, toux sèche", "urgent", "nurse"),
        ("Renouvellement d'ordonnance, Ramipril 5 mg", "routine", "pharmacist"),
        ("Douleur thoracique écrasante depuis 20 minutes", "emergency", "physician")]
COLUMNS = {"message_column": "Nachricht", "urgency_column": "Dringlichkeit", "staff_column": "Team"}


def _export(path, rows=ROWS, header="Nachricht;Dringlichkeit;Team"):
    """A German Excel export: ';' between cells, cp1252, CRLF."""
    path.write_bytes("\r\n".join([header, *(";".join(r) for r in rows)]).encode("cp1252") + b"\r\n")
    return path


def test_own_messages_read_with_their_columns_and_encoding_as_in_the_bundled_layout(tmp_path):
    data = _export(tmp_path / "export.csv")
    same = tmp_path / "same.jsonl"  # the same messages under the bundled file's names, in UTF-8
    same.write_text("".join(json.dumps({"message": m, "urgency": u, "staff": s}) + "\n" for m, u, s in ROWS))
    want = [(r.prompt, r.target, r.labels) for r in get_task("portal").read(str(same))]
    got = get_task("portal", encoding="cp1252", **COLUMNS).read(str(data))
    assert [(r.prompt, r.target, r.labels) for r in got] == want and "Fièvre" in got[0].prompt
    assert [r.id for r in got] == ["portal:2", "portal:3", "portal:4"]
    unlabelled = get_task("portal", encoding="cp1252", message_column="Nachricht")
    assert [r.prompt for r in unlabelled.read(str(data), labelled=False)] == [p for p, _, _ in want]
    with pytest.raises(DataError, match=r"export.csv:2: not utf-8 text .*--task-option encoding=cp1252"):
        get_task("portal", **COLUMNS).read(str(data))
    # the columns the row's cells look like: a label field's holds one of its labels, the message the longest text
    with pytest.raises(DataError, match=r"export.csv:2: field 'message': missing field \(have: Nachricht, "
                                        r"Dringlichkeit, Team\); --task-option message_column=COLUMN reads another "
                                        r"column as the message \(here likely: --task-option message_column=Nachricht "
                                        r"--task-option urgency_column=Dringlichkeit "
                                        r"--task-option staff_column=Team\)$"):
        get_task("portal", encoding="cp1252").read(str(data))
    with pytest.raises(DataError, match=r"export.csv:2: field 'urgency': missing field .*urgency_column=COLUMN reads "
                                        r"another column as the urgency \(here likely: --task-option "
                                        r"urgency_column=Dringlichkeit --task-option staff_column=Team\)$"):
        get_task("portal", encoding="cp1252", message_column="Nachricht").read(str(data))
    with pytest.raises(DataError, match=r"\(have: Nachricht, Dringlichkeit, Team\); .*\(here likely: --task-option "
                                        r"message_column=Nachricht\)$"):  # unlabelled: the message alone
        get_task("portal", encoding="cp1252").read(str(data), labelled=False)
    bad = _export(tmp_path / "bad.csv", [ROWS[0], ("Rückruf erbeten", "irgendwann", "nurse")])
    with pytest.raises(DataError, match=r"bad.csv:3: field 'Dringlichkeit': 'irgendwann' is not one of"):
        get_task("portal", encoding="cp1252", **COLUMNS).read(str(bad))


def test_file_options_without_a_file_of_ones_own_are_refused():
    assert len(get_task("portal").read()) > 0  # the bundled messages
    with pytest.raises(ValueError, match="task 'portal': encoding=cp1252: this option describes your own file, "
                                         "and no --data names one"):
        get_task("portal", encoding="cp1252").read()
    with pytest.raises(ValueError, match="message_column=text sheet=Triage: these options describe"):
        get_task("portal", message_column="text", sheet="Triage").read()


def test_predict_answers_an_export_named_by_its_options_and_writes_it_back_alike(tiny_model, tmp_path, capsys):
    data = _export(tmp_path / "export.csv", [(m, "", "") for m, _, _ in ROWS], "Nachricht;Notiz;Station")
    argv = ["predict", "--task", "portal", "--model", str(tiny_model), "--data", str(data), "--max-new-tokens", "4",
            "--no-confidence"]
    assert main([*argv, "--output", str(tmp_path / "no")]) == 2
    assert "--task-option encoding=cp1252" in capsys.readouterr().err and not (tmp_path / "no").exists()
    out = tmp_path / "pred"
    assert main([*argv, "--task-option", "encoding=cp1252", "--task-option", "message_column=Nachricht",
                 "--output", str(out)]) == 0
    assert (out / "predictions.csv").read_bytes().startswith(b"\xef\xbb\xbfNachricht;Notiz;Station;")  # as it came
    rows = [row for _, row in read_rows(out / "predictions.csv")]
    assert [r["Nachricht"] for r in rows] == [m for m, _, _ in ROWS]
    assert all("predicted_urgency" in r and "predicted_staff" in r for r in rows)
    settings = json.loads((out / "predict.json").read_text())
    assert settings["task_options"] == {"encoding": "cp1252", "message_column": "Nachricht"}


def test_a_workbooks_sheet_is_named_as_for_the_generic_tasks(tmp_path, capsys):
    from tests import _formats as formats

    book = formats.write_workbook(tmp_path / "msgs.xlsx", {
        "train": [["message", "urgency", "staff"], ["Chest pain now", "emergency", "physician"]],
        "Test": [["message", "urgency", "staff"], ["Fever for 3 days", "urgent", "nurse"],
                 ["Refill of ramipril", "routine", "pharmacist"]]})
    with pytest.raises(ValueError, match="2 sheets hold data"):
        get_task("portal").read(str(book))
    assert [r.labels["urgency"] for r in get_task("portal", sheet="Test").read(str(book))] == ["urgent", "routine"]
    # --sheet on the command line is that option (it was refused: "task 'portal' reads its own data format")
    assert main(["eval", "--task", "portal", "--model", "-", "--data", str(book), "--sheet", "nope",
                 "--output", str(tmp_path / "no")]) == 2
    assert "no sheet 'nope'" in capsys.readouterr().err


def test_the_hospitals_own_label_words_are_read_through_their_maps(tmp_path):
    words = [("Fièvre depuis hier, toux sèche", "dringend", "Pflege"),
             ("Renouvellement d'ordonnance, Ramipril 5 mg", "Routine", "Apotheke"),
             ("Douleur thoracique écrasante depuis 20 minutes", "NOTFALL", "physician")]  # any case; a task word
    data = _export(tmp_path / "export.csv", words)
    maps = {"urgency_map": "Notfall=emergency, dringend=urgent,Routine=routine",
            "staff_map": {"Pflege": "nurse", "Apotheke": "pharmacist"}}  # (as --task-option staff_map={...} gives it)
    got = get_task("portal", encoding="cp1252", **COLUMNS, **maps).read(str(data))
    want = get_task("portal", encoding="cp1252", **COLUMNS).read(str(_export(tmp_path / "plain.csv")))
    assert [(r.prompt, r.target, r.labels) for r in got] == [(r.prompt, r.target, r.labels) for r in want]
    # without its map, a word is refused at its row, with the option that maps it
    with pytest.raises(DataError, match=r"export.csv:2: field 'Team': 'Pflege' is not one of the labels \(physician, "
                                        r"nurse, pharmacist, front desk\); --task-option staff_map=\"Pflege=LABEL\" "
                                        r"reads a word of your file's as a label$"):
        get_task("portal", encoding="cp1252", **COLUMNS, urgency_map=maps["urgency_map"]).read(str(data))
    misspelt = _export(tmp_path / "r.csv", [words[0], ("x", "Routinee", "Pflege")])
    with pytest.raises(DataError, match=r"r.csv:3: field 'Dringlichkeit': 'Routinee' is not one of .* nor of "
                                        r"urgency_map's words \(Notfall, dringend\)"):
        get_task("portal", encoding="cp1252", **COLUMNS, urgency_map="Notfall=emergency,dringend=urgent",
                 staff_map=maps["staff_map"]).read(str(misspelt))
    # a column of the hospital's words is found by them where its name is not the task's
    with pytest.raises(DataError, match=r"\(here likely: --task-option message_column=Nachricht --task-option "
                                        r"urgency_column=Dringlichkeit --task-option staff_column=Team\)$"):
        get_task("portal", encoding="cp1252", **maps).read(str(data))
    for bad, message in [("Notfall=sofort", r"urgency_map: notfall=sofort: 'sofort' is not one of the task's labels "
                                            r"\(emergency, urgent, routine\)"),
                         ("Notfall", "urgency_map: expected WORD=LABEL pairs split by commas"),
                         (" , ", "urgency_map: expected WORD=LABEL pairs split by commas"),
                         ("=urgent", "urgency_map: expected WORD=LABEL pairs split by commas"),
                         ("Notfall=", "urgency_map: expected WORD=LABEL pairs split by commas"),
                         ("eilig=urgent,EILIG=emergency", "urgency_map: 'eilig' is given twice, as 'urgent' and as "
                                                          "'emergency'")]:
        with pytest.raises(ValueError, match=message):
            get_task("portal", urgency_map=bad)
    with pytest.raises(ValueError, match="task 'portal': urgency_map=Notfall=emergency: this option describes your "
                                         "own file"):
        get_task("portal", urgency_map="Notfall=emergency").read()


def test_check_data_gathers_the_words_no_label_is_into_the_maps_to_give(tiny_model, tmp_path, capsys):
    rows = [("Brustschmerz", "Notfall", "Arzt"), ("Rezept", "später", "Apotheke"), ("Fieber", "bald", "nurse"),
            ("Termin", "SPÄTER", "Empfang"), ("Husten", "urgent", "Pflege")]
    data = _export(tmp_path / "export.csv", rows)
    argv = ["check-data", "--task", "portal", "--model", str(tiny_model), "--data", str(data),
            "--task-option", "encoding=cp1252", *(f"--task-option={k}={v}" for k, v in COLUMNS.items())]
    assert main(argv) == 1
    out = capsys.readouterr().out.splitlines()
    # each row stops at its first bad cell: urgency's words on rows 2-5, staff's on the sixth alone
    assert [x for x in out if x.startswith("  no label") or x.startswith("  (a row")] == [
        "  no label: 'später' (2 rows), 'Notfall' (1 row), 'bald' (1 row); where these are your file's own words for "
        "labels, --task-option \"urgency_map=später=LABEL,Notfall=LABEL,bald=LABEL\" reads each as its label (else "
        "correct those rows)",
        "  no label: 'Pflege' (1 row); where these are your file's own words for labels, --task-option "
        "\"staff_map=Pflege=LABEL\" reads each as its label (else correct those rows)",
        "  (a row with two such cells is counted by its first)"]
    maps = ["--task-option=urgency_map=später=routine,notfall=emergency,bald=urgent",
            "--task-option=staff_map=pflege=nurse,arzt=physician,apotheke=pharmacist,empfang=front desk"]
    assert main(argv + maps) == 0
    assert "5 of 5 records kept" in capsys.readouterr().out
