"""Data preparation (scripts/prepare-*.sh, cli/prepare.py): the Multi30k layout, the length
filters, the IWSLT14 and WMT14 layouts, and the refusals of bad input, usage and a missing network."""
import gzip
import os

import pytest

from pipeline_helpers import prepared, script, write_multi30k  # noqa: F401 (prepared: a fixture)


def test_prepare_writes_binarized_data_and_skips_when_done(prepared):
    data = prepared / "data"
    assert {"dict.de.txt", "spm.model", "test.raw.en", "train.de-en.de.bin", "valid.de-en.en.idx"} <= set(os.listdir(data))
    assert len((data / "test.raw.en").read_text().splitlines()) == 24
    again = script("prepare-multi30k.sh", "--raw-dir", prepared / "raw", "--dest", data, "--vocab-size", "20")
    assert "nothing to do" in again.stdout


def test_max_train_len_and_source_len_keep_exactly_the_short_pairs(prepared, tmp_path):
    script("prepare-multi30k.sh", "--raw-dir", prepared / "raw", "--dest", tmp_path / "short", "--vocab-size", "20",
           "--max-train-len", "8", "--max-train-source-len", "6")
    bpe, whole = tmp_path / "short.work" / "bpe", prepared / "data.work" / "bpe"
    kept = list(zip(*((bpe / f"train.{lang}").read_text().splitlines() for lang in ("de", "en"))))
    pairs = zip(*((whole / f"train.{lang}").read_text().splitlines() for lang in ("de", "en")))
    assert kept == [(s, t) for s, t in pairs if len(s.split()) <= 6 and len(t.split()) <= 8]  # exactly those
    assert 0 < len(kept) < 300
    assert (bpe / "test.de").read_text().splitlines() == (whole / "test.de").read_text().splitlines()  # test whole


def corrupt(raw, kind):
    if kind == "missing":
        os.remove(raw / "val.en.gz")
    elif kind == "unequal":
        with gzip.open(raw / "train.en.gz", "at", encoding="utf-8") as f:
            f.write("t1 t2\n")
    elif kind == "empty":
        with gzip.open(raw / "val.de.gz", "wt") as f:
            f.write("")
    elif kind == "undecodable":
        lines = gzip.open(raw / "test_2016_flickr.de.gz", "rb").read().split(b"\n")
        lines[4] = b"s1 \xff\xfe s2"
        with gzip.open(raw / "test_2016_flickr.de.gz", "wb") as f:
            f.write(b"\n".join(lines))


@pytest.mark.parametrize("kind,message", [
    ("missing", "missing file: val.en.gz"),
    ("unequal", "unequal line counts: .*train.de.gz has 300 lines, .*train.en.gz has 301"),
    ("empty", "empty file: .*val.de.gz"),
    ("undecodable", "test_2016_flickr.de.gz, line 5: not valid UTF-8"),
])
def test_prepare_refuses_bad_input_and_leaves_nothing_behind(tmp_path, kind, message):
    import re
    write_multi30k(tmp_path / "raw")
    corrupt(tmp_path / "raw", kind)
    result = script("prepare-multi30k.sh", "--raw-dir", tmp_path / "raw", "--dest", tmp_path / "data", check=False)
    assert result.returncode == 2
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "data").exists()
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert not leftovers and not (tmp_path / "data.work" / "text").exists()


def test_usage_errors_name_the_fix(tmp_path):
    assert script("train.sh", check=False).returncode == 2
    result = script("train.sh", tmp_path / "missing.yaml", check=False)
    assert result.returncode == 2 and "no such config file" in result.stderr
    (tmp_path / "c.yaml").write_text(f"dataset: x\ndata: {tmp_path}/nothing\ntrain: {{arch: a}}\nevaluate: {{}}\n")
    result = script("train.sh", tmp_path / "c.yaml", check=False)
    assert result.returncode == 2 and "prepare it first" in result.stderr


def test_iwslt14_layout_is_read_like_fairseqs_recipe(tmp_path):
    """train.tags (XML meta lines dropped), every 23rd pair to validation, test = dev2010 + tst2010-2012."""
    from floater_fairseq.cli.prepare import extract_text
    raw = tmp_path / "de-en"
    raw.mkdir()
    for lang in ("de", "en"):
        lines = ["<url>http://x</url>", "<talkid>1</talkid>"] + [f"{lang} sentence {i}" for i in range(46)]
        (raw / f"train.tags.de-en.{lang}").write_text("\n".join(lines) + "\n")
        for name in ("TED.dev2010", "TED.tst2010", "TED.tst2011", "TED.tst2012"):
            segs = "\n".join(f'<seg id="{i}"> {lang} {name} &amp; {i} </seg>' for i in range(2))
            (raw / f"IWSLT14.{name}.de-en.{lang}.xml").write_text(f"<mteval>\n<doc>\n{segs}\n</doc>\n</mteval>\n")
    splits = extract_text("iwslt14", str(tmp_path), "de", "en")
    assert len(splits["train"][0]) == 44 and splits["valid"][0] == ["de sentence 0", "de sentence 23"]
    assert splits["test"][1][:2] == ["en TED.dev2010 & 0", "en TED.dev2010 & 1"] and len(splits["test"][0]) == 8


def test_wmt14_layout_reads_training_corpora_and_sgm_test(tmp_path):
    from floater_fairseq.cli.prepare import extract_text
    for name in ("europarl-v7.de-en", "commoncrawl.de-en", "news-commentary-v12.de-en"):
        for lang in ("de", "en"):
            (tmp_path / f"{name}.{lang}").write_text(f"{name} {lang} a\n\n{name} {lang} b\n")
    for lang in ("de", "en"):
        (tmp_path / f"newstest2013.{lang}").write_text(f"dev {lang}\n")
    (tmp_path / "test-full").mkdir()
    (tmp_path / "test-full" / "newstest2014-deen-src.en.sgm").write_text('<srcset>\n<seg id="1">Hello &quot;world&quot;</seg>\n</srcset>\n')
    (tmp_path / "test-full" / "newstest2014-deen-ref.de.sgm").write_text('<refset>\n<seg id="1">Hallo Welt</seg>\n</refset>\n')
    splits = extract_text("wmt14-en-de", str(tmp_path), "en", "de")
    assert len(splits["train"][0]) == 6  # the empty pair of each corpus is dropped from training only
    assert splits["test"] == (['Hello "world"'], ["Hallo Welt"]) and splits["valid"] == (["dev en"], ["dev de"])


def test_offline_download_failure_names_the_fix(tmp_path, monkeypatch):
    import urllib.request
    from floater_fairseq.cli import prepare

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(prepare.PrepareError, match="without a network, download the files elsewhere and pass --raw-dir"):
        prepare.prepare("multi30k", str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()
