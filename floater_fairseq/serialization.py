"""Let fairseq 0.12 checkpoints load under torch's safe loading (weights_only=True, torch >= 2.6).

fairseq 0.12 pickles an argparse.Namespace (and, with some options, a few other plain types) in
every checkpoint, so every stock tool fails on torch >= 2.6. We allow-list exactly those types;
safe loading stays on (never TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD).
"""
import argparse
import collections

import numpy
import torch

# numpy: with --eval-bleu, fairseq's meters (saved in extra_state["metrics"]) hold numpy arrays of
# BLEU n-gram counts; numeric arrays rebuild from these names (object arrays stay refused).
_NUMPY_MULTIARRAY = getattr(numpy, "_core", None) or numpy.core
SAFE_CHECKPOINT_TYPES = [
    argparse.Namespace, collections.defaultdict, collections.OrderedDict,
    _NUMPY_MULTIARRAY.multiarray._reconstruct, numpy.ndarray, numpy.dtype,
    *{type(numpy.dtype(name)) for name in ("int64", "int32", "float64", "float32")},
]


def allow_fairseq_checkpoint_types():
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 loads everything anyway
        add(SAFE_CHECKPOINT_TYPES)


allow_fairseq_checkpoint_types()
