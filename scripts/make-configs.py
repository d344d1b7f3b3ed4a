#!/usr/bin/env python3
"""Write configs/DATASET/ROW.yaml: every Table-2 row (FLOATER / sinusoidal / learned x all blocks /
input only) plus none, shifted-basis (gaussian), rope, alibi and kernelized-rpe attention, for each
dataset and size.

The configs are checked in; tests/test_configs.py fails when they differ from this script's
output, so edit this script and re-run it (python scripts/make-configs.py) rather than the files.
Hyper-parameters: WMT14 follow the paper (App. B.2) and fairseq's scaling-NMT recipe; IWSLT14
follows fairseq's examples/translation recipe; Multi30k is a CPU-sized model (3 layers, 256 dims).
"""
import os

import yaml

from floater_fairseq.options import OPTIONS, default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMON = {
    "task": "translation", "share-all-embeddings": True, "optimizer": "adam", "adam-betas": "(0.9,0.98)",
    "clip-norm": 0.0, "lr-scheduler": "inverse_sqrt", "criterion": "label_smoothed_cross_entropy",
    "label-smoothing": 0.1, "keep-last-epochs": 5, "seed": 1,
}

# Multi30k's CPU-sized recipe (3+3 layers, 256 dims), shared by its full and short-to-long variants
MULTI30K_TRAIN = {"source-lang": "de", "target-lang": "en", "encoder-layers": 3, "decoder-layers": 3,
                  "encoder-embed-dim": 256, "decoder-embed-dim": 256, "encoder-ffn-embed-dim": 512,
                  "decoder-ffn-embed-dim": 512, "encoder-attention-heads": 4, "decoder-attention-heads": 4,
                  "dropout": 0.3, "weight-decay": 0.0001, "lr": 0.001, "warmup-updates": 400, "max-tokens": 2048}

