"""Recipes: typed, validated once at load, with dotted command-line overrides.

A recipe is YAML; every section is a pydantic model with defaults and a description per field.
The YAML loader, the CLI overrides and the Python API all build the same `Recipe` object, so a
mistake is reported once, before any model loads, naming the key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from migaki.errors import UserError

FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    base: str = Field(
        description="Alias (`migaki models`), a local Hugging Face directory, or a .gguf file."
    )
    accept_license: str | None = Field(
        None, description="Accept the licence a bundled model needs (`gemma` for gemma3-270m)."
    )
    trust_remote_code: bool = Field(False, description="Run code shipped with the model.")
    attn_implementation: Literal["sdpa", "eager"] = Field(
        "sdpa", description="Attention kernel used for training and inference."
    )
    dropout: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Dropout while training: every dropout rate the model's config names "
        "(hidden, attention, classifier; e.g. BERT's hidden_dropout_prob) set to this; "
        "null: the model's own.",
    )
    chat_template: str | None = Field(
        None,
        description="A named chat template (chatml, gemma, llama3) or a Jinja file, for "
        "models that ship none or the wrong one; its end-of-turn token is trained and stops "
        "generation.",
    )


class SplitConfig(Section):
    val: float = Field(0.1, ge=0.0, lt=0.5, description="Share of rows held out for validation.")
    test: float = Field(0.1, ge=0.0, lt=0.5, description="Share of rows held out for testing.")
    seed: int | None = Field(None, description="Seed of the split; defaults to train.seed.")
    stratify: bool = Field(True, description="Keep each label's share equal across splits.")
    leakage: bool = Field(
        True,
        description="Remove from train the rows that (nearly) duplicate a val or test row, and "
        "from val those that duplicate a test row.",
    )


def _switch(value: Any) -> Any:
    """A step can be written `false` (off), `true` or `{}` (on, defaults) or with settings."""
    if value is True:
        return {}
    return None if value is False else value


class NormalizeConfig(Section):
    unicode: Literal["NFKC", "NFC", "none"] = Field(
        "NFKC", description="Unicode normalization; NFKC turns full-width ＡＢＣ１２３ into ABC123."
    )
    whitespace: bool = Field(True, description="Trim lines and collapse runs of spaces and tabs.")
    control_chars: bool = Field(
        True, description="Remove control and zero-width characters (newlines and tabs stay)."
    )
    strip_html: bool = Field(False, description="Remove HTML tags and decode entities.")


class PiiConfig(Section):
    action: Literal["mask", "drop", "report"] = Field(
        "mask", description="mask: typed placeholders like <EMAIL>; drop the row; or only report."
    )
    types: list[
        Literal["email", "phone", "credit_card", "my_number", "postal_code", "ip_address", "secret"]
    ] = Field(
        ["email", "phone", "credit_card", "my_number", "postal_code", "ip_address", "secret"],
        description="Kinds of personal data and secrets to look for.",
    )


class FilterConfig(Section):
    min_chars: int = Field(1, ge=0, description="Rows with fewer characters are removed.")
    max_chars: int | None = Field(None, ge=1, description="Rows with more characters are removed.")
    min_tokens: int | None = Field(None, ge=0, description="Bounds in the model's tokens.")
    max_tokens: int | None = Field(None, ge=1)
    languages: list[Literal["ja", "en", "other"]] | None = Field(
        None, description="Keep only these languages (by script share); null: all."
    )
    blocklist: str | None = Field(
        None, description="File with one term per line; rows containing one are removed."
    )
    max_repetition: float | None = Field(
        None, gt=0.0, le=1.0, description="Largest share of text in repeated 10-character runs."
    )
    max_symbol_ratio: float | None = Field(
        None, gt=0.0, le=1.0, description="Largest share of characters that are symbols."
    )


class DedupConfig(Section):
    exact: bool = Field(True, description="Remove rows equal after case and space folding.")
    near: bool = Field(True, description="Remove near-duplicates (MinHash, character shingles).")
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="Jaccard similarity that counts.")
    shingle: int = Field(5, ge=1, le=32, description="Characters per shingle.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations.")


class CleanConfig(Section):
    normalize: NormalizeConfig | None = Field(default_factory=NormalizeConfig)
    pii: PiiConfig | None = Field(default_factory=PiiConfig)
    filter: FilterConfig | None = Field(default_factory=FilterConfig)
    dedup: DedupConfig | None = Field(default_factory=DedupConfig)

    @field_validator("normalize", "pii", "filter", "dedup", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        return _switch(value)


class AugmentConfig(Section):
    copies: int = Field(1, ge=1, le=16, description="Augmented rows made per training row.")
    operations: list[Literal["swap", "delete", "insert", "synonym"]] = Field(
        ["swap", "delete", "insert", "synonym"], description="EDA operations to draw from."
    )
    rate: float = Field(0.1, gt=0.0, le=0.5, description="Share of words (characters) changed.")
    synonyms: str | None = Field(
        None, description="File of synonym groups, one group per line, comma or tab separated."
    )


ChoicePrompt = Literal["listed", "question"]  # the user turn of multiple-choice rows
TextUnit = Literal["paragraph", "line"]  # one row of a plain-text file

DataFormat = Literal[
    "auto",
    "messages",
    "alpaca",
    "sharegpt",
    "prompt_completion",
    "text",
    "classification",
    "preference",
    "choice",
]


class DataConfig(Section):
    train: str = Field(
        description="Training data file (jsonl, json, csv, tsv, parquet, or plain text: txt, md)."
    )
    val: str | None = Field(None, description="Validation file; if absent, split from train.")
    test: str | None = Field(None, description="Test file; if absent, split from train.")
    format: DataFormat = Field("auto", description="Row format; `auto` detects it per file.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    max_length: int = Field(1024, ge=8, le=131072, description="Longest row in tokens.")
    overlong: Literal["truncate", "drop", "split"] | None = Field(
        None,
        description="What happens to rows longer than max_length (always counted): truncate, "
        "drop, or split into max_length pieces; null: split for task pretrain, else truncate.",
    )
    packing: Literal["auto"] | bool = Field(
        "auto",
        description=(
            "Pack several examples per row (positions restart, attention stays inside each "
            "example); what is learnt does not change. auto: on GPUs; off on CPUs, where "
            "length-grouped padded batches measured 1.4x faster."
        ),
    )
    train_on_prompt: bool = Field(
        False, description="Also put loss on system and user tokens, not only assistant tokens."
    )
    system_prompt: str | None = Field(
        None,
        description=(
            "System message for rows without one. null keeps the chat template's own default "
            "(SmolLM2 inserts one); training and inference render the same way."
        ),
    )
    columns: list[str] | None = Field(
        None, description="Column names of csv/tsv files that have no header line."
    )
    text_unit: TextUnit = Field(
        "paragraph",
        description="One row of a plain-text file (.txt, .md): `paragraph`, lines up to a "
        "blank line; `line`, each line. Rows become `text` rows (task pretrain).",
    )
    label_column: str = Field("label", description="The field holding a row's label.")
    text_column: str | None = Field(
        None,
        description="The field holding a row's text, for classification and text rows whose "
        "text is not in `text`, `sentence` or `content` (read as `text`).",
    )
    choice_prompt: ChoicePrompt = Field(
        "listed",
        description="The user turn of multiple-choice rows: `listed`, the question and its "
        "choices one per line; `question`, the question alone (the choices appear only as "
        "answers to score). Training, `migaki eval` and choice scoring render it the same way.",
    )
    max_rows: int | None = Field(
        None, ge=1, description="Use a seeded random sample of this many training rows."
    )
    skip_invalid: bool = Field(
        False,
        description="Leave out rows that fail validation (each counted in the data report) "
        "instead of stopping at the first.",
    )
    labels: list[str] | None = Field(
        None, description="The allowed labels; a row with another label is an error."
    )
    group_by: str | None = Field(
        None, description="Field whose rows stay in one split (a conversation, a customer)."
    )
    clean: CleanConfig | None = Field(
        None, description="Cleaning before the split ({} for the defaults); null: off."
    )
    augment: AugmentConfig | None = Field(
        None, description="Augment training rows of classification data; null: off."
    )

    @field_validator("clean", "augment", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        return _switch(value)


MethodName = Literal[
    "lora",
    "dora",
    "qlora",
    "ia3",
    "prefix",
    "prompt",
    "adapter",
    "full",
    "freeze",
    "gradual",
    "head",
]


WHOLE_WEIGHTS = ("full", "freeze", "gradual")  # methods that train the model's own weights


class MethodConfig(Section):
    name: MethodName = Field("lora", description="How the model is adapted.")
    lora_rank: int = Field(16, ge=1, le=1024, description="LoRA rank r (lora, dora, qlora).")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (alpha / r).")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get LoRA: `all-linear` or a list of names."
    )
    trainable_layers: int = Field(
        2,
        ge=0,
        description="freeze, gradual (phase 1): the top N layers train, with the final norm "
        "and a classification head.",
    )
    trainable_modules: list[str] = Field(
        [], description="freeze, gradual: also train parameters whose name contains one of these."
    )
    unfreeze_at: float = Field(
        0.3,
        ge=0.0,
        description="gradual: phase 2 (every layer trains) starts here: a share of all steps "
        "if below 1, else a step number.",
    )
    unfreeze_lr_scale: float = Field(
        0.1, gt=0.0, le=1.0, description="gradual: phase 2's learning rate, as a share of lr."
    )
    num_virtual_tokens: int = Field(
        20, ge=1, le=512, description="prefix / prompt: learned virtual tokens."
    )
    adapter_size: int = Field(64, ge=1, le=8192, description="adapter: bottleneck width.")
    adapter_placement: Literal["houlsby", "pfeiffer"] = Field(
        "houlsby",
        description="adapter: houlsby after attention and feed-forward; pfeiffer after "
        "feed-forward only.",
    )
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="qlora: 4-bit data type.")


class PreferenceConfig(Section):
    beta: float = Field(
        0.1,
        gt=0.0,
        description="DPO: strength of the pull to the reference; ORPO: weight of the odds-ratio "
        "term (lambda).",
    )
    loss_type: Literal["sigmoid", "sigmoid_norm", "ipo", "hinge"] = Field(
        "sigmoid",
        description="DPO loss; sigmoid_norm and ipo compare per-token mean log-ratios, so "
        "answer length alone teaches nothing.",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="DPO sigmoid: share of pairs assumed mislabelled (conservative DPO).",
    )
    sft_weight: float = Field(
        0.0,
        ge=0.0,
        description="DPO: weight of an added NLL term on the chosen answers (RPO), which keeps "
        "their likelihood from falling; 0: off.",
    )
    desirable_weight: float = Field(1.0, gt=0.0, description="KTO: weight of desirable rows.")
    undesirable_weight: float = Field(1.0, gt=0.0, description="KTO: weight of undesirable rows.")


class DistillConfig(Section):
    teacher: str | None = Field(
        None, description="The teacher: any model migaki loads (alias, folder, run or its final/)."
    )
    temperature: float = Field(2.0, gt=0.0, description="Softens both distributions.")
    alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Weight of the teacher (KL) term; the rest is label loss."
    )


class EarlyStopping(Section):
    patience: int = Field(ge=1, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0.0, description="Smallest decrease that counts.")


class ReplayConfig(Section):
    data: str = Field(description="File of earlier or general rows (any format migaki reads).")
    share: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of the training rows drawn from `data`."
    )
    format: DataFormat = Field("auto", description="Row format of `data`; auto detects it.")


class ForgettingConfig(Section):
    data: str = Field(description="General reference rows (text or chat) to keep a low loss on.")
    max_increase: float = Field(
        0.1, ge=0.0, description="Largest rise of the reference loss over step 0 (0.1: +10%)."
    )
    action: Literal["warn", "stop"] = Field(
        "warn", description="What a larger rise does: warn, or stop the run as early stopping does."
    )
    max_rows: int | None = Field(
        200, ge=1, description="Reference rows used (a seeded sample); null: all."
    )
    format: DataFormat = Field("auto", description="Row format of `data`; auto detects it.")


class TrainConfig(Section):
    epochs: float = Field(3.0, gt=0, le=1000, description="Passes over the training data.")
    max_steps: int | None = Field(
        None, ge=1, description="Optimizer steps; overrides epochs when set."
    )
    lr: float = Field(2e-4, gt=0, le=1.0, description="Peak learning rate.")
    batch_size: int = Field(8, ge=1, le=65536, description="Examples per optimizer step (global).")
    grad_accum: int = Field(1, ge=1, le=4096, description="Micro-batches per optimizer step.")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine")
    warmup: float = Field(
        0.05, ge=0.0, description="Warm-up: a share of all steps if below 1, else a step count."
    )
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null: none.")
    layer_lr_decay: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Layer-wise learning-rate decay (methods full, freeze, gradual): the top "
        "transformer layer, the head and the final norm train at lr, each layer below at this "
        "factor of the one above, the embeddings one factor below the lowest layer; null: off.",
    )
    max_minutes: float | None = Field(
        None,
        gt=0,
        description=(
            "Time budget of the whole run, from the command's start: the first steps are "
            "timed and the step count becomes what fits (the schedule ends there); null: none."
        ),
    )
    eval_every: int | None = Field(
        None, ge=1, description="Validate every N steps; null: about 10 times per run."
    )
    save_every: int | None = Field(
        None, ge=1, description="Checkpoint every N steps; null: at each validation."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Latest checkpoints kept, plus the best.")
    early_stopping: EarlyStopping | None = Field(
        None, description="Stop when validation loss stops improving (an int is the patience)."
    )
    final: Literal["best", "last"] = Field(
        "best", description="Which weights go to final/: best validation loss or last step."
    )
    ema: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Exponential moving average of the trained weights with this decay (e.g. "
        "0.999: about the last 1,000 steps): validation, the best checkpoint and final/ use "
        "it, training goes on with the raw weights; costs an fp32 copy of the trainable "
        "weights; null: off.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, ~30% slower."
    )
    compile: bool = Field(
        False,
        description=(
            "torch.compile the transformer body. On a 2-core CPU: 287 s to compile, then ~10% "
            "faster per step, so it pays only for long runs; usually worth it on GPUs."
        ),
    )
    group_by_length: bool = Field(
        True, description="Batch rows of similar length together (less padding, faster)."
    )
    seed: int = Field(42)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 where the hardware has it, else fp32."
    )
    log_every: int = Field(1, ge=1, description="Write the training loss every N steps.")
    track: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="Trackers beside metrics.jsonl, through accelerate: tensorboard (RUN/"
        "tensorboard), mlflow (a local store, RUN/mlruns, unless MLFLOW_TRACKING_URI is set), "
        "wandb (offline unless the user has logged in).",
    )
    init_from: str | None = Field(
        None, description="Start from an earlier run's final/ (its run directory); --init-from."
    )
    replay: ReplayConfig | None = Field(
        None, description="Mix earlier or general rows into the training split; null: off."
    )
    forgetting: ForgettingConfig | None = Field(
        None, description="Watch the loss on a general reference set at each validation."
    )

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _patience_shorthand(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return {"patience": value}
        return value


class JudgeConfig(Section):
    model: str = Field(
        description="The judging model: a bundled alias, a local model folder or a run directory."
    )
    rubric: str = Field(
        "Rate how well the answer responds to the question and agrees with the reference "
        "answer: 5 correct and complete, 3 partly correct, 1 wrong or off topic.",
        description="What the judge is asked to rate; it answers with one score per row.",
    )
    scale: int = Field(5, ge=2, le=10, description="Highest score (1 is the lowest).")
    max_rows: int | None = Field(100, ge=1, description="Rows judged (the first ones); null: all.")


class CounterfactualConfig(Section):
    swaps: list[tuple[str, str]] = Field(
        min_length=1,
        description="Term pairs swapped in each input, both ways (e.g. [彼, 彼女], [he, she], "
        "[Tanaka, Suzuki]); a changed label or answer is counted.",
    )
    max_rows: int | None = Field(
        200, ge=1, description="Rows that contain a term, tested (the first ones); null: all."
    )


class EvalConfig(Section):
    max_new_tokens: int = Field(96, ge=1, le=8192, description="Longest generated answer.")
    samples: int = Field(3, ge=0, description="Example answers shown side by side.")
    batch_size: int = Field(
        32, ge=1, le=4096, description="Rows generated (or choices scored) per forward pass."
    )
    format: str = Field(
        "text",
        description="What an answer must be: text (anything), json (parses as JSON), or a "
        "JSON schema file (.json) the parsed answer must validate against.",
    )
    judge: JudgeConfig | None = Field(
        None, description="A local model that rates each answer with a rubric, reported apart."
    )
    slices: list[str] = Field(
        default_factory=list,
        description="Row fields to report metrics per value of (e.g. [product, channel]); the "
        "largest gap is flagged.",
    )
    counterfactual: CounterfactualConfig | None = Field(
        None, description="Swap terms in the inputs and count changed labels or answers."
    )
    forgetting: bool = Field(
        True,
        description="Loss of base and tuned model on a general reference text (train.forgetting"
        ".data, or the Japanese and English text migaki ships), flagged above train.forgetting"
        ".max_increase (0.1 without it).",
    )

    @field_validator("format")
    @classmethod
    def _format_or_schema(cls, value: str) -> str:
        if value not in ("text", "json") and not value.endswith(".json"):
            raise ValueError("must be text, json, or a JSON schema file ending in .json")
        return value


COMPARE_SYSTEMS = ("base", "few_shot", "rag", "tuned", "tuned_rag")


class CompareConfig(Section):
    documents: list[str] = Field(
        default_factory=list,
        description="Files or folders (.txt, .md, .jsonl) that RAG retrieves passages from; "
        "empty: the training split's answers.",
    )
    k: int = Field(4, ge=1, le=64, description="Few-shot examples or retrieved passages per row.")
    systems: list[Literal["base", "few_shot", "rag", "tuned", "tuned_rag"]] = Field(
        default_factory=lambda: list(COMPARE_SYSTEMS), min_length=1, description="Systems compared."
    )
    chunk_chars: int = Field(
        600, ge=50, le=20000, description="Characters per document passage (split at paragraphs)."
    )
    retrieval: Literal["hybrid", "bm25", "embedding"] = Field(
        "hybrid",
        description="hybrid: BM25 (Japanese-aware tokens) and MiniLM embeddings fused by rank.",
    )
    encoder: str = Field(
        "minilm-l6", description="Sentence encoder for few-shot choice and retrieval."
    )


class SweepParameter(Section):
    low: float | None = Field(None, description="Lowest value of a numeric range.")
    high: float | None = Field(None, description="Highest value of a numeric range.")
    log: bool = Field(False, description="Sample the range on a log scale.")
    step: float | None = Field(None, gt=0, description="Step of an integer or discrete range.")
    choices: list[Any] | None = Field(None, min_length=1, description="Values to choose from.")

    @model_validator(mode="after")
    def _range_or_choices(self) -> SweepParameter:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None and (ranged or self.log or self.step is not None):
            raise ValueError("give either choices or low/high, not both")
        if self.choices is None:
            if self.low is None or self.high is None:
                raise ValueError("a range needs both low and high (or give choices)")
            if self.low >= self.high:
                raise ValueError(f"low ({self.low}) must be below high ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError("a log range needs low above 0")
            if self.log and self.step is not None:
                raise ValueError("a log range takes no step")
        return self


class SweepConfig(Section):
    space: dict[str, SweepParameter] = Field(
        min_length=1,
        description="Recipe keys (dotted, e.g. train.lr, method.lora_rank) and their ranges.",
    )
    metric: str = Field(
        "loss", description="Validation figure the sweep optimises (its last value per trial)."
    )
    direction: Literal["minimize", "maximize"] = Field(
        "minimize", description="Whether lower or higher `metric` is better."
    )
    pruner: Literal["median", "none"] = Field(
        "median", description="Stop a trial whose validation loss is worse than the median."
    )
    startup_trials: int = Field(
        3, ge=0, description="Trials that run to the end before any is pruned."
    )


class EstimateConfig(Section):
    steps: int = Field(4, ge=1, le=1000, description="Optimizer steps the measuring run takes.")
    price_per_hour: float | None = Field(None, ge=0, description="Machine price, for the cost.")
    currency: str = Field("USD")


TASK_NAMES = ("sft", "pretrain", "classification", "dpo", "orpo", "kto", "reward", "distill")


class Recipe(Section):
    name: str | None = Field(None, description="Run name; the run goes to runs/NAME-TIME.")
    model: ModelConfig
    # Any registered task (migaki.tasks.TASKS checks the name when a command starts, so a
    # task registered at run time needs no change here); the schema lists the bundled ones.
    task: str = Field("sft", description="Objective.", json_schema_extra={"enum": TASK_NAMES})
    data: DataConfig
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    estimate: EstimateConfig = Field(default_factory=EstimateConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)
    sweep: SweepConfig | None = Field(None, description="Search space of `migaki sweep`.")
    _source: str = PrivateAttr("recipe")  # the file it was read from, for error messages

    @property
    def source(self) -> str:
        """The recipe file (or "recipe"), as error messages name it."""
        return self._source

    @model_validator(mode="after")
    def _check_combinations(self) -> Recipe:
        if self.train.batch_size % self.train.grad_accum:
            raise ValueError(
                f"train.batch_size ({self.train.batch_size}) must be a multiple of "
                f"train.grad_accum ({self.train.grad_accum})"
            )
        if self.train.layer_lr_decay is not None and self.method.name not in WHOLE_WEIGHTS:
            raise ValueError(
                f"train.layer_lr_decay applies to methods {', '.join(WHOLE_WEIGHTS)} "
                f"(not {self.method.name}): an adapter's weights sit beside every layer alike"
            )
        for key in self.sweep.space if self.sweep else ():
            if not _is_recipe_key(key):
                raise ValueError(f"sweep.space.{key}: not a recipe key (e.g. train.lr)")
        if self.preference.label_smoothing and self.preference.loss_type != "sigmoid":
            raise ValueError(
                "preference.label_smoothing applies to loss_type sigmoid only "
                f"(not {self.preference.loss_type})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """Hash of what decides the learning; resume refuses to continue when it changes."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply `a.b=value` overrides, validate; relative data paths resolve
    against the recipe's folder. Raises UserError naming the file and key on any problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_RecipeLoader) or {}
    except _DuplicateKey as exc:
        raise UserError(f"{path}:{exc}") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f"{path}:{line + 1}" if line is not None else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe must be a mapping of sections (model, data, train...)")
    apply_overrides(raw, overrides)
    recipe = build_recipe(raw, source=str(path))
    return _resolve_paths(recipe, path.parent)


