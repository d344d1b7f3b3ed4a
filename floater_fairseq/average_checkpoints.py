"""Checkpoint averaging with fairseq's own scripts/average_checkpoints.py, under safe loading.

fairseq's pip package does not install its scripts/ folder, so the script is taken from
$FAIRSEQ_SCRIPTS (a fairseq checkout's scripts/ directory), else from .cache/fairseq-scripts/,
else downloaded once from fairseq's v0.12.2 tag and checked against its SHA-256. It runs with
this plugin's allow-list (torch >= 2.6 loads with weights_only=True), and its output is written
to a temporary file and renamed, so an interrupted average never leaves a truncated checkpoint.

    python -m floater_fairseq.average_checkpoints --inputs DIR --num-epoch-checkpoints 5 --output avg.pt
"""
import hashlib
import os
import runpy
import sys
import tempfile
import urllib.request

from . import serialization  # noqa: F401  (allow-list fairseq's pickled config types)

FAIRSEQ_TAG = "v0.12.2"
URL = f"https://raw.githubusercontent.com/facebookresearch/fairseq/{FAIRSEQ_TAG}/scripts/average_checkpoints.py"
SHA256 = "cd12c32d6296c2ead7ee814f70604905235936a65af1869bcfca0ed85ae3d3b6"
CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "fairseq-scripts")


class AveragingUnavailable(RuntimeError):
    pass


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def find_script() -> str:
    configured = os.environ.get("FAIRSEQ_SCRIPTS")
    if configured:
        path = os.path.join(configured, "average_checkpoints.py")
        if not os.path.isfile(path):
            raise AveragingUnavailable(f"FAIRSEQ_SCRIPTS={configured} has no average_checkpoints.py")
        return path
    cached = os.path.join(CACHE, "average_checkpoints.py")
    if os.path.isfile(cached) and _sha256(cached) == SHA256:
        return cached
    os.makedirs(CACHE, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=CACHE, suffix=".part")
    os.close(fd)
    try:
        urllib.request.urlretrieve(URL, tmp)
        if _sha256(tmp) != SHA256:
            raise AveragingUnavailable(f"{URL} does not have the expected SHA-256; not using it")
        os.replace(tmp, cached)
    except OSError as e:
        raise AveragingUnavailable(
            f"checkpoint averaging uses fairseq's scripts/average_checkpoints.py, which pip does not install, "
            f"and it could not be downloaded ({e}). Set FAIRSEQ_SCRIPTS to the scripts/ folder of a fairseq "
            f"checkout ({FAIRSEQ_TAG}), or average only the last checkpoint (evaluate --average-last 1)."
        ) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return cached


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--output" not in argv:
        print("usage: python -m floater_fairseq.average_checkpoints --inputs ... --output FILE [...]", file=sys.stderr)
        return 2
    try:
        script = find_script()
    except AveragingUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    output = argv[argv.index("--output") + 1]
    directory = os.path.dirname(os.path.abspath(output))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".average-", suffix=".pt")
    os.close(fd)
    argv[argv.index("--output") + 1] = tmp
    saved_argv = sys.argv
    try:
        sys.argv = [script, *argv]
        runpy.run_path(script, run_name="__main__")
        os.replace(tmp, output)
    finally:
        sys.argv = saved_argv
        if os.path.exists(tmp):
            os.remove(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
