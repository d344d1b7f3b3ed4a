"""Cost of floater_transformer relative to fairseq's transformer at the same size, side by side.

For each size and setting (a FLOATER solver, or another encoder of floater_transformer), against the
vanilla model, in one run:
  * train: a training step (forward + backward + Adam) on ~4k-token batches, timed interleaved
    (A B A B ...) on the same batches in one process; the median ratio floater / vanilla;
  * generate: beam-5 generation (the ODE solution is cached at inference), likewise, after one
    untimed pass over the batches;
  * memory: peak resident memory of one training step, each model in a fresh process;
  * extra ops: FLOATER's extra leaf aten ops in one training step on 8 sentences of 100 tokens
    (the kernel launches that dominate on accelerators; ``--ops`` shows them against length).
Absolute times are printed only with ``--absolute`` (they mean little on a shared CPU).
On a GPU (``--device cuda``) times are taken between synchronisations, memory is the CUDA
allocator's peak, and ``--fp16`` trains as ``fairseq-train --fp16`` does (a half-precision
model, fairseq's FP16Optimizer with fp32 master weights and loss scaling).

    python -m benchmarks.bench_speed --sizes small,iwslt --settings default,parallel
    python -m benchmarks.bench_speed --device cuda --fp16 --sizes iwslt,wmt --settings default,rk4-dt/5 --absolute
    python -m benchmarks.bench_speed --ops 50,100,200,400,1000 --sizes iwslt --settings rk4-dt/5,parallel
    python -m benchmarks.bench_speed --generate-ops --sizes small --settings default,rope+floater
"""
import argparse
import multiprocessing
import os
import platform
import statistics
import time
import types

import torch

from fairseq import options
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models import ARCH_MODEL_REGISTRY
from fairseq.optim.fp16_optimizer import FP16Optimizer
from fairseq.sequence_generator import SequenceGenerator

import floater_fairseq  # noqa: F401  (registers floater_transformer)

SIZES = {
    # name: (arch suffix, extra flags)
    "small": ("transformer", ["--encoder-layers", "3", "--decoder-layers", "3", "--encoder-embed-dim", "256",
                              "--decoder-embed-dim", "256", "--encoder-ffn-embed-dim", "1024",
                              "--decoder-ffn-embed-dim", "1024", "--encoder-attention-heads", "4",
                              "--decoder-attention-heads", "4"]),
    "iwslt": ("transformer_iwslt_de_en", []),
    "wmt": ("transformer_wmt_en_de", []),  # Transformer base
}
SETTINGS = {
    "rk4-dt/5": ["--floater-method", "rk4"],  # step DT/5: the paper's setting, the reference solve
    "rk4-dt": ["--floater-method", "rk4", "--floater-step-size", "0.1"],
    "midpoint-dt": ["--floater-method", "midpoint", "--floater-step-size", "0.1"],
    "default": [],  # --floater-method auto: on a CPU rk4 at DT/2, on accelerators "parallel"
    "rk4-dt/2": ["--floater-method", "rk4", "--floater-step-size", "0.05"],
    "parallel": ["--floater-method", "parallel"],  # grid DT/10: what the default runs on accelerators
    "parallel-dt/5": ["--floater-method", "parallel", "--floater-step-size", "0.02"],
    # the default with its fastest time feature at 8 positions: auto's rk4 steps at DT on a CPU (issue 31)
    "period8": ["--floater-fastest-period", "8"],
    "input": ["--pos-blocks", "input"],  # FLOATER at the input only, default solver
    # FLOATER-all with its solve replaced by p(0) at every position: the cost of everything but the solve
    "no-solve": [],
    # the other encoders of README's headline, against the same vanilla model
    "paper": ["--floater-dynamics", "paper"],  # the paper's h, its default solver (rk4 at DT/5)
    "rope": ["--pos-encoder", "rope"],
    "rope+floater": ["--pos-encoder", "rope+floater", "--floater-no-input-sinusoid"],
    "rope+floater-period8": ["--pos-encoder", "rope+floater", "--floater-no-input-sinusoid", "--floater-fastest-period", "8"],
    "sinusoidal-input": ["--pos-encoder", "sinusoidal", "--pos-blocks", "input"],  # vanilla through our hooks
}


