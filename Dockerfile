# The platform image for Kubernetes: the code server, the daemon, the webserver and every run pod run it
# (deploy/helm/values.yaml pins its tag). CUDA comes with torch's wheels; the node supplies only the NVIDIA driver.
#
#   docker build -t registry.example.com/neucodec-platform:0.1.0 .
#   docker push registry.example.com/neucodec-platform:0.1.0
#
# Build arguments:
#   TORCH_INDEX_URL  PyTorch's wheel index for the CUDA variant your nodes' driver supports (cu126, cu128, ...)
#   TORCH_VERSION    a torch release that index carries (the project needs >= 2.6)
#   BAKE_WEIGHTS     1 (default): download neuphonic/neucodec and facebook/w2v-bert-2.0 into the image's hub cache
#                    and run offline; 0: leave /cache empty for a volume (deploy/README.md, "Model weights")
# No credentials go into the image: both models are public, and the bucket's keys come from a Kubernetes secret.
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.8.0
ARG BAKE_WEIGHTS=1

# tini as PID 1: a run pod's SIGTERM (terminate from the UI, pod deletion) reaches the run worker.
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    HF_HOME=/cache/hf \
    NEUCODEC_CACHE_DIR=/cache/neucodec \
    HF_HUB_OFFLINE=${BAKE_WEIGHTS}

# CUDA torch first, from PyTorch's index; the constraint keeps `pip install .` from swapping it for another build.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip freeze | grep -i '^torch==' > /tmp/torch-constraint.txt

# Non-root; the hub cache, the spool and DAGSTER_HOME are paths a volume can be mounted on.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin neucodec \
    && mkdir -p /cache/hf /cache/neucodec /spool "${DAGSTER_HOME}" /opt/neucodec \
    && chown -R neucodec:neucodec /cache /spool "${DAGSTER_HOME}"

# The files the encoder loads (gpu_executor/encoder/loading.py: _MODEL_FILES, _SEMANTIC_FILES), once at build time
# instead of in every pod. Before the project's code, so a code change does not download them again.
RUN pip install --constraint /tmp/torch-constraint.txt huggingface-hub
USER 10001
RUN if [ "${BAKE_WEIGHTS}" = "1" ]; then HF_HUB_OFFLINE=0 python -c "from huggingface_hub import snapshot_download as get; \
get('neuphonic/neucodec', allow_patterns=['pytorch_model.bin', 'meta.yaml', 'config.json']); \
get('facebook/w2v-bert-2.0', allow_patterns=['config.json', 'preprocessor_config.json', '*.safetensors', '*.safetensors.index.json'])"; \
    fi
USER root

WORKDIR /opt/neucodec
COPY pyproject.toml README.md ./
COPY neucodec_assets ./neucodec_assets
COPY resources ./resources
COPY gpu_executor ./gpu_executor
RUN pip install --constraint /tmp/torch-constraint.txt . && rm /tmp/torch-constraint.txt
COPY workspace.yaml ./
USER 10001

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "neucodec_assets.definitions"]
