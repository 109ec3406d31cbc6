"""Logger set-up: console + ``log_train_<time>.txt`` on rank 0, warnings only elsewhere."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional


def create_logger(log_file: Optional[Path] = None, rank: int = 0, name: str = "pcdet_rmae_ts") -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.handlers.clear()
    logger.propagate = False
    formatter = logging.Formatter("%(asctime)s  %(levelname)5s  %(message)s")
    console = logging.StreamHandler()
    console.setFormatter(formatter)
    logger.addHandler(console)
    if log_file is not None and rank == 0:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger
