"""`migaki data validate | prepare | doctor | report`: parse, call the data layer, print."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import get_args

from migaki.cli_parsing import add_command, add_command_group
from migaki.config import CleanConfig, DataConfig, DataFormat, Recipe, load_recipe
from migaki.data.prepare import prepare_data
from migaki.data.profile import profile_file
from migaki.data.report_html import render_data_report
from migaki.data.tokenize import rendered_length
from migaki.data.validate import too_long_warnings, validate_for
from migaki.errors import UserError

EXAMPLES = {
    "validate": "migaki data validate train.jsonl --max-errors 20",
    "prepare": "migaki data prepare tickets.jsonl -o prepared/ --recipe recipe.yaml",
    "doctor": "migaki data doctor recipe.yaml --samples 3",
    "report": "migaki data report tickets.jsonl -o report.html",
}
FORMATS = list(get_args(DataFormat))


def add_data_command(commands) -> None:
    """Register `migaki data ...` on the top-level subparsers."""
    actions = add_command_group(
        commands,
        "data",
        "Validate, clean and split, check before training, or report on a data set.",
        "Data preparation: validate, prepare, doctor, report.",
    )

    def action(name: str, summary: str) -> argparse.ArgumentParser:
        return add_command(actions, name, summary, EXAMPLES[name])

    validate = action("validate", "Check every row of a data file; list each problem as FILE:LINE.")
    validate.add_argument("file", help="data file (jsonl, json, csv, tsv, parquet, txt, md)")
    _file_options(validate)
    validate.add_argument(
        "--max-errors", type=int, default=50, help="problems to print (0: all; default 50)"
    )
    validate.add_argument("--max-length", type=int, help="also flag rows longer (in tokens)")
    validate.set_defaults(handler=_validate)

    prepare = action(
        "prepare",
        "Clean (normalize, personal data, filters, de-duplicate), split and augment a data "
        "file; write OUT/train.jsonl, val.jsonl, test.jsonl and prepare_report.json.",
    )
    prepare.add_argument("file", help="data file")
    _file_options(prepare)
    prepare.add_argument("-o", "--out", required=True, help="output folder")
    prepare.add_argument(
        "--split", choices=["auto", "none"], default="auto", help="none: write OUT/data.jsonl"
    )
    prepare.add_argument(
        "--skip-invalid",
        action="store_true",
        help="drop invalid rows (counted), do not stop",
    )
    prepare.set_defaults(handler=_prepare)

    doctor = action(
        "doctor",
        "Pre-flight check of a recipe's data: validity, rows through the chat template with "
        "loss tokens marked, lengths, duplicates, leakage, tokens per epoch. Exit 2 on a no-go.",
    )
    doctor.add_argument("recipe", help="recipe YAML file")
    doctor.add_argument("--samples", type=int, default=3, help="rows to render (default 3)")
    doctor.add_argument(
        "--color", choices=["auto", "always", "never"], default="auto", help="mark loss tokens"
    )
    doctor.add_argument("--json", dest="json_path", help="also write the figures to this file")
    doctor.set_defaults(handler="doctor")

    report = action(
        "report",
        "A self-contained HTML page (and a JSON twin) about a data file: lengths, labels, "
        "languages, duplicates, personal data, what filters would remove.",
    )
    report.add_argument("file", help="data file")
    _file_options(report)
    report.add_argument("-o", "--out", required=True, help="HTML file to write (JSON beside it)")
    report.add_argument("--model", help="tokenizer for token lengths (alias or folder)")
    report.set_defaults(handler=_report)


def _file_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="take format, labels, columns and cleaning from a recipe")
    parser.add_argument("--format", choices=FORMATS, help="row format (default auto)")
    parser.add_argument("--columns", help="column names of a csv/tsv without header: a,b")
    parser.add_argument("--labels", help="allowed labels, comma separated")
    parser.add_argument("--label-column", help="field holding the label (default label)")
    parser.add_argument(
        "--text-unit",
        choices=("paragraph", "line"),
        help="a row of a .txt/.md file: lines up to a blank line (default), or each line",
    )


def _data_config(args: argparse.Namespace):
    """The recipe's data section (or defaults), with the file and command-line options."""
    recipe: Recipe | None = load_recipe(args.recipe) if args.recipe else None
    data = recipe.data if recipe else DataConfig(train=args.file)
    updates = {"train": args.file}
    if recipe is not None and args.file != recipe.data.train:
        updates |= {"val": None, "test": None}  # the recipe's other files belong to its train
    if args.format:
        updates["format"] = args.format
    if args.columns:
        updates["columns"] = [c.strip() for c in args.columns.split(",")]
    if args.labels:
        updates["labels"] = [c.strip() for c in args.labels.split(",")]
    if args.label_column:
        updates["label_column"] = args.label_column
    if args.text_unit:
        updates["text_unit"] = args.text_unit
    return recipe, data.model_copy(update=updates)


