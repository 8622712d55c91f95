"""Shared helpers of topserve's Python tools (numpy only; run with the project's .venv/bin/python).

- safetensors read/write for F32, F16 and BF16 weights (plus integer tensors such as I64), with the
  same header checks as the C++ reader (engine/safetensors.cc), so a file this module accepts the
  server accepts too;
- Hugging Face BERT model directories (config.json, model.safetensors, vocab.txt,
  tokenizer_config.json): write and read;
- BERT config helpers: building a config dict, the list of tensors a task checkpoint must hold
  (same names, shapes and order as ExpectedBertTensors in engine/model_config.cc).
"""

import json
import os
import shutil
import struct

import numpy as np

# safetensors dtype name -> (numpy dtype of the stored values, bytes per element).
# BF16 has no numpy dtype: its values are handled as uint16 bit patterns.
DTYPES = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "I8": (np.dtype("i1"), 1),
    "U64": (np.dtype("<u8"), 8),
    "U32": (np.dtype("<u4"), 4),
    "U16": (np.dtype("<u2"), 2),
    "U8": (np.dtype("u1"), 1),
    "BOOL": (np.dtype("?"), 1),
}
FLOAT_DTYPES = ("F32", "F16", "BF16")
MAX_HEADER_BYTES = 100_000_000

