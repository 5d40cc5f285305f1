"""The shape of the code: dependencies point one way, and the loop names no model or dataset."""

import ast
import os
import re

import models
from bagtricks import data, tasks
from conftest import REPO

# The modules every kind of problem goes through.
LOOP_MODULES = ["train.py", "bagtricks/main.py", "bagtricks/train.py", "bagtricks/steps.py",
                "bagtricks/state.py", "bagtricks/parallel.py", "bagtricks/hooks.py",
                "bagtricks/checkpoint.py", "bagtricks/validate.py", "bagtricks/tasks/base.py",
                "bagtricks/cli.py", "bagtricks/records.py", "bagtricks/divergence.py"]


def _modules():
  found = {}
  for package in ("bagtricks", "models"):
    for root, _, files in os.walk(os.path.join(REPO, package)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(root, name)
          module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
          found[module.removesuffix(".__init__")] = path
  return found


def _imports(path, known):
  deps = set()
  for node in ast.walk(ast.parse(open(path).read())):  # function-level imports count too
    if isinstance(node, ast.Import):
      deps |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
  return {d for d in deps if d in known}


def test_no_import_cycle_in_bagtricks_or_models():
  modules = _modules()
  graph = {m: sorted(_imports(p, modules) - {m}) for m, p in modules.items()}
  done = set()

  def visit(node, stack):
    if node in stack:
      raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
    if node in done:
      return
    for dep in graph[node]:
      visit(dep, stack + [node])
    done.add(node)

  for module in sorted(graph):
    visit(module, [])


def test_models_import_nothing_from_bagtricks_and_data_no_models():
  modules = _modules()
  for module, path in modules.items():
    deps = _imports(path, modules)
    if module.startswith("models"):
      assert not [d for d in deps if d.startswith("bagtricks")], module
    if module.startswith("bagtricks.data"):
      assert not [d for d in deps if d.startswith("models")], module


def test_loop_modules_name_no_model_task_or_dataset():
  names = set(models.model_names()) | set(data.source_names()) | set(tasks.task_names())
  names -= {"classification"}  # a generic word the loop's docs may use
  names |= {"resnet", "sdt", "dndt", "ndf", "forest", "soft_tree", "digits", "iris",
            "cifar", "imagenet", "leaf", "drop_block", "dropblock", "teacher_logits"}
  for path in LOOP_MODULES:
    text = open(os.path.join(REPO, path)).read().lower()
    found = sorted(n for n in names if re.search(rf"(?<![a-z0-9_]){re.escape(n)}(?![a-z0-9_])",
                                                 text))
    assert not found, f"{path} names {found}"