DATASETS = {
    "multi30k-de-en": dict(
        description="Multi30k (Flickr30k) de->en, CPU-sized Transformer (3+3 layers, 256 dims)",
        data="data-bin/multi30k_de_en", arch="floater_transformer",
        train={**MULTI30K_TRAIN, "max-epoch": 20},
        evaluate={"average_last": 5, "beam": 5, "lenpen": 1.0, "compound_split": False}, warm_epochs=5),
    # short-to-long (issue 16): trained on the pairs whose source has <= 12 subwords, tested on all
    # (python -m floater_fairseq.cli.prepare multi30k --raw-dir ... --src de --tgt en
    #  --max-train-source-len 12 --dest data-bin/multi30k_de_en_src12)
    "multi30k-de-en-src12": dict(
        description="Multi30k de->en trained on sources of <= 12 subwords, CPU-sized Transformer (3+3 layers, "
                    "256 dims)",
        data="data-bin/multi30k_de_en_src12", arch="floater_transformer",
        train={**MULTI30K_TRAIN, "max-epoch": 40},
        # test_2016_flickr by source subwords: 429 within the training lengths, 314 / 143 / 114 beyond
        evaluate={"average_last": 5, "beam": 5, "lenpen": 1.0, "compound_split": False,
                  "length_buckets": "1-12,13-16,17-20,21-1000"}, warm_epochs=10),
    "iwslt14-de-en": dict(
        description="IWSLT14 de->en, fairseq's transformer_iwslt_de_en recipe",
        data="data-bin/iwslt14_de_en", arch="floater_transformer_iwslt_de_en",
        train={"source-lang": "de", "target-lang": "en", "dropout": 0.3, "weight-decay": 0.0001,
               "lr": 0.0005, "warmup-updates": 4000, "max-tokens": 4096, "max-epoch": 50},
        evaluate={"average_last": 5, "beam": 5, "lenpen": 1.0, "compound_split": False}, warm_epochs=10),
    "wmt14-en-de-base": dict(
        description="WMT14 en->de, Transformer base (paper Table 2, col. 1); 8 GPUs x 4096 tokens",
        data="data-bin/wmt14_en_de", arch="floater_transformer_wmt_en_de",
        train={"source-lang": "en", "target-lang": "de", "dropout": 0.1, "lr": 0.0007,
               "warmup-updates": 4000, "max-tokens": 4096, "update-freq": 1, "max-epoch": 30, "fp16": True},
        evaluate={"average_last": 5, "beam": 4, "lenpen": 0.6, "compound_split": True}, warm_epochs=10),
    "wmt14-en-de-big": dict(
        description="WMT14 en->de, Transformer big (paper Table 2, col. 3); 8 GPUs x 3584 tokens",
        data="data-bin/wmt14_en_de", arch="floater_transformer_vaswani_wmt_en_de_big",
        train={"source-lang": "en", "target-lang": "de", "dropout": 0.3, "lr": 0.0005,
               "warmup-updates": 4000, "max-tokens": 3584, "update-freq": 2, "max-epoch": 30, "fp16": True},
        evaluate={"average_last": 5, "beam": 4, "lenpen": 0.6, "compound_split": True}, warm_epochs=10),
    "wmt14-en-fr-base": dict(
        description="WMT14 en->fr, Transformer base (paper Table 2, col. 2); 8 GPUs x 4096 tokens",
        data="data-bin/wmt14_en_fr", arch="floater_transformer_wmt_en_de",
        train={"source-lang": "en", "target-lang": "fr", "dropout": 0.1, "lr": 0.0007,
               "warmup-updates": 4000, "max-tokens": 4096, "update-freq": 1, "max-epoch": 30, "fp16": True},
        evaluate={"average_last": 5, "beam": 4, "lenpen": 0.6, "compound_split": False}, warm_epochs=1),
    "wmt14-en-fr-big": dict(
        description="WMT14 en->fr, Transformer big (paper Table 2, col. 4); 8 GPUs x 5120 tokens",
        data="data-bin/wmt14_en_fr", arch="floater_transformer_vaswani_wmt_en_fr_big",
        train={"source-lang": "en", "target-lang": "fr", "dropout": 0.1, "lr": 0.0007,
               "warmup-updates": 4000, "max-tokens": 5120, "update-freq": 2, "max-epoch": 30, "fp16": True},
        evaluate={"average_last": 5, "beam": 4, "lenpen": 0.6, "compound_split": False}, warm_epochs=1),
}

