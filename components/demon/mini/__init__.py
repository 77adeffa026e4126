"""The embedded mini-DEMON: a procedural benchmark in the exact official DEMON on-disk format.

`build_mini_demon(out)` writes `out/<Folder>/core/core.json` plus `out/<Folder>/core/images/` for all 29 Core
tasks (reference/paper.md, DEMON): real folder names, the official metadata block and instruction templates,
each task's context style copied from its README example. Every image is drawn with Pillow from one small
vocabulary (shapes x colours x grid cells x places x words), and every answer can be read off the pixels: the
changed object in Spot-the-Diff, the shirt colour on the crosswalk in nuScenes, the count of suits in Fashion200K.
Answers vary in wording as real ones do, so a guess that copies another answer or the context scores low
(docs/mini-demon.md has the floors).

    draw.py           objects on the 3x3 grid, text cards, tables, story places
    sample.py         Sample / Ctx and the text helpers the task families share
    dialogue.py, storytelling.py, relation.py, comics.py, recipe.py, knowledge.py, textrich.py, reasoning.py,
    states.py         the task generators, by DEMON category or task family; each exports TASKS
    build.py          rendering, stamps, atomic swaps: `build_mini_demon`
"""

from __future__ import annotations

from components.demon.mini.build import GENERATORS, STAMP, VERSION, build_mini_demon
from components.demon.mini.relation import BIRD_PART_POINTS

__all__ = ["BIRD_PART_POINTS", "GENERATORS", "STAMP", "VERSION", "build_mini_demon"]
