#!/usr/bin/env python3
"""The include directions between the repository's folders, checked on every C++ source file.

Every target gets the repository root as its include path, so the compiler lets any folder include
any other; this test is what keeps the layers apart. A violation is printed as

    path:line: #include "x" — <folder> may not include <folder>

and the test exits 1; a clean tree prints a one-line summary and exits 0.

    tests/layering_test.py [--root DIR]   # check a tree (ctest `layering` runs it on the repository)
    tests/layering_test.py --selftest     # run the check on temporary trees, violating and clean
                                          # (ctest `layering_selftest`)

Python 3 standard library only.
"""
import argparse
import pathlib
import posixpath
import re
import subprocess
import sys
import tempfile

# Which of the project's own folders each folder may include, what third-party libraries it must not
# use on top of that, and why. A folder not listed here (tools/, bench/, tests/, fuzz/, loadtest/)
# may include anything. The standard library and the other third-party headers (absl, nlohmann,
# yaml-cpp, CLI11, gtest, ...) are allowed everywhere.
#
# "proto" is the generated gRPC/protobuf code: proto/topserve/v1/inference.proto is compiled into the
# build tree and included as "topserve/v1/inference.pb.h" / "topserve/v1/inference.grpc.pb.h".
RULES = {
    # The gRPC service: owns the wire format, and puts the engine behind the batcher.
    "server": {
        "may_include": {"server", "batching", "engine", "proto", "base"},
        "libraries": {},
        "why": "the server is the top layer; it must not depend on test, tool or benchmark code",
    },
    # The batcher knows neither gRPC nor the engine: the server hands it a cost function and a
    # BatchExecutor, so it is tested with fake executors and no model, and never sees wire types.
    "batching": {
        "may_include": {"batching", "base"},
        "libraries": {"grpc/": "gRPC", "grpcpp/": "gRPC", "grpc++/": "gRPC",
                      "google/protobuf/": "protobuf", "dnnl": "oneDNN", "oneapi/dnnl/": "oneDNN",
                      "prometheus/": "Prometheus"},
        "why": "batching knows neither gRPC nor the engine (the server supplies cost and executor; "
               "metrics go through SchedulerObserver)",
    },
    # The engine is usable without the server: tools/, bench/ and the training parity test load
    # models with it directly, so it knows no RPC types, no queueing and no metrics backend.
    "engine": {
        "may_include": {"engine", "base"},
        "libraries": {"grpc/": "gRPC", "grpcpp/": "gRPC", "grpc++/": "gRPC",
                      "google/protobuf/": "protobuf", "prometheus/": "Prometheus"},
        "why": "the engine is usable without the server or the batcher (no RPC types, queueing or "
               "metrics backend)",
    },
    # Header-only helpers below every layer (base/status_macros.h: RETURN_IF_ERROR, ASSIGN_OR_RETURN,
    # WithPrefix), so every folder may include base/, and base/ includes nothing of ours but itself.
    "base": {
        "may_include": {"base"},
        "libraries": {"grpc/": "gRPC", "grpcpp/": "gRPC", "grpc++/": "gRPC",
                      "google/protobuf/": "protobuf", "dnnl": "oneDNN", "oneapi/dnnl/": "oneDNN",
                      "prometheus/": "Prometheus"},
        "why": "base/ is below every layer: only the standard library and absl",
    },
}

# The project's own top-level folders an include path can start with. Every top-level folder found
# under --root is added, so a new folder is a project folder (and not allowed from engine/ or
# batching/) until the table above says otherwise.
PROJECT_FOLDERS = {"base", "engine", "batching", "server", "proto", "tools", "bench", "tests", "fuzz",
                   "loadtest", "training"}
# Include paths of the generated proto headers (besides proto/...): the protoc output root's
# "topserve/" package folder, and a bare "*.pb.h" name.
GENERATED_PROTO_PREFIXES = ("topserve/",)
GENERATED_PROTO_SUFFIX = ".pb.h"

SOURCE_SUFFIXES = {".h", ".hh", ".hpp", ".hxx", ".inc", ".ipp", ".c", ".cc", ".cpp", ".cxx"}
INCLUDE = re.compile(r'^\s*#\s*include\s*(?:"([^"]+)"|<([^>]+)>)')


def project_folder(name: str, quoted: bool, src_dir: str, root: pathlib.Path, folders: set):
    """The project folder (or "proto") that an include names, or None for system/third-party."""
    # A quoted include is looked up beside the including file first.
    if quoted and (name.startswith(("./", "../")) or (root / src_dir / name).is_file()):
        path = posixpath.normpath(posixpath.join(src_dir, name))
    else:
        path = posixpath.normpath(name)
    if path == ".." or path.startswith("../"):
        return "files outside the repository"
    top, _, rest = path.partition("/")
    if rest and top in folders:
        return top
    if path.startswith(GENERATED_PROTO_PREFIXES) or (not rest and path.endswith(GENERATED_PROTO_SUFFIX)):
        return "proto"
    return None


