"""`make demo` in its --quick form: the real pipeline, tiny sizes."""
import os
import re

from conftest import run_cli


def test_demo_quick_prints_a_bleu_by_length_table(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("python", "-m", "floater_fairseq.cli.demo", "--quick", "--out", str(out))
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "system" not in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| sinusoidal (input)", "| learned (input)", "| FLOATER (all blocks)", "| FLOATER (all blocks), warm start",
        "| sinusoidal (input), continued"]
    assert "[2/3] training FLOATER (all blocks), warm start (4/5), 1 epochs after sinusoidal (input)" in result.stdout
    assert "floater_fairseq.cli.migrate" not in result.stderr  # the exact warm start ran without complaint
    for row in rows:
        scores = row.split(" | ")[1:5]
        assert all(re.fullmatch(r"\d+\.\d", s) for s in scores), row
    assert table.strip() in result.stdout
    assert os.path.getsize(out / "bleu_by_length.png") > 1000
