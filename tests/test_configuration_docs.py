"""docs/configuration.md is generated from the settings classes and must not go stale."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _generator():
    """docs/gen_configuration.py, a script outside the packages (it imports mesh and router)."""
    name = "meshserve_docs_gen_configuration"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DOCS / "gen_configuration.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_configuration_docs_are_current():
    generated = _generator().render()
    committed = (DOCS / "configuration.md").read_text()
    assert committed == generated, ("docs/configuration.md is stale: run `make config-docs` "
                                    "(python docs/gen_configuration.py) and commit the result")


def test_every_setting_is_documented_with_its_variable():
    generator = _generator()
    text = generator.render()
    for process in generator._processes():
        for cls in process.classes:
            prefix = cls.model_config.get("env_prefix", "")
            for name in cls.model_fields:
                assert f"`{(prefix + name).upper()}`" in text, f"{cls.__name__}.{name} is missing"
