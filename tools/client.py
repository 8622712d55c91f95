#!/usr/bin/env python3
"""topserve Python client: calls a running topserve-server and prints JSON.

Stubs are generated at run time from proto/topserve/v1/inference.proto (grpcio-tools' protoc,
into a temporary directory, or --stub-dir to keep them), so nothing generated
is checked in. Runs in the project's environment (.venv, made by scripts/install-deps.sh).

  .venv/bin/python tools/client.py classify "a great movie" "a dull movie" --budget 0.5
  .venv/bin/python tools/client.py classify "a premise" --pair "a hypothesis" --model mnli
  .venv/bin/python tools/client.py answer --question "Who wrote it?" --context "Ada wrote it."
  .venv/bin/python tools/client.py models
  .venv/bin/python tools/client.py health --service sst2

As a library (tests and tools/squad_eval.py use it):

  import client
  pb, grpc_pb = client.load_stubs()
  stub = grpc_pb.InferenceStub(grpc.insecure_channel("localhost:8500"))

Exit code: 0 on OK, otherwise 10 + the gRPC status code, with "CODE: message" on stderr.
"""

import argparse
import atexit
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import grpc
from google.protobuf import json_format

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "proto")
PROTO_FILE = "topserve/v1/inference.proto"

_STUBS = None


def generate_stubs(out_dir, proto_root=PROTO_ROOT):
    """Writes topserve/v1/inference_pb2.py and inference_pb2_grpc.py under out_dir.

    Uses grpcio-tools' own protoc (requirements/python.txt pins it to the grpcio and protobuf
    runtime it generates for; it handles proto3 `optional`), so no system protoc is needed.
    """
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={proto_root}",
           f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", PROTO_FILE]
    proc = subprocess.run(cmd, cwd=proto_root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"stub generation failed ({' '.join(cmd)}): {proc.stderr.strip()}")


def load_stubs(stub_dir=None):
    """Returns (inference_pb2, inference_pb2_grpc), generating them if needed.

    stub_dir: where to generate (kept, and reused while the .proto is unchanged); None = a
    temporary directory (or $TOPSERVE_STUB_DIR when set).
    """
    global _STUBS
    if _STUBS is not None:
        return _STUBS
    stub_dir = stub_dir or os.environ.get("TOPSERVE_STUB_DIR")
    if stub_dir is None:
        # A temporary directory lives as long as the process (the modules are loaded by then).
        stub_dir = tempfile.mkdtemp(prefix="topserve-stubs-")
        atexit.register(shutil.rmtree, stub_dir, ignore_errors=True)
    stub_dir = os.path.abspath(stub_dir)
    os.makedirs(stub_dir, exist_ok=True)
    with open(os.path.join(PROTO_ROOT, PROTO_FILE), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    stamp = os.path.join(stub_dir, "proto.sha256")
    fresh = os.path.exists(stamp) and open(stamp).read().strip() == digest
    if not fresh:
        generate_stubs(stub_dir)
        with open(stamp, "w") as f:
            f.write(digest + "\n")
    if stub_dir not in sys.path:
        sys.path.insert(0, stub_dir)
    pb = importlib.import_module("topserve.v1.inference_pb2")
    grpc_pb = importlib.import_module("topserve.v1.inference_pb2_grpc")
    _STUBS = (pb, grpc_pb)
    return _STUBS


# ---- grpc.health.v1 without generated code: the two messages are one field each. ----

HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(buf, pos):
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos


def parse_fields(buf):
    """Decodes protobuf wire format into a list of (field_number, value): ints for varints,
    bytes for length-delimited fields (enough for the health and reflection messages)."""
    fields, pos = [], 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value, pos = bytes(buf[pos:pos + n]), pos + n
        elif wire == 1:
            value, pos = bytes(buf[pos:pos + 8]), pos + 8
        elif wire == 5:
            value, pos = bytes(buf[pos:pos + 4]), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        fields.append((number, value))
    return fields


def length_delimited(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def auth_metadata(token):
    """Call metadata for a server that requires a bearer token (None: no metadata)."""
    return (("authorization", f"Bearer {token}"),) if token else None


def make_channel(server, tls_ca=None, tls_cert=None, tls_key=None):
    """A channel to host:port: plaintext, or TLS verified against the PEM CA bundle `tls_ca`, with
    a client certificate (mutual TLS) when `tls_cert` and `tls_key` are given."""
    if (tls_cert is None) != (tls_key is None) or (tls_cert is not None and tls_ca is None):
        raise ValueError("--tls-cert and --tls-key go together, and with --tls-ca")
    if tls_ca is None:
        return grpc.insecure_channel(server)

    def read(path):
        with open(path, "rb") as f:
            return f.read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(tls_ca),
        private_key=read(tls_key) if tls_key else None,
        certificate_chain=read(tls_cert) if tls_cert else None)
    return grpc.secure_channel(server, credentials)


def health_check(channel, service="", timeout=5.0):
    """grpc.health.v1.Health/Check: returns "SERVING", "NOT_SERVING", ... (raises grpc.RpcError,
    e.g. NOT_FOUND for a name the server does not know)."""
    call = channel.unary_unary("/grpc.health.v1.Health/Check",
                               request_serializer=lambda s: length_delimited(1, s.encode()),
                               response_deserializer=lambda b: b)
    fields = parse_fields(call(service, timeout=timeout))
    return HEALTH_STATUS.get(dict(fields).get(1, 0), "UNKNOWN")


# ---- Commands. ----

def to_json(message):
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=1)


