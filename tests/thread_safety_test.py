#!/usr/bin/env python3
"""Compiler-checked locking: every server/ and batching/ source compiled by clang 14 with
-Wthread-safety as an error, using the build's own flags (compile_commands.json), syntax only.
Fields marked ABSL_GUARDED_BY(mu) may only be touched with mu held, functions marked
ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) only called with it held; clang reports any other access as

    server/service.cc:123:5: error: writing variable 'inflight_' requires holding mutex 'mu_' ...

(absl::Mutex carries the annotations; std::mutex does not, so code on std::mutex is compiled but
not checked: see the note in batching/README.md.)

    tests/thread_safety_test.py --build DIR    # ctest `thread_safety`
    tests/thread_safety_test.py --build DIR --selftest
                                               # a file that breaks a GUARDED_BY must fail
Python 3 standard library only.
"""
import argparse
import json
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile

CLANG = "clang++-14"
FOLDERS = ("server", "batching")
FLAGS = ["-fsyntax-only", "-Wthread-safety", "-Werror=thread-safety", "-Wno-unknown-warning-option"]


def commands(build):
    path = pathlib.Path(build) / "compile_commands.json"
    entries = json.loads(path.read_text())
    root = pathlib.Path(__file__).resolve().parent.parent
    out = {}
    for e in entries:
        f = pathlib.Path(e["file"]).resolve()
        try:
            rel = f.relative_to(root)
        except ValueError:
            continue
        if rel.parts[0] in FOLDERS and f.suffix == ".cc":
            args = e.get("arguments") or shlex.split(e["command"])
            out[str(rel)] = (args, e["directory"])
    return out


def clang_args(args, source):
    """The gcc command's flags for clang: no compiler, output or source; include and define flags
    kept, then ours."""
    kept, skip = [], False
    for a in args[1:]:
        if skip:
            skip = False
            continue
        if a in ("-o", "-c", "-MF", "-MT", "-MQ"):
            skip = True
            continue
        if a.endswith((".cc", ".cpp")) or a.startswith(("-M", "-fno-semantic")):
            continue
        kept.append(a)
    return [CLANG, *kept, *FLAGS, source]


def check(build, files=None):
    if shutil.which(CLANG) is None:
        print(f"thread_safety: {CLANG} not found; scripts/install-deps.sh installs clang-14", file=sys.stderr)
        return 1
    cmds = commands(build)
    if not cmds:
        print(f"thread_safety: no server/ or batching/ sources in {build}/compile_commands.json")
        return 1
    bad = 0
    for rel, (args, directory) in sorted(cmds.items()):
        if files is not None and rel not in files:
            continue
        source = files[rel] if files is not None else str(pathlib.Path(args[-1]).resolve())
        proc = subprocess.run(clang_args(args, source), cwd=directory, capture_output=True, text=True)
        if proc.returncode != 0:
            bad += 1
            print(f"{rel}: clang -Wthread-safety failed")
            print(proc.stderr.strip())
    if bad:
        print(f"thread_safety: {bad} file(s) fail")
        return 1
    print(f"thread_safety: {len(cmds) if files is None else len(files)} files pass clang -Wthread-safety")
    return 0


def selftest(build):
    with tempfile.TemporaryDirectory() as tmp:
        bad = pathlib.Path(tmp) / "bad.cc"
        bad.write_text(
            '#include "absl/base/thread_annotations.h"\n'
            '#include "absl/synchronization/mutex.h"\n'
            "struct Counter {\n"
            "  absl::Mutex mu;\n"
            "  int n ABSL_GUARDED_BY(mu) = 0;\n"
            "  void Add() { ++n; }  // without mu\n"
            "};\n")
        good = pathlib.Path(tmp) / "good.cc"
        good.write_text(bad.read_text().replace("void Add() { ++n; }",
                                                "void Add() { absl::MutexLock l(&mu); ++n; }"))
        failures = 0
        # Borrow one real server file's flags for the probe files.
        rel = "server/memory_trimmer.cc"
        if check(build, {rel: str(good)}) != 0:
            print("selftest: a correctly locked file failed")
            failures += 1
        if check(build, {rel: str(bad)}) != 1:
            print("selftest: an unlocked write to a GUARDED_BY field passed")
            failures += 1
    print("thread_safety selftest:", "ok" if failures == 0 else f"{failures} failures")
    return 1 if failures else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", required=True, help="a configured build directory")
    p.add_argument("--selftest", action="store_true")
    a = p.parse_args()
    sys.exit(selftest(a.build) if a.selftest else check(a.build))


if __name__ == "__main__":
    main()
