"""Everything this plugin changes in fairseq and torch, in one place. ``install()`` is called once,
by ``floater_fairseq/__init__.py``; each shim says which version needs it and why, and
tests/test_compat.py has a test per shim that fails without it.
"""
import argparse
import collections
import os

import numpy
import torch
from fairseq.file_io import PathManager

from .files import copy_file


# 1. torch >= 2.6 loads checkpoints with weights_only=True. fairseq 0.12 pickles an
#    argparse.Namespace (cfg.model of every checkpoint), collections containers and, with
#    --eval-bleu, numpy arrays of BLEU n-gram counts in its saved meters; without these names
#    every stock tool (fairseq-generate, -validate, --restore-file) refuses the checkpoint.
#    Safe loading stays on: numeric numpy arrays rebuild from these names, object arrays are
#    still refused.
_NUMPY_MULTIARRAY = getattr(numpy, "_core", None) or numpy.core
SAFE_CHECKPOINT_TYPES = [
    argparse.Namespace, collections.defaultdict, collections.OrderedDict,
    _NUMPY_MULTIARRAY.multiarray._reconstruct, numpy.ndarray, numpy.dtype,
    *sorted({type(numpy.dtype(name)) for name in ("int64", "int32", "float64", "float32")}, key=str),
]


def allow_fairseq_checkpoint_types():
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no allow-list (and loads everything)
        add(SAFE_CHECKPOINT_TYPES)


# 2. fairseq 0.12 writes a checkpoint atomically (torch_persistent_save: .tmp + rename) but then
#    copies it onto checkpoint_last.pt / checkpoint_best.pt with PathManager.copy, i.e.
#    shutil.copyfile *in place*: a kill during that copy (OOM killer, pre-empted job) leaves a
#    truncated checkpoint_last.pt that the restarted job cannot load. fairseq has no hook for it;
#    for local paths the copy becomes temp file + fsync + rename (remote ioPath paths unchanged).
_fairseq_copy = PathManager.copy


def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
    if PathManager.path_requires_pathmanager(src_path) or PathManager.path_requires_pathmanager(dst_path):
        return _fairseq_copy(src_path, dst_path, overwrite=overwrite)
    if os.path.exists(dst_path) and not overwrite:
        raise FileExistsError(f"{dst_path} exists (copy without overwrite)")
    copy_file(src_path, dst_path)
    return True


def make_checkpoint_copies_atomic():
    PathManager.copy = staticmethod(atomic_copy)


def install():
    allow_fairseq_checkpoint_types()
    make_checkpoint_copies_atomic()
