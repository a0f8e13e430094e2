"""Recipes: one YAML per scenario, validated on load. The shipped ones (smoke, quickstart, fashiongen-bert-base)
live beside this module as package data, so an installed wheel finds them by name; any other recipe is a path.

Unknown keys and bad values are errors that name the key (`train.lr: ...`), so a typo never silently falls back
to a default. Sections that later stages own (`distill`, `quantize`, `export`, `check`) are validated by the same
mechanism as they grow.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fbcompress.core.errors import FbError

RECIPES_DIR = Path(str(files(__name__)))  # the package's own folder, in a checkout and in an installed wheel


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(_Strict):
    """How a dataset dir is made (synthetic catalogue or converted Fashion-Gen) and how its images are cut."""

    products: int = Field(2000, ge=20, description="synthetic catalogue size")
    image_size: int = Field(64, ge=8, description="square side in pixels the model sees")
    grid: int = Field(8, ge=1, description="patch grid side: grid*grid image tokens")
    max_text_len: int = Field(64, ge=4, description="wordpieces kept per text, [CLS]/[SEP] included")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    eval_queries: int = Field(1000, ge=1, description="Rank@K queries per task (fewer if the split is small)")
    eval_negatives: int = Field(100, ge=1, description="negatives per Rank@K query")
    search_train_queries: int | None = Field(
        None, ge=0, description="search queries of the train split (a retriever's training queries; fewer if the "
        "split has fewer distinct ones); default: eval_queries, as val and test")
    seed: int = 0
    cache_images: bool = Field(True, description="decode all images once into memory (small datasets only)")

    @model_validator(mode="after")
    def _grid_divides_image(self) -> DataSection:
        if self.image_size % self.grid:
            raise ValueError(f"image_size {self.image_size} is not divisible by grid {self.grid}")
        return self

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def patch_pixels(self) -> int:
        return self.image_size // self.grid


class TeacherSection(_Strict):
    """The FashionBERT backbone: a local pretrained BERT directory, the packaged MiniLM, or random init."""

    backbone: str = Field("minilm", description="'minilm' (packaged), 'random', or a local HF BERT directory")
    hidden_size: int = Field(384, ge=8)
    num_layers: int = Field(6, ge=1)
    num_heads: int = Field(12, ge=1)
    intermediate_size: int = Field(1536, ge=8)
    patch_encoder: Literal["pixels", "features"] = "pixels"
    feature_dim: int | None = Field(
        None, ge=1, description="per-patch feature size for patch_encoder=features: taken from the dataset's feature "
        "store (`data features`); needed only for a dataset of one .npy per record"
    )
    dropout: float = Field(0.1, ge=0, lt=1)
    pooler_init: Literal["backbone", "identity"] = Field(
        "backbone",
        description="'identity' starts the [CLS] pooler as tanh(x) (weight I, bias 0) instead of the backbone's: "
        "for backbones whose pooler was never trained (all-MiniLM-L6-v2's; sentence-transformers pool by mean)",
    )

    @model_validator(mode="after")
    def _check(self) -> TeacherSection:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class TaskWeights(_Strict):
    mlm: float = Field(1.0, ge=0)
    mpm: float = Field(1.0, ge=0)
    ita: float = Field(1.0, ge=0)
    itc: float = Field(1.0, ge=0)


TaskName = Literal["mlm", "mpm", "ita", "itc"]


class TrainSection(_Strict):
    """Optimisation of the teacher (and, with a `distill` section, of the student)."""

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1, description="per process, per micro-batch")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(5e-5, gt=0)
    new_params_lr: float | None = Field(None, gt=0, description="lr for patch encoder/heads (default: lr)")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    clip_norm: float = Field(1.0, gt=0)
    eval_every: int = Field(200, ge=1)
    save_every: int = Field(200, ge=1)
    log_every: int = Field(1, ge=1)
    val_pairs: int = Field(400, ge=2, description="val pairs scored at each validation")
    seed: int = 0
    tasks: list[TaskName] = Field(
        ["mlm", "mpm", "ita"], min_length=1,
        description="pre-training tasks; 'itc' adds an embedding-level text-image contrastive task",
    )
    itc_temperature: float = Field(0.1, gt=0)
    patch_warmup_steps: int = Field(
        0, ge=0, description="steps fitting the pixel patch encoder to the word-embedding space before training"
    )
    loss_weighting: Literal["adaptive", "fixed"] = "adaptive"
    fixed_weights: TaskWeights = TaskWeights()
    mismatch_ratio: float = Field(0.5, ge=0, lt=1, description="share of mismatched pairs in a batch")
    hard_negative_share: float = Field(
        1.0, ge=0, le=1, description="train-teacher only: share of mismatched texts from the same subcategory "
        "(the paper: 1.0), the rest from any other product; distill always draws them from the same subcategory"
    )
    mlm_probability: float = Field(0.15, ge=0, lt=1)
    mlm_all_occurrences: bool = Field(False, description="mask every occurrence of a picked word together")
    mpm_probability: float = Field(0.1, ge=0, lt=1)
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    bucket_batches: int = Field(32, ge=1, description="VSL: this many batches are sorted by text length together")


class DistillWeights(_Strict):
    """Weight of each distillation term (0 switches a term off)."""

    soft: float = Field(1.0, ge=0, description="KL to the teacher's alignment logits at temperature T")
    hard: float = Field(1.0, ge=0, description="cross-entropy to the matched/mismatched labels")
    hidden: float = Field(1.0, ge=0, description="MSE of hidden states under the layer map")
    attention: float = Field(1.0, ge=0, description="KL of last-layer self-attention distributions (MiniLM)")
    embedding: float = Field(1.0, ge=0, description="MSE of the embedding outputs")


class DistillSection(_Strict):
    """The 2-layer VSL student and how it learns from the frozen teacher."""

    layers: int = Field(2, ge=1)
    hidden_size: int | None = Field(None, ge=8, description="narrower student width (default: the teacher's)")
    num_heads: int | None = Field(None, ge=1)
    intermediate_size: int | None = Field(None, ge=8)
    layer_map: list[int] | None = Field(None, description="teacher layer (0-based) per student layer")
    temperature: float = Field(2.0, gt=0)
    weights: DistillWeights = DistillWeights()
    extra_hard_pairs: int = Field(8, ge=0, description="extra same-subcategory negatives per batch, teacher-scored")
    steps: int | None = Field(None, ge=1, description="default: train.steps")
    lr: float | None = Field(None, gt=0, description="default: train.new_params_lr or train.lr")

    @model_validator(mode="after")
    def _check(self) -> DistillSection:
        if self.layer_map is not None and len(self.layer_map) != self.layers:
            raise ValueError(f"layer_map has {len(self.layer_map)} entries for {self.layers} student layers")
        if self.hidden_size is not None and self.num_heads is not None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class ShapeProfile(_Strict):
    """One TensorRT optimisation profile: [min, opt, max] of the batch size and of the text length (tokens)."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    batch: tuple[int, int, int]
    text: tuple[int, int, int]

    @model_validator(mode="after")
    def _ordered(self) -> ShapeProfile:
        for axis in ("batch", "text"):
            low, opt, high = getattr(self, axis)
            if not 1 <= low <= opt <= high:
                raise ValueError(f"{axis} must be [min, opt, max] with 1 <= min <= opt <= max, got {[low, opt, high]}")
        return self


