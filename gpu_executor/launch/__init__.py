"""How runs reach GPUs, the only Dagster code of `gpu_executor` (no torch import here):

- ``coordinator``: the run queue that keeps the `gpu` pool limit and gives encoding runs their launch tags;
- ``host_launcher``: `GpuRunLauncher`, one `dagster api execute_run` per GPU of one host;
- ``celery_launcher``, ``celery_worker``, ``gpu_worker_cli``: rented boxes pulling runs over Celery;
- ``k8s``: the Kubernetes launch tag of encoding runs (dagster-k8s launches them);
- ``gpus``: which GPUs a host has and which one a run worker was given;
- ``names``: the pool and run-tag names they all share; ``dagster_internals``: every non-public Dagster import.
"""
