"""Load a trained floater_transformer in Python through fairseq's hub interface.

    from floater_fairseq.hub import from_pretrained
    model = from_pretrained("checkpoints/multi30k-de-en/floater-all", "checkpoint_last.pt",
                            "data-bin/multi30k_de_en", bpe="sentencepiece",
                            sentencepiece_model="data-bin/multi30k_de_en/spm.model")
    model.translate("Ein Hund rennt durch den Schnee .", beam=5)

fairseq's own ``TransformerModel.from_pretrained`` works too, but only with
``user_dir=".../floater_fairseq"``: without it torch's safe loader refuses the checkpoint's
pickled argparse.Namespace before fairseq sees the model (README quotes the error). This loader
imports the plugin first and turns the usual mistakes into messages that name the file and the
fix. It reads the checkpoint's architecture memory-mapped (no full load) before fairseq loads it.
"""
import os

import torch

from fairseq.models import ARCH_MODEL_REGISTRY

from . import USER_DIR
from .models.floater_transformer import FloaterTransformerModel


class HubLoadError(ValueError):
    pass


def _checkpoint_arch(path: str) -> str:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    cfg = state.get("cfg") or {}
    model = cfg.get("model") if isinstance(cfg, dict) else None
    model = model if model is not None else state.get("args")
    arch = getattr(model, "arch", None) or (model.get("arch") if isinstance(model, dict) else None)
    if arch is None:
        raise HubLoadError(f"{path} has no model configuration: it is not a fairseq checkpoint")
    return arch


def from_pretrained(model_name_or_path: str, checkpoint_file: str = "checkpoint_best.pt",
                    data_name_or_path: str = ".", **kwargs):
    """fairseq's GeneratorHubInterface for a floater_transformer checkpoint (kwargs as fairseq's:
    bpe, sentencepiece_model, beam, ...)."""
    path = os.path.join(model_name_or_path, checkpoint_file)
    if not os.path.isfile(path):
        found = sorted(f for f in os.listdir(model_name_or_path) if f.endswith(".pt")) \
            if os.path.isdir(model_name_or_path) else []
        raise HubLoadError(f"no checkpoint {path}" + (f"; that directory has {', '.join(found)}" if found else ""))
    data = data_name_or_path if os.path.isabs(data_name_or_path) else os.path.join(model_name_or_path, data_name_or_path)
    if not os.path.isdir(data) and not os.path.isdir(data_name_or_path):
        raise HubLoadError(f"no data directory {data_name_or_path}: pass the fairseq-preprocess output "
                           "(with dict.*.txt) as data_name_or_path")
    arch = _checkpoint_arch(path)
    if arch not in ARCH_MODEL_REGISTRY:
        raise HubLoadError(f"{path} is a {arch!r} checkpoint, which neither fairseq nor floater_fairseq "
                           "registers: load it with the plugin that defines it (user_dir=...)")
    kwargs.setdefault("user_dir", USER_DIR)
    return FloaterTransformerModel.from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path, **kwargs)
