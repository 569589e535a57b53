"""The rooms of the house (README, "Layout") and the doors between them, read from the source:

- DESIGN.md's layering: neucodec_assets -> resources -> gpu_executor, never the other way;
- gpu_executor: the torch engine (encoder/, codec/) has no Dagster, the deployment code (launch/) has no torch;
- the command-line tools (neucodec_assets/cli/) are used by nobody else in the product;
- features talk through public names: no module imports another feature's `_private` name;
- every non-public Dagster import sits in gpu_executor/launch/dagster_internals.py.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["neucodec_assets", "resources", "gpu_executor"]  # each may import only those to its right
PRODUCT = [ROOT / layer for layer in LAYERS]
ENGINE = [ROOT / "gpu_executor" / "encoder", ROOT / "gpu_executor" / "codec", ROOT / "gpu_executor" / "settings.py"]
LAUNCH = ROOT / "gpu_executor" / "launch"
CLI = ROOT / "neucodec_assets" / "cli"
INTERNALS = LAUNCH / "dagster_internals.py"
DAGSTER_FAMILY = ("dagster", "dagster_celery", "dagster_k8s", "dagster_postgres", "dagster_aws", "dagster_graphql",
                  "celery", "kombu")
TORCH_FAMILY = ("torch", "torchaudio", "triton", "transformers", "neucodec")


def _files(*roots: Path) -> list[Path]:
    out: list[Path] = []
    for root in roots:
        out.extend([root] if root.is_file() else sorted(root.rglob("*.py")))
    assert out, f"no modules under {roots}"
    return out


def _imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, absolute module, names imported from it) for every import of the file, nested ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module, [alias.name for alias in node.names]


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def _top(module: str) -> str:
    return module.split(".")[0]


def _feature(module_or_path: str | Path) -> str:
    """The room a module belongs to: the top-level package and its first subpackage (`neucodec_assets.sft`)."""
    if isinstance(module_or_path, Path):
        parts = module_or_path.relative_to(ROOT).with_suffix("").parts
    else:
        parts = tuple(module_or_path.split("."))
    return ".".join(parts[:2])


def test_the_import_reader_sees_every_form_of_import(tmp_path):
    """The lints below pass when they find nothing, so the reader they share must see each form: plain, aliased,
    several on a line, `from`, nested in a function; a relative import stays inside its package and is left out."""
    sample = tmp_path / "sample.py"
    sample.write_text(textwrap.dedent("""
        import resources.bucket
        import torch as t, os
        from dagster._core.events import EngineEventData, JobFailureData
        from . import sibling
        def later():
            from neucodec_assets.cli import main
    """))
    assert list(_imports(sample)) == [
        (2, "resources.bucket", []), (3, "torch", []), (3, "os", []),
        (4, "dagster._core.events", ["EngineEventData", "JobFailureData"]), (7, "neucodec_assets.cli", ["main"]),
    ]


def test_dependencies_flow_one_way():
    violations = []
    for i, layer in enumerate(LAYERS):
        forbidden = set(LAYERS[:i])
        for path in _files(ROOT / layer):
            bad = sorted({_top(m) for _, m, _ in _imports(path)} & forbidden)
            if bad:
                violations.append(f"{path.relative_to(ROOT)} imports {bad}")
    assert not violations, "\n".join(violations)


def test_engine_has_no_dagster_and_launch_has_no_torch():
    violations = []
    for path in _files(*ENGINE):
        for line, module, _ in _imports(path):
            if _top(module) in DAGSTER_FAMILY or module.startswith("gpu_executor.launch"):
                violations.append(f"{_where(path, line)}: the torch engine imports {module}")
    for path in _files(LAUNCH):
        for line, module, _ in _imports(path):
            if _top(module) in TORCH_FAMILY or module.startswith(("gpu_executor.encoder", "gpu_executor.codec")):
                violations.append(f"{_where(path, line)}: the Dagster launch code imports {module}")
    assert not violations, "\n".join(violations)


def test_encoder_engine_imports_without_dagster():
    code = (
        "import sys; import gpu_executor.encoder, gpu_executor.codec.random_model, gpu_executor.codec.decoder; "
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('dagster')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_command_line_tools_are_used_by_no_other_room():
    violations = [
        f"{_where(path, line)} imports {module}"
        for path in _files(*PRODUCT) if not path.is_relative_to(CLI)
        for line, module, _ in _imports(path) if module.startswith("neucodec_assets.cli")
    ]
    assert not violations, "\n".join(violations)


def test_features_use_each_other_through_public_names():
    violations = []
    for path in _files(*PRODUCT, ROOT / "bench"):
        for line, module, names in _imports(path):
            if _top(module) not in LAYERS or _feature(module) == _feature(path):
                continue
            private = [name for name in names if name.startswith("_")]
            if private or any(part.startswith("_") for part in module.split(".")):
                violations.append(f"{_where(path, line)} imports {module} {private}")
    assert not violations, "\n".join(violations)


def test_private_dagster_imports_only_in_the_internals_module():
    violations = []
    for path in _files(*PRODUCT, ROOT / "tests", ROOT / "bench"):
        if path == INTERNALS:
            continue
        for line, module, _ in _imports(path):
            if _top(module) in DAGSTER_FAMILY and any(part.startswith("_") for part in module.split(".")[1:]):
                violations.append(f"{_where(path, line)} imports {module}")
    assert not violations, "\n".join(violations)


SKYPILOT_ADAPTER = ROOT / "neucodec_assets" / "fleet" / "skypilot.py"


def test_only_the_fleet_adapter_imports_skypilot_and_only_when_called():
    """SkyPilot is the optional `fleet` extra: one module imports it, inside its functions, never at import time.
    (The product's third-party imports never import sky themselves: it is a leaf of the dependency tree.)"""
    violations = []
    for path in _files(*PRODUCT, ROOT / "bench"):
        tree = ast.parse(path.read_text(), filename=str(path))
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            if not any(_top(n) == "sky" for n in names):
                continue
            if path != SKYPILOT_ADAPTER:
                violations.append(f"{_where(path, node.lineno)}: only {SKYPILOT_ADAPTER.relative_to(ROOT)} imports sky")
            elif id(node) in top_level:
                violations.append(f"{_where(path, node.lineno)}: import sky inside the functions that call it")
    assert not violations, "\n".join(violations)  # so no import of the product's modules can load sky