def _default_profiles() -> tuple[ShapeProfile, ...]:
    # online: one request at a time, short texts most common; offline: re-ranking batches of candidates.
    return (
        ShapeProfile(name="online", batch=(1, 1, 8), text=(1, 16, 64)),
        ShapeProfile(name="offline", batch=(1, 32, 64), text=(1, 32, 64)),
    )


class ExportSection(_Strict):
    """What `fbcompress export` produces: shape profiles (TensorRT, Triton), engine precisions, ONNX opset, gates.

    Profile text maxima above the model's position table are refused at export time (the model cannot read them).
    """

    opset: int = Field(17, ge=17, le=23, description="ONNX opset of model.onnx")
    profiles: tuple[ShapeProfile, ...] = Field(default_factory=_default_profiles, min_length=1)
    precisions: tuple[Literal["fp32", "fp16", "int8"], ...] = Field(("fp16",), min_length=1,
                                                                   description="TensorRT engines to build")
    parity_tolerance: float = Field(1e-4, gt=0, description="max |logit diff| ONNX vs PyTorch before export fails")
    max_auc_drop: float = Field(0.001, ge=0, description="max AUC drop of the ONNX model vs the checkpoint")
    workspace_mib: int = Field(4096, ge=64, description="TensorRT builder workspace")
    triton_max_queue_delay_us: int = Field(100, ge=0, description="Triton dynamic batching queue delay")
    query_profiles: tuple[ShapeProfile, ...] = Field(
        default_factory=lambda: (ShapeProfile(name="online", batch=(1, 1, 8), text=(1, 8, 16)),
                                 ShapeProfile(name="offline", batch=(1, 32, 64), text=(1, 8, 16))),
        min_length=1, description="query encoders (search path): TensorRT profiles and Triton batching sized for "
        "queries (text at most the encoder's max_query_len)")
    image_encoder_batch: tuple[int, int, int] = Field(
        (1, 32, 128), description="features models: images per call of the image encoder's TensorRT engine "
        "(min, opt, max; offline batches)"
    )

    @model_validator(mode="after")
    def _unique_names(self) -> ExportSection:
        names = [p.name for p in self.profiles]
        if len(set(names)) != len(names):
            raise ValueError(f"profile names must be unique, got {names}")
        low, opt, high = self.image_encoder_batch
        if not 1 <= low <= opt <= high:
            raise ValueError(f"image_encoder_batch must be 1 <= min <= opt <= max, got {[low, opt, high]}")
        return self


