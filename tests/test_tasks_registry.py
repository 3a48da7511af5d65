"""The task registry: every task declares what the rest of the library asks of it, and code outside
``m3ae/tasks`` asks the task object instead of comparing task names (AST-guarded)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from m3ae.data.collate import EXAMPLES
from m3ae.data.kinds import FOLDER_KINDS
from m3ae.errors import M3AEError
from m3ae.tasks import TASKS, BaseTask, get_task, make_task, register
from m3ae.train.config import TASKS as RECIPE_TASKS
from m3ae.train.config import TaskArgs

PACKAGE = Path(__file__).resolve().parents[1] / "m3ae"
TASK_NAMES = set(TASKS)
MAX_COMPARISONS = 5


def test_registry_holds_every_recipe_task_in_order() -> None:
    assert tuple(TASKS) == RECIPE_TASKS == ("pretrain", "vqa", "cls", "irtr")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_declares_what_the_library_asks(name: str) -> None:
    task = get_task(name)
    assert task.name == name and issubclass(task, BaseTask)
    assert task.heads and all(isinstance(h, str) for h in task.heads)
    assert task.batch_keys and task.examples in EXAMPLES
    assert set(task.batch_keys) <= set(EXAMPLES[task.examples].keys)  # the collator builds what the losses read
    assert task.monitor
    assert task.accepts and set(task.accepts) <= set(FOLDER_KINDS)
    assert set(task.accepts) <= set(EXAMPLES[task.examples].folders)  # the dataset can read what it accepts
    assert set(task.options) <= {f for f in TaskArgs.__dataclass_fields__}
    obj = make_task(name, **task.options_from(TaskArgs(name=name)))
    assert isinstance(obj, task) and set(obj.batch_keys) <= set(EXAMPLES[task.examples].keys)


def test_monitor_metrics_and_flags() -> None:
    assert {n: t.monitor for n, t in TASKS.items()} == {
        "pretrain": "-loss", "vqa": "overall", "cls": "accuracy", "irtr": "r_mean"}
    assert [n for n, t in TASKS.items() if t.pretraining] == ["pretrain"]
    assert [n for n, t in TASKS.items() if t.evaluates_saved] == ["vqa", "cls", "irtr"]


def test_unknown_and_duplicate_names_are_clear_errors() -> None:
    with pytest.raises(M3AEError, match="unknown task 'nope'"):
        get_task("nope")

    class Impostor(BaseTask):
        name = "vqa"

    with pytest.raises(M3AEError, match="already registered"):
        register(Impostor)
    assert TASKS["vqa"] is not Impostor


def _literal_names(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return set()


def task_name_comparisons(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """``x == "vqa"``, ``x != "cls"``, ``x in ("pretrain", "irtr")``: a value compared with task-name
    literals. ``"vqa" in model.heads`` (is there a head of that name) is membership, not counted."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:]):
            if isinstance(op, (ast.Eq, ast.NotEq)):
                names = _literal_names(left) | _literal_names(right)
            elif isinstance(op, (ast.In, ast.NotIn)):
                names = _literal_names(right)
            else:
                continue
            if names & TASK_NAMES:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_counter_sees_comparisons(tmp_path: Path) -> None:
    src = tmp_path / "probe.py"
    src.write_text('a = t == "vqa"\nb = t in ("pretrain", "irtr")\nc = "vqa" in heads\nd = t != "x"\n')
    assert len(task_name_comparisons(src, tmp_path)) == 2


def test_few_task_name_comparisons_outside_tasks() -> None:
    files = [p for p in sorted(PACKAGE.rglob("*.py")) if "tasks" not in p.relative_to(PACKAGE).parts[:1]]
    counted = [hit for p in files for hit in task_name_comparisons(p)]
    # the ones left: the pooling mode "cls" of the models floor and a prepared folder's kind in the
    # data floor, neither of which may know tasks; `m3ae bench` jobs and `m3ae demo` stages map to
    # tasks through the registry (m3ae.experiments.bench_core.JOB_TASKS, get_task(...).pretraining)
    assert len(counted) <= MAX_COMPARISONS, "ask the task object (m3ae.tasks.get_task) instead:\n" + "\n".join(counted)
