"""The docs site builds strictly (a broken link or anchor, a page missing from the nav, or an option table that
cannot be generated fails here), and the README points into it."""

import re
import subprocess
import sys

from tests.conftest import REPO


def test_the_docs_build_strictly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    building = (tmp_path / "site" / "building" / "index.html").read_text()
    assert "--eval-split" in building and "--max-tokens" in building  # the generated option table is there
    assert "<!-- options:" not in building


def test_every_docs_page_the_readme_links_exists():
    readme = (REPO / "README.md").read_text()
    links = set(re.findall(r"\]\((docs/[^)#]+)", readme))
    assert len(links) >= 5, links
    for link in links:
        assert (REPO / link).is_file(), link
