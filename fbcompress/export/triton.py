"""Triton Inference Server model repository: `triton/<model>/config.pbtxt` + `triton/<model>/1/model.{onnx,plan}`.

The config is generated from the graph's own inputs/outputs (names, dtypes, which axes are dynamic), never typed
by hand, and a small parser for the protobuf text-format subset we emit reads it back so tests (and
`fbcompress export`) can check the round trip without tritonclient's protobufs.

Batching note for the serving team: with `max_batch_size > 0` Triton owns the batch axis, so `dims` omit it; the text
axis is -1. Triton's dynamic batcher only merges requests whose other dims agree, so requests batch together when
they carry the same text length (pad client-side to a few fixed lengths, e.g. 16/32/64, to batch well).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fbcompress.core.errors import FbError

PLATFORM_ONNX = "onnxruntime_onnx"
PLATFORM_PLAN = "tensorrt_plan"
MODEL_FILES = {PLATFORM_ONNX: "model.onnx", PLATFORM_PLAN: "model.plan"}
TRITON_DTYPES = {"bytes": "TYPE_STRING", "int64": "TYPE_INT64", "int32": "TYPE_INT32", "float32": "TYPE_FP32",
                 "float16": "TYPE_FP16", "bool": "TYPE_BOOL", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8"}
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def triton_dims(shape: Sequence[Any]) -> list[int]:
    """Graph shape → Triton dims without the batch axis: symbolic axes become -1."""
    return [d if isinstance(d, int) and d > 0 else -1 for d in list(shape)[1:]]


def tensor_block(item: dict, ragged: bool = False) -> str:
    dtype = TRITON_DTYPES.get(item["dtype"])
    if dtype is None:
        raise FbError(f"tensor {item['name']} has dtype {item['dtype']}, which this exporter cannot map to Triton")
    dims = ", ".join(str(d) for d in triton_dims(item["shape"]))
    extra = "\n    allow_ragged_batch: true" if ragged else ""
    return f'  {{\n    name: "{item["name"]}"\n    data_type: {dtype}\n    dims: [ {dims} ]{extra}\n  }}'


def make_config(
    model_name: str,
    platform: str,
    inputs: Sequence[dict],
    outputs: Sequence[dict],
    max_batch_size: int,
    preferred_batch_sizes: Sequence[int] = (),
    max_queue_delay_us: int = 100,
    kind: str = "KIND_GPU",
    profiles: Sequence[int] = (),
) -> str:
    """config.pbtxt text. `profiles`: TensorRT optimisation profile indices the instance may use."""
    if not NAME_RE.match(model_name):
        raise FbError(f"Triton model name '{model_name}' may only hold letters, digits, '_', '-' and '.'")
    if platform not in MODEL_FILES:
        raise FbError(f"unknown Triton platform {platform}")
    if max_batch_size < 1:
        raise FbError("Triton max_batch_size must be at least 1")
    lines = [
        f'name: "{model_name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(tensor_block(i) for i in inputs) + "\n]",
        "output [\n" + ",\n".join(tensor_block(o) for o in outputs) + "\n]",
    ]
    preferred = sorted({b for b in preferred_batch_sizes if 1 < b <= max_batch_size})
    batching = ["dynamic_batching {"]
    if preferred:
        batching.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]")
    batching.append(f"  max_queue_delay_microseconds: {max_queue_delay_us}")
    batching.append("}")
    lines.append("\n".join(batching))
    group = ["instance_group [", "  {", "    count: 1", f"    kind: {kind}"]
    if profiles:
        group.append(f"    profile: [ {', '.join(chr(34) + str(p) + chr(34) for p in profiles)} ]")
    group += ["  }", "]"]
    lines.append("\n".join(group))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------- parsing

_TOKEN_RE = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([A-Za-z_][A-Za-z0-9_.]*)|(-?\d+(?:\.\d+)?))')


def _tokenize(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN_RE.match(text, pos)
        if not match or match.end() == pos:
            raise FbError(f"config.pbtxt: cannot parse near {text[pos:pos + 30]!r}")
        pos = match.end()
        comment, string, punct, ident, number = match.groups()
        if comment is not None:
            continue
        if string is not None:
            tokens.append(("str", bytes(string[1:-1], "utf-8").decode("unicode_escape")))
        elif punct is not None:
            tokens.append(("punct", punct))
        elif ident is not None:
            tokens.append(("ident", ident))
        else:
            tokens.append(("num", float(number) if "." in number else int(number)))
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, Any]]):
        self.tokens = tokens
        self.i = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, kind: str | None = None, value: Any = None) -> tuple[str, Any]:
        token = self.peek()
        if token is None or (kind and token[0] != kind) or (value is not None and token[1] != value):
            raise FbError(f"config.pbtxt: expected {value or kind}, got {token[1] if token else 'end of file'}")
        self.i += 1
        return token

    def message(self, closing: str | None) -> dict[str, list[Any]]:
        fields: dict[str, list[Any]] = {}
        while True:
            token = self.peek()
            if token is None:
                if closing:
                    raise FbError(f"config.pbtxt: missing '{closing}'")
                return fields
            if token == ("punct", closing):
                self.i += 1
                return fields
            name = self.take("ident")[1]
            if self.peek() == ("punct", ":"):
                self.i += 1
            values = self.value()
            fields.setdefault(name, []).extend(values)
            if self.peek() == ("punct", ","):
                self.i += 1

    def value(self) -> list[Any]:
        token = self.peek()
        if token == ("punct", "{"):
            self.i += 1
            return [self.message("}")]
        if token == ("punct", "["):
            self.i += 1
            items: list[Any] = []
            while self.peek() != ("punct", "]"):
                items.extend(self.value())
                if self.peek() == ("punct", ","):
                    self.i += 1
            self.i += 1
            return items
        kind, value = self.take()
        if kind == "punct":
            raise FbError(f"config.pbtxt: unexpected '{value}'")
        return [value]


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Protobuf text format (the subset Triton configs use) → {field: [values]}; messages are nested dicts."""
    return _Parser(_tokenize(text)).message(None)


