"""No module reaches into another object's private state: every ``x._name`` in nlicot/ is on ``self`` or ``cls``,
and a ``self._name`` that one nlicot module defines is not used from another (a subclass elsewhere included).

Read from the code with ``ast`` (comments and strings cannot hide or fake a hit). Recipes (nlicot/sft.py,
nlicot/grpo.py) share the LoRA base (nlicot/lora.py) through its public API; callbacks use the modules' public
methods. The one allowed exception is a third-party attribute that has no public spelling.
"""

from __future__ import annotations

import ast
from pathlib import Path

NLICOT = Path(__file__).resolve().parents[1] / "nlicot"
#: transformers exposes the attention path a loaded model resolved to only as ``config._attn_implementation``.
#: Lightning 2.6 has no public spelling for what nlicot/preemption.py must know at a signal: whether this batch
#: ends an optimizer step (``_should_accumulate``), whether validation follows it (``_should_check_val_fx`` with
#: the loop's ``_data_fetcher``), the step of the last periodic save (``_last_global_step_saved``) and the
#: checkpoint dict without ``save_checkpoint``'s barrier (``_checkpoint_connector``), which ranks that left
#: validation on their own signals cannot pass. Pinned by constraints.txt and covered by tests/test_preemption.py.
THIRD_PARTY = {"_attn_implementation", "_should_accumulate", "_should_check_val_fx", "_data_fetcher",
               "_last_global_step_saved", "_checkpoint_connector"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_accesses(source: str) -> list[tuple[int, str]]:
    """(line, ``owner._attr``) for every private attribute read or written on something other than self / cls."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        if node.attr not in THIRD_PARTY:
            hits.append((node.lineno, f"{ast.unparse(node.value)}.{node.attr}"))
    return hits


def class_privates(source: str, module: str) -> dict[str, tuple[str, list[str], set[str], set[str]]]:
    """class name → (module, base names, private names it defines on self or as methods, private names it uses)."""
    out = {}
    for cls in (n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)):
        defined, used = set(), set()
        for node in ast.walk(cls):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(node.name):
                defined.add(node.name)
            elif (isinstance(node, ast.Attribute) and _private(node.attr)
                  and isinstance(node.value, ast.Name) and node.value.id == "self"):
                (defined if isinstance(node.ctx, ast.Store) else used).add(node.attr)
        bases = [b.id if isinstance(b, ast.Name) else b.attr for b in cls.bases if isinstance(b, (ast.Name, ast.Attribute))]
        out[cls.name] = (module, bases, defined, used)
    return out


def inherited_from_other_modules(classes: dict[str, tuple[str, list[str], set[str], set[str]]]) -> dict[str, list]:
    """Per nlicot class: the private names it touches on self that an nlicot ancestor in another module defines."""
    found = {}
    for name, (module, bases, defined, used) in classes.items():
        todo, hits = list(bases), set()
        while todo:
            base = classes.get(todo.pop())
            if base is None:  # not an nlicot class (Lightning, torch): outside this rule
                continue
            if base[0] != module:
                hits |= (defined | used) & base[2]
            todo.extend(base[1])
        if hits:
            found[f"{module}:{name}"] = sorted(hits)
    return found


def test_the_check_sees_private_access_on_other_objects():
    code = "class A:\n    def f(self, other):\n        self._ok = other._window\n        return super()._x, cls._y\n"
    assert private_accesses(code) == [(3, "other._window"), (4, "super()._x")]


def test_no_module_touches_another_objects_private_attributes():
    found = {f"{path.relative_to(NLICOT.parent)}:{line}": what
             for path in sorted(NLICOT.rglob("*.py")) for line, what in private_accesses(path.read_text())}
    assert found == {}


def test_the_check_sees_a_subclass_using_a_private_its_base_defines_elsewhere():
    base = class_privates("class A:\n    def __init__(self):\n        self._window = None\n", "a.py")
    sub = class_privates("class B(A):\n    def step(self):\n        self._window = 1\n", "b.py")
    same = class_privates("class C(A):\n    def step(self):\n        return self._window\n", "a.py")
    assert inherited_from_other_modules(base | sub | same) == {"b.py:B": ["_window"]}


def test_no_class_touches_a_private_its_nlicot_base_defines_in_another_module():
    classes = {}
    for path in sorted(NLICOT.rglob("*.py")):
        classes |= class_privates(path.read_text(), str(path.relative_to(NLICOT.parent)))
    assert inherited_from_other_modules(classes) == {}
