"""docs/architecture.md, the map of where things live, names every module of the package (a new
module is placed on the map when it is written)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_architecture_doc_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    modules = sorted(p.relative_to(ROOT) for p in (ROOT / "prefopt").rglob("*.py") if p.name != "__init__.py")
    assert len(modules) > 100
    missing = [str(p) for p in modules if p.name not in text]
    assert not missing, f"docs/architecture.md does not name: {', '.join(missing)}"
