"""Data preparation: raw parallel text -> joint sentencepiece model -> fairseq-preprocess.

    python -m floater_fairseq.cli.prepare DATASET [--raw-dir DIR] [--dest DIR] [--vocab-size N]
        [--max-train-len N] [--source-lang L --target-lang L]

DATASET: multi30k, iwslt14, wmt14-en-de, wmt14-en-fr (the scripts/prepare-*.sh wrappers call
this). Without --raw-dir the official files are downloaded into DEST.raw/ (needs a network);
with it, the files are found by name anywhere under DIR (archives already extracted).

Stages, each built in a temporary directory and renamed when complete, skipped when present:
  DEST.work/text  plain UTF-8 train/valid/test per language, every file checked (missing,
                  empty, unequal line counts, undecodable bytes stop with the file and line)
  DEST.work/spm   joint sentencepiece model on the training text (--vocab-size, BPE)
  DEST.work/bpe   subword-encoded splits; --max-train-len N keeps training pairs whose two sides
                  have at most N subwords (the paper's S2L setting)
  DEST            fairseq-preprocess --joined-dictionary output, plus spm.model and the raw
                  test text (test.raw.L) for scoring with sacreBLEU
"""
import argparse
import glob
import gzip
import html
import os
import re
import shutil
import sys
import tarfile
import urllib.request
from typing import Dict, List, Tuple

from ..files import atomic_output
from . import common

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}"
STATMT = "http://statmt.org"

# dataset -> (default languages, downloads, {split: [(source file, target file) patterns]})
# Patterns use {s}/{t} for the languages; files are found by basename under the raw directory.
DATASETS = {
    "multi30k": dict(
        langs=("de", "en"), choices=("de", "en", "fr"),
        urls=[MULTI30K_URL.format(name=f"{split}.{lang}.gz")
              for split in ("train", "val", "test_2016_flickr") for lang in ("de", "en", "fr")],
        splits={"train": [("train.{s}.gz", "train.{t}.gz")], "valid": [("val.{s}.gz", "val.{t}.gz")],
                "test": [("test_2016_flickr.{s}.gz", "test_2016_flickr.{t}.gz")]},
    ),
    "iwslt14": dict(
        langs=("de", "en"), choices=("de", "en"),
        urls=["http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"],  # fairseq's copy
        splits={"train": [("train.tags.de-en.{s}", "train.tags.de-en.{t}")],
                "test": [(f"IWSLT14.{name}.de-en.{{s}}.xml", f"IWSLT14.{name}.de-en.{{t}}.xml")
                         for name in ("TED.dev2010", "TED.tst2010", "TED.tst2011", "TED.tst2012")]},
    ),
    "wmt14-en-de": dict(
        langs=("en", "de"), choices=("en", "de"),
        urls=[f"{STATMT}/wmt13/training-parallel-europarl-v7.tgz", f"{STATMT}/wmt13/training-parallel-commoncrawl.tgz",
              "http://data.statmt.org/wmt17/translation-task/training-parallel-nc-v12.tgz",
              "http://data.statmt.org/wmt17/translation-task/dev.tgz", f"{STATMT}/wmt14/test-full.tgz"],
        splits={"train": [("europarl-v7.de-en.{s}", "europarl-v7.de-en.{t}"),
                          ("commoncrawl.de-en.{s}", "commoncrawl.de-en.{t}"),
                          ("news-commentary-v12.de-en.{s}", "news-commentary-v12.de-en.{t}")],
                "valid": [("newstest2013.{s}", "newstest2013.{t}")],
                "test": [("newstest2014-deen-{src}.{s}.sgm", "newstest2014-deen-{ref}.{t}.sgm")]},
    ),
    "wmt14-en-fr": dict(
        langs=("en", "fr"), choices=("en", "fr"),
        urls=[f"{STATMT}/wmt13/training-parallel-europarl-v7.tgz", f"{STATMT}/wmt13/training-parallel-commoncrawl.tgz",
              f"{STATMT}/wmt13/training-parallel-un.tgz", f"{STATMT}/wmt14/training-parallel-nc-v9.tgz",
              f"{STATMT}/wmt10/training-giga-fren.tar", f"{STATMT}/wmt14/dev.tgz", f"{STATMT}/wmt14/test-full.tgz"],
        splits={"train": [("europarl-v7.fr-en.{s}", "europarl-v7.fr-en.{t}"),
                          ("commoncrawl.fr-en.{s}", "commoncrawl.fr-en.{t}"),
                          ("undoc.2000.fr-en.{s}", "undoc.2000.fr-en.{t}"),
                          ("news-commentary-v9.fr-en.{s}", "news-commentary-v9.fr-en.{t}"),
                          ("giga-fren.release2.fixed.{s}.gz", "giga-fren.release2.fixed.{t}.gz")],
                "valid": [("newstest2013.{s}", "newstest2013.{t}")],
                "test": [("newstest2014-fren-{src}.{s}.sgm", "newstest2014-fren-{ref}.{t}.sgm")]},
    ),
}
IWSLT_VALID_EVERY = 23  # fairseq's prepare-iwslt14.sh: every 23rd training pair is validation


