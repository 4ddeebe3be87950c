"""`migaki sweep`: hyper-parameter search with Optuna over a recipe's `sweep:` section.

Each trial is an ordinary run directory, OUT/trial-NNN, trained by `migaki.train.train` from
the recipe with the trial's values set as overrides (so a value that makes the recipe invalid
fails that trial with the schema's message, not the sweep). TPE, seeded from train.seed,
picks the values; each validation reports `sweep.metric` to the median pruner, and a trial
worse than the median of earlier ones at the same step stops there as early stopping does
(its checkpoint and final/ written, manifest status `pruned`). The study lives in SQLite
(OUT/sweep.db by default): a killed sweep goes on with `resume=True`, where the trials it left
running are marked failed and their values queued again. The end writes
OUT/best-recipe.yaml, the recipe with the best trial's values and no `sweep:` section.
"""

from __future__ import annotations

import json
import logging
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import FrozenTrial, Trial, TrialState

from migaki.config import Recipe, SweepParameter, apply_overrides, build_recipe, load_recipe
from migaki.errors import UserError
from migaki.rundir import new_run_dir, read_manifest
from migaki.train import train
from migaki.train.loop import StopTraining, ValidationHook
from migaki.train.tracking import read_metrics

log = logging.getLogger(__name__)

BEST_RECIPE = "best-recipe.yaml"
STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


@dataclass(frozen=True)
class TrialRow:
    """One trial as the table shows it; `note`: why it failed, where it was pruned, or
    which trial it repeats."""

    number: int
    state: str  # complete, pruned, failed, running, waiting
    value: float | None  # sweep.metric: the last validation's, or the pruned step's
    minutes: float | None
    params: dict[str, Any]
    run_dir: str | None
    note: str


@dataclass(frozen=True)
class SweepResult:
    """What a sweep left: every trial of the study, the best complete one (None when no trial
    completed) and OUT/best-recipe.yaml (None likewise)."""

    out: Path
    storage: str
    study: str
    metric: str
    direction: str
    trials: list[TrialRow]
    best: TrialRow | None
    best_recipe: Path | None


def sweep(
    recipe_path: str | Path,
    trials: int,
    out: str | Path | None = None,
    storage: str | None = None,
    resume: bool = False,
    study_name: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> SweepResult:
    """Run trials of the recipe's sweep until `trials` have finished (complete, pruned, or
    failed on their own values; a trial a kill left running does not count: it runs again).
    `out`: the folder of the trial runs (default runs/NAME-sweep-TIME); `storage`: an Optuna
    RDB URL (default sqlite:///OUT/sweep.db); `study_name`: default the recipe file's stem.
    Raises UserError for a recipe without a usable sweep: section, a storage that cannot be
    opened, or an existing study without `resume`; Interrupted when a signal stopped a trial
    (that trial stays `running` in the study, for `resume`)."""
    if trials < 1:
        raise UserError(f"--trials {trials}: give the number of trials to finish (1 or more)")
    recipe = load_recipe(recipe_path, overrides)
    kinds = check_space(recipe)
    if resume and out is None:
        raise UserError("--resume continues a sweep: name its folder with --out DIR")
    stem = Path(recipe_path).stem
    out = Path(out or new_run_dir(f"{recipe.name or stem}-sweep"))
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{out.resolve() / 'sweep.db'}"
    study = _open_study(recipe, storage, study_name or stem, resume)
    if resume:
        _queue_again_what_a_kill_stopped(study)
    while (done := _finished(study)) < trials:
        _run_trial(study, recipe, kinds, out, f"{done + 1} of {trials}")
    rows = trial_rows(study)
    best = _best(study, rows)
    best_recipe = None
    if best is not None:
        best_recipe = out / BEST_RECIPE
        _write_best_recipe(best_recipe, recipe, best, study.study_name)
    cfg = recipe.sweep
    return SweepResult(
        out, storage, study.study_name, cfg.metric, cfg.direction, rows, best, best_recipe
    )


def check_space(recipe: Recipe) -> dict[str, str]:
    """Each swept key's kind ("int", "float" or "choices"); raises UserError naming the
    recipe file and key for a recipe without a sweep: section, a range over a key that is
    not a number, fractional bounds of a whole-number key, or choices that are not plain
    values (numbers, text, true/false, null)."""
    source = recipe.source
    if recipe.sweep is None:
        raise UserError(
            f"{source}: sweep: is missing; migaki sweep needs a sweep: section whose space: "
            "lists recipe keys and their ranges, e.g. train.lr: {low: 1e-5, high: 1e-3, log: true}"
        )
    kinds = {}
    for key, parameter in recipe.sweep.space.items():
        where = f"{source}: sweep.space.{key}"
        if parameter.choices is not None:
            if not all(isinstance(c, bool | int | float | str | None) for c in parameter.choices):
                raise UserError(f"{where}: choices must be numbers, text, true/false or null")
            kinds[key] = "choices"
            continue
        kind = _numeric_kind(key)
        if kind is None:
            raise UserError(f"{where}: {key} is not a number; give choices instead of low/high")
        bounds = [parameter.low, parameter.high, parameter.step or 1]
        if kind == "int" and not all(float(b).is_integer() for b in bounds):
            raise UserError(f"{where}: {key} takes whole numbers; give whole low, high and step")
        kinds[key] = kind
    return kinds


def _numeric_kind(dotted: str) -> str | None:
    """ "int" for a field typed int, "float" for one that takes fractions, else None (the
    schema has checked that `dotted` names a field)."""
    section: Any = Recipe
    for part in dotted.split("."):
        annotation = section.model_fields[part].annotation
        types_ = [t for t in _union_members(annotation) if t is not type(None)]
        sections = [t for t in types_ if isinstance(t, type) and hasattr(t, "model_fields")]
        section = sections[0] if sections else None
    if float in types_:
        return "float"
    return "int" if int in types_ else None  # bool is its own type here, not int


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _open_study(recipe: Recipe, storage: str, name: str, resume: bool) -> optuna.Study:
    cfg = recipe.sweep
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials)
        if cfg.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            sampler=optuna.samplers.TPESampler(seed=recipe.train.seed),
            pruner=pruner,
            direction=cfg.direction,
            load_if_exists=resume,
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise UserError(
            f"{storage}: study '{name}' exists already; pass --resume to continue it "
            "(or --study NAME to start another)"
        ) from None
    except Exception as exc:  # SQLAlchemy's many errors for a URL or file it cannot open
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"--storage {storage}: cannot open the study store ({first})") from None
    stored = study.direction.name.lower()
    if stored != cfg.direction:
        raise UserError(
            f"{recipe.source}: sweep.direction is {cfg.direction} but study '{name}' in "
            f"{storage} was started to {stored}; keep its direction or start another study "
            "(--study NAME)"
        )
    return study


