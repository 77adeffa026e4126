"""Regenerate components/demon/tasks.json from the shared reference (run once when the reference changes).

Input: ../shared/reference/demon-tasks.csv (the 31-task table) and demon-readme-metadata.json (each task's
README metadata and example, two of them malformed exactly as published: trailing commas, a stray wrapper).
Output: one JSON list, a record per task, with the instruction templates and README examples folded in, so the
installed package needs nothing outside itself.
"""

import csv
import json
import re
import sys
from pathlib import Path

REFERENCE = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/reference")
OUT = Path(__file__).resolve().parents[1] / "components" / "demon" / "tasks.json"


def lenient_metadata(entry: dict) -> dict:
    """The README metadata block; the malformed ones come as raw text under `_unparsed`."""
    meta = entry["metadata"]
    if "_unparsed" not in meta:
        return meta
    text = meta["_unparsed"].strip().rstrip(",")
    text = re.sub(r",\s*([}\]])", r"\1", text)  # trailing commas
    if text.count("{") > text.count("}"):
        text += "}" * (text.count("{") - text.count("}"))
    parsed = json.loads(text)
    return parsed.get("metadata", parsed)


def main() -> None:
    readmes: dict[tuple[str, str], dict] = {}
    for entry in json.loads((REFERENCE / "demon-readme-metadata.json").read_text()):
        readmes[(entry["task_folder"], entry["benchmark_split"])] = entry
    tasks = []
    for row in csv.DictReader((REFERENCE / "demon-tasks.csv").open()):
        record = {
            "folder": row["folder"],
            "name": row["task"],
            "category": row["category"],
            "scenario": row["scenario"],
            "question_type": row["question_type"],
            "metric": row["metric"],
            "dataset_name": row["metadata_dataset_name"] or row["folder"],
            "aliases": [a for a in row["aliases_seen"].split(";") if a],
            "counts": {"core": int(row["core_n"]), "full": int(row["full_n"])},
            "notes": row["notes"],
            "templates": {},
            "readme_example": {},
        }
        for split in ("core", "full"):
            entry = readmes.get((row["folder"], split))
            if entry is None:
                continue
            record["templates"][split] = lenient_metadata(entry)["task_instruction"]
            record["readme_example"][split] = entry["example"]
        tasks.append(record)
    OUT.write_text(json.dumps(tasks, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(tasks)} tasks to {OUT}")


if __name__ == "__main__":
    main()
