"""The layering of DESIGN.md: neucodec_assets -> resources -> gpu_executor, and no Dagster in the encoder engine."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["neucodec_assets", "resources", "gpu_executor"]  # each may import only those to its right


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_dependencies_flow_one_way():
    violations = []
    for i, layer in enumerate(LAYERS):
        forbidden = set(LAYERS[:i])
        files = sorted((ROOT / layer).rglob("*.py"))
        assert files, f"no modules found in {layer}/"
        for path in files:
            bad = _imported_top_levels(path) & forbidden
            if bad:
                violations.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not violations, "\n".join(violations)


def test_encoder_engine_imports_without_dagster():
    code = (
        "import sys; import gpu_executor.encoder, gpu_executor.random_model; "
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('dagster')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
