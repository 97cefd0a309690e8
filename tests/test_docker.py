"""Static checks of docker/Dockerfile, docker/compose.yaml and .dockerignore.

Why: CI has no Docker engine, so the image is never built there. These tests read the files the way Docker
would (instructions, continuation lines, ARG defaults, .dockerignore patterns, compose merge keys) and check
that what they point at exists in the repository, that secrets stay out, and that the runtime layout
(non-root user, volumes, GPU, shared logs) holds together.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = REPO / "pyproject.toml"
CONSTRAINTS = REPO / "constraints.txt"

#: Extras the image can install (NLICOT_EXTRAS); their requirements must be pinned like the core ones.
IMAGE_EXTRAS = ("bench",)
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD", re.IGNORECASE)
#: Literal credentials: Hugging Face tokens, or any long opaque string after a secret-like name.
SECRET_LITERAL = re.compile(r"hf_[A-Za-z0-9]{20,}|(?:TOKEN|KEY|SECRET)\w*\s*[=:]\s*['\"]?[A-Za-z0-9_\-]{16,}")


# --------------------------------------------------------------------------------------------- Dockerfile


class Instruction(NamedTuple):
    keyword: str  # upper-case: FROM, RUN, COPY, ...
    value: str  # arguments, continuation lines joined
    line: int  # 1-based line where the instruction starts


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions the way Docker does.

    A trailing backslash joins the next line (backslash and newline removed); comment lines and blank lines
    inside a continued instruction are dropped, as Docker drops them.
    """
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        body = raw.rstrip()
        if body.endswith("\\"):
            pending.append(body[:-1])
            continue
        pending.append(body)
        keyword, _, value = "".join(pending).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
        pending = []
    assert not pending, f"{DOCKERFILE}: the last instruction (line {start}) ends in a continuation"
    return instructions


def expand(value: str, variables: dict[str, str]) -> str:
    """Substitute ``${NAME}`` / ``$NAME`` from build-argument defaults (unknown names are left alone)."""
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)",
        lambda m: variables.get(m.group(1) or m.group(2), m.group(0)),
        value,
    )


def exec_form(value: str) -> list[str]:
    """Arguments of ENTRYPOINT/CMD/VOLUME: the JSON array form, else whitespace-split shell form."""
    return json.loads(value) if value.startswith("[") else value.split()


class Copy(NamedTuple):
    sources: list[str]
    dest: PurePosixPath  # absolute, resolved against the WORKDIR in effect


class Image(NamedTuple):
    """What the final stage of the Dockerfile declares, with build-argument defaults applied."""

    base: str
    args: dict[str, str]
    env: dict[str, str]
    workdir: PurePosixPath
    user: str
    volumes: list[PurePosixPath]
    copies: list[Copy]
    entrypoint: list[str]
    cmd: list[str]
    instructions: list[Instruction]


def _assignments(value: str) -> dict[str, str]:
    """``K=V K2="V 2"`` (ARG, ENV, LABEL); ``ENV K V`` legacy form too. ARG without default maps to ''."""
    words = shlex.split(value)
    if words and "=" not in words[0] and len(words) > 1:
        return {words[0]: " ".join(words[1:])}
    return dict((w.split("=", 1) + [""])[:2] for w in words)


def load_image(text: str) -> Image:
    """Replay the instructions in order, tracking what each one changes in the final stage."""
    instructions = parse_dockerfile(text)
    meta_args: dict[str, str] = {}  # ARGs before the first FROM: visible to FROM, and to stages that redeclare them
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    base, user = "", "root"
    workdir = PurePosixPath("/")
    volumes: list[PurePosixPath] = []
    copies: list[Copy] = []
    entrypoint: list[str] = []
    cmd: list[str] = []
    seen_from = False
    for ins in instructions:
        variables = {**args, **env}
        if ins.keyword == "ARG":
            for name, default in _assignments(ins.value).items():
                if not seen_from:
                    meta_args[name] = default
                else:
                    args[name] = expand(default, variables) if default else meta_args.get(name, "")
        elif ins.keyword == "FROM":
            # A new stage starts clean; only the final stage is the image that runs.
            base, seen_from = expand(ins.value.split()[0], meta_args), True
            args, env, volumes, copies, user, workdir = {}, {}, [], [], "root", PurePosixPath("/")
        elif ins.keyword == "ENV":
            env.update({k: expand(v, variables) for k, v in _assignments(ins.value).items()})
        elif ins.keyword == "WORKDIR":
            workdir = workdir / expand(ins.value, variables)
        elif ins.keyword == "USER":
            user = expand(ins.value, variables)
        elif ins.keyword == "VOLUME":
            volumes += [PurePosixPath(expand(v, variables)) for v in exec_form(ins.value)]
        elif ins.keyword in ("COPY", "ADD"):
            words = exec_form(ins.value) if ins.value.startswith("[") else shlex.split(ins.value)
            if any(w.startswith("--from") for w in words):
                continue  # from another stage or image, not from the build context
            paths = [expand(w, variables) for w in words if not w.startswith("--")]
            copies.append(Copy(paths[:-1], workdir / paths[-1]))
        elif ins.keyword == "ENTRYPOINT":
            entrypoint = exec_form(ins.value)
        elif ins.keyword == "CMD":
            cmd = exec_form(ins.value)
    return Image(base, args, env, workdir, user, volumes, copies, entrypoint, cmd, instructions)