ROWS = {
    # the paper's rows keep the paper's dynamics; the bounded default is a row of its own
    "floater-all": {"pos-encoder": "floater", "pos-blocks": "all", "floater-dynamics": "paper"},
    # the same model trained from random initialisation (no warm start): the paper's protocol vs none
    "floater-all-scratch": {"pos-encoder": "floater", "pos-blocks": "all", "floater-dynamics": "paper"},
    "floater-input": {"pos-encoder": "floater", "pos-blocks": "input", "floater-dynamics": "paper"},
    "floater-all-dissipative": {"pos-encoder": "floater", "pos-blocks": "all", "floater-dynamics": "dissipative"},
    # the same model trained with the parallel solve on the grid DT/5 (its default until 2026-11-26)
    "floater-all-dissipative-dt5": {"pos-encoder": "floater", "pos-blocks": "all", "floater-dynamics": "dissipative",
                                    "floater-method": "parallel", "floater-step-size": 0.02},
    # the same model trained with the parallel solve on its grid DT/10: what the default (auto) runs on
    # accelerators (on a CPU it runs rk4 at DT/2)
    "floater-all-dissipative-parallel": {"pos-encoder": "floater", "pos-blocks": "all",
                                         "floater-dynamics": "dissipative", "floater-method": "parallel",
                                         "floater-step-size": 0.01},
    # the same model trained with the reference solver (rk4 at DT/5)
    "floater-all-dissipative-rk4": {"pos-encoder": "floater", "pos-blocks": "all", "floater-dynamics": "dissipative",
                                    "floater-method": "rk4"},
    # issue 31: the default with its fastest time feature at a period of 8 positions instead of 4, so that
    # auto's rk4 on a CPU steps at DT (half the default's evaluations); a model change, hence a row
    "floater-all-dissipative-period8": {"pos-encoder": "floater", "pos-blocks": "all",
                                        "floater-dynamics": "dissipative", "floater-fastest-period": 8.0},
    "sinusoidal-all": {"pos-encoder": "sinusoidal", "pos-blocks": "all"},
    "sinusoidal-input": {"pos-encoder": "sinusoidal", "pos-blocks": "input"},
    # floater-all's warm start without FLOATER: the same fine-tuning of the sinusoidal run (the
    # paper's protocol trains FLOATER longer than the row it is compared with; this is that control)
    "sinusoidal-input-continued": {"pos-encoder": "sinusoidal", "pos-blocks": "input"},
    "learned-all": {"pos-encoder": "learned", "pos-blocks": "all"},
    "learned-input": {"pos-encoder": "learned", "pos-blocks": "input"},
    "none": {"pos-encoder": "none"},
    "shifted-basis-gaussian": {"pos-encoder": "shifted-basis", "pos-blocks": "input", "basis": "gaussian",
                               "basis-size": default("basis_size"),
                               "basis-max-positions": default("basis_max_positions"),
                               "basis-projection": default("basis_projection")},
    "rope": {"pos-encoder": "rope", "pos-blocks": "all"},
    "alibi": {"pos-encoder": "alibi", "pos-blocks": "all"},
    # issue 30: RoPE's rotation in self-attention with the bounded FLOATER's ODE q/k/v biases at every
    # block (modules/composite.py), without the input sinusoid: on the demo task (2 seeds) dropping it
    # gave 74 vs 56 exact match at 1-12 words and 32.4 vs 23.0 BLEU at 13-24 (docs/results.md)
    "rope+floater": {"pos-encoder": "rope+floater", "pos-blocks": "all", "floater-dynamics": "dissipative",
                     "floater-no-input-sinusoid": True},
    # Luo et al. 2021: kernelized self-attention whose only position signal is its FFT relative bias
    # (sentences under 256 tokens evaluate the same sums directly: faster than the FFT there)
    "kernelized-rpe": {"pos-encoder": "none", "encoder-self-attention": "kernelized-rpe",
                       "decoder-self-attention": "kernelized-rpe", "kernelized-features": default("kernelized_features"),
                       "kernelized-fft-min-length": 256},
}


# every flag a row sets beyond the position encoder's name is one of floater_fairseq.options
for _row, _flags in ROWS.items():
    for _flag in _flags:
        assert _flag.replace("-", "_") in OPTIONS, f"{_row}: {_flag} is not in floater_fairseq.options"


def config(dataset: str, row: str) -> dict:
    spec = DATASETS[dataset]
    train = {"arch": spec["arch"], **ROWS[row], **COMMON, **spec["train"]}
    if row in ("learned-all", "learned-input", "shifted-basis-gaussian"):
        train.update({"max-source-positions": 256, "max-target-positions": 256})
    result = {"description": f"{spec['description']}; position encoder: {row}", "dataset": dataset,
              "data": spec["data"], "train": train, "evaluate": dict(spec["evaluate"])}
    if row in ("floater-all", "sinusoidal-input-continued"):
        # paper App. B.2: train vanilla, migrate (exact warm start), fine-tune at half the peak LR
        # (the control fine-tunes the vanilla checkpoint itself, the same way)
        result["warm_start"] = {"from": "sinusoidal-input", "lr_scale": 0.5, "max_epoch": spec["warm_epochs"]}
    return result


def main():
    for dataset in DATASETS:
        os.makedirs(os.path.join(REPO, "configs", dataset), exist_ok=True)
        for row in ROWS:
            path = os.path.join(REPO, "configs", dataset, f"{row}.yaml")
            with open(path, "w", encoding="utf-8") as f:
                f.write(render(dataset, row))


def render(dataset: str, row: str) -> str:
    header = "# Generated by scripts/make-configs.py -- edit that script, not this file.\n"
    return header + yaml.safe_dump(config(dataset, row), sort_keys=False, width=120)


if __name__ == "__main__":
    main()
