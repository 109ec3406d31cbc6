"""Logger set-up: console + ``log_train_<time>.txt`` on rank 0, warnings only elsewhere; fatal errors
to the log file."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional


class _DropFxTracingNotice(logging.Filter):
    """torch >= 2.10's ``ProxyableClassMeta.__call__`` calls its own deprecated ``is_fx_tracing()``,
    which logs a warning about torch.export the first time; spconv's SparseConvTensor uses that
    metaclass, so every run printed it although nothing here traces. Only that record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("is_fx_tracing will return true")


FX_LOGGER = "torch.fx._symbolic_trace"


def silence_fx_tracing_notice() -> None:
    """Install the filter on torch.fx's logger (idempotent)."""
    logger = logging.getLogger(FX_LOGGER)
    if not any(isinstance(f, _DropFxTracingNotice) for f in logger.filters):
        logger.addFilter(_DropFxTracingNotice())


def create_logger(log_file: Optional[Path] = None, rank: int = 0, name: str = "pcdet_rmae_ts") -> logging.Logger:
    silence_fx_tracing_notice()
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


def log_to_files(message: str, level: int = logging.ERROR, name: str = "pcdet_rmae_ts") -> None:
    """Write ``message`` to the log files of logger ``name`` only (the console has its own copy),
    e.g. the one-line fatal error the CLI prints, so that ``log_train_*.txt`` shows why a run ended."""
    logger = logging.getLogger(name)
    record = logger.makeRecord(name, level, __file__, 0, message, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
