"""Write OpenPCDet CustomDataset info files and the gt database for a config's own classes.

    python tools/create_infos.py --cfg_file cfgs/custom_models/rmae_cmae_isarc_4class_finetune_phase1.yaml \
        [--set DATA_CONFIG.DATA_PATH /path/to/data]

Reads ``DATA_PATH`` (``points/<id>.npy``, ``labels/<id>.txt``, ``ImageSets/<split>.txt``) and writes there
what fine-tuning reads: one info pickle per ``DATA_SPLIT`` mode (named by ``INFO_PATH``) and, when the
config uses gt_sampling, ``gt_database/`` with its db-info pickle. Needs OpenPCDet (pcdet) importable:
put your OpenPCDet checkout on PYTHONPATH or install it. Exit status 2 with one message on bad input.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pcdet_rmae_ts.config import ConfigError  # noqa: E402
from pcdet_rmae_ts.integration.infos import create_infos, load_dataset_config  # noqa: E402
from pcdet_rmae_ts.integration.pcdet import PcdetNotAvailable  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg_file", required=True, help="model config (with DATA_CONFIG) or dataset config")
    parser.add_argument("--set", dest="set_cfgs", default=None, nargs=argparse.REMAINDER,
                        help="override config keys: --set KEY VALUE [KEY VALUE ...]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        create_infos(load_dataset_config(args.cfg_file, args.set_cfgs))
    except (ConfigError, FileNotFoundError, PcdetNotAvailable, ValueError) as err:
        sys.stderr.write(f"create_infos: error: {err}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