def build_floater(arch_suffix, flags, setting, dictionary, placement=None):
    model = build("floater_" + arch_suffix, flags + SETTINGS[setting], dictionary, placement=placement)
    if setting == "no-solve":
        signal = model.position_encoder.part("floater").signal
        signal.solve = lambda n: signal.initial_values.to(signal.ode_dtype).unsqueeze(0).expand(
            n, *signal.initial_values.shape)
    return model


class Placement(types.SimpleNamespace):
    """Where the models run: ``device`` and ``fp16`` (a half model, as fairseq's Trainer makes it)."""

    def model(self, model):
        model = model.to(self.device)
        return model.half() if self.fp16 else model

    def batches(self, batches):
        return [tuple(t.to(self.device) for t in batch) for batch in batches]

    def optimizer(self, model):
        if not self.fp16:
            return torch.optim.Adam(model.parameters(), lr=1e-4)
        parser = options.get_training_parser()
        args = options.parse_args_and_arch(parser, ["x", "--task", "translation", "--arch", "transformer", "--fp16",
                                                    "--optimizer", "adam", "--lr", "1e-4"])
        return FP16Optimizer.build_optimizer(convert_namespace_to_omegaconf(args), list(model.parameters()))

    def synchronize(self):
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()


CPU = Placement(device="cpu", fp16=False)


def build(arch, flags, dictionary, seed=0, placement=None):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, ["x", "--task", "translation", "--arch", arch, "--dropout", "0.1", *flags])
    task = types.SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    torch.manual_seed(seed)
    return (placement or CPU).model(ARCH_MODEL_REGISTRY[arch].build_model(args, task))


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
    optimizer.zero_grad()
    logits, _ = model(src, src_lengths, prev)
    # in float32, as fairseq's criterions normalise half-precision logits
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)).float(), tgt.view(-1))
    if isinstance(optimizer, FP16Optimizer):  # the order of fairseq's Trainer.train_step
        optimizer.backward(loss)
        try:
            optimizer.clip_grad_norm(0.0)
        except OverflowError:  # the loss scaler lowers its scale; the Trainer skips such a step
            return
    else:
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


def step_counts(model, batch):
    """(leaf ops, host synchronisations) of one forward + backward. Leaf ops: kernel-launching aten ops,
    profiler events named aten::* with no aten::* children, shape/view ops excluded (a
    device-independent proxy for launches); synchronisations: aten::_local_scalar_dense calls."""
    from torch.profiler import ProfilerActivity, profile

    src, src_lengths, prev, tgt = batch
    model.train()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        logits, _ = model(src, src_lengths, prev)
        torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1)).backward()
    events = list(prof.events())
    leaves = sum(1 for event in events if event.name.startswith("aten::") and event.name not in SHAPE_OPS
                 and not any(child.name.startswith("aten::") for child in event.cpu_children))
    return leaves, sum(1 for event in events if event.name == "aten::_local_scalar_dense")


def leaf_op_count(model, batch) -> int:
    return step_counts(model, batch)[0]


def generation_op_counts(size, settings, dictionary, gen_tokens, mean_len, placement=CPU):
    """Leaf aten ops and host synchronisations (aten::_local_scalar_dense) of one beam-5 generation,
    vanilla and per setting: what each position encoder adds per generate call."""
    from torch.profiler import ProfilerActivity, profile

    arch_suffix, flags = SIZES[size]
    batch = placement.batches(make_batches(dictionary, gen_tokens, mean_len, 1, seed=2))[0]
    models = {"vanilla": build(arch_suffix, flags, dictionary, placement=placement)}
    models.update({s: build_floater(arch_suffix, flags, s, dictionary, placement) for s in settings})
    counts = {}
    for name, model in models.items():
        model.eval()
        generate(model, dictionary, batch)  # warm: FLOATER's cached solution exists, as after a first batch
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            generate(model, dictionary, batch)
        events = list(prof.events())
        leaves = sum(1 for e in events if e.name.startswith("aten::") and e.name not in SHAPE_OPS
                     and not any(c.name.startswith("aten::") for c in e.cpu_children))
        counts[name] = (leaves, sum(1 for e in events if e.name == "aten::_local_scalar_dense"))
    return counts


