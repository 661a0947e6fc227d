"""Convert the official category maps (../shared/data/*/categories.json) into tasks/data/*.json.

Run once when the official maps change: `python -m tasks.convert_categories ../shared/data`.
The output uses the column labels of the Baichuan-13B README tables ("Social Sciences",
"Others", "China Specific"), so reports need no renaming; the official names are kept beside
them in `official_category_names`. A test re-runs the conversion and compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# official category name -> README column label, per benchmark
LABELS: dict[str, dict[str, str]] = {
    "mmlu": {
        "STEM": "STEM",
        "social sciences": "Social Sciences",
        "humanities": "Humanities",
        "other (business, health, misc.)": "Others",
    },
    "ceval": {
        "STEM": "STEM",
        "Social Science": "Social Sciences",
        "Humanities": "Humanities",
        "Other": "Others",
    },
    "cmmlu": {
        "STEM": "STEM",
        "Humanities": "Humanities",
        "Social Science": "Social Sciences",
        "Other": "Others",
        "China specific": "China Specific",
    },
}
EXTRA_GROUPS: dict[str, tuple[str, ...]] = {"ceval": ("Avg(Hard)",), "mmlu": (), "cmmlu": ()}
DATA_DIR = Path(__file__).parent / "data"


def _subject_rows(benchmark: str, official: dict) -> list[dict]:
    labels = LABELS[benchmark]
    rows = []
    for name in official["subjects"]:
        if benchmark == "mmlu":
            name_en, name_zh = " ".join(name.split("_")), ""
            groups = [labels[official["subject_to_category"][name]]]
        elif benchmark == "ceval":
            name_en, name_zh, category = official["subject_mapping"][name]
            groups = [labels[category]] + (["Avg(Hard)"] if name in official["hard_subjects"] else [])
        else:
            name_en, name_zh = " ".join(name.split("_")), official["name_en2zh"][name]
            groups = [labels[c] for c in official["subject_to_categories"][name]]
        rows.append({"name": name, "name_en": name_en, "name_zh": name_zh, "categories": groups})
    return rows


def convert(benchmark: str, official: dict) -> dict:
    """The project's data file for one benchmark, from its official categories.json content."""
    labels = LABELS[benchmark]
    return {
        "source": official["source"],
        "official_category_names": {label: name for name, label in labels.items()},
        "categories": list(labels.values()),
        "extra_groups": list(EXTRA_GROUPS[benchmark]),
        "subjects": _subject_rows(benchmark, official),
    }


def main(shared_data: str) -> None:
    for benchmark in LABELS:
        official = json.loads((Path(shared_data) / benchmark / "categories.json").read_text(encoding="utf-8"))
        text = json.dumps(convert(benchmark, official), ensure_ascii=False, indent=1) + "\n"
        (DATA_DIR / f"{benchmark}.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
