"""mini-DEMON is a yardstick: text-only baselines score near chance on every task (parity scorer, 100 samples).

Open-ended: another sample's answer (chance) <= 20 ROUGE-L x100 and the copied context < 25. Multiple choice:
both baselines <= 100/k + 15 (k options, averaged over the task's samples). An answer that can be read off the
wording of the task, its other answers or its context fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from components.demon.mini import build_mini_demon
from components.demon.normalize import load_samples, normalize
from components.demon.registry import tasks
from components.evaluation.baselines import BASELINES, write_baseline_predictions
from components.evaluation.scorers import score_task

PER_TASK = 100
OPEN_CHANCE, OPEN_CONTEXT, CHOICE_MARGIN = 20.0, 25.0, 15.0


def baseline_floors(folder: Path, per_task: int = PER_TASK, seed: int = 0) -> dict[str, dict[str, float]]:
    """{baseline: {task: parity score x100}} on a fresh mini-DEMON, plus {"uniform": {task: mean 100/k}}."""
    raw, normalized = folder / "raw", folder / "normalized"
    build_mini_demon(raw, per_task=per_task, seed=seed, progress=False)
    normalize(raw, normalized, workers=1, progress=False)
    samples, _ = load_samples(normalized)
    floors: dict[str, dict[str, float]] = {"uniform": {}}
    for task, group in samples.groupby("task"):
        if group["choice_list"].notna().all():
            floors["uniform"][task] = float((100 / group["choice_list"].map(len)).mean())
    by_id = samples.set_index(["task", "sample_id"])
    for kind in BASELINES:
        preds = folder / kind
        write_baseline_predictions(samples, preds, kind, seed)
        floors[kind] = {}
        for path in sorted(preds.glob("*/pred.json")):
            records = json.loads(path.read_text())
            rows = [by_id.loc[(path.parent.name, r["sample_id"])] for r in records]
            choices = [None if r["choice_list"] is None else list(r["choice_list"]) for r in rows]
            result = score_task(
                path.parent.name, [r["pred_response"] for r in records], [r["response"] for r in rows], choices
            )
            floors[kind][path.parent.name] = 100 * result.score
    return floors


@pytest.fixture(scope="module")
def floors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    return baseline_floors(tmp_path_factory.mktemp("floors"))


@pytest.mark.parametrize("task", tasks("core"), ids=lambda t: t.folder)
def test_text_only_baselines_stay_near_chance(floors: dict[str, dict[str, float]], task) -> None:
    chance, context = floors["chance"][task.folder], floors["context"][task.folder]
    if task.question_type == "open-ended":
        assert chance <= OPEN_CHANCE, f"another sample's answer scores {chance:.1f}: answers are too templated"
        assert context < OPEN_CONTEXT, f"the copied context scores {context:.1f}: the answer is in the text"
    else:
        bound = floors["uniform"][task.folder] + CHOICE_MARGIN
        assert chance <= bound, f"a random option scores {chance:.1f} > {bound:.1f}"
        assert context <= bound, f"the option closest to the context scores {context:.1f} > {bound:.1f}"


def test_every_task_is_measured(floors: dict[str, dict[str, float]]) -> None:
    assert set(floors["chance"]) == set(floors["context"]) == {t.folder for t in tasks("core")}
    assert len(pd.Series(floors["uniform"])) == 18  # the multiple-choice tasks