def training_sync_counts(size, settings, dictionary, length=40, sentences=4, placement=CPU):
    """Host synchronisations of one training step (forward + backward), vanilla and per setting."""
    arch_suffix, flags = SIZES[size]
    batch = placement.batches(make_batches(dictionary, sentences * length, length, 1, seed=3))[0]
    models = {"vanilla": build(arch_suffix, flags, dictionary, placement=placement)}
    models.update({s: build_floater(arch_suffix, flags, s, dictionary, placement) for s in settings})
    return {name: step_counts(model, batch)[1] for name, model in models.items()}


def op_counts(size, settings, lengths, dictionary, sentences=8, placement=CPU):
    """Extra leaf ops of FLOATER over the vanilla step, per setting and sentence length. (FLOATER's extra
    ops barely depend on the number of sentences, the vanilla step's do: 1,312 vs 1,344 extra and 705
    vs 1,082 vanilla for 2 vs 8 sentences of 100 tokens; use fewer at long lengths to save memory.)"""
    arch_suffix, flags = SIZES[size]
    vanilla = build(arch_suffix, flags, dictionary, placement=placement)
    floaters = {setting: build_floater(arch_suffix, flags, setting, dictionary, placement) for setting in settings}
    rows = []
    for length in lengths:
        batch = placement.batches(make_batches(dictionary, sentences * length, length, 1, seed=3))[0]
        base = leaf_op_count(vanilla, batch)
        rows.append((length, base, {s: leaf_op_count(m, batch) - base for s, m in floaters.items()}))
    return rows


def timed(placement, fn, *args):
    placement.synchronize()  # device work is asynchronous: time between synchronisations
    start = time.perf_counter()
    fn(*args)
    placement.synchronize()
    return time.perf_counter() - start


def compare_times(size, setting, args, dictionary, placement=CPU):
    arch_suffix, flags = SIZES[size]
    models = {"vanilla": build(arch_suffix, flags, dictionary, placement=placement),
              "floater": build_floater(arch_suffix, flags, setting, dictionary, placement)}
    optimizers = {k: placement.optimizer(m) for k, m in models.items()}
    times = {(phase, k): [] for phase in ("train", "generate") for k in models}
    # On a CPU the first round is the warm-up. On a GPU every batch shape is a first time (cuBLAS's
    # kernel choice, the caching allocator's growth) for whichever model sees it first, so every
    # batch goes through both models once before the timed rounds.
    warm_all = torch.device(placement.device).type == "cuda"
    batches = placement.batches(make_batches(dictionary, args.max_tokens, args.mean_len, args.train_reps + 1, seed=1))
    for i, batch in enumerate(batches + batches if warm_all else batches):
        for name, model in models.items():
            model.train()
            t = timed(placement, train_step, model, optimizers[name], batch)
            if i >= (len(batches) if warm_all else 1):
                times[("train", name)].append(t)
    # Generation warms up on every batch on any device: FLOATER's cached table then covers every
    # timed decoding step, as it soon covers a test set's longest output; otherwise a timed batch
    # that decodes further than the warm-up did pays for growing the table.
    batches = placement.batches(make_batches(dictionary, args.gen_tokens, args.mean_len, args.gen_reps, seed=2))
    for i, batch in enumerate(batches + batches):
        for name, model in models.items():
            model.eval()
            t = timed(placement, generate, model, dictionary, batch)
            if i >= len(batches):
                times[("generate", name)].append(t)
    return {phase: (statistics.median(times[(phase, "vanilla")]), statistics.median(times[(phase, "floater")]))
            for phase in ("train", "generate")}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _peak_step_memory(size, setting, max_tokens, mean_len, vocab, threads):
    """Peak resident memory of one training step above the memory before it (bytes); runs in a
    fresh process, so no other model's freed memory is reused."""
    torch.set_num_threads(threads)
    dictionary = make_dictionary(vocab)
    arch_suffix, flags = SIZES[size]
    model = build(arch_suffix, flags, dictionary) if setting is None else \
        build_floater(arch_suffix, flags, setting, dictionary)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = make_batches(dictionary, max_tokens, mean_len, 1, seed=1)[0]
    # the optimizer state exists before the measured step, made by a step on zero gradients (Adam
    # then moves nothing): a warm-up *training* step would leave the small blocks of its activations
    # in glibc's heap, which the measured step reuses without raising the resident size (hiding,
    # e.g., a sequential solve's ~10^4 small saved tensors)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current resident size
    before = _status_kib("VmRSS")
    train_step(model, optimizer, batch)
    return (_status_kib("VmHWM") - before) * 1024


