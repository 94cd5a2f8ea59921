"""Benchmark files as published (GSM8K, the MCC-KD and cot-factors JSON), read the same way for
training and testing, and decontamination of the training questions against the test sets."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_schemas import OVERLAPS, REJECTIONS, SELECTED, InputError, read_table, write_table
from mcckd import report
from mcckd.decontaminate import find_overlaps, ngrams, normalize
from mcckd.readers import RecordedDataError, gsm8k_answer, read_questions
from mcckd.stages import execute, output
from mcckd.stages.decontaminate import DecontaminateSettings
from mcckd.stages.import_recorded import ImportSettings
from mcckd.stages.judge import JudgeSettings
from mcckd.stages.select import SelectSettings
from tests.shared_data import SHARED_DATA, needs_shared
from tests.test_curation_stages import sample_row
from tests.test_degenerate_inputs import run_cli

GSM8K = SHARED_DATA / "gsm8k"
needs_gsm8k = pytest.mark.skipif(not GSM8K.is_dir(), reason=f"GSM8K folder {GSM8K} is absent")

MCCKD_FILES = {  # file -> (questions, rationales per question as an import)
    "SVAMP/train.json": (700, 10),
    "SVAMP/dev.json": (150, 1),
    "GSM8K/dev.json": (660, 1),
    "ASDiv/dev.json": (313, 1),
    "CSQA/dev.json": (1221, 1),
}


def selected_row(qid: str, question: str, i: int = 0) -> dict:
    row = sample_row(qid, i, "5 + 3 = 8. The answer is 8.") | {"question": question}
    return row | {"predicted_answer": "8", "verdict": "correct", "selection_rank": i, "max_similarity": 0.0}


def write_selected(path: Path, questions: list[tuple[str, str]], per_question: int = 1) -> Path:
    rows = [selected_row(qid, q, i) for qid, q in questions for i in range(per_question)]
    return write_table(pa.Table.from_pylist(rows, schema=SELECTED), path, SELECTED)


# --- GSM8K as published ---------------------------------------------------------------------------


def test_gsm8k_answer_splits_rationale_and_gold():
    text = "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nShe earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 1,010"
    assert gsm8k_answer(text) == ("Weng earns 12/60 = $0.2 per minute.\nShe earned 0.2 x 50 = $10.", "1010")
    assert gsm8k_answer("#### -2.5") == ("", "-2.5")
    assert gsm8k_answer("The answer is 1,000.") is None  # no '####' line: an ordinary label
    assert gsm8k_answer("a #### b") is None  # the mark must start the line
    assert gsm8k_answer("It took\n####") == ("It took", "")


@needs_gsm8k
@pytest.mark.parametrize(("name", "rows"), [("train.jsonl", 7473), ("test.jsonl", 1319), ("test_socratic.jsonl", 1319)])
def test_gsm8k_files_read_as_test_sets(name, rows):
    questions = read_questions(GSM8K / name)
    assert len(questions) == rows == len({q["question_id"] for q in questions})
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", q["answer"]) for q in questions), "gold = the number after ####"
    if name == "test.jsonl":
        assert questions[0]["question"].startswith("Janet’s ducks lay 16 eggs") and questions[0]["answer"] == "18"


@needs_gsm8k
def test_gsm8k_train_imports_as_recorded_rationales_that_the_judge_reads(tmp_path):
    summary = execute(
        "import", ImportSettings(teacher_name="gsm8k"), tmp_path / "imp", {"recorded": GSM8K / "train.jsonl"}
    )
    assert summary["samples"] == summary["questions"] == 7473 and summary["unlabelled_questions"] == 0
    rows = pq.read_table(output("import", tmp_path / "imp", "samples")).to_pylist()
    assert rows[0]["question_id"] == "train-0" and rows[0]["answer"] == "72"
    assert rows[0]["rationale"] == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
    )
    assert not any("<<" in r["rationale"] or "####" in r["rationale"] for r in rows)
    judged = execute("judge", JudgeSettings(), tmp_path / "jud", {"samples": tmp_path / "imp"})
    assert judged["correct"] / judged["samples"] > 0.98  # the human rationales end on their answer


# --- the MCC-KD and cot-factors files -------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("name", sorted(MCCKD_FILES))
def test_every_mcckd_file_reads_as_a_test_set_and_as_an_import(tmp_path, name):
    questions, per_question = MCCKD_FILES[name]
    path = SHARED_DATA / "mcckd" / name
    read = read_questions(path)
    assert len(read) == questions and all(q["question"] and q["answer"] for q in read)
    if name.startswith("CSQA"):
        assert {q["answer"] for q in read} <= set("ABCDE") and read[0]["question"].endswith("E. jog")
    summary = execute("import", ImportSettings(), tmp_path / "imp", {"recorded": path})
    assert summary["questions"] == questions and summary["samples"] == questions * per_question
    assert summary["unlabelled_questions"] == 0


@needs_shared
@pytest.mark.parametrize("path", sorted((SHARED_DATA / "cot-factors").glob("*.json")), ids=lambda p: p.name)
def test_every_cot_factors_file_imports_and_is_no_test_set(tmp_path, path):
    summary = execute("import", ImportSettings(), tmp_path / "imp", {"recorded": path})
    assert summary["questions"] == summary["samples"] in (699, 700) and summary["unlabelled_questions"] == 699 + (
        summary["questions"] == 700
    )
    with pytest.raises(InputError, match=rf"{re.escape(path.name)}: row 0: missing field 'label' or 'answer'"):
        read_questions(path)  # no gold answers: one line naming file, row and field


# --- field names, formats ---------------------------------------------------------------------------

RENAMED = [
    {"uid": "p1", "problem": "Tom has 5 apples and buys 3. How many?", "solution": "5 + 3 = 8.", "gold": "8"},
    {"uid": "p2", "problem": "Ann has 2 pens and buys 2. How many?", "solution": "2 + 2 = 4.", "gold": 4},
]
MAPPING = {"id": "uid", "question": "problem", "rationale": "solution", "answer": "gold"}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", "datasets"])
def test_files_with_other_field_names_read_with_a_mapping(tmp_path, suffix):
    path = tmp_path / f"renamed{suffix if suffix != 'datasets' else ''}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in RENAMED))
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist([r | {"gold": str(r["gold"])} for r in RENAMED]), path)
    else:
        from datasets import Dataset

        Dataset.from_list([r | {"gold": str(r["gold"])} for r in RENAMED]).save_to_disk(str(path))
    assert read_questions(path, {k: v for k, v in MAPPING.items() if k != "rationale"}) == [
        {"question_id": "p1", "question": RENAMED[0]["problem"], "answer": "8"},
        {"question_id": "p2", "question": RENAMED[1]["problem"], "answer": "4"},
    ]
    execute("import", ImportSettings(fields=MAPPING), tmp_path / "imp", {"recorded": path})
    rows = pq.read_table(output("import", tmp_path / "imp", "samples")).to_pylist()
    assert [(r["question_id"], r["rationale"], r["answer"]) for r in rows] == [
        ("p1", "5 + 3 = 8.", "8"),
        ("p2", "2 + 2 = 4.", "4"),
    ]
    with pytest.raises(InputError, match=r"row 0: missing field 'instruction' or 'question'"):
        read_questions(path)  # without the mapping, no question field
    with pytest.raises(InputError, match=r"row 0: missing field 'answer_text'"):
        read_questions(path, {"question": "problem", "answer": "answer_text"})


def test_an_unknown_field_in_a_mapping_is_named():
    with pytest.raises(InputError, match=r"fields: unknown field 'solution'"):
        read_questions(Path("unused.json"), {"solution": "x"})
    with pytest.raises(ValueError, match=r"unknown field 'gold'"):
        ImportSettings(fields={"gold": "label"})


def test_a_datasets_folder_imports(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"question": "Q?", "answer": "A ball.\n#### 3"}]).save_to_disk(str(tmp_path / "hf"))
    execute("import", ImportSettings(), tmp_path / "imp", {"recorded": tmp_path / "hf"})
    [row] = pq.read_table(output("import", tmp_path / "imp", "samples")).to_pylist()
    assert (row["question_id"], row["answer"], row["rationale"]) == ("hf-0", "3", "A ball.")


# --- malformed files: one line naming file, row and field --------------------------------------------


def test_gsm8k_mark_without_an_answer_stops_import_and_test_reading(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [{"question": "Q1?", "answer": "1 + 1 = 2.\n#### 2"}, {"question": "Q2?", "answer": "3 + 3 = 6.\n####  "}]
    path.write_text("\n".join(json.dumps(r) for r in lines))
    message = r"bad\.jsonl: row 1: field 'answer' has '####' with no answer after it"
    with pytest.raises(RecordedDataError, match=message):
        read_questions(path)
    done = run_cli("import", {"recorded": path}, tmp_path / "out")
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and re.search(message, last) and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_a_test_set_without_answers_stops_decontaminate_with_one_line(tmp_path):
    selected = write_selected(tmp_path / "selected_in.parquet", [("a", "How many apples does Tom have?")])
    test = tmp_path / "questions_only.json"
    test.write_text(json.dumps([{"question": "How many pears?", "id": "t0"}]))
    done = run_cli("decontaminate", {"selected": selected, "bench": test}, tmp_path / "out")
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert re.search(r"questions_only\.json: row 0: missing field 'label' or 'answer'", last), last
    assert last.startswith("mcckd decontaminate: error: ") and not (tmp_path / "out").exists()


# --- decontamination ----------------------------------------------------------------------------------


def test_normalised_ngrams():
    assert normalize("  Janet’s DUCKS,\tlay 16 eggs!! ") == "janets ducks lay 16 eggs"
    assert ngrams("One two, three. Four", 3) == ["one two three", "two three four"]
    assert ngrams("Too short!", 8) == ["too short"]  # the whole text is one gram
    assert ngrams("?!", 8) == []  # nothing left to compare
    assert ngrams("One two, three. Four", None) == ["one two three four"]  # whole questions only
    with pytest.raises(ValueError, match="at least 1"):
        ngrams("a", 0)


def test_the_demo_world_shares_phrasing_by_design_but_no_question(tmp_path):
    """Why the demo configurations compare whole questions: its splits come from shared templates."""
    from flows.demo import WHOLE_QUESTIONS
    from mcckd.demo_world.problems import write_question_sets

    paths = write_question_sets(tmp_path, 300, 100, 0)
    questions = {name: pq.read_table(p, columns=["question_id", "question"]).to_pylist() for name, p in paths.items()}
    pairs = {name: [(q["question_id"], q["question"]) for q in qs] for name, qs in questions.items()}
    train = pairs.pop("train")
    assert len({o[0] for o in find_overlaps(train, pairs, 8)}) > 150  # of 300
    assert find_overlaps(train, pairs, WHOLE_QUESTIONS.ngram) == []


def test_find_overlaps_names_each_pair_once_with_its_first_shared_gram():
    long = "tom has five red apples and he buys three more green apples at the shop today"
    train = [("t1", long.upper() + "!"), ("t2", "a question about pears and nothing else at all"), ("t3", "Too short")]
    tests = {
        "set_a": [("a1", "Yesterday " + long), ("a2", "too   SHORT.")],
        "set_b": [("b1", "he buys three more green apples at the shop today, then what")],
    }
    assert find_overlaps(train, tests, 8) == [
        ("t1", "set_a", "a1", "tom has five red apples and he buys"),
        ("t1", "set_b", "b1", "he buys three more green apples at the"),
        ("t3", "set_a", "a2", "too short"),
    ]
    assert find_overlaps(train, {}, 8) == [] and find_overlaps([], tests, 8) == []


@needs_gsm8k
def test_gsm8k_train_against_test_and_the_mcckd_dev_file(capsys):
    """Measured: 90 of GSM8K's 7,473 training questions share an 8-gram with 77 of its 1,319 test
    questions (shared phrasings such as 'what is the combined length of time in'); every one of the
    660 MCC-KD GSM8K dev questions is a GSM8K test question."""
    train = [(q["question_id"], q["question"]) for q in read_questions(GSM8K / "train.jsonl")]
    test = {"gsm8k_test": [(q["question_id"], q["question"]) for q in read_questions(GSM8K / "test.jsonl")]}
    dev = [(q["question_id"], q["question"]) for q in read_questions(SHARED_DATA / "mcckd" / "GSM8K" / "dev.json")]
    started = time.perf_counter()
    overlaps = find_overlaps(train, test, 8)
    seconds = time.perf_counter() - started
    assert len({o[0] for o in overlaps}) == 90 and len({o[2] for o in overlaps}) == 77
    assert seconds < 5, f"{seconds:.2f} s"  # about half a second
    started = time.perf_counter()
    from_dev = find_overlaps(dev, test, 8)
    assert len({o[0] for o in from_dev}) == 660
    with capsys.disabled():
        print(
            f"\nGSM8K train vs test: {len({o[0] for o in overlaps})} training questions ({seconds:.2f} s); "
            f"MCC-KD dev vs GSM8K test: {len({o[0] for o in from_dev})} ({time.perf_counter() - started:.2f} s)"
        )


@needs_gsm8k
def test_gsm8k_train_through_curation_loses_its_test_overlaps(tmp_path):
    execute("import", ImportSettings(teacher_name="gsm8k"), tmp_path / "imp", {"recorded": GSM8K / "train.jsonl"})
    execute("judge", JudgeSettings(), tmp_path / "jud", {"samples": tmp_path / "imp"})
    execute("select", SelectSettings(), tmp_path / "sel", {"judged": tmp_path / "jud"})
    tests = {"gsm8k_test": GSM8K / "test.jsonl", "mcckd_gsm8k_dev": SHARED_DATA / "mcckd" / "GSM8K" / "dev.json"}
    started = time.perf_counter()
    summary = execute(
        "decontaminate",
        DecontaminateSettings(),
        tmp_path / "dec",
        {"selected": tmp_path / "sel"} | tests,
    )
    assert time.perf_counter() - started < 10
    # 90 training questions overlap the test set; one of them has no correct rationale, so was not selected
    assert summary["contaminated"] == {"gsm8k_test": 89, "mcckd_gsm8k_dev": 40}
    assert summary["test_questions"] == {"gsm8k_test": 1319, "mcckd_gsm8k_dev": 660}
    assert summary["rows_in"] == summary["rows_out"] + summary["rejected"] and summary["rejected"] == 89
    ledger = read_table(output("decontaminate", tmp_path / "dec", "rejections"), REJECTIONS).to_pylist()
    assert len(ledger) == 89 and {r["reason"] for r in ledger} == {"contaminated"}
    assert all(
        re.match(r"test set '\w+' question '[\w-]+' shares the 8-gram '[a-z0-9 ]+'", r["detail"]) for r in ledger
    )
    overlaps = read_table(output("decontaminate", tmp_path / "dec", "overlaps"), OVERLAPS)
    assert overlaps.num_rows == summary["overlaps"]
    kept = set(pq.read_table(output("decontaminate", tmp_path / "dec", "selected")).column("question_id").to_pylist())
    assert not kept & {r["question_id"] for r in ledger} and len(kept) == summary["questions_out"] == 7402 - 89


@needs_gsm8k
def test_the_mcckd_gsm8k_dev_file_as_training_data_is_all_contaminated(tmp_path):
    dev = read_questions(SHARED_DATA / "mcckd" / "GSM8K" / "dev.json")
    selected = write_selected(tmp_path / "selected_in.parquet", [(q["question_id"], q["question"]) for q in dev])
    summary = execute(
        "decontaminate",
        DecontaminateSettings(),
        tmp_path / "dec",
        {"selected": selected, "gsm8k": GSM8K / "test.jsonl"},
    )
    assert summary["contaminated"] == {"gsm8k": 660} and (summary["rows_out"], summary["rejected"]) == (0, 660)
    assert pq.read_metadata(output("decontaminate", tmp_path / "dec", "selected")).num_rows == 0


# --- the stage on degenerate input -----------------------------------------------------------------

TEST_SET = [
    {"id": "t0", "question": "Tom has five apples and buys three more at the shop. How many now?", "answer": "8"}
]
QUESTIONS = {
    "no_rows": [],
    "none_contaminated": [("a", "Ann has two pens and gets two more pens from her friend Bob."), ("b", "Hi?")],
    "all_contaminated": [
        ("a", "TOM has five apples, and buys three more at the shop!"),
        ("b", TEST_SET[0]["question"]),
    ],
}


@pytest.mark.parametrize("case", sorted(QUESTIONS))
def test_decontaminate_accounts_for_every_row(tmp_path, case):
    selected = write_selected(tmp_path / "selected_in.parquet", QUESTIONS[case], per_question=2)
    test = tmp_path / "bench.json"
    test.write_text(json.dumps(TEST_SET))
    done = run_cli("decontaminate", {"selected": selected, "bench": test}, tmp_path / "dec")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    rows = 2 * len(QUESTIONS[case])
    removed = rows if case == "all_contaminated" else 0
    assert (summary["rows_in"], summary["rows_out"], summary["rejected"]) == (rows, rows - removed, removed)
    assert summary["contaminated"] == {"bench": removed // 2}
    out = read_table(output("decontaminate", tmp_path / "dec", "selected"), SELECTED)
    ledger = read_table(output("decontaminate", tmp_path / "dec", "rejections"), REJECTIONS).to_pylist()
    overlaps = read_table(output("decontaminate", tmp_path / "dec", "overlaps"), OVERLAPS).to_pylist()
    assert out.num_rows == summary["rows_out"] and len(ledger) == summary["rejected"]
    assert len(overlaps) == removed // 2  # one test question, so one pair per contaminated question
    if case == "all_contaminated":
        assert [(r["question_id"], r["sample_index"], r["reason"]) for r in ledger] == [
            ("a", 0, "contaminated"),
            ("a", 1, "contaminated"),
            ("b", 0, "contaminated"),
            ("b", 1, "contaminated"),
        ]
        assert (
            ledger[0]["detail"]
            == "test set 'bench' question 't0' shares the 8-gram 'tom has five apples and buys three more'"
        )
        assert report.contamination_lines(tmp_path / "dec") == [
            "decontaminate: 2 training questions overlap test set 'bench' (8-gram); removed from training"
        ]
    else:
        assert report.contamination_lines(tmp_path / "dec") == []


def test_no_test_set_passes_everything_and_fields_must_name_a_test_set(tmp_path):
    selected = write_selected(tmp_path / "selected_in.parquet", QUESTIONS["none_contaminated"])
    summary = execute("decontaminate", DecontaminateSettings(), tmp_path / "dec", {"selected": selected})
    assert (summary["rows_out"], summary["rejected"], summary["contaminated"]) == (2, 0, {})
    with pytest.raises(InputError, match=r"fields given for \['nope'\]"):
        execute("decontaminate", DecontaminateSettings(fields={"nope": {}}), tmp_path / "x", {"selected": selected})


def test_a_test_set_with_other_field_names_is_read_with_its_mapping(tmp_path):
    selected = write_selected(tmp_path / "selected_in.parquet", QUESTIONS["all_contaminated"])
    test = tmp_path / "bench.jsonl"
    test.write_text(json.dumps({"problem": TEST_SET[0]["question"], "gold": "8"}))
    settings = DecontaminateSettings(ngram=5, fields={"bench": {"question": "problem", "answer": "gold"}})
    summary = execute("decontaminate", settings, tmp_path / "dec", {"selected": selected, "bench": test})
    assert summary["contaminated"] == {"bench": 2} and summary["ngram"] == 5


# --- the flow: curate runs decontaminate between select and materialize --------------------------------


@pytest.mark.slow  # the Prefect harness and a flow
def test_curate_removes_test_questions_from_training_and_says_so(prefect_harness, tmp_path, capsys):
    from prefect import flow

    from flows.config import RunConfig
    from flows.plan import file_ref, plan_curation, stage_call
    from flows.runner import run_call, run_curation

    recorded = tmp_path / "recorded.json"
    questions = {"clean": "Ann has two pens and gets two more pens from her friend Bob. How many?"}
    questions["leaked"] = TEST_SET[0]["question"]
    recorded.write_text(
        json.dumps(
            [
                {
                    "id": qid,
                    "instruction": q,
                    "output": ["So 4 + 4 = 8. The answer is 8.", "8 in all. The answer is 8."],
                    "label": "8",
                }
                for qid, q in questions.items()
            ]
        )
    )
    test = tmp_path / "bench.jsonl"
    test.write_text(json.dumps({"question": TEST_SET[0]["question"], "answer": "Tom has 5 + 3 = <<5+3=8>>8.\n#### 8"}))
    config = RunConfig(store=tmp_path / "store", report_dir=tmp_path / "report", test_sets={"bench": test})

    @flow
    def curation():
        source = stage_call(config, "import", ImportSettings(), {"recorded": file_ref(recorded)}, {}, "import")
        run_call(config, source)
        curation = plan_curation(config, source.ref)
        run_curation(config, curation)
        return source.out, curation

    source, curated = curation()
    console = capsys.readouterr().out
    assert "decontaminate: 1 training question overlaps test set 'bench' (8-gram); removed from training" in console
    trainset = pq.read_table(output("materialize", curated.materialize.out)).column("question_id").to_pylist()
    assert trainset == ["clean"]
    counts = report.rejection_counts(curated.judge.out, curated.select.out, curated.decontaminate.out)
    assert counts["decontaminate: contaminated"] == 2  # both of its rationales
    data = report.data_counts(2, source, curated.judge.out, curated.select.out, curated.decontaminate.out)
    assert (data["selected"], data["contaminated"], data["trained_on"]) == (4, 2, 2)
    assert "| removed: overlap a test set | trained on |" in report.counts_table({"counts": data})
    with pytest.raises(ValueError, match="may not be named 'selected'"):
        RunConfig(test_sets={"selected": test})
