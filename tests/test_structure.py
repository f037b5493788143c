"""The house rules that keep the package easy to change: imports flow one way, each helper has one owner."""

import ast
import re
import tomllib
from pathlib import Path

from instructune.config import config_fields
from instructune.train.trainer import make_parser as train_parser

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "instructune"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _internal_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported instructune module, line, at module level) for every import of the package in a file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            target, names = "", [alias.name for alias in node.names]
        else:
            continue
        for name in names or [target]:
            if name.startswith("instructune"):
                # `from pkg import module` names a module; `from module import function` names its module.
                while name not in MODULES and "." in name:
                    name = name.rsplit(".", 1)[0]
                found.append((name, node.lineno, id(node) in top_level))
    return found


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}

# The import layers, first to last: a module may import its own layer and the layers before it.
FACES = ("instructune.cli", "instructune.board")
LAYERS = (
    ("instructune.errors",),
    ("instructune.fileio",),
    ("instructune.config",),
    ("instructune.models",),
    ("instructune.data",),
    ("instructune.generation",),
    ("instructune.evaluate",),
    ("instructune.train",),
    ("instructune.export",),
    FACES,
)


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _layer(module: str) -> int:
    if module == "instructune":
        return 0  # the package face holds only the version
    for index, layer in enumerate(LAYERS):
        if _package(module) in layer:
            return index
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS")


class TestImports:
    def test_no_import_circles(self):
        graph = {name: {target for target, _, _ in _internal_imports(path) if target != name}
                 for name, path in MODULES.items()}
        # A package's __init__ re-exports its modules; an edge into a package is an edge into its __init__.
        state: dict[str, int] = {}

        def visit(node: str, trail: list[str]) -> None:
            state[node] = 1
            for target in sorted(graph.get(node, ())):
                if state.get(target) == 1:
                    cycle = trail[trail.index(target):] + [target] if target in trail else [node, target]
                    raise AssertionError("import circle: " + " -> ".join(cycle))
                if target not in state:
                    visit(target, trail + [target])
            state[node] = 2

        for name in sorted(graph):
            if name not in state:
                visit(name, [name])

    def test_package_imports_sit_at_the_top_of_each_file(self):
        # Lazy imports are for heavy third-party libraries only; a lazy import of our own code hides a circle.
        lazy = [f"{path.relative_to(PACKAGE)}:{line} {target}" for path in MODULES.values()
                for target, line, top in _internal_imports(path) if not top]
        assert not lazy, lazy

    def test_imports_follow_the_stages(self):
        """Each module imports only its own package and the layers before it (issue 29).

        The stages read as the data flow, data -> train -> generation -> evaluate -> export; as a
        library, training comes after evaluation: its in-training checks score with the evaluation
        library (DESIGN.md), and nothing in generation/ or evaluate/ imports training. The faces (the
        CLI and the board) sit on top and may import every stage; nothing imports them.
        """
        against = []
        for name, path in MODULES.items():
            own = _layer(name)
            for target, line, _ in _internal_imports(path):
                theirs = _layer(target)
                if theirs > own or (theirs == own and LAYERS[own] is FACES and _package(target) != _package(name)):
                    against.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}")
        assert not against, against

    def test_every_module_has_a_layer(self):
        for name in MODULES:
            _layer(name)

    def test_nothing_but_the_package_face_at_the_top(self):
        top = sorted(path.name for path in PACKAGE.glob("*.py"))
        assert top == ["__init__.py", "config.py", "errors.py"], top
        folders = sorted(path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__")
        assert folders == ["board", "cli", "configs", "data", "evaluate", "export", "fileio", "generation", "models",
                           "train"], folders

    def test_board_tabs_call_the_api_not_each_other_or_the_cli(self):
        for name, path in MODULES.items():
            if name.startswith("instructune.board.") and name.endswith("_tab"):
                imported = {target for target, _, _ in _internal_imports(path)}
                assert not {t for t in imported if t.endswith("_tab") or t.startswith("instructune.cli")}, name
                assert ".main(" not in path.read_text(), f"{name} runs a command's main(argv)"

    def test_report_only_draws(self):
        imported = {target for target, _, _ in _internal_imports(MODULES["instructune.evaluate.report"])}
        assert "instructune.evaluate.compare" not in imported


class TestOneOwner:
    def _definitions(self, pattern: str) -> list[str]:
        regex = re.compile(pattern, re.MULTILINE)
        return [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if regex.search(path.read_text())]

    def test_each_small_helper_is_defined_once(self):
        for pattern in (r"^def _?stop_token_ids\(", r"^def _?parse_template\w*\(", r"^KINDS\s*=",
                        r"^def is_encoder_decoder\("):
            assert len(self._definitions(pattern)) == 1, (pattern, self._definitions(pattern))

    def test_encoder_decoder_is_asked_of_models_only(self):
        direct = self._definitions(r"getattr\([^)]*\"is_encoder_decoder\"")
        assert direct == ["models/kinds.py"], direct


class TestTrainHelp:
    def test_every_config_key_is_listed_with_its_default(self):
        text = train_parser().format_help()
        for field in config_fields():
            assert f"  {field['key']} [" in text, field["key"]
        assert "  train.lr [0.0002]: Peak learning rate." in text

    def test_help_names_the_packaged_config_where_it_lives(self):
        assert "src/instructune/configs/quickstart.yaml" in train_parser().format_help()
        for path in PACKAGE.rglob("*.py"):
            assert not re.search(r"(?<!instructune/)configs/quickstart\.yaml", path.read_text()), path


class TestBenchExtra:
    def test_the_peers_install_through_the_bench_extra(self):
        project = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())["project"]
        bench = " ".join(project["optional-dependencies"]["bench"])
        assert "trl" in bench and "lm-eval" in bench


class TestInstallFitsTheJob:
    """`make quickstart` installs the runtime only; `make test` adds the test extra (issue 28.5)."""

    def _recipe(self, target: str) -> str:
        makefile = (PACKAGE.parents[1] / "Makefile").read_text()
        return makefile.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]

    def test_the_quickstart_install_has_no_test_tools(self):
        project = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())["project"]
        runtime = " ".join(project["dependencies"]).lower()
        for tool in ("pytest", "hypothesis", "selenium", "gradio", "bitsandbytes", "trl", "lm-eval"):
            assert tool not in runtime, tool
        assert "$(STAMP)" in self._recipe("quickstart")
        stamp = self._recipe("$(STAMP)")
        assert "install -q -e .\n" in stamp + "\n" and "[test]" not in stamp

    def test_make_test_adds_the_test_extra(self):
        assert "$(TEST_STAMP)" in self._recipe("test")
        assert '-e ".[test]"' in self._recipe("$(TEST_STAMP)")
