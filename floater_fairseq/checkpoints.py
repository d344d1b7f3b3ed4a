"""Checkpoint files: averaging on fairseq's own checkpoint_utils (no network, no copied script),
and a save that never leaves a truncated file.

``average`` follows fairseq's scripts/average_checkpoints.py: the last N epoch checkpoints
(``checkpointE.pt``) or update checkpoints (``checkpoint_E_U.pt``), parameters averaged
element-wise, everything else taken from the first checkpoint of the list (the newest).
"""
import os
import re
from typing import Dict, List, Optional

import torch
from omegaconf import OmegaConf

from fairseq import checkpoint_utils

from .files import atomic_output

EPOCH_CHECKPOINT = re.compile(r"checkpoint(\d+)\.pt$")
UPDATE_CHECKPOINT = re.compile(r"checkpoint_\d+_(\d+)\.pt$")


class CheckpointError(ValueError):
    """Bad averaging input; nothing was written."""


def last_checkpoints(directory: str, count: int, by_updates: bool = False,
                     upper_bound: Optional[int] = None) -> List[str]:
    """The ``count`` newest epoch (or update) checkpoints in ``directory``, newest first."""
    pattern = UPDATE_CHECKPOINT if by_updates else EPOCH_CHECKPOINT
    found = []
    for name in os.listdir(directory):
        match = pattern.fullmatch(name)
        if match and (upper_bound is None or int(match.group(1)) <= upper_bound):
            found.append((int(match.group(1)), os.path.join(directory, name)))
    kind = "update (checkpoint_E_U.pt)" if by_updates else "epoch (checkpointE.pt)"
    if len(found) < count:
        raise CheckpointError(f"{directory} has {len(found)} {kind} checkpoints, {count} asked for "
                              f"(keep them with --keep-last-epochs / --keep-interval-updates when training)")
    return [path for _, path in sorted(found, reverse=True)[:count]]


def average_parameters(states: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Element-wise mean, accumulated in float64 and returned in each parameter's own dtype."""
    keys = list(states[0])
    for index, state in enumerate(states[1:], start=1):
        if list(state) != keys:
            missing = sorted(set(keys) ^ set(state))
            raise CheckpointError(f"checkpoint {index} has other parameters than the first: {missing[:5]}")
    averaged = {}
    for key in keys:
        total = torch.zeros_like(states[0][key], dtype=torch.float64)
        for state in states:
            total += state[key].to(torch.float64)
        averaged[key] = (total / len(states)).to(states[0][key].dtype)
    return averaged


def plain_config(state: dict) -> dict:
    """``load_checkpoint_to_cpu`` turns cfg into an omegaconf DictConfig, whose pickled types safe
    loading refuses: store it back as plain containers."""
    if OmegaConf.is_config(state.get("cfg")):
        state = dict(state, cfg=OmegaConf.to_container(state["cfg"], resolve=True, enum_to_str=True))
    return state


def average(paths: List[str]) -> dict:
    if not paths:
        raise CheckpointError("no checkpoints to average")
    states = [checkpoint_utils.load_checkpoint_to_cpu(path) for path in paths]
    averaged = dict(states[0], model=average_parameters([s["model"] for s in states]))
    return plain_config(averaged)


def save(state: dict, path: str):
    with atomic_output(path) as tmp:
        checkpoint_utils.torch_persistent_save(state, tmp)