class QuantizeSection(_Strict):
    """What `fbcompress quantize` makes and the accuracy it must keep (see `fbcompress/quantize/`).

    The tolerances are drops of the INT8 model against the FP32 `model.onnx` it came from; a negative value demands
    an improvement, which no quantization can promise (useful to test the guard).
    """

    method: Literal["ort-static", "ort-dynamic", "inc"] = Field(
        "ort-static", description="default method when the command gets no --method")
    calibration_method: Literal["MinMax", "Entropy", "Percentile"] = Field(
        "MinMax", description="how ONNX Runtime turns calibration activations into ranges")
    calibration_batches: int = Field(16, ge=1, description="batches of training pairs run for calibration")
    calibration_batch_size: int = Field(8, ge=1, description="pairs per calibration batch")
    percentile: float = Field(99.999, gt=90, le=100, description="calibration_method Percentile: kept share (%)")
    per_channel: bool = Field(True, description="one weight scale per output channel (symmetric INT8 weights)")
    reduce_range: Literal["auto", "on", "off"] = Field(
        "auto", description="7-bit weights for the CPU file; auto: on for AVX2 without VNNI (u8*s8 pairs saturate "
        "int16 there), off on VNNI/AMX")
    cpu_file: Literal["auto", "static", "dynamic"] = Field(
        "auto", description="ort-static: which graph ships as model.int8.onnx for ONNX Runtime on CPU; auto builds "
        "static QDQ and dynamic INT8, checks both on val, times both on this CPU and ships the faster one within "
        "tolerance (fbcompress/quantize/cpu_choice.py)")
    max_auc_drop: float = Field(0.005, description="max AUC drop of the INT8 model vs FP32 model.onnx")
    max_rank10_drop: float = Field(0.02, description="max ITR/TIR Rank@10 drop vs FP32 model.onnx")
    max_recall10_drop: float = Field(0.02, description="query encoders: max Recall@10 drop vs FP32 query_encoder.onnx "
                                                       "(val queries over the index)")
    max_ndcg10_drop: float = Field(0.02, description="query encoders: max nDCG@10 drop vs FP32 query_encoder.onnx")
    fallback: bool = Field(True, description="accuracy-aware fall-back: return the most sensitive MatMuls to FP "
                                             "until the tolerances hold on the val split")
    max_fallback_nodes: int = Field(8, ge=0, description="give up after returning this many nodes to FP")
    exclude_nodes: tuple[str, ...] = Field((), description="ONNX node names always kept in floating point")
    eval_queries: int | None = Field(None, ge=1, description="Rank@K queries per task in the val fall-back loop "
                                                            "(default: all); the final guard always uses all")
    image_encoder: Literal["auto", "off"] = Field(
        "auto", description="features models: also make an INT8 image_encoder.int8.onnx, shipped only when the FP32 "
        "scorer on its features keeps these tolerances end to end (quantize/image_encoder.py); off: never")
    image_encoder_calibration_images: int = Field(32, ge=1, description="train images that calibrate the INT8 "
                                                                        "image encoder")