class _DuplicateKey(Exception):
    """A key given twice in one mapping; the message is `LINE: duplicate key ...`."""


class _RecipeLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping. PyYAML has no option for
    it and keeps the last value silently, so a second `lr:` or `train:` section further down
    would quietly replace the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            # merge keys (`<<: *defaults`) may be overridden by design; only scalars can repeat
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in first_lines:
                raise _DuplicateKey(
                    f"{line}: duplicate key '{key}' (first at line {first_lines[key]}); "
                    "keep one of them"
                )
            first_lines[key] = line
        return super().construct_mapping(node, deep=deep)


def build_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a plain dict into a Recipe, or raise UserError listing every problem."""
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = [describe_error(error) for error in exc.errors()]
        raise UserError("\n".join(f"{source}: {p}" for p in problems)) from None
    recipe._source = source
    return recipe


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    """Set `a.b.c=value` pairs into a nested dict; values are parsed as YAML scalars."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise UserError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override {item!r}: {part} is not a section")
            node = child
        node[leaf] = _parse_value(text)


def _parse_value(text: str) -> Any:
    """A YAML scalar, except that `1e-4` is a number (YAML 1.1 would keep it a string)."""
    if not text.strip():
        return None
    value = yaml.safe_load(text)
    if isinstance(value, str) and FLOAT.match(value.strip()):
        return float(value)
    return value