ACTIVATIONS = {  # config.json hidden_act -> the function the forward applies
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
ARCHITECTURES = {"BertForSequenceClassification": "cls", "BertForQuestionAnswering": "qa"}
TASK_ARCHITECTURE = {"cls": "BertForSequenceClassification", "qa": "BertForQuestionAnswering"}


class FormatError(ValueError):
    """A malformed safetensors file or model directory (message names the file and the field)."""


# ----------------------------------------------------------------------------------------------
# Float conversions


def float32_to_bf16_bits(values):
    """float32 array -> uint16 bfloat16 bit patterns, rounding to nearest even (NaN stays NaN)."""
    a = np.ascontiguousarray(values, dtype=np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def bf16_bits_to_float32(bits):
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_to_dtype(values, dtype):
    """The float32 values a tensor has after being stored as `dtype` (F32, F16 or BF16)."""
    a = np.asarray(values, dtype=np.float32)
    if dtype == "F32":
        return a.copy()
    if dtype == "F16":
        return a.astype(np.float16).astype(np.float32)
    if dtype == "BF16":
        return bf16_bits_to_float32(float32_to_bf16_bits(a)).reshape(a.shape)
    raise ValueError(f"not a float dtype: {dtype}")


def _encode(array, dtype):
    if dtype == "BF16":
        return float32_to_bf16_bits(array).astype("<u2").tobytes()
    np_dtype, _ = DTYPES[dtype]
    return np.ascontiguousarray(array).astype(np_dtype).tobytes()


def _decode(buffer, dtype, shape):
    np_dtype, _ = DTYPES[dtype]
    raw = np.frombuffer(buffer, dtype=np_dtype)
    if dtype == "BF16":
        raw = bf16_bits_to_float32(raw)
    elif dtype in ("F16", "F32"):
        raw = raw.astype(np.float32)
    return raw.reshape(shape)


def numpy_to_safetensors_dtype(array):
    kind = np.asarray(array).dtype
    for name, (np_dtype, _) in DTYPES.items():
        if name != "BF16" and np_dtype == kind.newbyteorder("<"):
            return name
    raise ValueError(f"no safetensors dtype for numpy {kind}")


# ----------------------------------------------------------------------------------------------
# safetensors


def write_safetensors(path, tensors, dtype="F32", metadata=None):
    """Writes `tensors` (name -> numpy array; insertion order kept) to `path`.

    Float arrays are stored as `dtype` (F32, F16 or BF16); integer and bool arrays keep their own
    dtype (e.g. I64). The header is padded with spaces to a multiple of 8 bytes, as the reference
    writer does, so the data section is aligned.
    """
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks = []
    offset = 0
    for name, array in tensors.items():
        array = np.asarray(array)
        stored = dtype if array.dtype.kind == "f" else numpy_to_safetensors_dtype(array)
        data = _encode(array, stored)
        header[name] = {"dtype": stored, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for chunk in chunks:
            f.write(chunk)
    os.replace(tmp, path)


def read_safetensors_header(path):
    """Returns (header dict without __metadata__, metadata dict, data start offset, file size)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < 8:
            raise FormatError(f"{path}: file is {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise FormatError(f"{path}: header length {n} runs past the end of the file ({size} bytes)")
        if n > MAX_HEADER_BYTES:
            raise FormatError(f"{path}: header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
        raw = f.read(n)

    def no_duplicates(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise FormatError(f"{path}: header has the key '{key}' twice")
            out[key] = value
        return out

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"{path}: __metadata__ must be an object of strings")
    data_size = size - 8 - n
    extents = []
    for name, entry in header.items():
        where = f"{path}: tensor '{name}'"
        if not isinstance(entry, dict):
            raise FormatError(f"{where}: entry must be an object")
        dtype = entry.get("dtype")
        if dtype not in DTYPES:
            raise FormatError(f"{where}: unknown dtype {dtype!r}")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise FormatError(f"{where}: shape must hold non-negative integers, got {shape!r}")
        offsets = entry.get("data_offsets")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(
                isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
            raise FormatError(f"{where}: data_offsets must be [begin, end], got {offsets!r}")
        begin, end = offsets
        if begin > end or end > data_size:
            raise FormatError(f"{where}: data_offsets [{begin}, {end}] out of bounds "
                              f"(data section {data_size} bytes)")
        numel = int(np.prod(shape, dtype=object)) if shape else 1
        if numel * DTYPES[dtype][1] != end - begin:
            raise FormatError(f"{where}: data_offsets hold {end - begin} bytes but shape {shape} of "
                              f"{dtype} needs {numel * DTYPES[dtype][1]}")
        if end > begin:
            extents.append((begin, end, name))
    extents.sort()
    for (b0, e0, n0), (b1, _, n1) in zip(extents, extents[1:]):
        if b1 < e0:
            raise FormatError(f"{path}: tensors '{n0}' and '{n1}' overlap")
    return header, metadata, 8 + n, size


def read_safetensors(path, names=None):
    """Returns (tensors, metadata): name -> numpy array (float32 for F32/F16/BF16, the stored
    integer type otherwise). `names` limits what is read."""
    header, metadata, data_start, _ = read_safetensors_header(path)
    tensors = {}
    with open(path, "rb") as f:
        for name, entry in header.items():
            if names is not None and name not in names:
                continue
            begin, end = entry["data_offsets"]
            f.seek(data_start + begin)
            tensors[name] = _decode(f.read(end - begin), entry["dtype"], entry["shape"])
    return tensors, metadata


def safetensors_dtypes(path):
    """name -> stored dtype name."""
    header, _, _, _ = read_safetensors_header(path)
    return {name: entry["dtype"] for name, entry in header.items()}


# ----------------------------------------------------------------------------------------------
# BERT config and tensors


def bert_config(task="cls", vocab_size=30522, hidden=64, layers=2, heads=2, ffn=256, max_pos=512,
                type_vocab=2, act="gelu", eps=1e-12, labels=None):
    """A Hugging Face style config.json dict for BertForSequenceClassification ("cls") or
    BertForQuestionAnswering ("qa")."""
    if task not in TASK_ARCHITECTURE:
        raise ValueError(f"task must be cls or qa, got {task!r}")
    if act not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {act!r} (supported: {', '.join(ACTIVATIONS)})")
    if heads <= 0 or hidden % heads:
        raise ValueError(f"hidden {hidden} must be a multiple of heads {heads}")
    config = {
        "architectures": [TASK_ARCHITECTURE[task]],
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn,
        "hidden_act": act,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": max_pos,
        "type_vocab_size": type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": eps,
        "pad_token_id": 0,
    }
    if task == "cls":
        labels = list(labels or ["LABEL_0", "LABEL_1"])
        config["id2label"] = {str(i): label for i, label in enumerate(labels)}
        config["label2id"] = {label: i for i, label in enumerate(labels)}
    return config


def config_task(config):
    """"cls" or "qa" from config["architectures"]."""
    for name in config.get("architectures") or []:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise FormatError(f"config.json: unsupported architectures {config.get('architectures')!r}")


def config_labels(config):
    id2label = config.get("id2label")
    if id2label:
        return [id2label[str(i)] for i in range(len(id2label))]
    return [f"LABEL_{i}" for i in range(config.get("num_labels", 2))]


def tensor_specs(config):
    """[(name, shape)] of every tensor the task checkpoint holds, in checkpoint order."""
    h = config["hidden_size"]
    f = config["intermediate_size"]
    specs = [
        ("bert.embeddings.word_embeddings.weight", [config["vocab_size"], h]),
        ("bert.embeddings.position_embeddings.weight", [config.get("max_position_embeddings", 512), h]),
        ("bert.embeddings.token_type_embeddings.weight", [config.get("type_vocab_size", 2), h]),
        ("bert.embeddings.LayerNorm.weight", [h]),
        ("bert.embeddings.LayerNorm.bias", [h]),
    ]
    for layer in range(config["num_hidden_layers"]):
        p = f"bert.encoder.layer.{layer}."
        for proj in ("query", "key", "value"):
            specs += [(f"{p}attention.self.{proj}.weight", [h, h]), (f"{p}attention.self.{proj}.bias", [h])]
        specs += [
            (f"{p}attention.output.dense.weight", [h, h]),
            (f"{p}attention.output.dense.bias", [h]),
            (f"{p}attention.output.LayerNorm.weight", [h]),
            (f"{p}attention.output.LayerNorm.bias", [h]),
            (f"{p}intermediate.dense.weight", [f, h]),
            (f"{p}intermediate.dense.bias", [f]),
            (f"{p}output.dense.weight", [h, f]),
            (f"{p}output.dense.bias", [h]),
            (f"{p}output.LayerNorm.weight", [h]),
            (f"{p}output.LayerNorm.bias", [h]),
        ]
    if config_task(config) == "cls":
        n = len(config_labels(config))
        specs += [("bert.pooler.dense.weight", [h, h]), ("bert.pooler.dense.bias", [h]),
                  ("classifier.weight", [n, h]), ("classifier.bias", [n])]
    else:
        specs += [("qa_outputs.weight", [2, h]), ("qa_outputs.bias", [2])]
    return specs


def count_vocab(path):
    """Number of tokens in vocab.txt (one per line, as the BERT tokenizer reads it)."""
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return len(lines)


# ----------------------------------------------------------------------------------------------
# Model directories


def write_model_dir(out, config, tensors, vocab_path, dtype="F32", tokenizer_config=None):
    """Writes config.json, model.safetensors (tensors stored as `dtype`), vocab.txt (a copy of
    `vocab_path`) and tokenizer_config.json into `out` (created if needed)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(out, "model.safetensors"), tensors, dtype=dtype,
                      metadata={"format": "pt"})
    vocab_out = os.path.join(out, "vocab.txt")
    if os.path.abspath(vocab_path) != os.path.abspath(vocab_out):
        shutil.copyfile(vocab_path, vocab_out)
    if tokenizer_config is None:
        tokenizer_config = {"do_lower_case": True,
                            "model_max_length": config.get("max_position_embeddings", 512)}
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config, f, indent=2)
        f.write("\n")


def read_model_dir(model_dir):
    """Returns (config dict, tensors name -> float32/int numpy array, tokenizer_config dict).

    Checks that every tensor of tensor_specs(config) is present with its shape (FormatError
    naming the file and tensor otherwise). A missing tokenizer_config.json gives {}."""
    with open(os.path.join(model_dir, "config.json"), "r", encoding="utf-8") as f:
        config = json.load(f)
    weights = os.path.join(model_dir, "model.safetensors")
    tensors, _ = read_safetensors(weights)
    for name, shape in tensor_specs(config):
        if name not in tensors:
            raise FormatError(f"{weights}: tensor '{name}' is missing")
        if list(tensors[name].shape) != list(shape):
            raise FormatError(f"{weights}: tensor '{name}' has shape {list(tensors[name].shape)}, "
                              f"expected {list(shape)}")
    tokenizer_config = {}
    path = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.exists(path):
        with open(path, "r", encoding="utf-8") as f:
            tokenizer_config = json.load(f)
    return config, tensors, tokenizer_config


def repo_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_shared_dir():
    return os.path.normpath(os.path.join(repo_root(), "..", "shared"))
