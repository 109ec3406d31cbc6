"""Pre-flight check of an OpenPCDet / pcdet_rmae_ts config, before any GPU time is spent.

    python tools/check_config.py cfgs/custom_models/rmae_cmae_isarc_4class_finetune_phase1.yaml

Prints every finding (file, key path, fix); exit status 1 when there is an error (or, with
``--strict``, a warning), else 0. A pretraining config (``PRETRAINING: True``) is also parsed and
built by the pretraining engine's own constructors (data pipeline, model, optimizer, schedule), so
everything ``tools/train_rmae_cmae_phase1.py`` rejects at startup is an error here too.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pcdet_rmae_ts.integration.preflight import check_config, failed, format_findings  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Check a config for problems stock OpenPCDet would hit late.")
    parser.add_argument("cfg_file", nargs="+", help="config file(s), relative to the current directory")
    parser.add_argument("--strict", action="store_true", help="fail on warnings too")
    args = parser.parse_args(argv)
    status = 0
    for cfg_file in args.cfg_file:
        findings = check_config(cfg_file)
        print(format_findings(cfg_file, findings))
        status = max(status, int(failed(findings, args.strict)))
    return status


if __name__ == "__main__":
    sys.exit(main())
