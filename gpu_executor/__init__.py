"""How the platform runs on GPUs, in three rooms that say where they run:

- ``gpu_executor.encoder`` and ``gpu_executor.codec``: the torch side, in the run worker on the GPU box: the batched
  exact encoder engine, neucodec's audio contract, its decoder, round-trip quality, the random test model. No Dagster
  import: usable from a notebook.
- ``gpu_executor.launch``: the Dagster side, in the daemon, the webserver and the GPU workers: the run queue, the
  launchers (one host, Celery, Kubernetes), GPU discovery. No torch import.
- ``gpu_executor.settings``: every setting, read by both (neither torch nor Dagster).
"""