def read_config(text: str) -> dict[str, Any]:
    """A parsed config.pbtxt in plain terms: name, platform, max_batch_size, inputs/outputs, batching, instances."""
    raw = parse_pbtxt(text)

    def one(fields: dict, key: str, default: Any = None) -> Any:
        values = fields.get(key, [])
        return values[0] if values else default

    def tensors(key: str) -> list[dict]:
        return [{"name": one(t, "name"), "data_type": one(t, "data_type"), "dims": list(t.get("dims", []))}
                for t in raw.get(key, [])]

    batching = one(raw, "dynamic_batching", {}) or {}
    return {
        "name": one(raw, "name"),
        "platform": one(raw, "platform"),
        "max_batch_size": one(raw, "max_batch_size", 0),
        "inputs": tensors("input"),
        "outputs": tensors("output"),
        "dynamic_batching": {
            "preferred_batch_size": list(batching.get("preferred_batch_size", [])),
            "max_queue_delay_microseconds": one(batching, "max_queue_delay_microseconds", 0),
        } if "dynamic_batching" in raw else None,
        "instance_group": [{"count": one(g, "count", 1), "kind": one(g, "kind"), "profile": list(g.get("profile", []))}
                           for g in raw.get("instance_group", [])],
    }


def check_config_matches(config: dict[str, Any], io: dict[str, list[dict]]) -> None:
    """The config must name every graph input/output with the graph's dtype and (batch-less) dims."""
    for key, graph_key in (("inputs", "inputs"), ("outputs", "outputs")):
        declared = {t["name"]: t for t in config[key]}
        for item in io[graph_key]:
            got = declared.get(item["name"])
            if got is None:
                raise FbError(f"Triton config lacks {key[:-1]} {item['name']}")
            if got["data_type"] != TRITON_DTYPES.get(item["dtype"]):
                raise FbError(f"Triton config gives {item['name']} {got['data_type']}, the graph has {item['dtype']}")
            if got["dims"] != triton_dims(item["shape"]):
                raise FbError(f"Triton config gives {item['name']} dims {got['dims']}, the graph implies "
                              f"{triton_dims(item['shape'])}")
        extra = set(declared) - {i["name"] for i in io[graph_key]}
        if extra:
            raise FbError(f"Triton config names {key} the graph does not have: {sorted(extra)}")
