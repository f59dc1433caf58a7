"""MkDocs hook: the parts of the docs that are generated, not copied.

`<!-- options: COMMAND -->` becomes that command's option table, rendered from its config dataclass
(raypipe.options.options_table): the same source as `raypipe COMMAND --help`. `<!-- readme: NAME -->` becomes the
code block that follows `<!-- NAME -->` in the README (the two fresh-machine commands live there, where CI reads them).
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_block(name: str) -> str:
    text = README.read_text()
    found = re.search(rf"<!-- {re.escape(name)} -->\s*\n(```[^\n]*\n.*?\n```)", text, re.S)
    if not found:
        raise ValueError(f"README.md has no code block after <!-- {name} -->")
    return found.group(1)


def on_page_markdown(markdown: str, page, config, files) -> str:
    from raypipe.options import options_table

    markdown = re.sub(r"<!-- options: (\w+) -->", lambda m: options_table(m.group(1)), markdown)
    return re.sub(r"<!-- readme: ([\w-]+) -->", lambda m: _readme_block(m.group(1)), markdown)