def scan(root: pathlib.Path):
    """Returns [(path, line number, include as written, message)] for the includes that break a rule,
    and the numbers of files and of project includes looked at."""
    folders = PROJECT_FOLDERS | {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    found, stats = [], {"files": 0, "project_includes": 0}
    for folder, rule in RULES.items():
        for path in sorted((root / folder).rglob("*")):
            if path.suffix not in SOURCE_SUFFIXES or not path.is_file():
                continue
            stats["files"] += 1
            rel = path.relative_to(root).as_posix()
            src_dir = posixpath.dirname(rel)
            text = path.read_text(encoding="utf-8", errors="replace")
            for number, line in enumerate(text.splitlines(), 1):
                m = INCLUDE.match(line)
                if not m:
                    continue
                quoted = m.group(1) is not None
                name = m.group(1) if quoted else m.group(2)
                written = f'#include "{name}"' if quoted else f"#include <{name}>"
                target = project_folder(name, quoted, src_dir, root, folders)
                if target is not None:
                    stats["project_includes"] += 1
                    if target not in rule["may_include"]:
                        found.append((rel, number, written, f"{folder} may not include {target}"))
                    continue
                for prefix, library in rule["libraries"].items():
                    if name.startswith(prefix):
                        found.append((rel, number, written, f"{folder} may not include {library}"))
                        break
    return found, stats


def check(root: pathlib.Path) -> int:
    missing = [f"{f}/" for f in RULES if not (root / f).is_dir()]
    if missing:
        # Checking nothing would pass: a wrong --root must fail.
        print(f"layering: {', '.join(missing)} missing under {root}")
        return 1
    found, stats = scan(root)
    for path, number, written, message in found:
        print(f"{path}:{number}: {written} — {message}")
    if found:
        for folder in sorted({message.split(" ", 1)[0] for *_, message in found}):
            print(f"  why: {RULES[folder]['why']}")
        print(f"layering: {len(found)} include(s) break the allowed directions (table at the top of "
              f"{pathlib.Path(__file__).name})")
        return 1
    print(f"layering: {stats['files']} files in {', '.join(f + '/' for f in RULES)}, "
          f"{stats['project_includes']} includes of project folders, none against the allowed directions")
    return 0


# (file, line 2 of that file, the violation the check must print for it)
SELFTEST_VIOLATIONS = [
    ("engine/bad.cc", '#include "batching/scheduler.h"', "engine may not include batching"),
    ("engine/bad.cc", '#include "server/service.h"', "engine may not include server"),
    ("engine/bad.cc", '#include "topserve/v1/inference.pb.h"', "engine may not include proto"),
    ("engine/bad.cc", '#include "inference.grpc.pb.h"', "engine may not include proto"),
    ("engine/bad.cc", '#include "proto/x.h"', "engine may not include proto"),
    ("engine/bad.cc", '#include "tests/batching_test_util.h"', "engine may not include tests"),
    ("engine/sub/bad.h", '#include "../../server/x.h"', "engine may not include server"),
    ("engine/bad.cc", '#include "../../x.h"', "engine may not include files outside the repository"),
    ("engine/bad.cc", '  #  include <server/x.h>', "engine may not include server"),
    ("engine/bad.cc", '#include <grpcpp/grpcpp.h>', "engine may not include gRPC"),
    ("engine/bad.cc", '#include <prometheus/counter.h>', "engine may not include Prometheus"),
    ("batching/bad.cc", '#include "engine/bert_model.h"', "batching may not include engine"),
    ("batching/bad.h", '#include "server/runtime.h"', "batching may not include server"),
    ("batching/bad.cc", '#include "engine/../server/x.h"', "batching may not include server"),
    ("batching/bad.cc", '#include "topserve/v1/inference.grpc.pb.h"', "batching may not include proto"),
    ("batching/bad.cc", '#include <dnnl.hpp>', "batching may not include oneDNN"),
    ("batching/bad.cc", '#include <google/protobuf/message.h>', "batching may not include protobuf"),
    ("server/bad.cc", '#include "tools/x.h"', "server may not include tools"),
    ("server/bad.cc", '#include "fuzz/fuzz_util.h"', "server may not include fuzz"),
    ("base/bad.h", '#include "engine/tokenizer.h"', "base may not include engine"),
    ("base/bad.h", '#include "batching/scheduler.h"', "base may not include batching"),
    ("base/bad.h", '#include "server/service.h"', "base may not include server"),
    ("base/bad.h", '#include "tests/util.h"', "base may not include tests"),
    ("base/bad.h", '#include <grpcpp/grpcpp.h>', "base may not include gRPC"),
    ("base/bad.h", '#include <dnnl.hpp>', "base may not include oneDNN"),
]

# A tree that uses every allowed direction (and a commented-out include that must be ignored).
SELFTEST_CLEAN = {
    "base/status_macros.h": '#include "absl/status/status.h"\n#include "base/other.h"\n#include "other.h"\n',
    "base/other.h": '#include <string_view>\n',
    "engine/kernels.h": '#include <vector>\n#include "absl/status/status.h"\n#include "base/status_macros.h"\n',
    "engine/ok.cc": ('#include "engine/kernels.h"\n#include "kernels.h"\n#include <dnnl.hpp>\n'
                     '#include "nlohmann/json.hpp"\n#include <yaml-cpp/yaml.h>\n'
                     '// #include "server/service.h"\n'),
    "batching/scheduler.h": '#include "absl/status/statusor.h"\n#include <mutex>\n',
    "batching/ok.cc": '#include "batching/scheduler.h"\n#include "scheduler.h"\n#include "base/status_macros.h"\n',
    "server/ok.cc": ('#include "server/config.h"\n#include "batching/scheduler.h"\n'
                     '#include "engine/bert_model.h"\n#include "topserve/v1/inference.grpc.pb.h"\n'
                     '#include <grpcpp/grpcpp.h>\n#include <google/protobuf/util/json_util.h>\n'
                     '#include <prometheus/counter.h>\n#include "CLI/CLI.hpp"\n#include "base/status_macros.h"\n'),
    "tests/ok.cc": ('#include "server/service.h"\n#include "engine/qa.h"\n#include "batching/task.h"\n'
                    '#include "topserve/v1/inference.pb.h"\n#include "tests/util.h"\n#include "gtest/gtest.h"\n'),
    "tools/ok.cc": '#include "server/wire.h"\n#include "engine/tokenizer.h"\n#include "base/status_macros.h"\n',
    "bench/ok.cc": '#include "server/runtime.h"\n#include "batching/scheduler.h"\n',
    "fuzz/ok.cc": '#include "fuzz/fuzz_util.h"\n#include "server/config.h"\n',
    "loadtest/ok.cc": '#include "server/x.h"\n',
}


def selftest() -> int:
    """Runs this script, as ctest runs it, on temporary trees: each violation must fail it (exit 1)
    with exactly its line printed, a clean tree must pass (exit 0), a missing folder must fail."""
    failures = []

    def run(root: pathlib.Path):
        p = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "--root", str(root)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        return p.returncode, p.stdout.decode("utf-8", errors="replace")

    def make_tree(root: pathlib.Path, extra: dict):
        for rel, text in {**SELFTEST_CLEAN, **extra}.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text, encoding="utf-8")

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp) / "clean"
        make_tree(root, {})
        rc, out = run(root)
        print(f"clean tree: exit {rc}: {out.strip()}")
        if rc != 0 or not out.startswith("layering: "):
            failures.append("the clean tree did not pass")

    for i, (rel, line, message) in enumerate(SELFTEST_VIOLATIONS):
        with tempfile.TemporaryDirectory() as tmp:
            root = pathlib.Path(tmp) / f"bad{i}"
            make_tree(root, {rel: f"// line 1\n{line}\n"})
            rc, out = run(root)
            written = INCLUDE.match(line)
            written = f'#include "{written.group(1)}"' if written.group(1) else f"#include <{written.group(2)}>"
            expected = f"{rel}:2: {written} — {message}"
            lines = [l for l in out.splitlines() if re.match(r"^\S+:\d+: #include ", l)]
            ok = rc == 1 and lines == [expected]
            print(f"{'ok  ' if ok else 'FAIL'} exit {rc}: {' | '.join(lines) or out.strip()}")
            if not ok:
                failures.append(f"{rel} with {line!r}: expected exit 1 and only {expected!r}, got exit {rc}:\n{out}")

    with tempfile.TemporaryDirectory() as tmp:
        # Every violation is reported, not just the first.
        root = pathlib.Path(tmp) / "two"
        make_tree(root, {"engine/a.cc": '#include "server/a.h"\n', "batching/b.cc": '\n\n#include "engine/b.h"\n'})
        rc, out = run(root)
        want = ['engine/a.cc:1: #include "server/a.h" — engine may not include server',
                'batching/b.cc:3: #include "engine/b.h" — batching may not include engine']
        if rc != 1 or any(w not in out.splitlines() for w in want):
            failures.append(f"two violations: expected exit 1 and both lines, got exit {rc}:\n{out}")
        # A root without the checked folders fails instead of checking nothing.
        empty = pathlib.Path(tmp) / "empty"
        empty.mkdir()
        rc, out = run(empty)
        if rc != 1:
            failures.append(f"a root without engine/, batching/, server/, base/ passed:\n{out}")

    for f in failures:
        print(f"selftest: {f}")
    print(f"layering selftest: {len(SELFTEST_VIOLATIONS)} violating trees, a clean one and two more:",
          "ok" if not failures else f"{len(failures)} failures")
    return 1 if failures else 0


def main() -> int:
    sys.stdout.reconfigure(encoding="utf-8", errors="replace")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(pathlib.Path(__file__).resolve().parents[1]),
                    help="the tree to check (default: this repository)")
    ap.add_argument("--selftest", action="store_true", help="check the check on temporary trees")
    args = ap.parse_args()
    return selftest() if args.selftest else check(pathlib.Path(args.root))


if __name__ == "__main__":
    sys.exit(main())
