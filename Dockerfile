# coverid image. CPU by default; on a GPU host run with `--gpus all` (the PyTorch wheel bundles CUDA).
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/coverid
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
COPY index ./index
RUN pip install --no-cache-dir .

ENV COVERID_DEVICE=auto \
    COVERID_MODEL_PATH=/srv/coverid/models/weights/extractor.pt \
    COVERID_DATA_DIR=/srv/coverid/data
COPY docker/entrypoint.sh /usr/local/bin/coverid-entrypoint
ENTRYPOINT ["coverid-entrypoint"]
EXPOSE 8000
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
