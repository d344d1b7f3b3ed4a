"""Speed of floater_transformer relative to fairseq's transformer at the same size.

Times, in one process and interleaved (A B A B ...), on the same batches:
  * a training step: forward + backward + Adam step on a ~4k-target-token batch;
  * beam-5 generation of a batch of sentences (the ODE solution is cached at inference).
Prints the medians and the ratios floater / vanilla for each solver setting.

    python -m benchmarks.bench_speed --sizes small --settings paper,step-dt
"""
import argparse
import statistics
import time
import types

import torch

from fairseq import options
from fairseq.data import Dictionary
from fairseq.models import ARCH_MODEL_REGISTRY
from fairseq.sequence_generator import SequenceGenerator

import floater_fairseq  # noqa: F401  (registers floater_transformer)

SIZES = {
    # name: (arch suffix, extra flags)
    "small": ("transformer", ["--encoder-layers", "3", "--decoder-layers", "3", "--encoder-embed-dim", "256",
                              "--decoder-embed-dim", "256", "--encoder-ffn-embed-dim", "1024",
                              "--decoder-ffn-embed-dim", "1024", "--encoder-attention-heads", "4",
                              "--decoder-attention-heads", "4"]),
    "iwslt": ("transformer_iwslt_de_en", []),
}
SETTINGS = {
    "paper": ["--floater-method", "rk4"],  # step dt/5 (the default)
    "step-dt": ["--floater-method", "rk4", "--floater-step-size", "0.1"],
    "midpoint-dt": ["--floater-method", "midpoint", "--floater-step-size", "0.1"],
    "parallel": ["--floater-method", "parallel"],  # grid DT/5
    "parallel-dt/10": ["--floater-method", "parallel", "--floater-step-size", "0.01"],
    "input": ["--pos-blocks", "input"],
}


def build(arch, flags, dictionary, seed=0):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, ["x", "--task", "translation", "--arch", arch, "--dropout", "0.1", *flags])
    task = types.SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    torch.manual_seed(seed)
    return ARCH_MODEL_REGISTRY[arch].build_model(args, task)


def make_batches(dictionary, tokens_per_batch, mean_len, count, seed):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        length = mean_len + int(torch.randint(-3, 4, (1,), generator=g))
        bsz = max(1, tokens_per_batch // length)
        src_lengths = (length - torch.randint(0, 4, (bsz,), generator=g)).clamp(min=2)
        src = torch.full((bsz, length), dictionary.pad())
        for row, n in enumerate(src_lengths.tolist()):  # left-padded, like fairseq's source
            src[row, length - n:] = torch.randint(dictionary.nspecial, len(dictionary), (n,), generator=g)
        tgt = torch.randint(dictionary.nspecial, len(dictionary), (bsz, length), generator=g)
        prev = torch.cat([tgt.new_full((bsz, 1), dictionary.eos()), tgt[:, :-1]], dim=1)
        batches.append((src, src_lengths, prev, tgt))
    return batches


def train_step(model, optimizer, batch):
    src, src_lengths, prev, tgt = batch
    optimizer.zero_grad(set_to_none=True)
    logits, _ = model(src, src_lengths, prev)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1))
    loss.backward()
    optimizer.step()


def generate(model, dictionary, batch):
    src, src_lengths, _, _ = batch
    generator = SequenceGenerator([model], dictionary, beam_size=5, max_len_a=1.2, max_len_b=10)
    with torch.no_grad():
        generator.generate([model], {"net_input": {"src_tokens": src, "src_lengths": src_lengths}})


# shape and view ops launch no kernel; everything else that is a leaf aten op does
SHAPE_OPS = {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided", "aten::expand", "aten::t",
             "aten::transpose", "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::slice", "aten::select",
             "aten::narrow", "aten::detach", "aten::alias", "aten::_unsafe_view", "aten::unbind", "aten::split",
             "aten::chunk", "aten::empty", "aten::empty_strided", "aten::resolve_conj", "aten::resolve_neg",
             "aten::lift_fresh", "aten::contiguous", "aten::size", "aten::stride", "aten::numpy_T", "aten::view_as",
             "aten::expand_as", "aten::result_type", "aten::empty_like", "aten::flatten", "aten::is_nonzero",
             "aten::item", "aten::_local_scalar_dense", "aten::to", "aten::_to_copy"}


