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


def test_demo_table_is_the_demo_result_file():
    block = re.search(r"<!-- demo-results -->\n(.*?)<!-- /demo-results -->", read("docs", "results.md"), re.S).group(1)
    assert block.strip() == read("results", "demo", "results.md").strip()


def test_seed_tables_in_docs_are_the_result_files():
    from floater_fairseq.cli.experiment import readme_tables
    blocks = re.findall(r"<!-- ([\w-]+)-seeds -->\n(.*?)<!-- /\1-seeds -->", read("docs", "results.md"), re.S)
    assert [dataset for dataset, _ in blocks] == ["multi30k-de-en", "multi30k-de-en-src12"]
    for dataset, block in blocks:  # python -m floater_fairseq.cli.experiment seeds DATASET rewrites them
        assert block == readme_tables(read("results", f"{dataset}-seeds.md")), f"docs/results.md's {dataset}-seeds block"


def test_readme_headline_is_generated_from_the_result_files():
    from floater_fairseq.cli.experiment import headline_table
    block = re.search(r"<!-- headline -->\n(.*?)<!-- /headline -->", read("README.md"), re.S).group(1)
    assert block == headline_table()  # python -m floater_fairseq.cli.experiment seeds DATASET rewrites it


def test_readme_is_a_front_page_with_the_two_commands():
    readme = read("README.md")
    assert len(readme.encode("utf-8")) <= 12000 and "make demo" in readme and "make test" in readme


def test_no_result_table_or_doc_names_a_machines_home():
    """Paths in result files are relative to the repository or the runs directory ({runs}/...);
    fairseq's own training logs (*.train.log) keep what fairseq printed."""
    home = re.compile(r"(/root/|/home/|/Users/|/work/main/)")
    offenders = []
    for folder in ("results", "docs"):
        for root, _, names in os.walk(os.path.join(REPO, folder)):
            for name in names:
                if name.endswith((".png", ".train.log")):
                    continue
                path = os.path.join(root, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    if home.search(f.read()):
                        offenders.append(os.path.relpath(path, REPO))
    assert not home.search(read("README.md")) and not offenders, offenders


def test_readme_speed_commands_are_the_ones_that_wrote_their_files():
    """README's Speed section names the command of results/speed/bench-speed-cpu-headline.txt (its
    first line), and that run measured every headline row's setting at both of the headline's lengths;
    every other result file the section names was written by one of the section's commands."""
    from floater_fairseq.cli.experiment import HEADLINE_LENGTHS, HEADLINE_ROWS, HEADLINE_SPEED, speed_ratios
    name = HEADLINE_SPEED["cpu"]
    recorded = read("results", "speed", name).splitlines()[0].replace(" --absolute", "")
    section = read("README.md").split("## Speed", 1)[1].split("\n## ", 1)[0]
    commands = [" ".join(c.split()) for c in re.findall(r"`(python -m benchmarks\.bench_speed[^`]*)`", section)]
    assert any(recorded.endswith(command) for command in commands), (recorded, commands)
    for named in re.findall(r"`results/speed/([\w.-]+)`", section):
        header = [line.replace(" --absolute", "") for line in read("results", "speed", named).splitlines()
                  if line.startswith("#")]
        assert any(line.endswith(command) for line in header for command in commands), (named, commands)
    measured = speed_ratios(os.path.join(REPO, "results", "speed", name))
    assert all((setting, length) in measured for _, _, setting in HEADLINE_ROWS for length in HEADLINE_LENGTHS)