def _queue_again_what_a_kill_stopped(study: optuna.Study) -> None:
    """Trials a killed sweep left running: failed, and their values queued again (marked
    `retry_of`) so that the next trial repeats them."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        log.info(
            "trial %d was left running by a stopped sweep: marked failed, its values queued again",
            trial.number,
        )


def _finished(study: optuna.Study) -> int:
    """Trials that count towards --trials: complete, pruned, or failed on their own values
    (a failure that a later trial repeats, after a kill, does not count)."""
    all_trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in all_trials}
    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and t.number not in retried)
        for t in all_trials
    )


def _run_trial(
    study: optuna.Study, recipe: Recipe, kinds: dict[str, str], out: Path, count: str
) -> None:
    """Ask the study for values, train a run with them and tell the study how it ended: its
    last validation figure, pruned, or failed (a recipe the values make invalid, a problem
    of the data, memory). A signal or a bug propagates; after a signal the trial stays
    running in the study, for --resume."""
    trial = study.ask()
    values = {
        key: _suggest(trial, key, parameter, kinds[key])
        for key, parameter in recipe.sweep.space.items()
    }
    run_dir = out / f"trial-{trial.number:03d}"
    trial.set_user_attr("run_dir", str(run_dir))
    shown = ", ".join(f"{key}={_show(value)}" for key, value in values.items())
    log.info("trial %d (%s): %s -> %s", trial.number, count, shown, run_dir)
    try:
        trial_recipe = recipe_with(recipe, values, f"{recipe.source} (trial {trial.number})")
        train(trial_recipe, out=run_dir, on_validation=_pruning_hook(trial, recipe.sweep.metric))
        value = _final_value(run_dir, recipe.sweep.metric)
    except (UserError, torch.OutOfMemoryError) as exc:
        _fail(study, trial, str(exc).splitlines()[0] or type(exc).__name__)
        return
    except Exception as exc:
        _fail(study, trial, f"{type(exc).__name__}: {exc}")
        raise
    if read_manifest(run_dir).get("status") == "pruned":
        study.tell(trial, state=TrialState.PRUNED)  # Optuna keeps the pruned step's value
        log.info("trial %d: pruned", trial.number)
    else:
        study.tell(trial, value)
        log.info("trial %d: %s %.4g", trial.number, recipe.sweep.metric, value)


def _suggest(trial: Trial, key: str, parameter: SweepParameter, kind: str) -> Any:
    if kind == "choices":
        return trial.suggest_categorical(key, parameter.choices)
    if kind == "int":
        step = int(parameter.step or 1)
        return trial.suggest_int(
            key, int(parameter.low), int(parameter.high), step=step, log=parameter.log
        )
    return trial.suggest_float(
        key, parameter.low, parameter.high, step=parameter.step, log=parameter.log
    )


def recipe_with(recipe: Recipe, values: dict[str, Any], source: str) -> Recipe:
    """The recipe with `values` set at their dotted keys and no sweep: section, validated
    again; raises UserError (naming `source`) when a value makes it invalid."""
    raw = recipe.to_dict()
    raw.pop("sweep", None)
    # JSON text is YAML the overrides parse back to the same value (1e-05, true, null, "x")
    apply_overrides(raw, [f"{key}={json.dumps(value)}" for key, value in values.items()])
    return build_recipe(raw, source=source)


def _pruning_hook(trial: Trial, metric: str) -> ValidationHook:
    """The loop's on_validation hook: report `metric` at each validation; stop the run
    when the pruner says the trial is worse than the median of earlier trials."""

    def report(step: int, figures: dict[str, Any]) -> None:
        value = figures.get(metric)
        if value is None:
            return  # not a figure of this task: the trial fails at its end, saying so
        trial.report(value, step)
        if trial.should_prune():
            raise StopTraining(
                "pruned",
                f"{metric} {value:.4g} at step {step} is worse than the median of earlier "
                "trials at that step",
            )

    return report


def _final_value(run_dir: Path, metric: str) -> float:
    """`metric` of the run's last validation; UserError when it has none."""
    validations = [m for m in read_metrics(run_dir) if m.get("split") == "val"]
    if not validations:
        raise UserError(
            f"{run_dir}: no validation ran, so sweep.metric {metric} has no value; give "
            "data.val or data.split.val"
        )
    if validations[-1].get(metric) is None:
        figures = sorted(k for k, v in validations[-1].items() if isinstance(v, int | float))
        raise UserError(
            f"sweep.metric: '{metric}' is not a validation figure of this run "
            f"({', '.join(f for f in figures if f not in ('step', 'epoch', 'time'))})"
        )
    return float(validations[-1][metric])


