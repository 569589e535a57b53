"""Code location for the GPU run launcher tests: one op that records what device its run worker was given.

Loaded by file path into run worker processes, so it imports nothing from the tests package.
"""

import json
import os
import signal
import time
from pathlib import Path

import dagster as dg

HOLD_LIMIT_S = 120.0


@dg.op(
    pool="gpu",
    config_schema={
        "out_dir": str,
        "hold": dg.Field(bool, default_value=True),
        "ignore_sigterm": dg.Field(bool, default_value=False),
    },
)
def record_device(context: dg.OpExecutionContext) -> None:
    """Writes `<run_id>.start.json` with its CUDA_VISIBLE_DEVICES, holds until `release` exists, writes the end.

    Holding on a file instead of sleeping makes the tests independent of machine speed.
    """
    if context.op_config["ignore_sigterm"]:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stuck worker: only SIGKILL stops it
    out = Path(context.op_config["out_dir"])
    record = {
        "run_id": context.run_id,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpu_slot": os.environ.get("NEUCODEC_GPU_SLOT"),
        "pid": os.getpid(),
        "start": time.time(),
    }
    (out / f"{context.run_id}.start.json").write_text(json.dumps(record))
    deadline = time.monotonic() + HOLD_LIMIT_S
    while context.op_config["hold"] and not (out / "release").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"nobody created {out / 'release'} within {HOLD_LIMIT_S} s")
        time.sleep(0.1)
    record["end"] = time.time()
    (out / f"{context.run_id}.end.json").write_text(json.dumps(record))


@dg.job(executor_def=dg.in_process_executor)
def device_job() -> None:
    record_device()


defs = dg.Definitions(jobs=[device_job])
