"""The import layers of the package (the lowest first, below), checked on the source: no module imports upward, and no
benchmark imports a helper from a check. Every import statement counts, also those inside functions."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# the lowest layer first; a module may import its own layer and the layers below
LAYERS = [
    {"_quiet", "config", "architecture"},
    {"runtime", "bridge"},
    {"models", "data", "distill", "rollout"},
    {"eval"},
    {"train"},
    {"checks", "commands", "plan", "demo", "cli"},
]


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: its package {top!r} is in no layer of this test; add it to LAYERS")


def imports(path: pathlib.Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            out += [(node.lineno, n) for n in names[:1] if n.startswith("megatron_vopd")]
            # `from megatron_vopd import models` imports the package megatron_vopd.models
            if node.module == "megatron_vopd":
                out += [(node.lineno, n) for n in names[1:]]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("megatron_vopd")]
    return out


def module_name(path: pathlib.Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def test_every_package_is_in_a_layer():
    for path in (ROOT / "megatron_vopd").rglob("*.py"):
        if path.name != "__init__.py" or path.parent.name != "megatron_vopd":
            layer_of(module_name(path))


def test_no_module_imports_upward():
    upward = []
    for path in sorted((ROOT / "megatron_vopd").rglob("*.py")):
        mod = module_name(path)
        if mod == "megatron_vopd":
            continue
        for line, target in imports(path):
            if target != "megatron_vopd" and layer_of(target) > layer_of(mod):
                upward.append(f"{path.relative_to(ROOT)}:{line}: {mod} (layer {layer_of(mod)}) imports {target} "
                              f"(layer {layer_of(target)})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "megatron_vopd" / "bridge" / "x.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("def f():\n    from megatron_vopd.train.trainer import Trainer\n")
    (line, target), = imports(bad)
    assert (line, target) == (2, "megatron_vopd.train.trainer") and layer_of(target) > layer_of("megatron_vopd.bridge.x")


def test_benchmarks_import_no_check():
    found = [f"{p.relative_to(ROOT)}:{line}: {t}" for p in sorted((ROOT / "bench").glob("*.py"))
             for line, t in imports(p) if t.startswith("megatron_vopd.checks")]
    assert not found, "benchmarks import checks:\n" + "\n".join(found)
