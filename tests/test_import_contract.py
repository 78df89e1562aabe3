"""The import contract (issue 17 item 8; docs/ARCHITECTURE.md "Layers"): the sans-I/O protocol cores and mime/
import no I/O (asyncio, socket, sqlite3) and nothing of the store, not even through another Postroom module; the
layers below the protocols (store/, mime/, auth/, delivery/) import no protocol, but the one grammar module SMTP's
server and the outbound client share (smtp/syntax.py), a leaf that imports nothing of Postroom; only cli.py
imports app.py.
Read from the source (the import statements, type-only ones included), so it cannot pass by accident of what a
test happened to import first."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "postroom"
CORES = ["smtp/protocol.py", "smtp/envelope.py", "smtp/data.py", "smtp/states.py", "smtp/events.py",
         "smtp/replies.py", "smtp/syntax.py", "pop3/protocol.py", "imap/framer.py", "imap/parser.py",
         "imap/syntax.py", "imap/encoder.py", "net/receivebuffer.py", *sorted(
             str(p.relative_to(ROOT)) for p in (ROOT / "mime").glob("*.py"))]
NO_IO = ("asyncio", "socket", "sqlite3", "postroom.store", "postroom.app")
PROTOCOLS = ("postroom.smtp", "postroom.imap", "postroom.pop3", "postroom.web")
SHARED_GRAMMAR = {"postroom.smtp.syntax"}  # below the protocols too: the outbound client speaks SMTP


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement of `path` (relative ones resolved)."""
    here = _module(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from postroom import metapool`
    return out


def _file(module: str) -> Path | None:
    rel = Path(*module.split("."))
    for candidate in (ROOT.parent / rel.with_suffix(".py"), ROOT.parent / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _closure(start: Path) -> dict[str, str]:
    """Module -> the Postroom module that imports it, for everything `start` reaches through Postroom modules."""
    seen: dict[str, str] = {}
    todo = [start]
    done: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in done:
            continue
        done.add(path)
        for mod in _imports(path):
            seen.setdefault(mod, _module(path))
            target = _file(mod) if mod.startswith("postroom") else None
            if target is not None:
                todo.append(target)
    return seen


def test_cores_import_no_io_and_no_store() -> None:
    bad = []
    for rel in CORES:
        for mod, importer in _closure(ROOT / rel).items():
            if any(mod == n or mod.startswith(n + ".") for n in NO_IO):
                bad.append(f"{rel}: {mod} (imported by {importer})")
    assert bad == []


def test_layers_below_the_protocols_import_no_protocol() -> None:
    bad = []
    for layer in ("store", "mime", "auth", "delivery"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            for mod in _imports(path):
                if mod in SHARED_GRAMMAR or mod.rpartition(".")[0] in SHARED_GRAMMAR:
                    continue  # `from postroom.smtp.syntax import Reply` names postroom.smtp.syntax.Reply too
                if any(mod == p or mod.startswith(p + ".") for p in PROTOCOLS):
                    bad.append(f"{path.relative_to(ROOT)}: {mod}")
    assert bad == []


def test_the_shared_grammar_is_a_leaf() -> None:
    """What the layers below may import of a protocol imports nothing of Postroom (so it cannot pull one in)."""
    bad = [f"{name}: {mod}" for name in sorted(SHARED_GRAMMAR)
           for mod in _imports(ROOT.parent / (name.replace(".", "/") + ".py"))
           if mod == "postroom" or mod.startswith("postroom.")]
    assert bad == []


def test_only_cli_imports_app() -> None:
    bad = [str(p.relative_to(ROOT)) for p in sorted(ROOT.rglob("*.py"))
           if p.name != "cli.py" and any(m == "postroom.app" or m.startswith("postroom.app.") for m in _imports(p))]
    assert bad == []