def _common(req, args):
    if args.model:
        req.model = args.model
    if args.budget is not None:
        req.budget = args.budget
    if args.min_budget is not None:
        req.min_budget = args.min_budget
    req.priority = args.priority


def cmd_classify(stub, pb, args):
    if args.pair and len(args.pair) != len(args.texts):
        raise SystemExit("give one --pair per text")
    req = pb.ClassifyRequest(return_logits=args.logits)
    _common(req, args)
    req.truncation = pb.Truncation.Value("TRUNCATION_" + args.truncation.upper())
    for i, text in enumerate(args.texts):
        item = req.inputs.add(text=text)
        if args.pair:
            item.text_pair = args.pair[i]
    return stub.Classify(req, timeout=args.timeout, metadata=args.metadata)


def cmd_answer(stub, pb, args):
    context = args.context
    if args.context_file:
        with open(args.context_file, encoding="utf-8") as f:
            context = f.read()
    if context is None:
        raise SystemExit("give --context or --context-file")
    req = pb.AnswerRequest(question=args.question, context=context, n_best=args.n_best,
                           max_answer_tokens=args.max_answer_tokens, max_length=args.max_length)
    if args.doc_stride is not None:
        req.doc_stride = args.doc_stride
    _common(req, args)
    return stub.Answer(req, timeout=args.timeout, metadata=args.metadata)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-s", "--server", default="localhost:8500", help="host:port (%(default)s)")
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    p.add_argument("--stub-dir", help="where to generate the stubs (default: a temporary dir)")
    p.add_argument("--token", default=os.environ.get("TOPSERVE_TOKEN"),
                   help="bearer token for a server with auth_token_file (default: $TOPSERVE_TOKEN)")
    p.add_argument("--tls-ca", help="connect over TLS; PEM CA bundle that signed the server's "
                   "certificate")
    p.add_argument("--tls-cert", help="PEM client certificate (mutual TLS; needs --tls-ca)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    sub = p.add_subparsers(dest="command", required=True)

    def budget_args(sp):
        sp.add_argument("-m", "--model", help="model name (default: the first of the task)")
        sp.add_argument("-b", "--budget", type=float, help="FLOPs budget in (0, 1]")
        sp.add_argument("--min-budget", type=float, help="lowest budget allowed under load")
        sp.add_argument("--priority", type=int, default=0, help="higher runs first")

    c = sub.add_parser("classify", help="Classify texts")
    c.add_argument("texts", nargs="+")
    c.add_argument("--pair", action="append", help="second text of each pair (one per text)")
    c.add_argument("--logits", action="store_true", help="also return the raw logits")
    c.add_argument("--truncation", default="longest_first",
                   choices=["none", "longest_first", "only_first", "only_second"])
    budget_args(c)
    a = sub.add_parser("answer", help="Answer a question from a context")
    a.add_argument("-q", "--question", required=True)
    a.add_argument("-c", "--context")
    a.add_argument("--context-file")
    a.add_argument("--n-best", type=int, default=0)
    a.add_argument("--max-answer-tokens", type=int, default=0)
    a.add_argument("--max-length", type=int, default=0, help="tokens per window")
    a.add_argument("--doc-stride", type=int, help="tokens shared by consecutive windows")
    budget_args(a)
    sub.add_parser("models", help="List the models")
    g = sub.add_parser("model", help="Describe one model")
    g.add_argument("name")
    h = sub.add_parser("health", help="grpc.health.v1 check")
    h.add_argument("--service", default="", help='"" (liveness), a model name, or '
                   'topserve.v1.Inference (all models ready)')
    args = p.parse_args(argv)
    args.metadata = auth_metadata(args.token)

    try:
        channel = make_channel(args.server, args.tls_ca, args.tls_cert, args.tls_key)
    except (ValueError, OSError) as e:
        p.error(str(e))
    try:
        if args.command == "health":
            print(health_check(channel, args.service, timeout=args.timeout or 5.0))
            return 0
        pb, grpc_pb = load_stubs(args.stub_dir)
        stub = grpc_pb.InferenceStub(channel)
        if args.command == "classify":
            resp = cmd_classify(stub, pb, args)
        elif args.command == "answer":
            resp = cmd_answer(stub, pb, args)
        elif args.command == "models":
            resp = stub.ListModels(pb.ListModelsRequest(), timeout=args.timeout,
                                   metadata=args.metadata)
        else:
            resp = stub.GetModel(pb.GetModelRequest(name=args.name), timeout=args.timeout,
                                 metadata=args.metadata)
    except grpc.RpcError as e:
        print(f"{e.code().name}: {e.details()}", file=sys.stderr)
        return 10 + e.code().value[0]
    print(to_json(resp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
