"""README and docs/ hold no number or table that their source does not produce."""
import os
import re

from conftest import REPO
from floater_fairseq.options import fill_doc_tables


def read(*path):
    with open(os.path.join(REPO, *path), encoding="utf-8") as f:
        return f.read()


def test_flag_tables_in_docs_are_the_options_table():
    for page in ("method.md", "encoders.md"):
        text = read("docs", page)
        assert "<!-- options:" in text
        assert fill_doc_tables(text) == text, f"docs/{page}: run python -m floater_fairseq.options --write-docs"


def test_readme_demo_table_is_the_demo_result_file():
    block = re.search(r"<!-- demo-results -->\n(.*?)<!-- /demo-results -->", read("README.md"), re.S).group(1)
    assert block.strip() == read("results", "demo", "results.md").strip()


def test_readme_seed_tables_are_the_result_files():
    from floater_fairseq.cli.experiment import readme_tables
    blocks = re.findall(r"<!-- ([\w-]+)-seeds -->\n(.*?)<!-- /\1-seeds -->", read("README.md"), re.S)
    assert [dataset for dataset, _ in blocks][:1] == ["multi30k-de-en"]
    for dataset, block in blocks:  # python -m floater_fairseq.cli.experiment seeds DATASET rewrites them
        assert block == readme_tables(read("results", f"{dataset}-seeds.md")), f"README's {dataset}-seeds block"


def test_readme_stays_short_and_shows_the_two_commands():
    readme = read("README.md")
    assert len(readme) <= 25000 and "make demo" in readme and "make test" in readme
