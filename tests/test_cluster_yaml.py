"""ray_cluster.yaml, checked offline: Ray's own schema and config checks, the pinned Ray version,
GPU workers that scale to zero (spot first, on demand as the fallback), a dashboard that is not on
the network, token auth, no secrets."""

import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PATH = ROOT / "ray_cluster.yaml"
SCHEMA_PATH = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG_PATH.read_text())


def test_matches_rays_schema(config):
    jsonschema.validate(config, json.loads(SCHEMA_PATH.read_text()))
    validate_config(config)  # the schema plus Ray's cross-field checks (head type, min_workers sum)


def test_image_runs_the_pinned_ray_and_python(config):
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", config["docker"]["image"])
    assert match, f"unexpected image {config['docker']['image']!r}"
    assert match[1] == ray.__version__
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    assert match[1] == pins["ray"]
    assert f"{match[2]}.{match[3]}" == "3.11"  # pyproject: requires-python >=3.11,<3.12


def test_fits_run_on_gpu_workers_that_scale_to_zero(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU", 0) == 0
    gpu_types = [t for t in types.values() if t.get("resources", {}).get("GPU", 0) > 0]
    assert gpu_types
    for node_type in gpu_types:
        assert node_type["min_workers"] == 0
        assert 0 < node_type["max_workers"] <= config["max_workers"]


def test_spot_gpu_workers_come_first_and_on_demand_ones_are_the_fallback(config):
    workers = {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}
    spot = [t for t in workers.values() if t["node_config"].get("InstanceMarketOptions") == {"MarketType": "spot"}]
    on_demand = [t for t in workers.values() if "InstanceMarketOptions" not in t["node_config"]]
    assert len(spot) == 1 and len(on_demand) == 1 and len(workers) == 2
    (spot,), (on_demand,) = spot, on_demand
    assert spot["priority"] > on_demand["priority"]
    assert spot["resources"] == on_demand["resources"]  # the same machine: a fit lands on either
    for key in ("InstanceType", "ImageId", "BlockDeviceMappings"):
        assert spot["node_config"][key] == on_demand["node_config"][key]
    # Priorities, and turning to another type after a failed launch, are the autoscaler v2's.
    assert "RAY_enable_autoscaler_v2=1" in " ".join(config["head_start_ray_commands"])


def test_dashboard_is_local_only_and_token_auth_is_on(config):
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in CONFIG_PATH.read_text()
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        starts = [c for c in commands if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts)
        assert not any(re.search(r"\bray\s+stop\b", c) for c in commands)  # nothing stops a Ray it did not start


SECRET_NAME = re.compile(r"secret|password|passwd|token|access_key|private_key", re.IGNORECASE)
REFERENCE = re.compile(r"^[~/.$]")  # a path or an ${ENV} reference names a secret, it doesn't hold one
SECRET_TEXT = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # an AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)(secret|password|passwd|token|access_key)[a-z_]*\s*[=:]\s*['\"]?[^\s'\"$<]"),  # X_TOKEN=abc
]


def secrets_in(value, where="") -> list[str]:
    """Where a parsed YAML value holds something that looks like a credential."""
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            if SECRET_NAME.search(str(key)) and isinstance(item, str | int) and not REFERENCE.match(str(item)):
                found.append(f"{where}.{key}")
            found += secrets_in(key, f"{where}.{key}[key]") + secrets_in(item, f"{where}.{key}")
        return found
    if isinstance(value, list):
        return [hit for i, item in enumerate(value) for hit in secrets_in(item, f"{where}[{i}]")]
    return [where] if isinstance(value, str) and any(p.search(value) for p in SECRET_TEXT) else []


def test_no_secrets_in_the_file(config):
    assert secrets_in(config) == []
    for pattern in SECRET_TEXT[:2]:  # comments included
        assert not pattern.search(CONFIG_PATH.read_text())


@pytest.mark.parametrize(
    "planted",
    [
        {"provider": {"aws_secret_access_key": "abc"}},
        {"setup_commands": ["export AWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP"]},
        {"setup_commands": ["RAY_AUTH_TOKEN=3f2a9c ray start --head"]},
        {"docker": {"run_options": ["-e DB_PASSWORD=hunter2"]}},
    ],
)
def test_the_secret_check_finds_planted_secrets(config, planted):
    assert secrets_in({**config, **planted})