def repo_path_in_image(image: Image, path: PurePosixPath) -> Path | None:
    """The repository file that ends up at ``path`` inside the image, or None when no COPY puts one there."""
    for copy in reversed(image.copies):  # a later COPY overwrites an earlier one
        for source in copy.sources:
            source_path = REPO / source
            if source_path.is_dir() or source.endswith("/"):
                if path == copy.dest or copy.dest in path.parents:
                    return source_path / path.relative_to(copy.dest)
            elif path in (copy.dest, copy.dest / PurePosixPath(source).name):
                return source_path
    return None


# ------------------------------------------------------------------------------------------ .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob: ``**`` spans folders, ``*`` and ``?`` stay within one."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``relative`` out of the build context: the last pattern that matches the path
    or one of its parent folders decides, ``!`` re-includes."""
    parts = PurePosixPath(relative).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(c) for c in candidates):
            verdict = not negate
    return verdict


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


# ------------------------------------------------------------------------------------------------ compose


def service_argv(service: dict, image: Image) -> list[str]:
    """The full command a service runs: its entrypoint (or the image's) followed by its command."""
    return list(service.get("entrypoint", image.entrypoint)) + list(service.get("command", image.cmd))


def service_environment(service: dict) -> dict[str, str | None]:
    """Compose ``environment`` as a dict; a bare name (list form) or a null value maps to None, meaning
    "take it from the shell that runs docker compose"."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return dict(env)
    return {name: (value or None) for name, _, value in (item.partition("=") for item in env)}


class Mount(NamedTuple):
    source: str
    target: PurePosixPath
    read_only: bool


def service_mounts(service: dict) -> list[Mount]:
    """Compose volumes in short (``source:target[:mode]``) or long syntax. The short source may be an
    interpolation such as ``${VAR:-../data}``, so the target is the first ``:/`` part, not a plain split."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append(Mount(volume["source"], PurePosixPath(volume["target"]), volume.get("read_only", False)))
            continue
        match = re.fullmatch(r"(?P<source>.+?):(?P<target>/[^:]*)(?::(?P<mode>\w+))?", volume)
        assert match, f"{COMPOSE}: cannot read the volume {volume!r}"
        mounts.append(Mount(match["source"], PurePosixPath(match["target"]), match["mode"] == "ro"))
    return mounts


def covered(path: PurePosixPath, mounts: list[PurePosixPath]) -> bool:
    return any(path == m or m in path.parents for m in mounts)


@pytest.fixture(scope="module")
def image() -> Image:
    return load_image(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # SafeLoader resolves the `<<: *anchor` merge keys


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


# ------------------------------------------------------------------------------------------ parser checks


def test_parser_joins_continuations_and_drops_comments_inside_them() -> None:
    text = "# c\nFROM a:1\nRUN one \\\n  # dropped\n\n  && two\nENV A=1 \\\n    B=\"x y\"\n"
    ins = parse_dockerfile(text)
    assert [(i.keyword, i.line) for i in ins] == [("FROM", 2), ("RUN", 3), ("ENV", 7)]
    assert ins[1].value == "one   && two"
    assert _assignments(ins[2].value) == {"A": "1", "B": "x y"}


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    patterns = ["*", "!src/", "**/__pycache__"]
    assert ignored(".env", patterns) and ignored("data/x.jsonl", patterns)
    assert not ignored("src/a.py", patterns) and not ignored("src/sub/b.py", patterns)
    assert ignored("src/__pycache__/a.pyc", patterns) and ignored("__pycache__", patterns)


# ------------------------------------------------------------------------------------------------ image


def test_base_image_is_a_cuda_pytorch_tag_within_the_pyproject_torch_range(image: Image, project: dict) -> None:
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn\d+-runtime", image.base)
    assert match, f"{DOCKERFILE}: FROM {image.base!r} is not a pinned pytorch/pytorch CUDA runtime tag"
    torch = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch")
    assert Version(match.group(1)) in torch.specifier, f"base torch {match.group(1)} outside pyproject {torch}"


def test_every_copy_source_exists_and_is_sent_in_the_build_context(image: Image) -> None:
    patterns = dockerignore_patterns()
    sources = [s for copy in image.copies for s in copy.sources]
    assert sources, "the Dockerfile copies nothing from the repository"
    for source in sources:
        path = REPO / source
        assert path.exists(), f"{DOCKERFILE}: COPY source {source!r} does not exist in the repository"
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if "__pycache__" not in relative:
                assert not ignored(relative, patterns), f"{DOCKERIGNORE} leaves out {relative}, which COPY needs"


def test_build_context_leaves_out_secrets_and_local_state() -> None:
    patterns = dockerignore_patterns()
    for path in (".env", ".venv/bin/python", ".git/HEAD", ".cache/nlicot/tiny/config.json",
                 "data/demo/train.jsonl", "lightning_logs/version_0/events.out", "nlicot/__pycache__/a.pyc"):
        assert ignored(path, patterns), f"{DOCKERIGNORE} sends {path} to the Docker builder"


def test_dependency_install_is_cached_apart_from_the_sources(image: Image) -> None:
    ins = image.instructions
    copies = {i.value.split()[0]: n for n, i in enumerate(ins) if i.keyword == "COPY"}
    copy_pyproject, copy_sources = copies["pyproject.toml"], copies["nlicot/"]
    install_deps = next(n for n, i in enumerate(ins) if i.keyword == "RUN" and "pip install" in i.value)
    assert copy_pyproject < install_deps < copy_sources
    assert len(ins[copy_pyproject].value.split()) == 2, "only pyproject.toml may feed the dependency layer"
    assert "pyproject.toml" in ins[install_deps].value, "dependencies must be read from pyproject.toml"
    package_installs = [i for i in ins[copy_sources:] if i.keyword == "RUN" and "pip install" in i.value]
    assert package_installs and all("--no-deps" in i.value for i in package_installs), \
        "after the sources are copied, pip must not resolve dependencies again (that would defeat the cache)"


def constraint_pins() -> dict[str, Version]:
    """constraints.txt: ``name==version`` per line (comments and blank lines aside)."""
    pins = {}
    for number, line in enumerate(CONSTRAINTS.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{CONSTRAINTS}:{number}: {line!r} is not an exact pin"
            pins[canonicalize_name(requirement.name)] = Version(spec.version)
    return pins


def test_every_runtime_dependency_is_pinned_inside_its_pyproject_range(image: Image, project: dict) -> None:
    install = next(i for i in image.instructions if i.keyword == "RUN" and "pip install" in i.value)
    assert "constraints.txt" in install.value and "--constraint" in install.value, \
        f"{DOCKERFILE}: pip does not install with {CONSTRAINTS.name}"
    assert any(c.sources == ["constraints.txt"] for c in image.copies), f"{DOCKERFILE}: constraints.txt is not copied"
    assert not re.search(r"[\w-]==\d", install.value), f"{DOCKERFILE}: pins belong in {CONSTRAINTS.name}, not here"
    pins = constraint_pins()
    required = project["dependencies"] + [r for extra in IMAGE_EXTRAS for r in project["optional-dependencies"][extra]]
    for requirement in map(Requirement, required):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{CONSTRAINTS}: {requirement.name} is not pinned"
        assert pins[name] in requirement.specifier, f"{CONSTRAINTS}: {name}=={pins[name]} breaks pyproject {requirement}"
    assert str(pins["torch"]) in image.base, "torch must be pinned to the build the base image ships"


def test_ci_installs_with_the_same_constraints_and_every_pin_fits_pyproject(project: dict) -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"pip install .*(-c|--constraint) constraints\.txt .*-e \"\.\[dev(,real)?\]\"", ci), \
        ".ci/run must install with constraints.txt"
    pins = constraint_pins()
    ranges = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for requirement in map(Requirement, ranges):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{CONSTRAINTS}: {requirement.name} (pyproject) is not pinned"
        assert pins[name] in requirement.specifier, f"{CONSTRAINTS}: {name}=={pins[name]} breaks pyproject {requirement}"


def test_runs_as_a_non_root_user_created_in_the_image(image: Image) -> None:
    uid = image.user.split(":")[0]
    assert uid not in ("root", "0", ""), f"{DOCKERFILE}: the image runs as {image.user!r}"
    assert any(i.keyword == "RUN" and "useradd" in i.value for i in image.instructions)
    last_user = max(n for n, i in enumerate(image.instructions) if i.keyword == "USER")
    entrypoint = next(n for n, i in enumerate(image.instructions) if i.keyword == "ENTRYPOINT")
    assert last_user < entrypoint, "the user must be switched before the entry point is declared"


def test_volumes_hold_hf_home_and_lightning_logs_owned_by_the_user(image: Image) -> None:
    assert "HF_HOME" in image.env, f"{DOCKERFILE}: HF_HOME is not set"
    for path in (PurePosixPath(image.env["HF_HOME"]), image.workdir / "lightning_logs"):
        assert covered(path, image.volumes), f"{DOCKERFILE}: {path} is not inside a VOLUME"
    volume_at = next(n for n, i in enumerate(image.instructions) if i.keyword == "VOLUME")
    prepare = [i.value for i in image.instructions[:volume_at] if i.keyword == "RUN" and "chown" in i.value]
    for volume in image.volumes:
        assert any(str(volume) in run for run in prepare), f"{volume} is not created and chowned before VOLUME"


def test_entrypoint_is_the_nlicot_module_with_unbuffered_output(image: Image) -> None:
    assert image.entrypoint[:3] == ["python", "-m", "nlicot"]
    assert repo_path_in_image(image, image.workdir / "nlicot" / "__main__.py") == REPO / "nlicot" / "__main__.py"
    assert (REPO / "nlicot" / "__main__.py").is_file(), "nlicot/__main__.py is missing: `python -m nlicot` fails"
    assert image.env.get("PYTHONUNBUFFERED") == "1"


def test_dockerfile_bakes_in_no_secret(image: Image) -> None:
    for ins in image.instructions:
        if ins.keyword in ("ARG", "ENV"):
            names = [n for n in _assignments(ins.value) if SECRET_NAME.search(n)]
            assert not names, f"{DOCKERFILE}:{ins.line}: {names} would be stored in the image; pass them at run time"
    assert not SECRET_LITERAL.search(DOCKERFILE.read_text())


# ---------------------------------------------------------------------------------------------- compose


def test_every_service_builds_this_dockerfile_from_the_repository_root(compose: dict) -> None:
    assert set(compose["services"]) >= {"train", "data_gen", "tensorboard"}
    for name, service in compose["services"].items():
        build = service.get("build")
        assert build, f"{COMPOSE}: service {name} has no build section, `compose up` would try to pull"
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == REPO, f"{COMPOSE}: {name} builds from {context}, not the repository root"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE


@pytest.mark.parametrize("name", ["train", "data_gen"])
def test_service_runs_an_existing_module_and_config(compose: dict, image: Image, name: str) -> None:
    argv = service_argv(compose["services"][name], image)
    assert argv[:2] == ["python", "-m"], f"{COMPOSE}: {name} runs {argv}"
    main = image.workdir / argv[2] / "__main__.py"
    assert repo_path_in_image(image, main) == REPO / argv[2] / "__main__.py", f"no COPY puts {main} in the image"
    assert (REPO / argv[2] / "__main__.py").is_file(), f"`python -m {argv[2]}` has no {argv[2]}/__main__.py"
    config = PurePosixPath(argv[argv.index("--config") + 1])
    source = repo_path_in_image(image, image.workdir / config)
    assert source == REPO / config, f"no COPY puts {config} at {image.workdir / config}"
    assert source.is_file(), f"{COMPOSE}: {name} reads {config}, which does not exist in the repository"


def test_train_runs_fit_with_the_best_config_on_a_reserved_gpu(compose: dict, image: Image) -> None:
    train = compose["services"]["train"]
    assert service_argv(train, image) == ["python", "-m", "nlicot", "fit", "--config", "configs/best.yaml"]
    devices = train["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) and d.get("driver") == "nvidia" for d in devices)


def test_keys_are_passed_from_the_host_environment_never_written(compose: dict) -> None:
    environments = {name: service_environment(s) for name, s in compose["services"].items()}
    assert "HF_TOKEN" in environments["train"]
    assert "MISTRAL_API_KEY" in environments["data_gen"]
    for name, env in environments.items():
        for variable, value in env.items():
            if SECRET_NAME.search(variable):
                assert value is None, f"{COMPOSE}: {name} sets {variable} in the file; pass it through by name"
    assert not SECRET_LITERAL.search(COMPOSE.read_text())


def test_train_persists_hf_home_logs_and_reads_mounted_data(compose: dict, image: Image) -> None:
    mounts = service_mounts(compose["services"]["train"])
    targets = [m.target for m in mounts]
    for path in (PurePosixPath(image.env["HF_HOME"]), image.workdir / "lightning_logs", image.workdir / "data"):
        assert covered(path, targets), f"{COMPOSE}: train does not mount a volume over {path}"
    logs = next(m for m in mounts if m.target == image.workdir / "lightning_logs")
    assert logs.source in compose["volumes"], "the logs must live in a named volume that tensorboard can share"


def test_tensorboard_serves_the_train_logs_volume_on_port_6006(compose: dict, image: Image, project: dict) -> None:
    train_mounts = service_mounts(compose["services"]["train"])
    logs = next(m for m in train_mounts if m.target == image.workdir / "lightning_logs")
    tensorboard = compose["services"]["tensorboard"]
    argv = service_argv(tensorboard, image)
    assert argv[0] == "tensorboard"
    assert any(Requirement(r).name == "tensorboard" for r in project["dependencies"]), "the image lacks tensorboard"
    logdir = PurePosixPath(argv[argv.index("--logdir") + 1])
    shared = [m for m in service_mounts(tensorboard) if m.source == logs.source]
    assert shared and covered(logdir, [m.target for m in shared]), "tensorboard does not read the train logs volume"
    assert any(str(port).split(":")[-1] == "6006" for port in tensorboard["ports"])
    assert argv[argv.index("--port") + 1] == "6006"


def host_folder(source: str) -> Path:
    """A bind mount's host folder as Compose resolves it without the variable set: ``${VAR:-default}`` → default,
    relative to the compose file's folder."""
    match = re.fullmatch(r"\$\{\w+:-(?P<default>[^}]+)\}", source)
    return (COMPOSE.parent / (match["default"] if match else source)).resolve()


def config_folders(config: Path, keys: tuple[str, ...]) -> set[PurePosixPath]:
    """The top-level folders (relative to the image's workdir) of the paths a config names under ``keys``."""
    data = yaml.safe_load(config.read_text())
    paths = [data["data"][k] for k in keys if data["data"].get(k)] if "data" in data else [data[k] for k in keys]
    return {PurePosixPath(p).parts[0] for p in paths if not PurePosixPath(p).is_absolute()}


def test_train_mounts_every_folder_its_config_reads_from_the_repository(compose: dict, image: Image) -> None:
    """configs/best.yaml reads corpus/*.jsonl: without a mount over /app/corpus, fit fails at prepare_data."""
    mounts = service_mounts(compose["services"]["train"])
    for folder in config_folders(REPO / "configs" / "best.yaml", ("train_path", "val_path", "test_path")):
        target = image.workdir / folder
        mount = next((m for m in mounts if m.target == target), None)
        assert mount is not None, f"{COMPOSE}: train reads {folder}/ (configs/best.yaml) but mounts nothing at {target}"
        assert host_folder(mount.source) == REPO / folder, f"{target} is not the repository's {folder}/"


def test_data_gen_build_writes_into_the_corpus_folder_that_train_reads(compose: dict, image: Image) -> None:
    (out_dir,) = config_folders(REPO / "configs" / "data_gen" / "build.yaml", ("out_dir",))
    written = next(m for m in service_mounts(compose["services"]["data_gen"]) if m.target == image.workdir / out_dir)
    read = next(m for m in service_mounts(compose["services"]["train"]) if m.target == image.workdir / out_dir)
    assert not written.read_only and read.read_only  # build writes it; training only reads it
    assert written.source == read.source
    prepare = [i.value for i in image.instructions if i.keyword == "RUN" and "chown" in i.value]
    assert any(str(image.workdir / out_dir) in run for run in prepare), "the mount point is not owned by the user"


def test_tensorboard_has_a_health_check_on_its_own_port(compose: dict, image: Image) -> None:
    tensorboard = compose["services"]["tensorboard"]
    check = tensorboard.get("healthcheck")
    assert check, f"{COMPOSE}: tensorboard has no healthcheck"
    test = check["test"]
    assert test[0] == "CMD" and test[1] == "python", "exec form with the image's Python (the image has no curl)"
    argv = service_argv(tensorboard, image)
    port = argv[argv.index("--port") + 1]
    assert f"127.0.0.1:{port}/" in test[-1] and "urlopen" in test[-1]
    assert all(k in check for k in ("interval", "timeout", "retries"))


def test_docs_name_the_assumed_base_tag_and_how_to_check_it(image: Image) -> None:
    docs = (REPO / "docs" / "docker.md").read_text()
    assert image.base.startswith("pytorch/pytorch:") and f"`{image.base}`" in docs
    assert f"imagetools inspect {image.base}" in docs and "torch.version.cuda" in docs
