"""The import contract (pyproject.toml, docs/architecture.md) catches what it is for.

``scripts/test`` runs ``lint-imports`` on the tree; here each contract is shown to break
on a copy of the tree with one offending import added (the kinds of import the
restructuring of issue 10 removed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} missing: pip install -e '.[test]' (import-linter)")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("tree")
    for name in ("bridge", "connectors"):
        shutil.copytree(ROOT / name, copy / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_the_tree_keeps_the_contract() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("bridge/runtime.py", "import bridge.kube.pool",
     "bridge.kube is imported only by the daemon's assembly"),
    ("bridge/runtime.py", "import connectors.kafka",
     "the engine imports no connector module but the connectors.base seam"),
    ("connectors/cron.py", "import bridge.dispatcher",
     "connectors import only bridge's public engine types"),
    ("connectors/kafka.py", "import connectors.rabbitmq_mapping",
     "the Kafka connector imports no other source's modules"),
    ("bridge/reload.py", "import bridge.daemon",
     "no import cycles between the parts of bridge and connectors"),
])
def test_each_contract_breaks_on_its_kind_of_import(
    tree: Path, module: str, line: str, broken: str
) -> None:
    path = tree / module
    original = path.read_text()
    path.write_text(original.replace("from __future__ import annotations\n",
                                     f"from __future__ import annotations\n\n{line}\n", 1))
    try:
        done = lint_imports(tree)
    finally:
        path.write_text(original)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{broken} BROKEN" in done.stdout
    assert done.stdout.count(" BROKEN") == 1, done.stdout
