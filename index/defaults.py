"""The search settings' defaults, in one place.

app/settings.py's Settings (COVERID_K_NEIGHBOURS, COVERID_EF_SEARCH, COVERID_HNSW_M) starts from these,
and so does LocalIndex for callers outside the service (tests, evaluation, benchmarks), so an index built
without arguments searches as the service does. No imports: the settings load this without torch or hnswlib.

Measured at 100k tracks (BENCHMARKS.md): the paper's K = 50 loses recall even with exact neighbours, and
M 16 loses it in the graph; K 200, ef 400, M 32 reach recall@10 0.994 at 99x all-pairs speed.
"""

K_NEIGHBOURS = 200  # HNSW neighbours per query chunk (stage one)
EF_SEARCH = 400  # HNSW query beam; raised to K when lower
HNSW_M = 32  # HNSW links per node; fixed when a graph is built
EF_CONSTRUCTION = 200  # HNSW beam while building