class CheckSection(_Strict):
    """Tolerances of `fbcompress check`: how much a compressed candidate may lose against its teacher, and how
    much faster it must be at the reference (online) shape to be worth serving.

    Drops are teacher minus candidate, in absolute metric units; Rank@10 is checked for ITR and TIR separately.
    The speed-up is teacher p50 / candidate p50 at `batch_size` x `text_length`, timed on the check's device.
    """

    max_auc_drop: float = Field(0.01, ge=0, description="max AUC drop of the candidate vs the teacher")
    max_rank_drop: float = Field(0.03, ge=0, description="max ITR / TIR Rank@10 drop vs the teacher")
    min_speedup: float = Field(2.0, ge=0, description="min teacher/candidate p50 latency ratio (0: not checked)")
    batch_size: int = Field(1, ge=1, description="reference shape: batch size of the latency check")
    text_length: int = Field(16, ge=2, description="reference shape: real text length (tokens, VSL)")
    latency_runs: int = Field(100, ge=1, description="timed runs per model (design.md: >= 100)")
    latency_warmup: int = Field(10, ge=0, description="untimed warm-up runs before timing")
    max_recall10_drop: float = Field(0.02, ge=0, description="query encoders (check --index): max Recall@10 drop vs "
                                                             "the retriever's query tower")
    max_ndcg10_drop: float = Field(0.02, ge=0, description="query encoders: max nDCG@10 drop vs the query tower")
    min_query_speedup: float = Field(2.0, ge=0, description="query encoders: min tower/candidate p50 ratio at batch 1 "
                                                            "(0: not checked)")
    query_length: int = Field(6, ge=3, description="query encoders: the real query length (wordpieces, [CLS]/[SEP] "
                                                   "included) of the latency gate: a query of the split that long")


class RetrieverWeights(_Strict):
    """Task weights of `train-retriever` under `loss_weighting: fixed`."""

    contrastive: float = Field(1.0, ge=0)
    distill: float = Field(1.0, ge=0)


