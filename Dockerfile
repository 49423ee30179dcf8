# vitprune service image: REST API + dashboard (`vitprune serve`) or a worker (`vitprune worker`), CPU only.
#
#   docker build -t vitprune .
#   docker run -p 8000:8000 -v vitprune-data:/data -e VITPRUNE_TOKEN=... vitprune
#
# Alone it keeps everything (SQLite database, uploads, artifacts) under /data and runs jobs in-process;
# docker-compose.yml runs it with PostgreSQL and separate, scalable workers.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tcmalloc: vitprune times models (latency tables, their calibration, Pareto models) with it when it is
# installed; glibc's malloc page-faults big batches in a pattern that depends on the process's history.
RUN apt-get update && apt-get install -y --no-install-recommends libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/*

# CPU-only torch first, in its own layer: PyPI's default wheels bundle CUDA (gigabytes) that a CPU
# service never uses, and this layer stays cached while the project's sources change.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu torch torchvision

WORKDIR /src
COPY pyproject.toml README.md ./
COPY pruning ./pruning
COPY latency_models ./latency_models
COPY search ./search
COPY server ./server
COPY vitprune ./vitprune
# The extra index again, so that resolving the project's dependencies keeps the CPU torch build.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu . \
    && rm -rf /src

# An unprivileged user owns /data; a named volume mounted there starts with this ownership.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin vitprune \
    && mkdir -p /data \
    && chown vitprune:vitprune /data
USER vitprune
WORKDIR /data
ENV VITPRUNE_HOME=/data \
    HF_HOME=/data/cache/huggingface \
    TORCH_HOME=/data/cache/torch
VOLUME ["/data"]

EXPOSE 8000
# The API's own health route (it also checks the database); urllib fails on anything but a 2xx answer.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=5)"]

CMD ["vitprune", "serve", "--host", "0.0.0.0", "--port", "8000"]
