"""The production profile's files agree with each other: the compose services, the image they build, the Dagster
instance, the workspace, the celery worker config and the Postgres databases."""

import importlib.util
import posixpath
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from ft_pipeline.settings import knobs

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DAGSTER_SERVICES = ("code", "webserver", "daemon", "worker")
FT_SERVICES = ("mlflow", *DAGSTER_SERVICES)

# safe_load resolves the `<<: *ft` merge keys, so each service below already holds the shared build and environment
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES = COMPOSE["services"]


def read_env_names(node) -> set[str]:
    """The environment variables a parsed Dagster config reads through `env: NAME` entries."""
    if isinstance(node, dict):
        names = {node["env"]} if isinstance(node.get("env"), str) else set()
        return names.union(*(read_env_names(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(read_env_names(value) for value in node))
    return set()


def instance_env_names() -> set[str]:
    """The variables deploy/dagster.yaml and deploy/celery.yaml read."""
    return read_env_names(
        [yaml.safe_load((DEPLOY / name).read_text(encoding="utf-8")) for name in ("dagster.yaml", "celery.yaml")]
    )


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (keyword, arguments), continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (keyword.upper(), arguments)
        for keyword, arguments in (line.split(None, 1) for line in lines if line and not line.startswith("#"))
    ]


def image_env() -> dict[str, str]:
    """The variables the Dockerfile's ENV instructions set."""
    pairs = [pair for keyword, arguments in dockerfile_instructions() if keyword == "ENV" for pair in shlex.split(arguments)]
    return dict(pair.split("=", 1) for pair in pairs)


def image_files() -> dict[str, Path]:
    """The repo path of each file or folder the Dockerfile copies, by where it lands in the image."""
    workdir, copied = "/", {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, arguments)
        elif keyword == "COPY":
            *sources, destination = shlex.split(arguments)
            destination = posixpath.join(workdir, destination)
            into_folder = len(sources) > 1 or destination.endswith("/")
            for source in sources:
                target = posixpath.join(destination, posixpath.basename(source)) if into_folder else destination
                copied[posixpath.normpath(target)] = REPO / source
    return copied


def option(command: str, flag: str) -> str:
    """The value after `flag` in a service's command line."""
    words = shlex.split(command)
    return words[words.index(flag) + 1]


def test_compose_defines_the_production_services_built_from_the_repo():
    assert set(SERVICES) == {"postgres", "redis", *FT_SERVICES}
    for name in FT_SERVICES:
        build = SERVICES[name]["build"]
        assert (DEPLOY / build["context"]).resolve() == REPO, name
        assert (REPO / build["dockerfile"]).is_file(), name


def test_dagster_processes_get_every_variable_the_instance_and_the_worker_config_read():
    read = instance_env_names()
    assert {"DAGSTER_PG_URL", "FT_CELERY_BROKER_URL", "FT_CELERY_BACKEND_URL"} <= read
    for name in DAGSTER_SERVICES:
        assert read - set(SERVICES[name]["environment"]) == set(), name


def test_every_ft_variable_set_is_a_knob_or_read_by_the_instance():
    known = {f.metadata["env"] for f in knobs()} | instance_env_names()
    for name in FT_SERVICES:
        unknown = {variable for variable in SERVICES[name]["environment"] if variable.startswith("FT_")} - known
        assert unknown == set(), name


def test_the_image_holds_the_files_it_copies_and_the_instance_in_dagster_home():
    files = image_files()
    assert [path for path in files.values() if not path.exists()] == []
    assert files[posixpath.join(image_env()["DAGSTER_HOME"], "dagster.yaml")] == DEPLOY / "dagster.yaml"


def test_webserver_daemon_and_worker_load_their_config_from_where_the_image_holds_it():
    files = image_files()
    for name in ("webserver", "daemon"):
        assert files[option(SERVICES[name]["command"], "-w")] == DEPLOY / "workspace.yaml", name
    assert files[option(SERVICES["worker"]["command"], "-y")] == DEPLOY / "celery.yaml"


def test_the_workspace_reaches_the_code_server_where_it_listens():
    code_command = SERVICES["code"]["command"]
    assert shlex.split(code_command)[:3] == ["dagster", "api", "grpc"]
    assert importlib.util.find_spec(option(code_command, "-m")) is not None
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text(encoding="utf-8"))
    [server] = [location["grpc_server"] for location in workspace["load_from"]]
    assert server["host"] == "code"
    assert server["port"] == int(option(code_command, "-p"))


def test_mlflow_and_dagster_databases_exist_with_the_postgres_credentials():
    postgres = SERVICES["postgres"]["environment"]
    mounts = [volume.split(":") for volume in SERVICES["postgres"]["volumes"]]
    init_scripts = [
        (DEPLOY / source).resolve() for source, target, *_ in mounts if target.startswith("/docker-entrypoint-initdb.d/")
    ]
    assert init_scripts == [DEPLOY / "postgres-init.sql"]
    init_sql = init_scripts[0].read_text(encoding="utf-8")
    databases = {postgres["POSTGRES_DB"], *re.findall(r"CREATE DATABASE\s+(\w+)", init_sql, re.IGNORECASE)}
    urls = [option(SERVICES["mlflow"]["command"], "--backend-store-uri")]
    urls += [SERVICES[name]["environment"]["DAGSTER_PG_URL"] for name in DAGSTER_SERVICES]
    for url in urls:
        parts = urlsplit(url)
        # SQLAlchemy reads a bare postgresql:// as psycopg 3, which the image does not install
        assert parts.scheme == "postgresql+psycopg2", url
        assert (parts.hostname, parts.port) == ("postgres", 5432), url
        assert (parts.username, parts.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]), url
        assert parts.path.lstrip("/") in databases, url


def test_every_path_a_process_writes_lies_on_a_volume():
    def mounted(service: str, path: str) -> bool:
        targets = [volume.split(":")[1] for volume in SERVICES[service]["volumes"]]
        return any(path == target or path.startswith(f"{target}/") for target in targets)

    for name in DAGSTER_SERVICES:
        environment = SERVICES[name]["environment"]
        assert mounted(name, environment["FT_DATA_DIR"]) and mounted(name, environment["FT_DAGSTER_LOCAL_DIR"]), name
    assert mounted("mlflow", option(SERVICES["mlflow"]["command"], "--artifacts-destination"))
    named = {volume.split(":")[0] for service in SERVICES.values() for volume in service.get("volumes", [])}
    assert {volume for volume in named if not volume.startswith(".")} <= set(COMPOSE["volumes"])


def test_published_ports_bind_to_localhost_only():
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:") and port.count(":") == 2, name
