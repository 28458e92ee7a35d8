"""The import contracts hold on the real tree, and the checker catches what it must."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_imports", ROOT / "scripts/check_imports.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_imports"] = module
    spec.loader.exec_module(module)
    return module


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_package_keeps_its_layers_and_has_no_cycles() -> None:
    """forwarder/ as it is: every import points down a stage, and no two modules need each other."""
    assert checker().check(ROOT) == []


def test_an_upward_import_is_reported(tmp_path: Path) -> None:
    """A buffer module importing the delivery stage breaks the layering and is named."""
    root = write(
        tmp_path,
        {
            "forwarder/__init__.py": "",
            "forwarder/buffer/__init__.py": "",
            "forwarder/buffer/store.py": "from forwarder.delivery import worker\n",
            "forwarder/delivery/__init__.py": "",
            "forwarder/delivery/worker.py": "",
        },
    )
    assert checker().check(root) == [
        "forwarder.buffer.store imports forwarder.delivery.worker: "
        "a later stage (imports point down)"
    ]


def test_a_cycle_hidden_in_a_function_is_reported(tmp_path: Path) -> None:
    """Two modules of one stage that import each other, one lazily, form a reported cycle."""
    root = write(
        tmp_path,
        {
            "forwarder/__init__.py": "",
            "forwarder/ingest/__init__.py": "",
            "forwarder/ingest/a.py": "from forwarder.ingest.b import x\n",
            "forwarder/ingest/b.py": "def f():\n    from forwarder.ingest import a\n",
        },
    )
    assert checker().check(root) == ["import cycle: forwarder.ingest.a <-> forwarder.ingest.b"]


def test_a_module_outside_every_layer_is_reported(tmp_path: Path) -> None:
    """A new top-level package must be placed in a layer before it can be used."""
    root = write(tmp_path, {"forwarder/__init__.py": "", "forwarder/sinks/__init__.py": ""})
    assert checker().check(root) == ["forwarder.sinks: in no layer of scripts/check_imports.py"]
