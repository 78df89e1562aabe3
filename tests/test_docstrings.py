"""Public functions and classes of the store API and the sans-I/O protocol cores have docstrings (issue 17 item 8):
the shapes and units they take and give, the errors they raise (`Store.read_message` -> NotFound, which
imap/fetch.py relies on) and the RFC section they follow. Read from the source, so a new public name without
one fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "postroom"
MODULES = ["store/api.py", "pop3/protocol.py", "imap/framer.py", "imap/parser.py", "imap/syntax.py",
           "imap/encoder.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "mime").glob("*.py"))]


def missing(source: str) -> list[str]:
    """Public module-level functions and classes, and the public methods and properties of public classes,
    that have no docstring (dotted names). Dunder methods and `typing.overload` stubs are left out."""
    out: list[str] = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if node.name.startswith("_"):
                continue
            if any(isinstance(d, ast.Name) and d.id == "overload" for d in node.decorator_list):
                continue
            if ast.get_docstring(node) is None:
                out.append(prefix + node.name)
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")

    visit(ast.parse(source).body, "")
    return out


def test_public_names_of_the_cores_and_the_store_api_have_docstrings() -> None:
    bad = [f"{rel}: {name}" for rel in MODULES for name in missing((ROOT / rel).read_text())]
    assert bad == []


def test_the_check_finds_what_lacks_one() -> None:
    source = '''
def documented() -> None:
    """Yes."""

def bare() -> None: ...

def _private() -> None: ...

class Thing:
    """Yes."""

    def method(self) -> None: ...

    @property
    def size(self) -> int:
        return 0

    def __len__(self) -> int:
        return 0

class Empty:
    pass
'''
    assert missing(source) == ["bare", "Thing.method", "Thing.size", "Empty"]
