#!/usr/bin/env python3
"""Every C++ file the repository tracks is formatted as .clang-format says (clang-format 14, the
version Debian 12 ships and scripts/install-deps.sh installs). An unformatted file is reported as

    path: not formatted (clang-format-14 -i path)

with the first lines clang-format would change, and the test exits 1.

    tests/format_test.py [--root DIR]   # check a tree (ctest `format`)
    tests/format_test.py --selftest     # a formatted and a misformatted file in a temporary tree
                                        # (ctest `format_selftest`)
To format everything: git ls-files '*.cc' '*.h' | xargs clang-format-14 -i

Python 3 standard library only.
"""
import argparse
import difflib
import pathlib
import shutil
import subprocess
import sys
import tempfile

CLANG_FORMAT = "clang-format-14"


def sources(root):
    """Tracked .cc/.h files when root is a git checkout, else every one under root."""
    try:
        out = subprocess.run(["git", "ls-files", "*.cc", "*.h"], cwd=root, check=True,
                             capture_output=True, text=True).stdout.split()
        if out:
            return [root / p for p in out]
    except (OSError, subprocess.CalledProcessError):
        pass
    def ours(p):
        parts = p.relative_to(root).parts
        return not any(x.startswith((".", "build")) for x in parts[:-1])
    return sorted(p for p in root.rglob("*")
                  if p.suffix in (".cc", ".h") and p.is_file() and ours(p))


def check(root):
    exe = shutil.which(CLANG_FORMAT)
    if exe is None:
        print(f"format: {CLANG_FORMAT} not found; scripts/install-deps.sh installs it", file=sys.stderr)
        return 1
    style = root / ".clang-format"
    if not style.is_file():
        print(f"format: {style} is missing", file=sys.stderr)
        return 1
    bad = 0
    files = sources(root)
    for path in files:
        text = path.read_text()
        formatted = subprocess.run([exe, f"--style=file:{style}", f"--assume-filename={path}"],
                                   input=text, capture_output=True, text=True, check=True).stdout
        if formatted != text:
            bad += 1
            rel = path.relative_to(root)
            print(f"{rel}: not formatted ({CLANG_FORMAT} -i {rel})")
            diff = difflib.unified_diff(text.splitlines(), formatted.splitlines(), lineterm="", n=0)
            for line in list(diff)[2:8]:
                print(f"    {line}")
    if bad:
        print(f"format: {bad} of {len(files)} files differ from .clang-format")
        return 1
    print(f"format: {len(files)} files as .clang-format says")
    return 0


def selftest():
    here = pathlib.Path(__file__).resolve().parent.parent
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        shutil.copy(here / ".clang-format", root / ".clang-format")
        good = "int Add(int a, int b) { return a + b; }\n"
        (root / "good.cc").write_text(good)
        if check(root) != 0:
            print("selftest: a formatted tree failed")
            failures += 1
        (root / "bad.h").write_text("int  Sub(int a,int b){return a-b;}\n")
        proc = subprocess.run([sys.executable, __file__, "--root", str(root)], capture_output=True,
                              text=True)
        if proc.returncode != 1 or "bad.h: not formatted" not in proc.stdout:
            print(f"selftest: a misformatted file was not reported (exit {proc.returncode}):\n{proc.stdout}")
            failures += 1
        if "good.cc" in proc.stdout:
            print("selftest: a formatted file was reported")
            failures += 1
    print("format selftest:", "ok" if failures == 0 else f"{failures} failures")
    return 1 if failures else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=str(pathlib.Path(__file__).resolve().parent.parent))
    p.add_argument("--selftest", action="store_true")
    args = p.parse_args()
    sys.exit(selftest() if args.selftest else check(pathlib.Path(args.root).resolve()))


if __name__ == "__main__":
    main()
