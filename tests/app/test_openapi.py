"""The OpenAPI document describes what the service really answers."""

from app import schemas
from app.main import create_app

EXPECTED = {  # 413: a declared Content-Length over the limit is refused on every route, GET included
    ("post", "/catalog"): {"201", "400", "401", "409", "413", "415", "422", "503"},
    ("post", "/catalog/batch"): {"200", "400", "401", "413", "422", "503"},
    ("get", "/catalog"): {"200", "413", "422", "503"},
    ("get", "/catalog/{track_id}"): {"200", "404", "413", "503"},
    ("delete", "/catalog/{track_id}"): {"204", "401", "404", "413", "503"},
    ("post", "/identify"): {"200", "400", "401", "413", "415", "422", "503"},
    ("post", "/identify/segments"): {"200", "400", "401", "413", "415", "422", "503"},
    ("get", "/readyz"): {"200", "413", "503"},
    ("get", "/healthz"): {"200", "413"},
}


def test_every_status_the_service_returns_is_documented():
    spec = create_app().openapi()
    for (method, path), statuses in EXPECTED.items():
        documented = set(spec["paths"][path][method]["responses"])
        assert statuses <= documented, (method, path, statuses - documented)


def test_the_error_body_covers_both_shapes_of_detail():
    spec = create_app().openapi()
    error = spec["paths"]["/identify"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert error["$ref"].endswith("/Error")
    schemas.Error.model_validate({"detail": "the clip lasts 1.0 s; send at least 3 s"})  # the service's own 422s
    schemas.Error.model_validate({"detail": [{"loc": ["query", "top_k"], "msg": "bad", "type": "int_parsing"}]})


def test_the_decision_and_the_spans_are_in_the_schema_with_their_meaning():
    components = create_app().openapi()["components"]["schemas"]
    match, span = components["Match"]["properties"], components["Span"]["properties"]
    for field in ("is_match", "confidence"):
        assert "COVERID_FALSE_MATCH_RATE" in match["is_match"]["description"] and match[field]["description"]
        assert span[field]["description"]
    for field in ("start_s", "end_s", "track_id", "score", "query_start_s", "reference_start_s"):
        assert span[field]["description"], field
    assert components["SegmentsResponse"]["properties"]["spans"]["description"]