def _resolve_paths(recipe: Recipe, base_dir: Path) -> Recipe:
    """Paths that do not exist from here but do from the recipe's folder are made relative to
    that folder: the data files, the distillation teacher and the continual-learning files."""
    cfg = recipe.train
    holders = [(recipe.data, "train"), (recipe.data, "val"), (recipe.data, "test")]
    holders += [(cfg, "init_from"), (cfg.replay, "data"), (cfg.forgetting, "data")]
    holders += [(recipe.distill, "teacher"), (recipe.model, "chat_template")]
    holders += [(recipe.eval, "format"), (recipe.eval.judge, "model")]
    for holder, key in holders:
        value = getattr(holder, key, None) if holder is not None else None
        if value and not Path(value).is_absolute() and not Path(value).exists():
            candidate = base_dir / value
            if candidate.exists():
                setattr(holder, key, str(candidate))
    recipe.compare.documents = [
        str(base_dir / doc) if not Path(doc).exists() and (base_dir / doc).exists() else doc
        for doc in recipe.compare.documents
    ]
    return recipe


def _is_recipe_key(dotted: str) -> bool:
    """Whether `dotted` (section.field...) names a field of the recipe schema, through nested
    sections (optional ones included)."""
    section: type[BaseModel] | None = Recipe
    for part in dotted.split("."):
        if section is None or part not in section.model_fields:
            return False
        annotation = section.model_fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        section = nested[0] if nested else None
    return section is None  # a leaf: a whole section cannot be swept


def describe_error(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc) or "recipe"
    if error["type"] == "extra_forbidden":
        hint = _did_you_mean(loc)
        return f"unknown key '{key}'{hint}"
    if error["type"] == "missing":
        return f"missing key '{key}'"
    message = error["msg"].removeprefix("Value error, ")
    if not loc:  # a check across sections: its message starts with the key it names
        return message
    value = error.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict | list) else ""
    hint = (
        _closest_choice(value, error["ctx"]["expected"]) if error["type"] == "literal_error" else ""
    )
    return f"{key}: {message}{shown}{hint}"


def _closest_choice(value: Any, expected: str) -> str:
    """` (did you mean 'bf16'?)` when a string is close to one of the allowed values, which
    pydantic lists as `'a', 'b' or 'c'`; case is ignored so `BF16` finds `bf16`."""
    if not isinstance(value, str):
        return ""
    choices = {choice.lower(): choice for choice in re.findall(r"'([^']*)'", expected)}
    close = difflib.get_close_matches(value.lower(), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{choices[close[0]]}'?)" if close else ""


def _did_you_mean(loc: list[str]) -> str:
    section: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = section.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return ""
        section = nested[0]
    close = difflib.get_close_matches(loc[-1], list(section.model_fields), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
