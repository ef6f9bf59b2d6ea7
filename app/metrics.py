"""Prometheus metrics of the service, documented where they are declared.

One process serves requests (see the README: the extractor and the in-memory
index are per process, so the service runs one uvicorn worker and scales by
running more containers); the default registry is therefore enough.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# latency buckets from 5 ms to 30 s: identify sits around 0.05-0.5 s, bulk ingest of long tracks in seconds
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUEST_SECONDS = Histogram(
    "coverid_request_duration_seconds", "Time to answer an HTTP request, by route and method.",
    ["route", "method"], buckets=BUCKETS,
)
# /identify by query length, with buckets dense around each objective (clips 0.5 s, whole tracks 10 s): one
# histogram for both once put a busy machine's full-track p95 on a bucket edge and fired the clip objective's alert
IDENTIFY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 1.0, 1.5, 2.0, 3.0, 4.0,
                    5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 15.0, 20.0, 30.0, 60.0)
LONG_QUERY_S = 60.0  # a query over this is a whole track ("long"), at most this a clip, the product's case
IDENTIFY_SECONDS = Histogram(
    "coverid_identify_duration_seconds",
    "Time to answer /identify with matches, from the end of the upload, by the query's length: clip (up to "
    "60 s) or long (over 60 s: whole tracks, which take seconds); segments: /identify/segments (set lists).",
    ["query"], buckets=IDENTIFY_BUCKETS,
)
REQUESTS = Counter(
    "coverid_requests_total", "HTTP requests answered, by route, method and status code.",
    ["route", "method", "status"],
)
STAGE_SECONDS = Histogram(
    "coverid_stage_duration_seconds",
    "Time spent in one pipeline stage: decode (decoding and resampling), embed (CQT, chunking and network), "
    "search (HNSW first stage), rerank (batched MaxMean), align (stage 3: alignment of the top N), "
    "store (catalogue writes).",
    ["stage"], buckets=BUCKETS,
)
QUEUE_DEPTH = Gauge("coverid_model_queue_depth",
                    "Model requests whose body has arrived (decode, embed, waiting, answer), at most COVERID_QUEUE_SIZE.")
UPLOADS_IN_FLIGHT = Gauge("coverid_uploads_in_flight",
                          "Model requests whose body is still arriving, at most COVERID_UPLOAD_SLOTS.")
REJECTED = Counter("coverid_rejected_requests", "Requests refused with 503 before using the model, by reason: "
                   "queue_full (COVERID_QUEUE_SIZE requests already in), uploads_full (COVERID_UPLOAD_SLOTS "
                   "bodies already arriving) or wait (no model turn within COVERID_QUEUE_WAIT_S).", ["reason"])
for _reason in ("queue_full", "uploads_full", "wait"):  # known label values start at 0, so rates exist before the first 503
    REJECTED.labels(_reason)
ABANDONED = Counter("coverid_abandoned_requests", "Model requests whose decoding stopped because the client had "
                    "disconnected (answered 499, which nobody reads).")
CATALOG_TRACKS = Gauge("coverid_catalog_tracks", "Tracks in the catalogue.")
INDEX_VECTORS = Gauge("coverid_index_vectors", "Local embeddings in the search index.")
INGESTED_TRACKS = Counter("coverid_ingested_tracks", "Tracks added to the catalogue (single and batch ingest).")
INGESTED_AUDIO_SECONDS = Counter("coverid_ingested_audio_seconds", "Seconds of audio added to the catalogue.")
# refreshed at every scrape (app.main), so alerts see the state as of the last scrape
STORE_UP = Gauge("coverid_store_up", "1 when the catalogue store (SQLite or Redis) answers a ping, else 0.")
READY = Gauge("coverid_ready", "1 when the service is ready to answer (catalogue loaded, store answering), else 0.")
GPU_MEMORY = Gauge("coverid_accelerator_memory_bytes",
                   "Memory the extractor holds on its device: CUDA memory allocated by PyTorch; 0 on a CPU.",
                   ["device"])
MODEL_INFO = Gauge("coverid_model_info", "Always 1; labels name the loaded extractor and its device.",
                   ["model_id", "device"])