class RetrieverSection(_Strict):
    """The dual tower (`train-retriever`): its embedding and how it learns from queries and the cross-encoder.

    A training batch holds `batch_size` queries, each with `candidates` train products: one relevant (the positive)
    and candidates-1 same-subcategory products that are not relevant (hard negatives). Losses: symmetric in-batch
    InfoNCE over every product of the batch (products relevant to a query are not its negatives), and the KL of
    the tower's similarities to the cross-encoder's match scores over each query's candidates.
    """

    embedding_dim: int = Field(256, ge=8, description="size of the L2-normalised embedding (a projection)")
    pooling: Literal["mean", "cls"] = Field("mean", description="mean over real tokens, or the [CLS] token")
    product_text: Literal["title", "text"] = Field(
        "title", description="what the product side reads beside the image: the title (the paper's T segment), or "
        "the record's whole text (title and description)")
    max_query_len: int = Field(16, ge=3, description="wordpieces of a query, [CLS]/[SEP] included")
    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=2, description="queries per micro-batch (per rank)")
    candidates: int = Field(4, ge=1, description="products per query in a batch: 1 relevant + hard negatives")
    title_queries: float = Field(
        0.25, ge=0, le=1, description="share of a batch's queries that are product titles (relevant: the products "
        "of that title); the rest come from the dataset's search queries of the train split")
    frozen_layers: int = Field(
        0, ge=0, description="keep the embeddings, the patch encoder and the first N encoder layers as the teacher "
        "left them: their backward pass, most of a CPU step's cost, is skipped")
    lr: float = Field(5e-5, gt=0, description="encoder learning rate")
    projection_lr: float = Field(1e-3, gt=0, description="learning rate of the projection (new parameters)")
    temperature: float = Field(0.05, gt=0, description="InfoNCE temperature on cosine similarities")
    distill_temperature: float = Field(1.0, gt=0, description="softmax temperature of the cross-encoder's logits")
    tasks: list[Literal["contrastive", "distill"]] = Field(
        ["contrastive", "distill"], min_length=1, description="'distill' learns the cross-encoder's scores of each "
        "query's candidates; without it, in-batch contrastive only (the ablation)")
    loss_weighting: Literal["adaptive", "fixed"] = "adaptive"
    fixed_weights: RetrieverWeights = RetrieverWeights()
    val_queries: int = Field(100, ge=1, description="val search queries scored at each validation")
    encode_batch_size: int = Field(64, ge=1, description="products per forward pass when encoding a catalogue")


class QueryDistillWeights(_Strict):
    embedding: float = Field(1.0, ge=0, description="1 - cosine to the tower's query embedding")
    listwise: float = Field(1.0, ge=0, description="KL to the tower's ranking of the batch's candidate products")


class QueryEncoderSection(_Strict):
    """The online query encoder (`distill --retriever`): a 2-layer VSL student of the retriever's query tower that
    embeds into the same space, so the index built with the retriever's product tower stays valid.

    Narrower widths are cut out of the tower (modeling/width_pruning.py, ranked on training queries), as the
    cross-encoder's students are."""

    layers: int = Field(2, ge=1)
    hidden_size: int | None = Field(None, ge=8, description="narrower width (default: the tower's)")
    num_heads: int | None = Field(None, ge=1)
    intermediate_size: int | None = Field(None, ge=8)
    layer_map: list[int] | None = Field(None, description="tower layer (0-based) per student layer")
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=2, description="queries per micro-batch (per rank)")
    candidates: int = Field(8, ge=1, description="train products per query in the batch's candidate list")
    lr: float = Field(5e-4, gt=0)
    temperature: float = Field(0.05, gt=0, description="softmax temperature of the listwise term (similarities)")
    weights: QueryDistillWeights = QueryDistillWeights()

    @model_validator(mode="after")
    def _check(self) -> QueryEncoderSection:
        if self.layer_map is not None and len(self.layer_map) != self.layers:
            raise ValueError(f"layer_map has {len(self.layer_map)} entries for {self.layers} student layers")
        if self.hidden_size is not None and self.num_heads is not None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class IndexSection(_Strict):
    """The ANN index `index build` makes over the product embeddings (FAISS)."""

    exact_below: int = Field(50_000, ge=1, description="catalogues smaller than this get exact inner-product search")
    kind: Literal["hnsw", "ivfpq"] = Field("hnsw", description="the ANN index of a larger catalogue")
    hnsw_m: int = Field(32, ge=4, description="HNSW links per node")
    hnsw_ef_construction: int = Field(80, ge=8)
    hnsw_ef_search: int = Field(128, ge=1)
    ivf_lists: int | None = Field(None, ge=1, description="IVF-PQ lists (default: 2*sqrt(n))")
    pq_bytes: int = Field(32, ge=1, description="IVF-PQ code bytes per vector (must divide the embedding size)")
    ivf_probe: int = Field(16, ge=1, description="IVF-PQ lists searched per query")
    shard_rows: int = Field(10_000, ge=1, description="products per embedding shard (the unit of resume and of "
                                                      "work per rank)")
    recall_queries: int = Field(200, ge=1, description="queries that measure the ANN index's recall@10 vs exact")


