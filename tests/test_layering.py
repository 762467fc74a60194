"""The layer rule of DESIGN.md, checked on the source: imports point down only.

security <- routing <- peer <- swarm. Heavy libraries stay out of the layers that must start
fast: no torch/transformers in security/ or routing's core (only routing/tensor_codec.py turns
tensors into wire payloads, and routing/client/ holds the client's tensors), no hivemind outside
the DHT. A second check imports the light
packages in a fresh interpreter and looks at what got loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("security", "routing", "peer", "swarm")
ALLOWED: dict[str, set[str]] = {
    "security": set(),
    "routing": {"security"},
    "peer": {"security", "routing"},
    "swarm": {"security", "routing", "peer"},
}
HEAVY = ("torch", "transformers", "safetensors", "accelerate", "gguf")
HEAVY_ALLOWED_IN = ("routing/tensor_codec.py", "routing/client/")  # prefixes
HIVEMIND_ALLOWED_UNDER = ("routing/dht/",)


def _modules() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """Absolute module names imported by a file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package_parts = path.relative_to(root).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield node.lineno, module


def test_sources_exist() -> None:
    assert all((ROOT / package / "__init__.py").is_file() for package in PACKAGES)
    assert len(list(_modules())) >= len(PACKAGES)


def _problems(path: Path, root: Path = ROOT) -> list[str]:
    relative = path.relative_to(root).as_posix()
    layer = relative.split("/")[0]
    problems = []
    for lineno, module in _imports(path, root):
        top = module.split(".")[0]
        if top in PACKAGES and top != layer and top not in ALLOWED[layer]:
            problems.append(f"{relative}:{lineno} imports {module} ({layer} may not import {top})")
        heavy_allowed = relative.startswith(HEAVY_ALLOWED_IN)
        if layer in ("security", "routing") and top in HEAVY and not heavy_allowed:
            problems.append(f"{relative}:{lineno} imports {module} (heavy, not allowed here)")
        if top == "hivemind" and not relative.startswith(HIVEMIND_ALLOWED_UNDER):
            problems.append(f"{relative}:{lineno} imports {module} (hivemind only in the DHT)")
    return problems


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    problems = _problems(path)
    assert not problems, "\n".join(problems)


def test_layering_check_catches_bad_edges(tmp_path: Path) -> None:
    """The checker sees upward, heavy and misplaced imports, so the test above can fail."""
    bad = tmp_path / "routing" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("from peer import backend\nimport torch\nfrom hivemind.dht import DHT\n")
    assert [problem.split("(")[1] for problem in _problems(bad, tmp_path)] == [
        "routing may not import peer)",
        "heavy, not allowed here)",
        "hivemind only in the DHT)",
    ]


def test_light_packages_load_no_heavy_modules() -> None:
    code = (
        "import sys, security, routing, routing.rpc, swarm, swarm.cli\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'hivemind') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
