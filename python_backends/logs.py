"""Logging inside the stub processes: to stderr (which tritonserver's log collects), text or JSON per LOG_FORMAT."""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure(environ: dict[str, str] | None = None) -> logging.Logger:
    """Idempotent: the first model of a stub process sets the `ruth` logger up, later calls change nothing."""
    env = dict(os.environ) if environ is None else environ
    logger = logging.getLogger("ruth")
    if logger.handlers:
        return logger
    handler = logging.StreamHandler(sys.stderr)
    if env.get("LOG_FORMAT", "text").lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s [%(name)s pid=%(process)d] %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.setLevel(env.get("LOG_LEVEL", "INFO").upper())
    logger.propagate = False
    return logger
