"""Let fairseq 0.12 checkpoints load under torch's safe loading (weights_only=True, torch >= 2.6).

fairseq 0.12 pickles an argparse.Namespace (and, with some options, a few other plain types) in
every checkpoint, so every stock tool fails on torch >= 2.6. We allow-list exactly those types;
safe loading stays on (never TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD).
"""
import argparse
import collections

import torch

SAFE_CHECKPOINT_TYPES = [argparse.Namespace, collections.defaultdict, collections.OrderedDict]


def allow_fairseq_checkpoint_types():
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 loads everything anyway
        add(SAFE_CHECKPOINT_TYPES)


allow_fairseq_checkpoint_types()
