# coverid image: `docker build -t coverid .`; CPU by default, `docker run --gpus all ...` on a GPU host
# (the PyTorch wheel bundles CUDA). docker-compose.yml runs it with Redis, Prometheus and Grafana.

# -- build: compilers (hnswlib builds from source) and pip's work stay in this stage
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
COPY index ./index
RUN pip install '.[milvus]' && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# -- runtime: the virtual environment, the shipped model, a non-root user; no compilers, no caches
FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /srv/coverid --create-home coverid \
    && mkdir /data && chown coverid:coverid /data
COPY --from=build /opt/venv /opt/venv
COPY models/weights/extractor.pt models/weights/calibration.json models/weights/MODEL_CARD.md /srv/coverid/models/weights/
COPY docker/entrypoint.sh /usr/local/bin/coverid-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    COVERID_DEVICE=auto \
    COVERID_MODEL_PATH=/srv/coverid/models/weights/extractor.pt \
    COVERID_DATA_DIR=/data
# the catalogue (SQLite) and the index snapshot live here: keep it on a volume
VOLUME ["/data"]
USER coverid
WORKDIR /srv/coverid
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["coverid-entrypoint"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
