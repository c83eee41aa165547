"""The front page and the manual: README.md short, its links live, every nav page present, the
experiments index complete, the README's figures from results files that name their commit, and
``mkdocs build --strict`` clean (a broken link, a missing page or a docstring mkdocstrings cannot
render fails it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 200

pytestmark = pytest.mark.docs

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
COMMIT = re.compile(r"^[0-9a-f]{40}$")


def relative_links(markdown: str) -> list[str]:
    """The relative link targets of a Markdown text (images included), code blocks left out, each
    without its #anchor."""
    text = FENCE.sub("", markdown)
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        targets.append(target.split("#", 1)[0])
    return targets


def nav_pages(node) -> list[str]:
    """Every page named in mkdocs.yml's nav (an entry is a page, a {title: page} or a {title: [...]})."""
    if isinstance(node, str):
        return [] if re.match(r"^[a-z]+://", node) else [node]
    if isinstance(node, list):
        return [page for item in node for page in nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in nav_pages(value)]
    return []


def mkdocs_config() -> dict:
    # mkdocs.yml may hold tags like !ENV or !!python/name for plugins: leave them as plain values
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)


def test_readme_is_a_front_page_of_at_most_200_lines():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines, more than {MAX_README_LINES}: move detail to docs/"


def test_every_relative_link_in_the_readme_points_to_a_file():
    missing = [t for t in relative_links(README.read_text()) if t and not (ROOT / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_the_readme_figures_come_from_results_files_that_name_their_commit():
    results = [t for t in relative_links(README.read_text()) if t.startswith("benchmarks/results/")]
    assert results, "README.md links no results file under benchmarks/results/ for its figures"
    for target in results:
        path = ROOT / target
        assert path.suffix == ".json" and path.is_file(), f"{target}: not a results file"
        record = json.loads(path.read_text())
        for key in ("commit", "device", "date"):
            assert record.get(key), f"{target} does not name its {key}"
        assert COMMIT.match(record["commit"]), f"{target}: commit {record['commit']!r} is not a full git hash"


def test_every_page_in_the_nav_exists():
    config = mkdocs_config()
    docs_dir = ROOT / config.get("docs_dir", "docs")
    pages = nav_pages(config["nav"])
    assert pages, "mkdocs.yml has no nav"
    missing = [page for page in pages if not (docs_dir / page).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist under {docs_dir}: {missing}"


def test_the_experiments_index_links_every_experiment():
    folder = DOCS / "experiments"
    linked = {Path(t).name for t in relative_links((folder / "index.md").read_text())}
    pages = {p.name for p in folder.glob("*.md") if p.name != "index.md"}
    assert pages <= linked, f"docs/experiments/index.md does not link {sorted(pages - linked)}"


def test_mkdocs_build_strict_passes(tmp_path):
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
               "--site-dir", str(tmp_path / "site")]
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs is not installed: pip install -c constraints.txt -e '.[test,docs]' (make install)")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    warnings = [line for line in output.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "mkdocs build printed warnings:\n" + "\n".join(warnings)
    assert (tmp_path / "site" / "index.html").is_file()
