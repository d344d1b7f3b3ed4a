"""Each shim of floater_fairseq.compat, shown to be needed: without it the failure it prevents
happens (with fairseq 0.12 / torch >= 2.6 as installed here), with it it does not."""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

FIXTURE = os.path.join(REPO, "tests", "fixtures", "checkpoint-2026-11-25", "checkpoint.pt")


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO)


def test_checkpoint_allow_list_is_what_lets_fairseq_checkpoints_load_safely():
    load = f"import torch; torch.load({FIXTURE!r}, map_location='cpu', weights_only=True); print('loaded')"
    without = python("import fairseq\n" + load)
    assert without.returncode != 0 and "argparse.Namespace" in without.stderr
    with_shim = python("import fairseq\nfrom floater_fairseq import compat\ncompat.allow_fairseq_checkpoint_types()\n" + load)
    assert with_shim.returncode == 0 and "loaded" in with_shim.stdout, with_shim.stderr[-2000:]


def test_allow_list_covers_the_numpy_meters_of_eval_bleu(tmp_path):
    # what fairseq saves in extra_state["metrics"] when --eval-bleu is on
    code = f"""
        import numpy, torch
        torch.save({{"metrics": {{"_bleu_counts": numpy.array([3, 2, 1, 0])}}}}, {str(tmp_path / 'm.pt')!r})
        {{}}
        torch.load({str(tmp_path / 'm.pt')!r}, weights_only=True); print("loaded")
    """
    without = python(code.replace("{}", "pass"))
    assert without.returncode != 0 and "numpy" in without.stderr
    with_shim = python(code.replace("{}", "from floater_fairseq import compat; compat.allow_fairseq_checkpoint_types()"))
    assert with_shim.returncode == 0, with_shim.stderr[-2000:]


@pytest.mark.parametrize("shim", [False, True])
def test_checkpoint_copies_replace_the_file_instead_of_writing_into_it(tmp_path, shim):
    """fairseq copies checkpoint_1_8.pt onto checkpoint_last.pt; in place, a kill mid-copy truncates
    the only good checkpoint (tests/test_reliability.py kills one). Atomic: a new file is renamed
    over the old one, so the old one's inode is never written."""
    source, target = tmp_path / "checkpoint_1_8.pt", tmp_path / "checkpoint_last.pt"
    source.write_bytes(b"new" * 1000)
    target.write_bytes(b"old")
    result = python(f"""
        import os
        from fairseq.file_io import PathManager
        {"from floater_fairseq import compat; compat.make_checkpoint_copies_atomic()" if shim else ""}
        before = os.stat({str(target)!r}).st_ino
        PathManager.copy({str(source)!r}, {str(target)!r}, overwrite=True)
        print(os.stat({str(target)!r}).st_ino == before)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ("False" if shim else "True")
    assert target.read_bytes() == source.read_bytes()


def test_importing_the_plugin_patches_only_through_compat_and_imports_no_tools():
    result = python("""
        import sys
        import fairseq.checkpoint_utils, fairseq.models, fairseq.tasks
        before = set(sys.modules)
        import floater_fairseq
        new = set(sys.modules) - before
        print(sorted(m for m in new if m.split(".")[0] in
              ("matplotlib", "sacrebleu", "sentencepiece", "urllib", "requests", "yaml")
              or m.startswith(("floater_fairseq.cli", "benchmarks"))))
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
