"""Tasks: what a run learns. One module per task, each filling in one `Task` (its rows, the
methods it allows, tokenize and collate, its objective and set-up, what validation logs and
how `migaki eval` scores it), behind `TASKS`, as methods sit behind `methods.METHODS`.
Nothing outside this package compares task names: other layers ask the task object.

Adding a task is one module that defines `TASK = Task(...)` and one line in `TASKS` (or
`register(TASK)` at run time)."""

from __future__ import annotations

import difflib
from pathlib import Path

from migaki.config import Recipe
from migaki.errors import UserError
from migaki.tasks import (
    classification,
    distill,
    dpo,
    kto,
    orpo,
    pretrain,
    reward,
    sft,
)
from migaki.tasks.task import Task

__all__ = ["TASKS", "Task", "check_generates", "register", "task_for"]

TASKS: dict[str, Task] = {
    "sft": sft.TASK,
    "pretrain": pretrain.TASK,
    "classification": classification.TASK,
    "dpo": dpo.TASK,
    "orpo": orpo.TASK,
    "kto": kto.TASK,
    "reward": reward.TASK,
    "distill": distill.TASK,
}


def register(task: Task) -> None:
    """Make `task` available to recipes by its name (a task of one's own, or a test's)."""
    TASKS[task.name] = task


def task_for(recipe: Recipe) -> Task:
    """The recipe's task, after checking that the recipe suits it (its method, the keys only
    other tasks read, the guard). Every command calls this before loading anything; raises
    UserError listing every problem, each naming the recipe file and key."""
    task = TASKS.get(recipe.task)
    if task is None:
        close = difflib.get_close_matches(recipe.task, TASKS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(
            f"{recipe.source}: task: unknown task '{recipe.task}'{hint}; one of {', '.join(TASKS)}"
        )
    problems = _method_problems(recipe, task) + _key_problems(recipe, task) + task.check(recipe)
    if problems:
        raise UserError("\n".join(f"{recipe.source}: {problem}" for problem in problems))
    return task


def check_generates(target: str | Path, recipe: Recipe | None) -> None:
    """Refuse to generate text with a run whose task scores instead (a model with a head);
    `recipe` None is a bare model, which generates."""
    if recipe is None:
        return
    refusal = task_for(recipe).no_generation
    if refusal is not None:
        raise UserError(f"{target}: {refusal.format(path=target)}")


def _method_problems(recipe: Recipe, task: Task) -> list[str]:
    method = recipe.method.name
    if method in task.methods:
        return []
    if method == "head" and task.head is None:
        with_head = " or ".join(name for name, other in TASKS.items() if other.head)
        return [
            f"method.name: method head trains only a new task head, which task {task.name} "
            f"does not have; use it with task {with_head}"
        ]
    why = task.refuse_method.format(task=task.name, method=method, allowed=", ".join(task.methods))
    return [f"method.name: {why}"]


def _key_problems(recipe: Recipe, task: Task) -> list[str]:
    """Keys that only other tasks read, set away from their defaults, and the forgetting
    guard on a task that does not train the causal-LM loss it measures."""
    problems = []
    for other in TASKS.values():
        for key in other.keys:
            if other is not task and _value(recipe, key) != _default(key):
                problems.append(f"{key} applies to task {other.name} only (not {task.name})")
    forgetting = recipe.train.forgetting
    if forgetting is not None and not task.language_modelling:
        measured = " or ".join(name for name, other in TASKS.items() if other.language_modelling)
        problems.append(
            f"train.forgetting: it measures the language-modelling loss on {forgetting.data}, "
            f"which task {task.name} does not train; use it with task {measured}"
        )
    return problems


def _default(key: str):
    """The schema's default of a dotted key (`preference.sft_weight`)."""
    section, field = key.split(".")
    return getattr(Recipe.model_fields[section].default_factory(), field)


def _value(recipe: Recipe, key: str):
    node = recipe
    for part in key.split("."):
        node = getattr(node, part)
    return node