def _peak_cuda_step_memory(size, setting, args, dictionary, placement):
    """Peak CUDA allocator memory of one training step above the memory before it (bytes)."""
    arch_suffix, flags = SIZES[size]
    model = build(arch_suffix, flags, dictionary, placement=placement) if setting is None else \
        build_floater(arch_suffix, flags, setting, dictionary, placement)
    optimizer = placement.optimizer(model)
    batches = placement.batches(make_batches(dictionary, args.max_tokens, args.mean_len, 2, seed=1))
    train_step(model, optimizer, batches[0])  # optimizer state exists before the measured step
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    train_step(model, optimizer, batches[1])
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def peak_memory(size, setting, args, dictionary=None, placement=CPU):
    if torch.device(placement.device).type == "cuda":
        return _peak_cuda_step_memory(size, setting, args, dictionary, placement)
    # glibc then maps every block of >= 64 KiB on its own and unmaps it on free, so resident memory
    # follows the live tensors instead of keeping the warm-up step's freed blocks
    previous = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # read by the spawned process's glibc at start
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_peak_step_memory, (size, setting, args.max_tokens, args.mean_len, args.vocab,
                                                  torch.get_num_threads()))
    finally:
        if previous is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = previous


def make_dictionary(vocab):
    dictionary = Dictionary()
    for i in range(vocab):
        dictionary.add_symbol(f"w{i}")
    return dictionary


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {device}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="small,iwslt")
    parser.add_argument("--settings", default="default,parallel", help=f"of {', '.join(SETTINGS)}")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--gen-tokens", type=int, default=600, help="source tokens per generation batch")
    parser.add_argument("--mean-len", default="27", help="mean sentence length in tokens; several, comma-separated "
                        "(e.g. 32,64,128,256), give one block of ratios per length")
    parser.add_argument("--train-reps", type=int, default=5)
    parser.add_argument("--gen-reps", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: a GPU (times between synchronisations, "
                        "memory from the CUDA allocator)")
    parser.add_argument("--fp16", action="store_true", help="train and generate as fairseq-train --fp16 does")
    parser.add_argument("--absolute", action="store_true", help="also print the median seconds")
    parser.add_argument("--ops", help="only count FLOATER's extra leaf aten ops per training step, at these "
                                      "comma-separated lengths, e.g. 50,100,200,400,1000")
    parser.add_argument("--generate-ops", action="store_true", help="only count the leaf aten ops and host "
                        "synchronisations of one beam-5 generation, vanilla and per setting")
    parser.add_argument("--train-syncs", action="store_true", help="only count the host synchronisations "
                        "(aten::_local_scalar_dense) of one training step, vanilla and per setting")
    parser.add_argument("--ops-sentences", type=int, default=8, help="sentences per --ops batch (FLOATER's "
                        "extra ops barely depend on it; the memory does)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown --settings {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here; run on a GPU machine or use --device cpu")
    if args.fp16 and torch.device(args.device).type == "cpu":
        parser.error("--fp16 needs --device cuda (fairseq trains in fp16 on accelerators only)")
    placement = Placement(device=args.device, fp16=args.fp16)
    dictionary = make_dictionary(args.vocab)
    print(f"# {machine()}; {args.device}, {'fp16' if args.fp16 else 'fp32'}, vocabulary {args.vocab}")
    if args.generate_ops:
        for size in args.sizes.split(","):
            counts = generation_op_counts(size, settings, dictionary, args.gen_tokens, int(args.mean_len.split(",")[0]),
                                          placement)
            base_ops, base_syncs = counts.pop("vanilla")
            print(f"# {size}: one beam-5 generation of {args.gen_tokens} source tokens; leaf aten ops and host "
                  f"synchronisations, vanilla: {base_ops} / {base_syncs}")
            print(f"{'setting':15} {'leaf ops':>9} {'extra':>7} {'syncs':>6} {'extra':>6}")
            for setting, (ops, syncs) in counts.items():
                print(f"{setting:15} {ops:9d} {100 * (ops - base_ops) / base_ops:6.1f}% {syncs:6d} {syncs - base_syncs:6d}",
                      flush=True)
        return
    if args.train_syncs:
        for size in args.sizes.split(","):
            counts = training_sync_counts(size, settings, dictionary, int(args.mean_len.split(",")[0]),
                                          placement=placement)
            print(f"# {size}: host synchronisations of one training step (forward + backward), "
                  f"{int(args.mean_len.split(',')[0])}-token sentences")
            print("  ".join(f"{name} {count}" for name, count in counts.items()), flush=True)
        return
    if args.ops:
        for size in args.sizes.split(","):
            print(f"# {size}: leaf aten ops of one training step (forward + backward), {args.ops_sentences} "
                  f"sentences; vanilla, and FLOATER's extra ops per setting")
            print(f"{'length':>6} {'vanilla':>8} " + " ".join(f"{s:>14}" for s in settings))
            for length, base, extra in op_counts(size, settings, [int(n) for n in args.ops.split(",")], dictionary,
                                                 args.ops_sentences, placement):
                print(f"{length:6d} {base:8d} " + " ".join(f"{extra[s]:14d}" for s in settings), flush=True)
        return
    for mean_len in [int(n) for n in args.mean_len.split(",")]:
        args_at = argparse.Namespace(**{**vars(args), "mean_len": mean_len})
        ratio_block(args_at, settings, dictionary, placement)


def ratio_block(args, settings, dictionary, placement):
    print(f"# ratios setting / vanilla: train step on {args.max_tokens}-token batches (mean length {args.mean_len}), "
          f"median of {args.train_reps}; beam-5 generation of {args.gen_tokens}-token batches, median of "
          f"{args.gen_reps}; peak memory of a training step; extra leaf aten ops of a training step, 8 x 100 tokens",
          flush=True)
    header = f"{'size':6} {'setting':15} {'train':>6} {'generate':>8} {'memory':>6} {'extra ops':>9}"
    print(header + ("  train s (van/fl)  generate s (van/fl)" if args.absolute else ""))
    for size in args.sizes.split(","):
        vanilla_memory = peak_memory(size, None, args, dictionary, placement)
        for setting in settings:
            times = compare_times(size, setting, args, dictionary, placement)
            memory = peak_memory(size, setting, args, dictionary, placement) / vanilla_memory
            extra = op_counts(size, [setting], [100], dictionary, placement=placement)[0][2][setting]
            (tv, tf), (gv, gf) = times["train"], times["generate"]
            row = f"{size:6} {setting:15} {tf / tv:6.3f} {gf / gv:8.3f} {memory:6.3f} {extra:9d}"
            if args.absolute:
                row += f"  {tv:7.3f} / {tf:7.3f}  {gv:8.3f} / {gf:8.3f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
