"""Stage 4, materialize: the training set, one row per question with its K rationales and the
character span of the common final answer in each.

Every rationale is made to end in the canonical answer sentence ("The answer is 18."), so the
answer tokens are identical across a question's rationales and the consistency loss compares like
with like. A rationale that already ends that way is kept as written; otherwise a last sentence that
states the answer in another form ("Therefore, the answer is 18 .", "#### 18", "Answer: C") is
replaced, or the canonical sentence is appended (counted in the summary).
"""

from __future__ import annotations

from itertools import groupby
from pathlib import Path

from tqdm.auto import tqdm

from data_schemas import SELECTED, TRAINSET, read_table
from mcckd.answers import canonical_answer, canonical_answer_sentence, final_statement_start
from mcckd.settings import Settings
from mcckd.stages.spec import Output, StageSpec


class MaterializeSettings(Settings):
    """No settings yet: the canonical sentence is fixed by ``mcckd.answers``; the model keeps the stage uniform."""


STAGE = StageSpec(
    name="materialize",
    settings=MaterializeSettings,
    version=2,
    inputs=("selected",),
    outputs={"trainset": Output("train.parquet", TRAINSET, "one row per question: its K rationales, answer spans")},
)


def with_answer_sentence(rationale: str, answer: str) -> tuple[str, tuple[int, int], bool]:
    """(rationale ending in the canonical sentence, char span of the answer in it, rewritten?)."""
    sentence = canonical_answer_sentence(answer)
    text = rationale.rstrip()
    rewritten = not text.endswith(sentence)
    if rewritten:
        cut = final_statement_start(text)
        if cut is not None:
            text = text[:cut].rstrip()
        if text and text[-1] not in ".!?:":
            text += "."
        text = f"{text} {sentence}".strip()
    start = len(text) - len(sentence) + sentence.index(answer)
    return text, (start, start + len(answer)), rewritten


def run(settings: MaterializeSettings, out_dir: Path, selected: Path) -> dict:
    rows = read_table(selected, SELECTED).to_pylist()
    out, rewritten = [], 0
    ordered = sorted(rows, key=lambda r: (r["question_id"], r["selection_rank"]))
    for qid, group in tqdm(groupby(ordered, lambda r: r["question_id"]), desc="materialize", unit="question"):
        group = list(group)
        answer = canonical_answer(group[0]["answer"])
        texts, spans = [], []
        for r in group:
            text, (start, end), changed = with_answer_sentence(r["rationale"], answer)
            texts.append(text)
            spans.append({"start": start, "end": end})
            rewritten += changed
        out.append(
            {
                "question_id": qid,
                "question": group[0]["question"],
                "answer": answer,
                "rationales": texts,
                "answer_spans": spans,
                "teachers": [r["teacher"] for r in group],
                "sample_indices": [r["sample_index"] for r in group],
            }
        )
    STAGE.write(out_dir, "trainset", out)
    return {
        "rows_in": len(rows),
        "rows_out": sum(len(r["rationales"]) for r in out),
        "rejected": 0,  # every selected rationale is written; the ledger rows come from earlier stages
        "questions": len(out),
        "rationales": sum(len(r["rationales"]) for r in out),
        "answer_sentence_rewritten": rewritten,
    }
