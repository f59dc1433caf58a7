"""Local copies of public datasets in their published layouts, for tests (no hub here): rows in each dataset card's
schema, written as the hub lays a dataset out (a README.md whose `configs:` name each config's files)."""

from __future__ import annotations

import json
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "public_formats"

# One row per dataset in its card's schema (the fixtures hold more, with judged outputs).
GSM8K_ROW = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                         "May. How many clips did Natalia sell altogether in April and May?",
             "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                       "altogether in April and May.\n#### 72"}
SQUAD_ROW = {"id": "5733be284776f41900661182", "title": "University_of_Notre_Dame",
             "context": "Architecturally, the school has a Catholic character. Atop the Main Building's gold dome is "
                        "a golden statue of the Virgin Mary.",
             "question": "What sits on top of the Main Building at Notre Dame?",
             "answers": {"text": ["a golden statue of the Virgin Mary"], "answer_start": [92]}}
MMLU_ROW = {"question": "What is the embryological origin of the hyoid bone?", "subject": "anatomy",
            "choices": ["The first pharyngeal arch", "The first and second pharyngeal arches",
                        "The second pharyngeal arch", "The second and third pharyngeal arches"],
            "answer": 3}
TRIVIAQA_ROW = {"question": "Which American-born Sinclair won the Nobel Prize for Literature in 1930?",
                "question_id": "tc_1", "question_source": "http://www.triviacountry.com/",
                "entity_pages": {"doc_source": [], "filename": [], "title": [], "wiki_context": []},
                "search_results": {"description": [], "filename": [], "rank": [], "title": [], "url": [],
                                   "search_context": []},
                "answer": {"aliases": ["(Harry) Sinclair Lewis", "Harry Sinclair Lewis", "Sinclair Lewis", "Lewis"],
                           "normalized_aliases": ["harry sinclair lewis", "sinclair lewis", "lewis"],
                           "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                           "normalized_value": "sinclair lewis", "type": "WikipediaEntity",
                           "value": "Sinclair Lewis"}}


def write_hub_layout(folder: Path, configs: dict[str, dict[str, list[dict]]]) -> Path:
    """A dataset folder as the hub lays out one with configs: `CONFIG/SPLIT-00000-of-00001.parquet` and a README.md
    whose YAML header lists each config's files (openai/gsm8k: main and socratic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = ["---", "configs:"]
    for config, splits in configs.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        for split, rows in splits.items():
            path = folder / config / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), path)
            lines += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    (folder / "README.md").write_text("\n".join(lines + ["---", "", "A local copy in the hub's layout."]) + "\n")
    return folder


def fixture_rows(name: str) -> list[dict]:
    """The rows of tests/fixtures/public_formats/NAME.jsonl: {'row', 'outputs': [{'text', 'finish_reason',
    'correct', ...}]}."""
    return [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines() if line.strip()]
