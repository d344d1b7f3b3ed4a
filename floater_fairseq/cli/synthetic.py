"""A seeded synthetic translation task whose output order depends on positions.

Source: random words ``s<k>``. Target: each word mapped to ``t<k>`` (a vocabulary mapping) and
the sentence reversed, so a model must know where every token is to translate it. Used by the
tests and by the demo (train on short sentences, test on long ones).

    python -m floater_fairseq.cli.synthetic OUT_DIR --train 2000 --min-len 3 --max-len 10
"""
import argparse
import os
import random
from typing import List, Tuple

from ..files import write_text


def make_pairs(n: int, min_len: int, max_len: int, vocab: int, seed: int) -> List[Tuple[str, str]]:
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = [rng.randrange(vocab) for _ in range(rng.randint(min_len, max_len))]
        source = " ".join(f"s{w}" for w in words)
        target = " ".join(f"t{w}" for w in reversed(words))
        pairs.append((source, target))
    return pairs


def write_split(out_dir: str, split: str, pairs, src: str = "src", tgt: str = "tgt"):
    for lang, column in ((src, 0), (tgt, 1)):
        write_text(os.path.join(out_dir, f"{split}.{lang}"), "".join(pair[column] + "\n" for pair in pairs))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--valid", type=int, default=200)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--min-len", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=10)
    parser.add_argument("--test-max-len", type=int, default=None, help="default: --max-len")
    parser.add_argument("--vocab", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    write_split(args.out_dir, "train", make_pairs(args.train, args.min_len, args.max_len, args.vocab, args.seed))
    write_split(args.out_dir, "valid", make_pairs(args.valid, args.min_len, args.max_len, args.vocab, args.seed + 1))
    test_max = args.test_max_len or args.max_len
    write_split(args.out_dir, "test", make_pairs(args.test, args.min_len, test_max, args.vocab, args.seed + 2))


if __name__ == "__main__":
    main()