def _fail(study: optuna.Study, trial: Trial, message: str) -> None:
    trial.set_user_attr("error", message)
    study.tell(trial, state=TrialState.FAIL)
    log.warning("trial %d failed: %s", trial.number, message)


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """Every trial of the study, by number."""
    all_trials = study.get_trials(deepcopy=False)
    retries = {t.user_attrs["retry_of"]: t.number for t in all_trials if "retry_of" in t.user_attrs}
    return [_row(trial, retries.get(trial.number)) for trial in all_trials]


def _row(trial: FrozenTrial, retried_as: int | None) -> TrialRow:
    minutes = None
    if trial.datetime_start and trial.datetime_complete:
        minutes = (trial.datetime_complete - trial.datetime_start).total_seconds() / 60
    run_dir = trial.user_attrs.get("run_dir")
    note = trial.user_attrs.get("error", "")
    if retried_as is not None:
        note = f"stopped with its sweep; repeated as trial {retried_as}"
    elif "retry_of" in trial.user_attrs:
        note = f"repeats trial {trial.user_attrs['retry_of']}"
    elif trial.state == TrialState.PRUNED and run_dir:
        note = str(read_manifest(run_dir).get("stopped", ""))
    return TrialRow(
        trial.number,
        STATES.get(trial.state, trial.state.name.lower()),
        trial.value,
        minutes,
        dict(trial.params),
        run_dir,
        note,
    )


def _best(study: optuna.Study, rows: list[TrialRow]) -> TrialRow | None:
    if not any(row.state == "complete" for row in rows):
        return None
    return next(row for row in rows if row.number == study.best_trial.number)


def _write_best_recipe(path: Path, recipe: Recipe, best: TrialRow, study: str) -> None:
    """The resolved recipe with the best trial's values and no sweep: section, which
    `migaki train` loads as any recipe."""
    tuned = recipe_with(recipe, best.params, str(path))
    header = (
        f"# best of sweep '{study}': trial {best.number} ({best.run_dir}), "
        f"{recipe.sweep.metric} {best.value:.6g}\n"
    )
    text = yaml.safe_dump(tuned.to_dict(), sort_keys=False, allow_unicode=True)
    path.write_text(header + text, encoding="utf-8")


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
