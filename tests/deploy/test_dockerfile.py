"""deploy/Dockerfile without a Docker engine: its structure, its build context (.dockerignore)
and the steps it runs — the requirements list and the wheel are built here from exactly the
files Docker would send, and the image's HEALTHCHECK command is run against a real
``HealthServer``."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from deploy_files import DOCKERFILE, DOCKERIGNORE, REPO
from digitmatch.cli import build_parser

spec = importlib.util.spec_from_file_location("deploy_requirements", REPO / "deploy" / "requirements.py")
deploy_requirements = importlib.util.module_from_spec(spec)
spec.loader.exec_module(deploy_requirements)


# ------------------------------------------------------------------ Dockerfile parsing


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list] = {}
    current = None
    for keyword, rest in instructions():
        if keyword == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            result[current] = []
        elif current is not None:
            result[current].append((keyword, rest))
    return result


def healthcheck_command() -> list[str]:
    rest = next(rest for keyword, rest in instructions() if keyword == "HEALTHCHECK")
    return json.loads(rest[rest.index("CMD") + 3 :].strip())


def serve_default(dest: str):
    parser = build_parser(only="serve")
    sub = next(a for a in parser._actions if a.dest == "command").choices["serve"]
    return next(a.default for a in sub._actions if a.dest == dest)


def test_base_image_is_pinned():
    args = dict(rest.split("=", 1) for keyword, rest in instructions() if keyword == "ARG" and "=" in rest)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    froms = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert froms[0] == "${PYTHON_IMAGE} AS deps"
    assert list(stages())[-1] == "runtime", "the last stage is what `docker build` tags by default"


def test_runs_as_non_root():
    runtime = stages()["runtime"]
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert int(user) >= 1000


def test_dependency_layer_comes_before_the_code():
    """Code changes must not invalidate the TensorFlow layer: only pyproject.toml (and the script
    that reads it) are copied before `pip install -r`."""
    deps = stages()["deps"]
    copies = [rest for keyword, rest in deps if keyword == "COPY"]
    assert copies == ["pyproject.toml deploy/requirements.py ./"]
    installs = [i for i, (k, rest) in enumerate(deps) if k == "RUN" and "pip install -r requirements.txt" in rest]
    first_copy = next(i for i, (k, _) in enumerate(deps) if k == "COPY")
    assert installs and installs[0] > first_copy
    code_copies = [rest for keyword, rest in stages()["wheel"] if keyword == "COPY"]
    assert any(rest.startswith("digitmatch ") for rest in code_copies)


def test_variant_build_arg_selects_requirements():
    deps = dict(stages())["deps"]
    assert ("ARG", "VARIANT=cpu") in deps
    run = next(rest for keyword, rest in deps if keyword == "RUN" and "requirements.py" in rest)
    assert '--variant "$VARIANT"' in run
    assert set(deploy_requirements.VARIANTS) == {"cpu", "gpu"}


def test_entrypoint_and_port():
    runtime = dict(stages()["runtime"])
    assert json.loads(runtime["ENTRYPOINT"]) == ["digitmatch"]
    assert json.loads(runtime["CMD"]) == ["serve"]
    port = int(serve_default("metrics_port"))
    assert runtime["EXPOSE"] == str(port)
    assert f"DIGITMATCH_METRICS_PORT={port}" in runtime["ENV"]
    assert "DIGITMATCH_METRICS_HOST=0.0.0.0" in runtime["ENV"]


# ------------------------------------------------------------------ requirements per variant


def test_cpu_requirements_are_the_project_dependencies():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert deploy_requirements.requirements(REPO / "pyproject.toml", "cpu") == project["dependencies"]


def test_gpu_requirements_swap_tensorflow():
    reqs = deploy_requirements.requirements(REPO / "pyproject.toml", "gpu")
    names = [deploy_requirements.project_name(r) for r in reqs]
    assert "tensorflow-cpu" not in names
    assert names.count("tensorflow") == 1
    assert any(r.startswith("tensorflow[and-cuda]") for r in reqs)
    assert "prometheus-client" in names and "kafka-python" in names and "confluent-kafka" in names


def test_requirements_script_errors(tmp_path):
    bad = tmp_path / "pyproject.toml"
    bad.write_text('[project]\nname = "x"\ndependencies = []\n')
    script = REPO / "deploy" / "requirements.py"
    result = subprocess.run([sys.executable, script, "--variant", "gpu", bad], capture_output=True, text=True)
    assert result.returncode == 2
    assert str(bad) in result.stderr and "gpu" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(ValueError, match="unknown variant"):
        deploy_requirements.requirements(REPO / "pyproject.toml", "tpu")


# ------------------------------------------------------------------ build context


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negated, re.compile(regex + r"\Z")))
    return patterns


def context_files() -> list[str]:
    """Files Docker sends as the build context: the last matching pattern (on the path or one
    of its parents) decides, `!` re-includes — Docker's .dockerignore rules."""
    patterns = dockerignore_patterns()
    kept = []
    for path in sorted(REPO.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(REPO).as_posix()
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if prefixes[0] in (".git", ".venv"):
            continue
        ignored = False
        for negated, regex in patterns:
            if any(regex.match(p) for p in prefixes):
                ignored = not negated
        if not ignored:
            kept.append(rel)
    return kept


@pytest.fixture(scope="module")
def context() -> list[str]:
    return context_files()


def test_context_holds_what_the_image_needs(context):
    files = set(context)
    assert {"pyproject.toml", "README.md", "LICENSE", "deploy/requirements.py", "digitmatch/cli.py"} <= files
    assert "consumer/matcher.py" in files and "producer/__init__.py" in files and "model/serving.py" in files
    shipped = [p.relative_to(REPO).as_posix() for p in (REPO / "model" / "savedmodels").rglob("*") if p.is_file()]
    assert set(shipped) <= files, "the shipped model must reach the image"


def test_context_leaves_out_the_rest(context):
    for rel in context:
        top = rel.split("/")[0]
        assert top not in ("tests", "docs", ".venv", ".git", ".ci") and "__pycache__" not in rel, rel
    assert not any(rel.endswith(".pyc") or rel.startswith("deploy/grafana") for rel in context)


def test_every_copy_source_is_in_the_context(context):
    files = set(context)
    for keyword, rest in instructions():
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        for source in sources:
            assert source in files or any(f.startswith(source + "/") for f in files), source


@pytest.mark.slow
def test_wheel_from_the_context_installs_and_runs(context, tmp_path):
    """The Dockerfile's wheel stage, run here: the context files alone build a wheel that holds
    the CLI, all subpackages and the shipped model, and the installed wheel finds that model."""
    ctx = tmp_path / "context"
    for rel in context:
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, ctx / rel)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", wheels, "."],
        cwd=ctx, capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("digitmatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("cli.py", "wire.py", "consumer/matcher.py", "consumer/health.py", "model/serving.py",
                   "kafka/configuration.py", "data/__init__.py", "producer/__init__.py"):
        assert f"digitmatch/{module}" in names, module
    shipped = sorted(p for p in (REPO / "model" / "savedmodels").rglob("*") if p.is_file())
    for path in shipped:
        assert "digitmatch/" + path.relative_to(REPO).as_posix() in names, path
    # Every module of the context lands in the wheel: a subpackage missing from pyproject.toml's
    # package list would be missing from the image.
    import tomllib

    setuptools_config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dirs = setuptools_config.get("package-dir", {})

    def directory_of(package: str) -> str:
        """The source directory of a package: package-dir's mapping of it or of a parent, else its own path."""
        for prefix, directory in sorted(package_dirs.items(), key=lambda item: -len(item[0])):
            if package == prefix or package.startswith(prefix + "."):
                return directory + package[len(prefix):].replace(".", "/")
        return package.replace(".", "/")

    by_dir = {directory_of(package): package.replace(".", "/") for package in setuptools_config["packages"]}
    # Package data too: the held-out sample (the compose producer's data) and the shipped model.
    for package, patterns in setuptools_config.get("package-data", {}).items():
        directory = REPO / directory_of(package)
        for pattern in patterns:
            for path in directory.glob(pattern):
                if path.is_file() and "__pycache__" not in path.parts:
                    rel = path.relative_to(directory).as_posix()
                    assert f"{package.replace('.', '/')}/{rel}" in names, path
    for rel in context:
        if not rel.endswith(".py") or rel.split("/")[0] not in {d.split("/")[0] for d in by_dir}:
            continue  # deploy/requirements.py: a build step, not part of the package
        directory, _, filename = rel.rpartition("/")
        assert directory in by_dir, f"{directory}/ is not a package in pyproject.toml"
        assert f"{by_dir[directory]}/{filename}" in names, rel
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "digitmatch = digitmatch.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--target", site, wheel],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr
    env = dict(os.environ, PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("DIGITMATCH_MODEL", None)
    probe = subprocess.run(
        [sys.executable, "-c",
         "import digitmatch, digitmatch.model.serving as s; print(digitmatch.__file__); print(s.DEFAULT_MODEL_ROOT)"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,  # not the checkout's digitmatch/
    )
    package_file, model_root = probe.stdout.split()
    assert Path(package_file).is_relative_to(site), "the installed wheel, not the checkout, was imported"
    assert Path(model_root).is_relative_to(site)
    if shipped:
        assert (Path(model_root)).is_dir()
    help_run = subprocess.run(
        [sys.executable, "-m", "digitmatch.cli", "serve", "--help"], env=env, capture_output=True, text=True,
        timeout=120, cwd=tmp_path,
    )
    assert help_run.returncode == 0, help_run.stderr
    # The default --model is the copy of the shipped model inside the installed package.
    assert str(Path(model_root)) in "".join(help_run.stdout.split())


# ------------------------------------------------------------------ HEALTHCHECK


def run_healthcheck(port: int) -> subprocess.CompletedProcess:
    command = healthcheck_command()
    assert command[0] == "python"
    env = dict(os.environ, DIGITMATCH_METRICS_PORT=str(port))
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, text=True, timeout=30)


def test_healthcheck_follows_readiness():
    """The image's HEALTHCHECK, run against the matcher's real health server: healthy when
    /readyz says ready, unhealthy when it does not or nothing listens."""
    from digitmatch.consumer.health import HealthServer
    from digitmatch.consumer.metrics import MatcherMetrics

    state = {"model_loaded": True, "partitions_assigned": False}
    server = HealthServer(MatcherMetrics(), lambda: dict(state), host="127.0.0.1", port=0).start()
    try:
        assert run_healthcheck(server.port).returncode != 0
        state["partitions_assigned"] = True
        result = run_healthcheck(server.port)
        assert result.returncode == 0, result.stderr
    finally:
        server.stop()
    assert run_healthcheck(server.port).returncode != 0


def test_healthcheck_default_port_is_the_matchers():
    command = " ".join(healthcheck_command())
    assert f"'DIGITMATCH_METRICS_PORT', '{serve_default('metrics_port')}'" in command
    assert "/readyz" in command
