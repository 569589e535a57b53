"""Which GPUs a host has, and which one the current run worker was given.

The GPU run launcher hands each run worker one device through `CUDA_VISIBLE_DEVICES` and names its slot in
`NEUCODEC_GPU_SLOT`; asset code calls `current_gpu_slot()` to record that in its metadata. No Dagster import here:
the encoder engine and notebooks can use it too.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence

from gpu_executor.settings import Settings, load_settings

#: Set by the GPU run launcher in every run worker: the GPU id (as in `CUDA_VISIBLE_DEVICES`) or `cpuN`.
GPU_SLOT_ENV = Settings.env_names("gpu_slot")[0]
#: Set by the GPU run launcher in every run worker: the launcher's host name.
WORKER_HOST_ENV = Settings.env_names("worker_host")[0]

# Values of CUDA_VISIBLE_DEVICES that mean "no GPU at all".
_NO_DEVICE_VALUES = {"", "-1", "nodevfiles", "none", "void"}


def parse_gpu_list(value: str | int | Sequence[str | int] | None) -> list[str]:
    """Normalize `"0,1"`, `[0, 1]`, `"GPU-uuid,..."` to a list of device id strings (no empty items)."""
    if value is None:
        return []
    if isinstance(value, int):
        return [str(value)]
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    out = [item.strip() for item in items if item.strip()]
    if len(set(out)) != len(out):
        raise ValueError(f"GPU list {value!r} names a device twice")
    return out


def gpus_from_nvidia_smi(timeout_s: float = 20.0) -> list[str] | None:
    """GPU indices reported by `nvidia-smi`, or None when the tool is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=timeout_s, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_gpu_list(",".join(out.split()))


#: Run in a child process: the count needs CUDA's driver, and a process whose CUDA started has its devices fixed.
_TORCH_COUNT = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else -1)"


def gpus_from_torch(timeout_s: float = 120.0) -> list[str] | None:
    """GPU indices torch sees, counted in a child process, or None when torch has no CUDA.

    Never in this process: CUDA reads CUDA_VISIBLE_DEVICES once, when it starts, so a launcher or worker that asked
    torch here could no longer hand out or be held to one GPU (on a host without nvidia-smi).
    """
    try:
        out = subprocess.run([sys.executable, "-c", _TORCH_COUNT], capture_output=True, text=True,
                             timeout=timeout_s, check=True).stdout
        count = int(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return [str(i) for i in range(count)] if count >= 0 else None


def detect_gpus(
    configured: str | int | Sequence[str | int] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[list[str], str]:
    """The GPU ids to hand out and where they came from.

    Order: the configured list; the launcher's own `CUDA_VISIBLE_DEVICES` (set to `""` or `-1` it means no GPU);
    `nvidia-smi`; `torch.cuda` in a child process (nothing here starts CUDA in the calling process). An empty list
    means a host without GPUs (the launcher then uses CPU slots).
    """
    if configured is not None:
        return parse_gpu_list(configured), "config"
    env = load_settings().as_env() if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        if visible.strip().lower() in _NO_DEVICE_VALUES:
            return [], "CUDA_VISIBLE_DEVICES"
        return parse_gpu_list(visible), "CUDA_VISIBLE_DEVICES"
    found = gpus_from_nvidia_smi()
    if found is not None:
        return found, "nvidia-smi"
    found = gpus_from_torch()
    if found is not None:
        return found, "torch"
    return [], "none found"


def current_gpu_slot(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """What this process was given, for materialization metadata: slot, visible devices, host."""
    env = load_settings().as_env() if env is None else env
    return {
        "gpu_slot": env.get(GPU_SLOT_ENV, "unassigned"),
        "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES", "unset"),
        "host": env.get(WORKER_HOST_ENV, socket.gethostname()),
    }


def main() -> None:
    """`python -m gpu_executor.launch.gpus [RUNS_PER_GPU]`: the GPUs this host would hand out and the `gpu` pool limit the
    queue keeps for them (GpuPoolRunCoordinator, gpu_pool_limit: auto)."""
    import sys

    runs_per_gpu = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    gpus, source = detect_gpus()
    limit = len(gpus) * runs_per_gpu if gpus else 1
    print(f"GPUs: {','.join(gpus) or 'none'} (from {source})")
    print(f"gpu pool limit: {limit} (set by the run queue; gpu_pool_limit: manual leaves it to "
          "`dagster instance concurrency set gpu N`)")


if __name__ == "__main__":
    main()
