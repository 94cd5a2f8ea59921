"""Re-distil when a teacher changed: the scheduled (and event-triggered) deployment in ``prefect.yaml``.

Each run computes every configured teacher's identity (a local teacher: the content hash of its
weights; a served one: the model name and revision its server reports), compares it with the
identity last distilled (``<store>/distilled_teachers.json``, written by every completed ``distill``),
and when one changed emits
``mcckd.teacher.updated`` with that teacher as the resource and runs ``distill`` as a subflow (a
teacher never distilled is distilled without an event). The
stage fingerprints include the teacher's identity, so only what depends on that teacher is
recomputed (sampling and everything after it; the test sets and the untrained base's evaluation are
cache hits). ``distill`` records the identities once it succeeded, so a failed run is retried by
the next one. The event carries the config and the deployment's trigger passes it back, and runs
are serialised by the deployment's concurrency limit: a run triggered by its own event checks the
same store and finds nothing changed. An event from elsewhere without a config checks the demo.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.events import emit_event

from flows.demo import DemoSettings, demo_config, demo_questions
from flows.distill import DistillConfig, distill
from mcckd.paths import PROJECT_ROOT
from mcckd.teachers import TeacherSpec, distilled_record, read_distilled, teacher_identity

EVENT = "mcckd.teacher.updated"


def changed_teachers(teachers: list[TeacherSpec], store: Path) -> tuple[dict[str, str], dict[str, str | None]]:
    """Every teacher's identity now, and the previous identity of each one that changed (None: never distilled)."""
    last = read_distilled(store)
    now = {t.name: teacher_identity(t) for t in teachers}
    return now, {name: last.get(name) for name, identity in now.items() if last.get(name) != identity}


@flow(name="redistill", log_prints=True)
def redistill(config: DistillConfig | None = None) -> dict:
    """Distil again if a teacher of ``config`` changed since it was last distilled (None: the demo)."""
    if config is None:
        settings, store = DemoSettings(), PROJECT_ROOT / "runs" / "store"
        questions = demo_questions(store, settings.train_questions, settings.test_questions, settings.data_seed)
        config = demo_config(settings, questions, store, PROJECT_ROOT / "runs" / "demo")
    now, changed = changed_teachers(config.teachers, config.store)
    for name, previous in changed.items():
        if previous is None:
            continue  # never distilled: nothing was updated (and no event to re-trigger this deployment)
        emit_event(
            EVENT,
            resource={"prefect.resource.id": f"mcckd.teacher.{name}", "prefect.resource.name": name},
            # The config rides along: the deployment's trigger passes it back as the run's parameter,
            # so the run this event starts checks the same store (not the demo's), and finds it done.
            payload={"identity": now[name], "previous": previous, "config": config.model_dump(mode="json")},
        )
    if not changed:
        print(f"no teacher changed since the last distillation ({distilled_record(config.store)})")
        return {"changed": {}, "metrics": None}
    print(f"teachers changed: {', '.join(changed)}; distilling again")
    metrics = distill(config)
    return {"changed": changed, "metrics": metrics}
