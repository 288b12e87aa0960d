"""Train and evaluate any registered model (ours or RecBole's) with RecBole's usual flags.

    python run_recbole.py --model=SASRec --dataset=amazon-beauty
    python run_recbole.py --model=DIN --dataset=amazon-beauty --eval_protocol=ctr --epochs=5
    python run_recbole.py --model=SASRec --dataset=ml-100k --config_files="a.yaml b.yaml"

Every other ``--key=value`` overrides the configuration with RecBole's precedence (command line >
config dict > config files > defaults). ``--data_path=DIR`` (or REASEQ_DATA_PATH=DIR) points at a
folder of data sets; ../shared/datasets is found by default.

Distributed training (RecBole's DDP mode; nccl on GPUs, gloo on CPU, config key dist_backend):

    python run_recbole.py --model=ReaSeqCTR --dataset=ml-100k --nproc=2          # 2 ranks here
    # 2 nodes x 4 ranks: run on each node, --offset = index of its first rank
    python run_recbole.py -m ReaSeqCTR --nproc=4 --world_size=8 --ip=NODE0 --port=5678 --offset=0
    python run_recbole.py -m ReaSeqCTR --nproc=4 --world_size=8 --ip=NODE0 --port=5678 --offset=4
"""
import argparse
import sys

import recbole_reaseq  # noqa: F401  (compat first)
from recbole_reaseq.config import DatasetNotFoundError
from recbole_reaseq.quick_start import run, run_distributed
from recbole_reaseq.registry import RegistryError


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", "-m", type=str, default="SASRec", help="model name")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="data set name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML files")
    parser.add_argument("--nproc", type=int, default=1, help="processes (ranks) on this node")
    parser.add_argument("--world_size", type=int, default=-1,
                        help="ranks on all nodes (default: nproc)")
    parser.add_argument("--ip", type=str, default="localhost", help="address of global rank 0")
    parser.add_argument("--port", type=str, default="5678", help="free port on rank 0's node")
    parser.add_argument("--offset", "--group_offset", dest="offset", type=int, default=0,
                        help="global rank of this node's first process")
    args, _ = parser.parse_known_args(argv)
    files = args.config_files.strip().split(" ") if args.config_files else None
    try:
        if args.nproc == 1 and args.world_size <= 0:
            result = run(model=args.model, dataset=args.dataset, config_file_list=files,
                         argv=argv)
        else:
            result = run_distributed(model=args.model, dataset=args.dataset,
                                     config_file_list=files, argv=argv, nproc=args.nproc,
                                     world_size=args.world_size, ip=args.ip, port=args.port,
                                     offset=args.offset)
    except (RegistryError, DatasetNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result is None:                      # a node without global rank 0
        return 0
    print(f"best valid: {result['valid_result']}")
    print(f"test      : {result['test_result']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
