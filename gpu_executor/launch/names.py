"""The names the run queue, the launchers, the GPU workers and the assets agree on: the GPU pool and the run tags
in which a launched run's worker is recorded (launcher state lives in run tags: DESIGN.md)."""

from __future__ import annotations

#: The concurrency pool of encoding runs: one slot per GPU (GpuPoolRunCoordinator keeps its limit).
GPU_POOL = "gpu"

#: The GPU slot a run was given: a GPU id as in CUDA_VISIBLE_DEVICES, `cpuN`, or NO_SLOT.
GPU_TAG = "neucodec/gpu"
#: The slot tag of a run that holds no GPU (it does not encode).
NO_SLOT = "none"
#: The host whose launcher started the run worker.
HOST_TAG = "neucodec/host"
#: The run worker's pid and its process creation time (a pid can be reused).
PID_TAG = "neucodec/pid"
PID_CREATE_TIME_TAG = "neucodec/pid_create_time"
#: Where the run worker's stdout/stderr go (GpuRunLauncher).
WORKER_LOG_TAG = "neucodec/worker_log"
#: Written by a Celery GPU worker while its run executes: "<celery task id>:<counter>".
HEARTBEAT_TAG = "neucodec/celery_heartbeat"
#: The Celery worker (`gpuN@box`) that took the run.
WORKER_TAG = "neucodec/celery_worker"
#: The code version (gpu_executor.launch.code_version) of the process that executed the run.
CODE_VERSION_TAG = "neucodec/code_version"
#: Set at launch when no live worker consumes the run's Celery queue: the warning, as `status` shows it.
QUEUE_WARNING_TAG = "neucodec/queue_warning"
