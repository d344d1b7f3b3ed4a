"""memory_language_modeling: language modelling in truncated-BPTT order, for models with memory.

The token stream of a split (fairseq-preprocess --only-source output) is cut into --batch-size
contiguous streams (per data-parallel rank); batch i holds segment i of every stream
([streams, --tokens-per-sample]), in order and never shuffled, so row r of consecutive batches
continues the same text and a model's memory carries over between batches (segments that would
not fill every stream, at most streams x ranks - 1 of them, are dropped). The first batch of
every pass (each training epoch, each validation split) resets the model's memory.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from omegaconf import II

from fairseq import utils
from fairseq.data import Dictionary, TokenBlockDataset, data_utils, iterators
from fairseq.dataclass import FairseqDataclass
from fairseq.distributed import utils as distributed_utils
from fairseq.tasks import FairseqTask, register_task

logger = logging.getLogger(__name__)


@dataclass
class MemoryLanguageModelingConfig(FairseqDataclass):
    data: str = field(default="???", metadata={"help": "fairseq-preprocess --only-source output (dict.txt)"})
    tokens_per_sample: int = field(default=128, metadata={"help": "segment length"})
    batch_size: Optional[int] = II("dataset.batch_size")


class StreamSegments(torch.utils.data.Dataset):
    """Item i: (i, [segment i of every stream of this rank])."""

    def __init__(self, blocks, streams: int, rank: int, world_size: int):
        total = streams * world_size
        if len(blocks) < total:
            raise ValueError(f"{len(blocks)} segments cannot fill {total} streams: lower --batch-size "
                             "or --tokens-per-sample")
        per_stream = len(blocks) // total
        order = torch.arange(per_stream * total).view(total, per_stream)  # stream s: consecutive blocks
        self.blocks, self.indices = blocks, order[rank * streams:(rank + 1) * streams]

    def __len__(self):
        return self.indices.size(1)

    def __getitem__(self, i):
        return i, [self.blocks[int(index)] for index in self.indices[:, i]]


@register_task("memory_language_modeling", dataclass=MemoryLanguageModelingConfig)
class MemoryLanguageModelingTask(FairseqTask):
    def __init__(self, cfg, dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.tokens_per_sample = cfg.tokens_per_sample

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        if not cfg.batch_size:
            raise ValueError("memory_language_modeling needs --batch-size (the number of streams)")
        path = os.path.join(utils.split_paths(cfg.data)[0], "dict.txt")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no {path}: pass the fairseq-preprocess --only-source output directory")
        return cls(cfg, Dictionary.load(path))

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        path = os.path.join(utils.split_paths(self.cfg.data)[0], split)
        data = data_utils.load_indexed_dataset(path, self.dictionary, combine=combine)
        if data is None:
            raise FileNotFoundError(f"no {split} split in {self.cfg.data} ({path}.bin)")
        blocks = TokenBlockDataset(data, data.sizes, block_size=self.cfg.tokens_per_sample, pad=None, eos=None,
                                   break_mode="none")
        rank, world = 0, 1
        if torch.distributed.is_initialized():
            rank, world = distributed_utils.get_data_parallel_rank(), distributed_utils.get_data_parallel_world_size()
        self.datasets[split] = StreamSegments(blocks, self.cfg.batch_size, rank, world)

    def dataset(self, split):
        if split not in self.datasets:
            raise KeyError(f"split {split!r} is not loaded (load_dataset first)")
        return self.datasets[split]  # a plain Dataset of ready batches, not a FairseqDataset

    def get_batch_iterator(self, dataset, num_workers=0, epoch=1, data_buffer_size=0, skip_remainder_batch=False,
                           **kwargs):
        # every item is already a whole batch; order is the point, so no shuffling and no sharding
        return iterators.EpochBatchIterator(
            dataset=dataset, collate_fn=self._collate, batch_sampler=[[i] for i in range(len(dataset))],
            num_workers=num_workers, epoch=epoch, buffer_size=data_buffer_size, disable_shuffling=True,
            skip_remainder_batch=skip_remainder_batch)

    def _collate(self, items):
        index, segments = items[0]
        tokens = data_utils.collate_tokens(segments, pad_idx=self.dictionary.pad())
        target = torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=self.dictionary.pad())
        return {"id": torch.full((tokens.size(0),), index), "net_input": {"src_tokens": tokens},
                "target": target, "nsentences": tokens.size(0), "ntokens": int(target.ne(self.dictionary.pad()).sum())}

    @staticmethod
    def _reset_at_start(sample, model):
        if sample and int(sample["id"][0]) == 0 and hasattr(model, "reset_memory"):
            model.reset_memory()

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        self._reset_at_start(sample, model)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def valid_step(self, sample, model, criterion):
        self._reset_at_start(sample, model)
        return super().valid_step(sample, model, criterion)

    def eval_lm_dataloader(self, dataset, max_tokens=None, batch_size=None, max_positions=None, num_shards=1,
                           shard_id=0, num_workers=1, data_buffer_size=10, context_window=0):
        if context_window > 0:
            raise ValueError("memory_language_modeling keeps context in the model's memory: drop --context-window "
                             "and set the memory lengths (--model-overrides \"{'lrm_len': N}\")")
        return self.get_batch_iterator(dataset, num_workers=num_workers,
                                       data_buffer_size=data_buffer_size).next_epoch_itr(shuffle=False)

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary
