"""Train and evaluate any registered model (ours or RecBole's) with RecBole's usual flags.

    python run_recbole.py --model=SASRec --dataset=amazon-beauty
    python run_recbole.py --model=DIN --dataset=amazon-beauty --eval_protocol=ctr --epochs=5
    python run_recbole.py --model=SASRec --dataset=ml-100k --config_files="a.yaml b.yaml"

Every other ``--key=value`` overrides the configuration with RecBole's precedence (command line >
config dict > config files > defaults). ``--data_path=DIR`` (or REASEQ_DATA_PATH=DIR) points at a
folder of data sets; ../shared/datasets is found by default.
"""
import argparse
import sys

import recbole_reaseq  # noqa: F401  (compat first)
from recbole_reaseq.config import DatasetNotFoundError
from recbole_reaseq.quick_start import run
from recbole_reaseq.registry import RegistryError


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", "-m", type=str, default="SASRec", help="model name")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="data set name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML files")
    args, _ = parser.parse_known_args(argv)
    files = args.config_files.strip().split(" ") if args.config_files else None
    try:
        result = run(model=args.model, dataset=args.dataset, config_file_list=files, argv=argv)
    except (RegistryError, DatasetNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"best valid: {result['valid_result']}")
    print(f"test      : {result['test_result']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
