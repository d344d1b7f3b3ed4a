"""`make demo` in its --quick form: the real pipeline, tiny sizes, 2 seeds."""
import json
import os
import re
import shutil

from conftest import REPO, run_cli


def test_demo_quick_reports_every_system_over_seeds_and_updates_the_results_page(tmp_path):
    out, results, readme = tmp_path / "demo", tmp_path / "results", tmp_path / "results-page.md"
    shutil.copy(os.path.join(REPO, "docs", "results.md"), readme)
    systems = "sinusoidal (input),FLOATER dissipative"
    result = run_cli("python", "-m", "floater_fairseq.cli.demo", "--quick", "--seeds", "2", "--systems", systems,
                     "--out", str(out), "--results", str(results), "--doc", str(readme))
    table = (out / "results.md").read_text()
    assert (results / "results.md").read_text() == table and table.strip() in result.stdout
    # the page's block is the demo's own output file, nothing else changed around it
    text = readme.read_text()
    assert re.search(r"<!-- demo-results -->\n(.*?)<!-- /demo-results -->", text, re.S).group(1) == table
    data = json.loads((results / "results.json").read_text())
    assert list(data["results"]) == systems.split(",")
    for label, runs in data["results"].items():
        assert [r["seed"] for r in runs] == [1, 2]
        assert all(len(r["exact"]) == len(r["bleu"]) == 4 for r in runs)
        assert ("growth" in runs[0]) == ("FLOATER" in label)
    rows = [line for line in table.splitlines() if line.startswith("| FLOATER dissipative")]
    assert len(rows) == 3  # exact match, BLEU, growth
    assert all(re.search(r"\d+\.\d+ ± \d+\.\d+", row) for row in rows)
    assert os.path.getsize(results / "extrapolation.png") > 1000
    # --rerun: one row trained again (same settings and seeds), every other row's runs kept
    kept = os.path.getmtime(out / "checkpoints" / "floater-dissipative-seed1" / "checkpoint_last.pt")
    rerun = run_cli("python", "-m", "floater_fairseq.cli.demo", "--quick", "--seeds", "2", "--rerun",
                    "sinusoidal (input)", "--out", str(out), "--results", "", "--readme", "")
    after = json.loads((out / "results.json").read_text())["results"]
    assert list(after) == list(data["results"])
    assert all(after[label] == data["results"][label] for label in systems.split(",")[1:])  # kept as they were
    assert os.path.getmtime(out / "checkpoints" / "floater-dissipative-seed1" / "checkpoint_last.pt") == kept
    assert [r["seed"] for r in after["sinusoidal (input)"]] == [1, 2] and "sinusoidal (input), seed 2" in rerun.stdout
    assert "Rows trained in separate runs of the demo" not in table  # one run: nothing to say
    assert "Rows trained in separate runs of the demo" in (out / "results.md").read_text()  # two runs: said
    # other settings than the kept runs': refused before anything is trained or deleted
    refused = run_cli("python", "-m", "floater_fairseq.cli.demo", "--quick", "--seeds", "1", "--rerun", "RoPE",
                      "--out", str(out), "--results", "", "--readme", "", check=False)
    assert refused.returncode != 0 and "--rerun needs the same ones" in refused.stderr
    assert json.loads((out / "results.json").read_text())["results"] == after
