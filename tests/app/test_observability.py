"""The monitoring configuration in docker/, proven against a real Prometheus scraping the real service.

Prometheus (Debian's `prometheus` package) runs the project's own docker/prometheus.yml, changed only in
its target address, with the project's rule file. After ingest and identify traffic, every PromQL
expression of every dashboard panel, every recording rule and every alert rule must return data.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.app.conftest import ServiceProcess, free_port, started_redis
from tests.conftest import tune_wav

DOCKER = Path(__file__).resolve().parents[2] / "docker"
PROMETHEUS_CONFIG = DOCKER / "prometheus.yml"
RULES = DOCKER / "prometheus-rules.yml"
DASHBOARDS = sorted((DOCKER / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_WINDOW = "1m"  # what $__rate_interval stands for here: several 5 s scrapes
ALERT_FORM = re.compile(r"^(?P<indicator>.+?)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<threshold>-?[0-9.]+(?:e-?[0-9]+)?)\s*$", re.S)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: install Debian's prometheus package (make test does, as root)")
    return path


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expression) of every target of every panel, Grafana's interval variable filled in."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.stem}: {panel['title']}", target["expr"].replace("$__rate_interval", GRAFANA_WINDOW)))
    return found


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def alert_as_indicator(expr: str) -> str:
    """`x > 0.5` -> `x > bool 0.5`: 1 where the alert condition holds, 0 where not, for every series of x."""
    match = ALERT_FORM.match(expr.strip())
    assert match, f"alert expression {expr!r} is not `<indicator> <comparison> <threshold>`"
    return f"{match['indicator']} {match['op']} bool {match['threshold']}"


class Prometheus:
    def __init__(self, directory: Path, target: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = PROMETHEUS_CONFIG.read_text()
        assert config.count('"api:8000"') == 1, "the test swaps exactly the compose target for the local one"
        (directory / "prometheus.yml").write_text(config.replace('"api:8000"', f'"{target}"'))
        shutil.copy(RULES, directory / RULES.name)  # the config names its rule file relative to itself
        self.log = open(directory / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.directory = directory
        self._wait(lambda: httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200, 60, "ready")

    def _wait(self, condition, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited: {(self.directory / 'prometheus.log').read_text()[-2000:]}")
            try:
                if condition():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        pytest.fail(f"prometheus: not {what} within {seconds} s: {(self.directory / 'prometheus.log').read_text()[-2000:]}")

    def query(self, expr: str) -> list[dict]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]

    def scrapes(self) -> int:
        result = self.query('count_over_time(up{job="coverid"}[10m])')
        return int(float(result[0]["value"][1])) if result else 0

    def wait_scrapes(self, more: int) -> None:
        wanted = self.scrapes() + more
        self._wait(lambda: self.scrapes() >= wanted, 10 * more + 20, f"{more} more scrapes")

    def wait_rule_evaluation(self) -> None:
        """Until every rule group has been evaluated after now."""
        since = time.time()

        def evaluated() -> bool:
            groups = httpx.get(f"{self.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
            return all(_epoch(g["lastEvaluation"]) > since for g in groups)

        self._wait(evaluated, 30, "done evaluating its rules")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")[:26] + "+00:00").timestamp()



def traffic(client: httpx.Client, round_: int) -> None:
    """Ingest (single and batch), identify, a listing, a delete and a rejected upload: every route and stage."""
    for seed in range(2):
        answer = client.post("/catalog", files={"file": (f"t{seed}.wav", tune_wav(25, 10 * round_ + seed))},
                             data={"title": f"track {round_}.{seed}"})
        assert answer.status_code == 201, answer.text
    batch = client.post("/catalog/batch", files=[("files", ("b.wav", tune_wav(22, 100 + round_)))])
    assert batch.status_code == 200, batch.text
    for seed in range(3):
        answer = client.post("/identify", files={"file": ("clip.wav", tune_wav(10, 10 * round_ + seed % 2))})
        assert answer.status_code == 200, answer.text
    answer = client.post("/identify", files={"file": ("whole.wav", tune_wav(65, 10 * round_))})  # a long query
    assert answer.status_code == 200, answer.text
    assert client.get("/catalog").status_code == 200
    assert client.delete(f"/catalog/{batch.json()['items'][0]['track']['track_id']}").status_code == 204
    assert client.post("/identify", files={"file": ("x.wav", b"not audio")}).status_code in (415, 422)


@pytest.fixture(scope="module")
def observed(tmp_path_factory, narrow_artifact):
    """A real redis-server, the service on it, and Prometheus scraping the service; traffic in two bursts."""
    root = tmp_path_factory.mktemp("observed")
    redis_server = started_redis(root / "redis")
    service = ServiceProcess({"COVERID_MODEL_PATH": str(narrow_artifact[0]), "COVERID_DEVICE": "cpu",
                              "COVERID_DATA_DIR": str(root / "data"), "COVERID_REDIS_URL": redis_server.url},
                             root / "service.log")
    service.start()
    (root / "prometheus").mkdir()
    prometheus = Prometheus(root / "prometheus", f"127.0.0.1:{service.port}")
    try:
        with httpx.Client(base_url=service.url, timeout=60) as client:
            prometheus.wait_scrapes(1)
            traffic(client, 0)
            prometheus.wait_scrapes(1)  # rates need samples on both sides of a burst
            traffic(client, 1)
            prometheus.wait_scrapes(2)
            prometheus.wait_rule_evaluation()
            yield prometheus, redis_server, client
    finally:
        prometheus.stop()
        service.stop()
        redis_server.stop()


def test_promtool_accepts_the_config_and_the_rules():
    for args in (["check", "config", str(PROMETHEUS_CONFIG)], ["check", "rules", str(RULES)]):
        done = subprocess.run([tool("promtool"), *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def finite(series: list[dict]) -> list[dict]:
    return [s for s in series if math.isfinite(float(s["value"][1]))]


def test_every_dashboard_expression_returns_data(observed):
    """Each expression gives at least one finite series (a route without requests in the window is NaN: a gap)."""
    prometheus, _, _ = observed
    expressions = dashboard_expressions()
    assert len(expressions) >= 15
    empty = [(title, expr) for title, expr in expressions if not finite(prometheus.query(expr))]
    assert not empty, f"panels with no data: {empty}"


def test_every_pipeline_stage_and_route_is_on_the_latency_panels(observed):
    prometheus, _, _ = observed
    stages = {s["metric"]["stage"] for s in finite(prometheus.query(
        'histogram_quantile(0.5, sum by (stage, le) (rate(coverid_stage_duration_seconds_bucket[1m])))'))}
    assert stages >= {"decode", "embed", "search", "rerank", "store"}
    latency = {s["metric"]["route"] for s in finite(prometheus.query(
        'histogram_quantile(0.99, sum by (route, le) (rate(coverid_request_duration_seconds_bucket[1m])))'))}
    assert latency >= {"/identify", "/catalog", "/catalog/batch", "/catalog/{track_id}"}
    ingested = prometheus.query("sum(rate(coverid_ingested_audio_seconds_total[1m]))")
    assert float(ingested[0]["value"][1]) > 0


def test_every_rule_evaluates_without_error_and_returns_data(observed):
    prometheus, _, _ = observed
    groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert sum(len(g["rules"]) for g in groups) == len(rules())
    assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
    for rule in rules():
        expr = rule["expr"] if "record" in rule else alert_as_indicator(rule["expr"])
        assert prometheus.query(expr), f"{rule.get('record') or rule['alert']}: no data for {expr}"


def test_healthy_traffic_fires_no_alert(observed):
    """Every alert but the latency objective, which depends on how loaded the test machine is."""
    prometheus, _, _ = observed
    for rule in rules():
        if "alert" in rule and "latency" not in rule["expr"]:
            values = [float(s["value"][1]) for s in prometheus.query(alert_as_indicator(rule["expr"]))]
            assert values and all(v == 0 for v in values), f"{rule['alert']} holds on healthy traffic: {values}"


def test_identify_latency_objectives_are_per_query_length_between_close_buckets(observed):
    """Clips and whole-track queries have objectives of their own (a busy machine's full-track queries once fired
    the clip objective's alert), and each threshold has bucket edges within 25 % on both sides, so the p95
    estimate near it is not read off a coarse bucket."""
    from app.metrics import IDENTIFY_BUCKETS

    prometheus, _, _ = observed
    classes = {s["metric"]["query"] for s in finite(prometheus.query("coverid:identify_latency_seconds:p95_5m"))}
    assert classes == {"clip", "long"}
    latency_alerts = [r for r in rules() if "alert" in r and "latency" in r["expr"]]
    assert {re.search(r'query="(\w+)"', r["expr"])[1] for r in latency_alerts} == {"clip", "long"}
    for rule in latency_alerts:
        threshold = float(ALERT_FORM.match(rule["expr"].strip())["threshold"])
        assert any(0.75 * threshold <= edge < threshold for edge in IDENTIFY_BUCKETS), rule["alert"]
        assert any(threshold < edge <= 1.25 * threshold for edge in IDENTIFY_BUCKETS), rule["alert"]
        assert "objective" in rule["annotations"], rule["alert"]


def test_the_store_alert_holds_once_redis_is_gone(observed):
    prometheus, redis_server, _ = observed  # last: it stops the module's Redis
    store_alert = next(r for r in rules() if r.get("alert") == "CatalogueStoreUnreachable")
    redis_server.stop(crash=True)
    prometheus.wait_scrapes(2)
    values = [float(s["value"][1]) for s in prometheus.query(alert_as_indicator(store_alert["expr"]))]
    assert values == [1.0]
    assert [float(s["value"][1]) for s in prometheus.query("min(coverid_ready)")] == [0.0]


def test_dashboards_use_the_provisioned_datasource_unique_ids_and_units():
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    assert DASHBOARDS
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == uid and all(t["datasource"]["uid"] == uid for t in panel["targets"])
            unit = panel["fieldConfig"]["defaults"].get("unit")
            assert unit, f"{panel['title']}: no unit"
            if any("duration_seconds" in t["expr"] or "latency_seconds" in t["expr"] for t in panel["targets"]):
                assert unit == "s", f"{panel['title']}: a latency panel in {unit!r}"