def _validate(args: argparse.Namespace) -> int:
    recipe, data = _data_config(args)
    count_tokens, max_length = None, args.max_length
    if recipe is not None or max_length:
        count_tokens, max_length = _length_check(recipe, data, max_length)
    check = validate_for(args.file, data)
    if count_tokens is not None:
        check.warnings += too_long_warnings(check.examples, count_tokens, max_length)
    limit = args.max_errors or len(check.problems)
    for problem in check.problems[:limit]:
        print(problem)
    if len(check.problems) > limit:
        print(f"... {len(check.problems) - limit} more (--max-errors 0 shows all)")
    for warning in check.warnings[: args.max_errors or None]:
        print(f"warning: {warning}")
    kinds = ", ".join(f"{kind} {n}" for kind, n in check.by_kind().most_common())
    print(
        f"{args.file}: {check.rows} rows, {len(check.records)} valid, format {check.fmt}"
        + (f"; {len(check.problems)} problems: {kinds}" if check.problems else "")
        + (f"; {len(check.warnings)} warnings" if check.warnings else "")
    )
    return 2 if check.problems else 0


def _tokenizer(name: str, recipe: Recipe | None = None):
    """The tokenizer of model `name`, with the recipe's model settings (its chat template)."""
    # migaki.models loads torch and transformers (seconds); only the options that count
    # tokens need them, so the data commands stay quick without.
    from migaki import models

    if recipe is not None and name == recipe.model.base:
        return models.recipe_tokenizer(recipe.model)
    return models.load_tokenizer(models.resolve(name))


def _length_check(recipe, data, max_length: int | None):
    if recipe is None:
        raise UserError("--max-length needs a tokenizer: give --recipe")
    tokenizer = _tokenizer(recipe.model.base, recipe)

    def count(example) -> int:
        return rendered_length(example, tokenizer, data)

    return count, max_length or data.max_length


def _prepare(args: argparse.Namespace) -> None:
    recipe, data = _data_config(args)
    clean = data.clean or CleanConfig()
    needs_tokens = clean.filter and (clean.filter.min_tokens or clean.filter.max_tokens)
    tokenizer = None
    if needs_tokens:
        if recipe is None:
            raise UserError("token bounds in data.clean.filter need --recipe (its tokenizer)")
        tokenizer = _tokenizer(recipe.model.base, recipe)
    seed = recipe.train.seed if recipe else 0
    prepared = prepare_data(
        data,
        seed,
        clean=clean,
        split=args.split != "none",
        tokenizer=tokenizer,
        skip_invalid=args.skip_invalid or data.skip_invalid,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in prepared.parts.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row.fields, ensure_ascii=False) + "\n")
    report = prepared.report() | {"input": args.file}
    (out / "prepare_report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1))
    for step in prepared.steps:
        print(step.summary())
    written = ", ".join(f"{name}.jsonl {len(rows)}" for name, rows in prepared.parts.items())
    print(f"wrote {out}/: {written}, prepare_report.json")


def _report(args: argparse.Namespace) -> None:
    recipe, data = _data_config(args)
    tokenizer, name = None, args.model or (recipe.model.base if recipe else None)
    if name:
        tokenizer = _tokenizer(name, recipe)
    report = profile_file(
        args.file, data, data.clean or CleanConfig(), tokenizer=tokenizer, tokenizer_name=name
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_data_report(report), encoding="utf-8")
    twin = out.with_suffix(".json")
    twin.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"wrote {out} and {twin}")
