"""The package layout: imports flow one way (cli -> evaluation -> batch -> core, storage), no
import cycles (imports inside functions included), what the core may import, a light CLI, and
help text on every option of every command."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"
LAYERS = {"core": 0, "storage": 0, "batch": 1, "evaluation": 2, "cli": 3}  # a module imports its rank or below
# torch, numpy, Pillow, scikit-image, and scikit-image's TIFF stack: tifffile (which it requires)
# with imagecodecs (the codecs tifffile uses; libpng for 16-bit colour PNG), imported only for 16-bit colour
CORE_THIRD_PARTY = {"torch", "numpy", "PIL", "skimage", "tifffile", "imagecodecs"}
HEAVY = ("torch", "ray", "s3fs", "pyarrow", "skimage", "matplotlib")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> tuple[set[str], set[str]]:
    """(the pipeline modules, the top-level outside packages) that module ``name`` imports
    anywhere in its body, functions included."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            # `from pkg import mod` imports the module pkg.mod where there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "pipeline":
                while target not in MODULES:
                    target = target.rsplit(".", 1)[0]
                if target != name:
                    inside.add(target)
            else:
                outside.add(target.split(".")[0])
    return inside, outside


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def test_there_are_no_import_cycles():
    graph = {name: imports(name)[0] for name in MODULES}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [name, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in MODULES:
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("name", [n for n in MODULES if layer(n) in LAYERS])
def test_imports_flow_one_way(name):
    own = layer(name)
    for target in imports(name)[0]:
        other = layer(target)
        if other is None:  # the package itself
            continue
        assert LAYERS[other] <= LAYERS[own], f"{name} ({own}) imports {target} ({other}): imports flow " \
                                             "cli -> evaluation -> batch -> core, storage"
        if own in ("core", "storage") and other != own:
            pytest.fail(f"{name} imports {target}: core and storage import neither each other nor anything above")


@pytest.mark.parametrize("name", [n for n in MODULES if layer(n) == "core"])
def test_the_core_imports_only_torch_numpy_pillow_and_scikit_image(name):
    outside = imports(name)[1] - set(sys.stdlib_module_names) - {"__future__"}
    assert outside <= CORE_THIRD_PARTY, f"{name} imports {sorted(outside - CORE_THIRD_PARTY)}"


def test_the_checker_sees_a_cycle_and_a_wrong_way_import(tmp_path, monkeypatch):
    """The rules above can fail: a cycle made of two fake modules is found."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def f():\n    from .b import g\n")
    b.write_text("from .a import f\n")
    monkeypatch.setitem(MODULES, "pipeline.core.a", a)
    monkeypatch.setitem(MODULES, "pipeline.core.b", b)
    assert imports("pipeline.core.a")[0] == {"pipeline.core.b"}
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_there_are_no_import_cycles()
    b.write_text("from ..cli import options\n")
    with pytest.raises(AssertionError, match="imports flow"):
        test_imports_flow_one_way("pipeline.core.b")


def test_the_cli_loads_nothing_heavy_for_help_status_and_logs():
    code = f"""
import json, sys
import click
from pipeline.cli.main import main
for args in (["--help"], *([c, "--help"] for c in main.commands),
             ["status", "dip-x", "--address", "http://127.0.0.1:9"],
             ["logs", "dip-x", "--address", "http://127.0.0.1:9"]):
    try:
        main(args, standalone_mode=False)
    except click.ClickException:
        pass  # nothing listens on port 9: status and logs fail, having imported what they need
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_every_option_of_every_command_has_help_and_output_is_spelled_alike():
    from pipeline.cli.main import main

    for name, command in main.commands.items():
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"dip {name} {param.opts[0]} has no help text"
                if param.name == "output":
                    assert param.opts == ["-o", "--output"], f"dip {name}: {param.opts}"


def test_fit_options_are_built_from_the_options_dataclass():
    from dataclasses import fields

    from pipeline.cli.main import main
    from pipeline.core.options import Options

    names = {f.name for f in fields(Options)}
    for command in ("restore", "run", "submit"):
        assert names <= {p.name for p in main.commands[command].params}, command
    evaluate = {p.name for p in main.commands["evaluate"].params}
    assert names - {"task", "scale"} <= evaluate