def leaf_op_count(model, batch) -> int:
    """Kernel-launching aten ops of one forward + backward: profiler events named aten::* with no
    aten::* children, shape/view ops excluded (a device-independent proxy for launches)."""
    from torch.profiler import ProfilerActivity, profile

    src, src_lengths, prev, tgt = batch
    model.train()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        logits, _ = model(src, src_lengths, prev)
        torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1)).backward()
    return sum(1 for event in prof.events() if event.name.startswith("aten::") and event.name not in SHAPE_OPS
               and not any(child.name.startswith("aten::") for child in event.cpu_children))


def op_counts(size, settings, lengths, dictionary, sentences=8):
    """Extra leaf ops of FLOATER over the vanilla step, per setting and sentence length."""
    arch_suffix, flags = SIZES[size]
    vanilla = build(arch_suffix, flags, dictionary)
    floaters = {setting: build("floater_" + arch_suffix, flags + SETTINGS[setting], dictionary) for setting in settings}
    rows = []
    for length in lengths:
        batch = make_batches(dictionary, sentences * length, length, 1, seed=3)[0]
        base = leaf_op_count(vanilla, batch)
        rows.append((length, base, {s: leaf_op_count(m, batch) - base for s, m in floaters.items()}))
    return rows


def timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def compare(size, setting, args, dictionary):
    arch_suffix, flags = SIZES[size]
    vanilla = build(arch_suffix, flags, dictionary)
    floater = build("floater_" + arch_suffix, flags + SETTINGS[setting], dictionary)
    models = {"vanilla": vanilla, "floater": floater}
    optimizers = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    batches = make_batches(dictionary, args.max_tokens, args.mean_len, args.train_reps + 1, seed=1)
    times = {("train", k): [] for k in models} | {("generate", k): [] for k in models}
    for i, batch in enumerate(batches):
        for name, model in models.items():
            model.train()
            t = timed(train_step, model, optimizers[name], batch)
            if i > 0:  # the first round is warm-up
                times[("train", name)].append(t)
    gen_batches = make_batches(dictionary, args.gen_tokens, args.mean_len, args.gen_reps + 1, seed=2)
    for i, batch in enumerate(gen_batches):
        for name, model in models.items():
            model.eval()
            t = timed(generate, model, dictionary, batch)
            if i > 0:
                times[("generate", name)].append(t)
    row = {}
    for phase in ("train", "generate"):
        v = statistics.median(times[(phase, "vanilla")])
        f = statistics.median(times[(phase, "floater")])
        row[phase] = (v, f, f / v)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="small,iwslt")
    parser.add_argument("--settings", default="paper,step-dt")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--gen-tokens", type=int, default=600, help="source tokens per generation batch")
    parser.add_argument("--mean-len", type=int, default=27, help="mean sentence length in tokens")
    parser.add_argument("--train-reps", type=int, default=5)
    parser.add_argument("--gen-reps", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ops", help="count extra leaf aten ops per training step instead of timing, at these "
                                      "comma-separated lengths (8 sentences each), e.g. 50,100,200,400,1000")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dictionary = Dictionary()
    for i in range(args.vocab):
        dictionary.add_symbol(f"w{i}")
    if args.ops:
        settings = args.settings.split(",")
        for size in args.sizes.split(","):
            print(f"# {size}: leaf aten ops of one training step (forward + backward), 8 sentences; vanilla, "
                  f"and FLOATER's extra ops per setting")
            print(f"{'length':>6} {'vanilla':>8} " + " ".join(f"{s:>12}" for s in settings))
            for length, base, extra in op_counts(size, settings, [int(n) for n in args.ops.split(",")], dictionary):
                print(f"{length:6d} {base:8d} " + " ".join(f"{extra[s]:12d}" for s in settings), flush=True)
        return
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {args.max_tokens}-token training "
          f"batches (mean length {args.mean_len}), beam 5 on {args.gen_tokens}-token batches; medians of "
          f"{args.train_reps} train / {args.gen_reps} generate rounds, interleaved")
    print(f"{'size':8} {'setting':12} {'train vanilla s':>16} {'train floater s':>16} {'ratio':>6} "
          f"{'gen vanilla s':>14} {'gen floater s':>14} {'ratio':>6}")
    for size in args.sizes.split(","):
        for setting in args.settings.split(","):
            row = compare(size, setting, args, dictionary)
            (tv, tf, tr), (gv, gf, gr) = row["train"], row["generate"]
            print(f"{size:8} {setting:12} {tv:16.3f} {tf:16.3f} {tr:6.3f} {gv:14.3f} {gf:14.3f} {gr:6.3f}", flush=True)


if __name__ == "__main__":
    main()
