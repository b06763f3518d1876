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
