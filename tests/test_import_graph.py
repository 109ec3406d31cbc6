"""The package's imports run one way: parsed with ``ast`` (no import is executed), every
``pcdet_rmae_ts`` import, at module level or inside a function, is an edge. There is no cycle,
and each module imports only from its own layer or the layers below it (LAYERS)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pcdet_rmae_ts"
ROOT = "pcdet_rmae_ts"

# The allowed direction, lowest layer first: a module may import from its own layer and the ones
# below, never from a layer above. Prefixes are matched at a dot boundary.
LAYERS = (
    # 0 leaves: shared building blocks that import nothing from the package
    ("pcdet_rmae_ts.compat", "pcdet_rmae_ts.backbone_keys", "pcdet_rmae_ts.heads", "pcdet_rmae_ts.scatter",
     "pcdet_rmae_ts.schedules", "pcdet_rmae_ts.seeding", "pcdet_rmae_ts.sparse_align", "pcdet_rmae_ts.voxel_targets"),
    # 1 configuration loading and validation
    ("pcdet_rmae_ts.config",),
    # 2 components that take tensors / configs: masking, occupancy, teacher, losses, data, evaluation, optim
    ("pcdet_rmae_ts.masking", "pcdet_rmae_ts.occupancy", "pcdet_rmae_ts.teacher", "pcdet_rmae_ts.losses",
     "pcdet_rmae_ts.data", "pcdet_rmae_ts.evaluation", "pcdet_rmae_ts.optim"),
    # 3 models: assemble the components
    ("pcdet_rmae_ts.models",),
    # 4 users of the models: the engine, the OpenPCDet integration, pictures
    ("pcdet_rmae_ts.engine", "pcdet_rmae_ts.integration", "pcdet_rmae_ts.viz"),
)
# The package root holds only __version__ (read by the engine) and register(), the plugin's entry
# point, which loads the integration lazily; it is the one downward-pointing exception.
ROOT_EXCEPTIONS = {"pcdet_rmae_ts.integration.pcdet"}
# The engine's contract with the model is PretrainModel's methods; no other model module.
ENGINE_MAY_IMPORT_FROM_MODELS = {"pcdet_rmae_ts.models.pretrain_model"}


def module_files() -> Dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = module_files()


def _targets(name: str, path: Path, node: ast.AST) -> List[str]:
    """Package modules named by one import statement (``from x import y``: ``x.y`` if a module, else ``x``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        base = package[:len(package) - node.level + 1] if node.level else []
        module = base + (node.module.split(".") if node.module else [])
        names = []
        for alias in node.names:
            candidate = ".".join(module + [alias.name])
            names.append(candidate if candidate in MODULES else ".".join(module))
    out = []
    for target in names:
        if target.split(".")[0] != ROOT:
            continue
        while target not in MODULES:
            target = target.rsplit(".", 1)[0]
        out.append(target)
    return out


def import_graph() -> Dict[str, Set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = {t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                       for t in _targets(name, path, node) if t != name}
    return graph


def layer_of(module: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_import_graph.py: add it to LAYERS")


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


GRAPH = import_graph()


def test_the_parser_sees_known_edges():
    """Guards the checker itself: relative, nested and function-level imports are all seen."""
    assert "pcdet_rmae_ts.losses" in GRAPH["pcdet_rmae_ts.models.pretrain_model"]
    assert "pcdet_rmae_ts.scatter" in GRAPH["pcdet_rmae_ts.masking"]
    assert "pcdet_rmae_ts.models.pretrain_model" in GRAPH["pcdet_rmae_ts.engine.pretrain"]  # inside a function
    assert "pcdet_rmae_ts.integration.pcdet" in GRAPH[ROOT]  # inside register()
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def unit(module: str) -> str:
    """A module's sub-package (``pcdet_rmae_ts.models.backbone`` -> ``pcdet_rmae_ts.models``), or itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph() -> Dict[str, Set[str]]:
    graph: Dict[str, Set[str]] = {}
    for module, targets in GRAPH.items():
        graph.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    return graph


def test_no_import_cycle_between_modules():
    assert cycles(GRAPH) == []


def test_no_import_cycle_between_sub_packages():
    """models -> losses -> models (a loss importing the backbone's projection head) was one."""
    graph = package_graph()
    graph[ROOT] -= ROOT_EXCEPTIONS | {unit(t) for t in ROOT_EXCEPTIONS}
    assert cycles(graph) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != ROOT))
def test_imports_point_down_the_layers(module):
    own = layer_of(module)
    upward = sorted(t for t in GRAPH[module] if t != ROOT and layer_of(t) > own)
    assert upward == [], f"{module} (layer {own}) imports from a higher layer: {upward}"


def test_leaves_import_nothing_from_the_package():
    for module in (m for m in MODULES if m != ROOT and layer_of(m) == 0):
        assert GRAPH[module] == set(), f"{module} is a leaf but imports {sorted(GRAPH[module])}"
    assert GRAPH[ROOT] <= ROOT_EXCEPTIONS


def test_losses_and_engine_do_not_reach_into_model_internals():
    for module, targets in GRAPH.items():
        into_models = {t for t in targets if t.startswith("pcdet_rmae_ts.models")}
        if module.startswith("pcdet_rmae_ts.losses"):
            assert not into_models, f"{module} imports {sorted(into_models)}: losses take tensors"
            assert not {t for t in targets if t.startswith("pcdet_rmae_ts.engine")}
        if module.startswith("pcdet_rmae_ts.engine"):
            assert into_models <= ENGINE_MAY_IMPORT_FROM_MODELS, f"{module} imports {sorted(into_models)}"


@pytest.mark.parametrize("package,attributes", [
    ("engine", {"backbone_3d", "masker", "update_teacher"}),  # the model's contract methods instead
    ("losses", {"student_projector", "backbone_channels", "add_teacher_student_loss"}),  # tensors in
])
def test_no_attribute_reach_into_the_backbone(package, attributes):
    for module, path in MODULES.items():
        if not module.startswith(f"{ROOT}.{package}"):
            continue
        used = {node.attr for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(node, ast.Attribute)}
        assert not used & attributes, f"{module} uses {sorted(used & attributes)}"
