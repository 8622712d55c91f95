#!/usr/bin/env python3
"""The include directions between the repository's folders, checked on every source file.

    engine/    the model and its kernels: no batching, server, generated proto or gRPC code
    batching/  the dynamic batcher: no engine, server, generated proto, gRPC or oneDNN code
    server/    the gRPC service: may use engine/ and batching/
    tools/, bench/, tests/, fuzz/: may use anything

Every target gets the repository root as its include path, so the compiler cannot enforce this;
this test does. A violation fails with the offending file, line and the rule it breaks.

    tests/layering_test.py [--root DIR]   # check the tree (ctest runs this)
    tests/layering_test.py --selftest     # shows each rule catches a violation it should
"""
import argparse
import pathlib
import re
import sys
import tempfile

SOURCE_SUFFIXES = {".h", ".hpp", ".cc", ".cpp"}
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')

# Per folder: include prefixes it must not use, with the reason printed on a violation. Quoted and
# angle-bracket includes are both checked (a project header reached with <...> is still a use).
FORBIDDEN = {
    "engine": {
        "batching/": "engine never depends on the batcher",
        "server/": "engine never depends on the server",
        "topserve/": "engine never includes generated proto code",
        "grpc": "engine knows no gRPC",
        "google/protobuf": "engine knows no protobuf",
        "prometheus/": "metrics are the server's",
    },
    "batching": {
        "engine/": "batching knows nothing of the engine (the server supplies cost and executor)",
        "server/": "batching never depends on the server",
        "topserve/": "batching never includes generated proto code",
        "grpc": "batching knows no gRPC",
        "google/protobuf": "batching knows no protobuf",
        "dnnl": "batching knows no oneDNN",
        "prometheus/": "batching reports through SchedulerObserver, not Prometheus",
    },
    "server": {},
}


def violations(root: pathlib.Path):
    """Yields (path, line number, include, reason) for each include that breaks a rule."""
    for folder, rules in FORBIDDEN.items():
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.suffix not in SOURCE_SUFFIXES or not path.is_file():
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                m = INCLUDE.match(line)
                if not m:
                    continue
                target = m.group(2)
                for prefix, reason in rules.items():
                    if target.startswith(prefix):
                        yield path.relative_to(root), number, target, reason


def check(root: pathlib.Path) -> int:
    found = list(violations(root))
    for path, number, target, reason in found:
        print(f"{path}:{number}: includes \"{target}\": {reason}")
    missing = [f for f in FORBIDDEN if not (root / f).is_dir()]
    if missing:
        print(f"layering: folders missing under {root}: {', '.join(missing)}")
        return 1
    if not found:
        counted = sum(1 for f in FORBIDDEN for p in (root / f).rglob("*") if p.suffix in SOURCE_SUFFIXES)
        print(f"layering: {counted} files in {', '.join(FORBIDDEN)}: no include breaks a rule")
    return 1 if found else 0


def selftest() -> int:
    """Every rule flags a file that breaks it, and a clean tree passes."""
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        for folder in FORBIDDEN:
            (root / folder).mkdir()
            (root / folder / "ok.h").write_text('#include "absl/status/status.h"\n#include <vector>\n')
        if list(violations(root)):
            print("selftest: a clean tree was flagged")
            failures += 1
        for folder, rules in FORBIDDEN.items():
            for prefix in rules:
                bad = root / folder / "bad.cc"
                bad.write_text(f'// x\n  #  include "{prefix}x.h"\n')
                got = list(violations(root))
                if len(got) != 1 or got[0][1] != 2:
                    print(f"selftest: {folder}/ including {prefix}x.h was not flagged once at line 2: {got}")
                    failures += 1
                bad.write_text(f"#include <{prefix}x.h>\n")
                if len(list(violations(root))) != 1:
                    print(f"selftest: {folder}/ including <{prefix}x.h> was not flagged")
                    failures += 1
                bad.unlink()
        # server/ may use engine/ and batching/.
        (root / "server" / "uses.cc").write_text('#include "engine/a.h"\n#include "batching/b.h"\n')
        if list(violations(root)):
            print("selftest: server/ including engine/ or batching/ was flagged")
            failures += 1
    print("layering selftest:", "ok" if failures == 0 else f"{failures} failures")
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(pathlib.Path(__file__).resolve().parents[1]))
    ap.add_argument("--selftest", action="store_true")
    args = ap.parse_args()
    return selftest() if args.selftest else check(pathlib.Path(args.root))


if __name__ == "__main__":
    sys.exit(main())
