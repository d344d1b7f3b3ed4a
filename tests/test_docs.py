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
    assert len(readme) <= 12000 and "make demo" in readme and "make test" in readme


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


def test_readme_speed_table_is_the_benchmark_file():
    """README's speed table: the train and memory ratios of results/speed/bench-speed-cpu-rk4-node.txt,
    and of bench-speed-cpu-period8.txt for its last row."""
    measured = {}  # (setting, mean length) -> (train, memory)
    for name in ("bench-speed-cpu-rk4-node.txt", "bench-speed-cpu-period8.txt"):
        length = None
        for line in read("results", "speed", name).splitlines():
            found = re.search(r"mean length (\d+)", line)
            length = int(found.group(1)) if found else length
            fields = line.split()
            if fields[:1] == ["small"] and (fields[1], length) not in measured:
                measured[(fields[1], length)] = (float(fields[2]), float(fields[4]))
    section = read("README.md").split("## Speed", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w+ -]+)`[^|]*\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", section, re.M)
    settings = {"floater": "default", "rope": "rope", "rope+floater": "rope+floater",
                "floater --floater-fastest-period 8": "period8"}
    assert [row[0] for row in rows] == list(settings)
    for encoder, short, long, memory in rows:
        setting = settings[encoder]
        assert (float(short), float(long), float(memory)) == (
            round(measured[(setting, 27)][0], 2), round(measured[(setting, 256)][0], 2),
            round(measured[(setting, 256)][1], 2)), encoder