class PrepareError(Exception):
    """Bad or missing input: the message names the file (and line) and what to do."""


# --- reading and checking raw files ----------------------------------------------------------------

def read_lines(path: str) -> List[str]:
    """All lines of a (possibly gzipped) UTF-8 file, checked; XML/SGML segments are extracted."""
    if not os.path.isfile(path):
        raise PrepareError(f"missing file: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise PrepareError(f"cannot read {path}: {e}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise PrepareError(f"empty file: {path}")
    text = []
    for number, raw in enumerate(lines, 1):
        try:
            text.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            raise PrepareError(f"{path}, line {number}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                               "convert the file to UTF-8 (e.g. iconv) or remove the line") from None
    if re.search(r"\.(xml|sgm)(\.gz)?$", path):
        segments = (re.search(r"<seg[^>]*>(.*)</seg>", line) for line in text)
        return [html.unescape(m.group(1)).strip() for m in segments if m]
    if os.path.basename(path).startswith("train.tags."):  # IWSLT training text: drop the XML meta lines
        return [line.strip() for line in text if not line.lstrip().startswith("<")]
    return [line.strip() for line in text]


def find(raw_dir: str, name: str) -> str:
    matches = sorted(glob.glob(os.path.join(raw_dir, "**", name), recursive=True))
    if not matches:
        raise PrepareError(f"missing file: {name} (looked under {raw_dir}); download the official files "
                           "or point --raw-dir at the directory that holds them")
    return matches[0]


def read_pairs(raw_dir: str, pairs: List[Tuple[str, str]], s: str, t: str):
    sources, targets = [], []
    for source_pattern, target_pattern in pairs:
        names = {"s": s, "t": t, "src": "src", "ref": "ref"}
        source_path = find(raw_dir, source_pattern.format(**names))
        target_path = find(raw_dir, target_pattern.format(**names))
        src_lines, tgt_lines = read_lines(source_path), read_lines(target_path)
        if len(src_lines) != len(tgt_lines):
            raise PrepareError(f"unequal line counts: {source_path} has {len(src_lines)} lines, "
                               f"{target_path} has {len(tgt_lines)}; the two sides must be aligned line by line")
        sources += src_lines
        targets += tgt_lines
    return sources, targets


def extract_text(dataset: str, raw_dir: str, s: str, t: str) -> Dict[str, Tuple[List[str], List[str]]]:
    spec = DATASETS[dataset]
    splits = {}
    for split, pairs in spec["splits"].items():
        splits[split] = read_pairs(raw_dir, pairs, s, t)
    if "valid" not in splits:  # IWSLT: carve validation out of training, as fairseq's recipe does
        src, tgt = splits["train"]
        keep = [i % IWSLT_VALID_EVERY != 0 for i in range(len(src))]
        splits["valid"] = ([x for x, k in zip(src, keep) if not k], [y for y, k in zip(tgt, keep) if not k])
        splits["train"] = ([x for x, k in zip(src, keep) if k], [y for y, k in zip(tgt, keep) if k])
    src, tgt = splits["train"]  # training pairs with an empty side teach nothing: drop them
    kept = [(x, y) for x, y in zip(src, tgt) if x and y]
    splits["train"] = ([x for x, _ in kept], [y for _, y in kept])
    return splits


# --- stages ----------------------------------------------------------------------------------------

def stage(path: str):
    """Context for one stage: yields a temporary directory that becomes ``path`` on success."""
    return atomic_output(path, directory=True)


def write_lines(path: str, lines: List[str]):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def download(urls: List[str], raw_dir: str):
    os.makedirs(raw_dir, exist_ok=True)
    for url in urls:
        name = os.path.join(raw_dir, os.path.basename(url))
        if not os.path.exists(name):
            print(f"prepare: downloading {url}", flush=True)
            try:
                with atomic_output(name) as part, urllib.request.urlopen(url, timeout=60) as response, \
                        open(part, "wb") as out:
                    shutil.copyfileobj(response, out)
            except OSError as e:
                raise PrepareError(f"cannot download {url} ({e}); without a network, download the files "
                                   "elsewhere and pass --raw-dir") from None
        if re.search(r"\.(tgz|tar|tar\.gz)$", name) and not os.path.exists(name + ".extracted"):
            with tarfile.open(name) as archive:
                archive.extractall(raw_dir, filter="data")
            open(name + ".extracted", "w").close()


def run(cmd: List[str]):
    try:
        common.run(cmd, capture=True, quiet=True)
    except common.ToolError as e:
        raise PrepareError(str(e)) from None


def _train_sentencepiece(spm, out_dir, text, s, t, vocab_size, workers):
    try:
        spm.SentencePieceTrainer.train(
            input=[os.path.join(text, f"train.{s}"), os.path.join(text, f"train.{t}")],
            model_prefix=os.path.join(out_dir, "spm"), vocab_size=vocab_size, model_type="bpe",
            character_coverage=1.0, input_sentence_size=2_000_000, shuffle_input_sentence=True,
            num_threads=max(1, workers), minloglevel=2)
    except RuntimeError as e:  # e.g. a vocabulary larger than the corpus allows
        raise PrepareError(f"sentencepiece could not train on {text}/train.*: {e} (lower --vocab-size?)") from None


def prepare(dataset: str, dest: str, raw_dir: str = None, source_lang: str = None, target_lang: str = None,
            vocab_size: int = 8000, max_train_len: int = None, workers: int = 1,
            max_train_source_len: int = None):
    import sentencepiece as spm

    spec = DATASETS[dataset]
    s, t = source_lang or spec["langs"][0], target_lang or spec["langs"][1]
    for lang in (s, t):
        if lang not in spec["choices"]:
            raise PrepareError(f"{dataset} has no language {lang!r}; choose from {spec['choices']}")
    if s == t:
        raise PrepareError(f"source and target language are both {s!r}")
    if os.path.isfile(os.path.join(dest, "dict.%s.txt" % s)):
        print(f"prepare: {dest} is complete; nothing to do")
        return
    work = dest.rstrip("/") + ".work"
    text, model_dir, bpe = (os.path.join(work, name) for name in ("text", "spm", "bpe"))
    if not os.path.isdir(text):
        if raw_dir is None:
            raw_dir = dest.rstrip("/") + ".raw"
            download(spec["urls"], raw_dir)
        elif not os.path.isdir(raw_dir):
            raise PrepareError(f"--raw-dir {raw_dir} is not a directory")
        splits = extract_text(dataset, raw_dir, s, t)
        with stage(text) as tmp:
            for split, (src, tgt) in splits.items():
                write_lines(os.path.join(tmp, f"{split}.{s}"), src)
                write_lines(os.path.join(tmp, f"{split}.{t}"), tgt)
            print(f"prepare: text {', '.join(f'{k} {len(v[0])}' for k, v in splits.items())} pairs", flush=True)
    if not os.path.isdir(model_dir):
        with stage(model_dir) as tmp:
            _train_sentencepiece(spm, tmp, text, s, t, vocab_size, workers)
    if not os.path.isdir(bpe):
        processor = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "spm.model"))
        with stage(bpe) as tmp:
            for split in ("train", "valid", "test"):
                pieces = {lang: [" ".join(p) for p in processor.encode(read_lines(os.path.join(text, f"{split}.{lang}")), out_type=str)]
                          for lang in (s, t)}
                if split == "train" and (max_train_len or max_train_source_len):
                    keep = [(not max_train_len or max(len(a.split()), len(b.split())) <= max_train_len)
                            and (not max_train_source_len or len(a.split()) <= max_train_source_len)
                            for a, b in zip(pieces[s], pieces[t])]
                    pieces = {lang: [x for x, k in zip(lines, keep) if k] for lang, lines in pieces.items()}
                    if not pieces[s]:
                        raise PrepareError(f"--max-train-len {max_train_len} / --max-train-source-len "
                                           f"{max_train_source_len} keeps no training pair")
                    print(f"prepare: kept {len(pieces[s])} of {len(keep)} training pairs", flush=True)
                for lang in (s, t):
                    write_lines(os.path.join(tmp, f"{split}.{lang}"), pieces[lang])
    with stage(dest) as tmp:
        run([common.tool("fairseq-preprocess"), "--source-lang", s, "--target-lang", t,
             "--trainpref", os.path.join(bpe, "train"), "--validpref", os.path.join(bpe, "valid"),
             "--testpref", os.path.join(bpe, "test"), "--destdir", tmp, "--joined-dictionary",
             "--workers", str(workers)])
        shutil.copy(os.path.join(model_dir, "spm.model"), os.path.join(tmp, "spm.model"))
        for split in ("valid", "test"):
            for lang in (s, t):
                shutil.copy(os.path.join(text, f"{split}.{lang}"), os.path.join(tmp, f"{split}.raw.{lang}"))
    print(f"prepare: wrote {dest}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--raw-dir", help="directory with the official files already downloaded")
    parser.add_argument("--dest", help="output directory (default data-bin/DATASET_SRC_TGT)")
    parser.add_argument("--source-lang", "--src")
    parser.add_argument("--target-lang", "--tgt")
    parser.add_argument("--vocab-size", type=int, default=8000, help="joint sentencepiece vocabulary (default 8000)")
    parser.add_argument("--max-train-len", type=int, help="keep training pairs of at most N subwords per side")
    parser.add_argument("--max-train-source-len", type=int,
                        help="keep training pairs whose source has at most N subwords (short-to-long studies; "
                             "valid and test stay whole)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    spec = DATASETS[args.dataset]
    s, t = args.source_lang or spec["langs"][0], args.target_lang or spec["langs"][1]
    dest = args.dest or os.path.join("data-bin", f"{args.dataset.split('-')[0]}_{s}_{t}")
    try:
        prepare(args.dataset, dest, args.raw_dir, s, t, args.vocab_size, args.max_train_len, args.workers,
                args.max_train_source_len)
    except PrepareError as e:
        print(f"prepare: error: {e}\nprepare: nothing was written for the failed stage", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
