"""Average the last N checkpoints of a run, offline (fairseq's own checkpoint_utils; same flags as
fairseq's scripts/average_checkpoints.py, which pip does not install).

    python -m floater_fairseq.cli.average_checkpoints --inputs DIR --num-epoch-checkpoints 5 --output avg.pt
    python -m floater_fairseq.cli.average_checkpoints --inputs a.pt b.pt --output avg.pt
"""
import argparse
import os
import sys

from ..checkpoints import CheckpointError, average, last_checkpoints, save


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", required=True,
                        help="checkpoint files, or one folder with --num-*-checkpoints")
    parser.add_argument("--output", required=True, help="the averaged checkpoint (written atomically)")
    count = parser.add_mutually_exclusive_group()
    count.add_argument("--num-epoch-checkpoints", type=int, help="the last N checkpointE.pt of the folder")
    count.add_argument("--num-update-checkpoints", type=int, help="the last N checkpoint_E_U.pt of the folder")
    parser.add_argument("--checkpoint-upper-bound", type=int, help="ignore checkpoints after this epoch/update")
    args = parser.parse_args(argv)
    try:
        number = args.num_epoch_checkpoints or args.num_update_checkpoints
        if number is not None:
            if len(args.inputs) != 1 or not os.path.isdir(args.inputs[0]):
                raise CheckpointError("--num-epoch-checkpoints / --num-update-checkpoints take one folder as --inputs")
            paths = last_checkpoints(args.inputs[0], number, by_updates=args.num_update_checkpoints is not None,
                                     upper_bound=args.checkpoint_upper_bound)
        else:
            paths = args.inputs
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                raise CheckpointError(f"no such checkpoint file: {', '.join(missing)} (a folder needs "
                                      f"--num-epoch-checkpoints N)")
        print("averaging " + ", ".join(paths), flush=True)
        save(average(paths), args.output)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
