"""Experiment configs (configs/DATASET/ROW.yaml): one file = one reproducible run.

    description: text
    dataset: multi30k-de-en            # name used in results tables
    data: data-bin/multi30k_de_en      # fairseq-preprocess output, relative to the repo root
    train: {flag: value, ...}          # every fairseq-train flag; true = bare flag, false/null = omitted
    evaluate: {average_last: N, beam: B, lenpen: L, compound_split: bool, batch_size: N,
               length_buckets: "1-12,13-16,..." (BLEU per bucket of source length in subwords, too)}
    warm_start: {from: ROW, lr_scale: 0.5, max_epoch: N}   # optional (paper App. B.2)

Read with PyYAML (which fairseq already depends on). ``python -m floater_fairseq.cli.experiment_config
CONFIG train-args`` prints the fairseq-train flags, one per line, for shell scripts.
"""
import argparse
import os
import sys
from typing import Dict, List

import yaml

KEYS = {"description", "dataset", "data", "train", "evaluate", "warm_start"}
REQUIRED = {"dataset", "data", "train", "evaluate"}
EVALUATE_KEYS = {"average_last", "beam", "lenpen", "compound_split", "batch_size", "subset", "length_buckets"}
WARM_START_KEYS = {"from", "lr_scale", "max_epoch"}


class ConfigError(ValueError):
    pass


def _check_keys(section: str, given, allowed, path):
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} in {section}; allowed: {sorted(allowed)}")


def load(path: str) -> Dict:
    if not os.path.isfile(path):
        raise ConfigError(f"no such config file: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            config = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of {sorted(KEYS)}")
    _check_keys("the top level", config, KEYS, path)
    missing = sorted(REQUIRED - set(config))
    if missing:
        raise ConfigError(f"{path}: missing key(s) {missing}")
    _check_keys("evaluate", config["evaluate"], EVALUATE_KEYS, path)
    if config["evaluate"].get("length_buckets") is not None:
        from .length_buckets import parse_buckets
        try:
            parse_buckets(str(config["evaluate"]["length_buckets"]))
        except ValueError as e:
            raise ConfigError(f"{path}: evaluate: length_buckets: {e}") from None
    if config.get("warm_start") is not None:
        _check_keys("warm_start", config["warm_start"], WARM_START_KEYS, path)
    for key in config["train"]:
        if not isinstance(key, str) or key.startswith("-") or "_" in key:
            raise ConfigError(f"{path}: train key {key!r} must be a fairseq flag without dashes, e.g. max-tokens")
    return config


def train_args(config: Dict) -> List[str]:
    """fairseq-train flags of ``config['train']`` (bool true -> bare flag; false/null -> omitted)."""
    args = []
    for key, value in config["train"].items():
        if value is None or value is False:
            continue
        args.append(f"--{key}")
        if value is not True:
            args.append(",".join(map(str, value)) if isinstance(value, list) else str(value))
    return args


def check_train_flags(config: Dict, path: str, extra=()):
    """Parse the train section with fairseq-train's own parser (plugin flags included), so a typo
    stops before anything runs, with the closest real flag."""
    import contextlib
    import difflib
    import io

    from fairseq import options

    from .. import USER_DIR
    parser = options.get_training_parser()
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            options.parse_args_and_arch(parser, [config["data"], "--user-dir", USER_DIR, *train_args(config), *extra])
    except SystemExit:
        message = errors.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
        flags = list(parser._option_string_actions)
        hints = []
        if "unrecognized arguments:" in message:
            for flag in message.split("unrecognized arguments:", 1)[1].split():
                close = difflib.get_close_matches(flag, flags, n=1) if flag.startswith("--") else []
                if close:
                    hints.append(f"{flag[2:]} -> did you mean {close[0][2:]}?")
        raise ConfigError(f"{path}: train: {message}" + (f" ({'; '.join(hints)})" if hints else "")) from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("field", choices=("train-args", "data", "dataset", "evaluate", "warm-start"))
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.field == "train-args":
        print("\n".join(train_args(config)))
    elif args.field in ("evaluate", "warm-start"):
        section = config.get(args.field.replace("-", "_")) or {}
        print("\n".join(f"{k}={v}" for k, v in section.items()))
    else:
        print(config[args.field])
    return 0


if __name__ == "__main__":
    sys.exit(main())
