"""The deployment files: docker-compose.yml as docker-compose reads it, and the Dockerfile's stages.

No Docker engine runs on the build machines; `docker-compose config` (Debian's docker-compose) parses,
interpolates and validates the compose file without one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV_EXAMPLE = ROOT / "docker" / "env.example"
GPU_OVERRIDE = ROOT / "docker" / "compose.gpu.yml"


def compose_config(*args: str) -> subprocess.CompletedProcess:
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.fail("docker-compose is not on PATH: install Debian's docker-compose package (make test does, as root)")
    return subprocess.run([executable, "--project-directory", str(ROOT), *args, "config"], capture_output=True,
                          text=True, cwd=ROOT)


def resolved(*files: Path) -> dict:
    args = ["--env-file", str(ENV_EXAMPLE)] + [a for f in files for a in ("-f", str(f))]
    done = compose_config(*args)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_compose_runs_the_api_with_redis_prometheus_and_grafana():
    config = resolved(ROOT / "docker-compose.yml")
    default = {name for name, service in config["services"].items() if not service.get("profiles")}
    assert default == {"api", "redis", "prometheus", "grafana"}  # what a plain `docker compose up` starts
    api, redis, grafana = config["services"]["api"], config["services"]["redis"], config["services"]["grafana"]
    assert "deploy" not in api  # no GPU reservation by default: `up` works on a laptop
    assert "change-me-to-a-long-random-string" in api["environment"]["COVERID_REDIS_URL"]
    assert "--appendonly yes" in " ".join(redis["command"])
    assert any(str(v).startswith("redis-data:/data") for v in redis["volumes"])  # the AOF outlives the container
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_every_file_compose_mounts_from_the_repository_exists():
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = [v.split(":")[0] for s in raw["services"].values() for v in s.get("volumes", []) if v.startswith("./")]
    assert len(mounts) >= 4
    for mount in mounts:
        assert (ROOT / mount).exists(), mount


def test_the_gpu_override_reserves_one_nvidia_device():
    api = resolved(ROOT / "docker-compose.yml", GPU_OVERRIDE)["services"]["api"]
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert api["environment"]["COVERID_DEVICE"] == "cuda"


def test_the_milvus_profile_runs_replicas_on_a_milvus_server_and_the_shared_redis():
    services = resolved(ROOT / "docker-compose.yml")["services"]
    profiled = {name for name, service in services.items() if service.get("profiles") == ["milvus"]}
    assert profiled == {"api-milvus", "milvus", "milvus-etcd", "milvus-minio"}
    api, milvus, minio = services["api-milvus"], services["milvus"], services["milvus-minio"]
    assert api["environment"]["COVERID_MILVUS_URI"] == "http://milvus:19530"
    assert api["environment"]["COVERID_REDIS_URL"] == services["api"]["environment"]["COVERID_REDIS_URL"]
    assert api["depends_on"]["milvus"]["condition"] == "service_healthy" and api["deploy"]["replicas"] == 2
    assert "snapshot" not in str(api.get("volumes"))  # stateless over the engine and the store
    # Milvus reaches its MinIO with MinIO's own credentials, both from .env
    assert milvus["environment"]["MINIO_ACCESS_KEY_ID"] == minio["environment"]["MINIO_ROOT_USER"]
    assert milvus["environment"]["MINIO_SECRET_ACCESS_KEY"] == minio["environment"]["MINIO_ROOT_PASSWORD"] != ""
    assert milvus["environment"]["ETCD_ENDPOINTS"].split(":")[0] == "milvus-etcd"


def test_compose_without_passwords_stops_with_a_message_naming_them(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = compose_config("--env-file", str(empty), "-f", str(ROOT / "docker-compose.yml"))
    assert done.returncode != 0 and "REDIS_PASSWORD" in done.stderr


def stages(dockerfile: str) -> list[str]:
    return re.split(r"(?m)^FROM ", dockerfile)[1:]


def test_the_image_is_multi_stage_and_its_final_stage_is_lean_and_unprivileged():
    found = stages((ROOT / "Dockerfile").read_text())
    assert len(found) >= 2
    final = found[-1]
    assert not re.search(r"apt-get install[^\n]*\b(g\+\+|gcc|make|build-essential)\b", final)
    user = re.search(r"(?m)^USER (\S+)", final)
    assert user and user.group(1) not in ("root", "0")
    assert re.search(r"(?m)^HEALTHCHECK .*(\n.*)*?/healthz", final)
    assert re.search(r"(?m)^VOLUME .*/data", final)
    assert "COPY --from=" in final and "models/weights/extractor.pt" in final
    assert "models/weights/calibration.json" in final  # beside the model: the image's matches carry is_match


def test_the_env_file_holding_the_passwords_is_never_committed():
    # the README's deployment copies docker/env.example to .env and fills in the passwords
    ignored = subprocess.run(["git", "check-ignore", "--quiet", ".env"], cwd=ROOT)
    assert ignored.returncode == 0, ".env is not ignored by git: add it to .gitignore"
    assert subprocess.run(["git", "check-ignore", "--quiet", "docker/env.example"], cwd=ROOT).returncode == 1