class StudentShape(_Strict):
    """One student the quickstart may ship: the width of the 2-layer VSL student (unset: the `distill` section's)."""

    name: str = Field(..., min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")
    hidden_size: int | None = Field(None, ge=8)
    num_heads: int | None = Field(None, ge=1)
    intermediate_size: int | None = Field(None, ge=8)

    @model_validator(mode="after")
    def _check(self) -> StudentShape:
        if self.hidden_size is None and (self.num_heads is not None or self.intermediate_size is not None):
            raise ValueError(f"student '{self.name}': num_heads / intermediate_size need hidden_size")
        if self.hidden_size is not None and self.num_heads is not None and self.hidden_size % self.num_heads:
            raise ValueError(f"student '{self.name}': hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")
        return self

    def overrides(self) -> tuple[str, ...]:
        """The `--set` values that make `fbcompress distill` train this student."""
        fields = ("hidden_size", "num_heads", "intermediate_size")
        return tuple(f"distill.{key}={getattr(self, key)}" for key in fields if getattr(self, key) is not None)


class QuickstartSection(_Strict):
    """Which students `fbcompress quickstart` may ship, fastest first.

    Why a ladder: width trades accuracy for latency, and which width keeps the release gate depends on how well
    the teacher learned. The quickstart distills, quantizes and checks the first student; only if it fails
    `fbcompress check` does it go on to the next (or, with `--all-students`, it measures every one for the Pareto
    table). It ships the fastest student that passed.
    """

    students: tuple[StudentShape, ...] = Field((StudentShape(name="student"),), min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> QuickstartSection:
        names = [s.name for s in self.students]
        if len(set(names)) != len(names):
            raise ValueError(f"student names must be unique, got {names}")
        return self


class Recipe(_Strict):
    name: str = ""
    data: DataSection = DataSection()
    teacher: TeacherSection = TeacherSection()
    train: TrainSection = TrainSection()
    distill: DistillSection = DistillSection()
    quantize: QuantizeSection = QuantizeSection()
    export: ExportSection = ExportSection()
    check: CheckSection = CheckSection()
    quickstart: QuickstartSection = QuickstartSection()
    retriever: RetrieverSection = RetrieverSection()
    query_encoder: QueryEncoderSection = QueryEncoderSection()
    index: IndexSection = IndexSection()


def _format_validation_error(source: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown recipe key {key!r}"  # repr: a key holding a newline stays on one line
    return f"{source}: recipe key {key!r}: {' '.join(str(first['msg']).split())}"


# Fields added after checkpoints and quickstart runs already existed, with the default that reproduces the
# behaviour from before them: left out of fingerprints at that default, so that an existing checkpoint still
# resumes and an unchanged quickstart stage is still reused.
LATER_FIELD_DEFAULTS: dict[tuple[str, str], object] = {("teacher", "pooler_init"): "backbone",
                                                       ("data", "search_train_queries"): None}


def without_later_defaults(dump: dict) -> dict:
    """A copy of a recipe dump (`model_dump(mode="json")`) less the LATER_FIELD_DEFAULTS fields at their default."""
    out = {name: dict(value) if isinstance(value, dict) else value for name, value in dump.items()}
    for (section, key), default in LATER_FIELD_DEFAULTS.items():
        if isinstance(out.get(section), dict) and out[section].get(key) == default:
            out[section].pop(key)
    return out


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise FbError(f"recipe not found: {name_or_path}")


def parse_recipe(payload: object, source: str = "recipe", overrides: dict | None = None) -> Recipe:
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise FbError(f"{source}: a recipe is a YAML mapping of sections, got {type(payload).__name__}")
    merged = _deep_merge(payload, overrides or {})
    try:
        return Recipe.model_validate(merged)
    except ValidationError as exc:
        raise FbError(_format_validation_error(source, exc)) from None


def load_recipe(name_or_path: str | Path, overrides: dict | None = None) -> Recipe:
    path = resolve_recipe_path(name_or_path)
    try:
        payload = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FbError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise FbError(f"{path}: cannot read: {exc.strerror or exc}") from None
    recipe = parse_recipe(payload, str(path), overrides)
    if not recipe.name:
        recipe = recipe.model_copy(update={"name": path.stem})
    return recipe


def load_recipe_or_defaults(recipe: str | None, overrides: tuple[str, ...] | list[str] = ()) -> Recipe:
    """`--recipe R --set K=V ...` as commands take them: the named (or path) recipe with the overrides, or the
    defaults with the overrides when no recipe is named."""
    merged = merged_overrides(overrides)
    if recipe is None:
        return parse_recipe({}, "defaults", merged) if merged else Recipe()
    return load_recipe(recipe, merged)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """`train.steps=10` → {'train': {'steps': 10}} (value parsed as YAML)."""
    if "=" not in text:
        raise FbError(f"override {text!r} is not KEY=VALUE (e.g. train.steps=100)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise FbError(f"override {text!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
    parts = key.strip().split(".")
    if not all(parts):
        raise FbError(f"override {text!r}: {key!r} is not a dotted recipe key (e.g. train.steps)")
    out: dict = {}
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def merged_overrides(overrides: tuple[str, ...] | list[str]) -> dict:
    """Every `--set KEY=VALUE` folded into one nested dict."""
    merged: dict = {}
    for text in overrides:
        merged = _deep_merge(merged, parse_override(text))
    return merged


def stored_recipe(path: Path) -> dict:
    """The recipe a model was made with, as far as its files say: a checkpoint's fbcompress.json `recipe`, or the
    recipe name a bundle's manifest records for its source checkpoint; {} when neither says."""
    import json

    path = Path(path)
    root = path if path.is_dir() else path.parent
    try:
        if (root / "fbcompress.json").is_file():
            recipe = json.loads((root / "fbcompress.json").read_text()).get("recipe")
            return recipe if isinstance(recipe, dict) else {}
        if (root / "manifest.json").is_file():
            name = (json.loads((root / "manifest.json").read_text()).get("source") or {}).get("recipe")
            return {"name": name} if isinstance(name, str) else {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, OSError):
        pass
    return {}


def resolve_section(section: str, recipe: str | None, overrides: tuple[str, ...], models: list[Path]):
    """One recipe section for a command that works on existing models (export, quantize, check), and its source.

    Order: --recipe; else the first model whose stored recipe holds this section, or names a shipped recipe;
    else the defaults. --set overrides apply on top of whichever wins. Why: a model exported or checked
    later should use the settings it was trained under unless the user says otherwise.
    """
    merged = merged_overrides(overrides)
    if recipe is not None:
        return getattr(load_recipe(recipe, merged), section), f"recipe {recipe}"
    for path in models:
        stored = stored_recipe(Path(path))
        if isinstance(stored.get(section), dict):
            parsed = parse_recipe({section: stored[section]}, f"{path} recipe", merged)
            return getattr(parsed, section), f"the recipe of {path}"
        name = stored.get("name")
        if isinstance(name, str) and name and (RECIPES_DIR / f"{name}.yaml").is_file():
            return getattr(load_recipe(name, merged), section), f"recipe {name} (named by {path})"
    return getattr(parse_recipe({}, "defaults", merged), section), "defaults"
