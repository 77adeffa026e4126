"""The task registry agrees with the paper's table and the names found in the wild."""

import pytest

from components.demon.registry import categories, find_task, get_task, tasks


def test_core_and_full_task_counts_match_the_paper():
    core, full = tasks("core"), tasks("full")
    assert len(core) == 29 and len(full) == 31
    assert sum(t.counts["core"] for t in core) == 18_176
    assert {t.folder for t in full} - {t.folder for t in core} == {"ManyModalQA", "Gibson"}
    assert len(categories()) == 7


@pytest.mark.parametrize(
    ("name", "folder"),
    [("MMQA", "MultiModalQA"), ("didemosv", "DiDeMoSV"), ("Flintstones", "FlintstonesSV"), ("NUSCENES", "nuScenes")],
)
def test_aliases_resolve_case_insensitively(name: str, folder: str):
    assert find_task(name).folder == folder


def test_image_option_tasks_and_question_types():
    image_tasks = {t.folder for t in tasks("core") if t.image_options}
    assert image_tasks == {"COMICS_Panel", "RecipeQA_VisualCloze", "RecipeQA_ImageCoherence"}
    assert get_task("ALFRED").normalized_question_type == "open-ended"
    assert get_task("COMICS_Panel").normalized_question_type == "image-choice"
    assert get_task("TQA").normalized_question_type == "multi-choice"


def test_templates_come_from_the_official_metadata_including_the_malformed_ones():
    assert len(get_task("Fashion200K").templates["core"]) == 40
    assert len(get_task("WebQA").templates["core"]) == 10
    assert len(get_task("MIT-States_PropertyCoherence").templates["core"]) == 30
    assert get_task("TQA").templates["core"][0].startswith("Provided with a series of diagrams")


def test_unknown_task_names_list_the_known_ones():
    assert find_task("NoSuchTask") is None
    with pytest.raises(KeyError, match="MultiModalQA"):
        get_task("NoSuchTask")
