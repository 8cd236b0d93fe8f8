#!/usr/bin/env python3
"""Replace one section of BENCHMARKS.md with new text, keeping the others.

Each benchmark owns a section between `<!-- BEGIN name -->` and `<!-- END name -->` and rewrites
only that section, so benchmarks run at different times never overwrite each other's figures.

    python3 scripts/bench_section.py NAME FILE [DOC]  # FILE holds the new markdown ('-' = stdin);
                                                      # DOC defaults to BENCHMARKS.md

A section that does not exist yet is appended at the end.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "BENCHMARKS.md")


def replace_section(doc: str, name: str, body: str) -> str:
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(doc):
        return pattern.sub(lambda _: block, doc)
    return doc.rstrip() + "\n\n" + block + "\n"


def main() -> int:
    if len(sys.argv) not in (3, 4) or not re.fullmatch(r"[a-z0-9-]+", sys.argv[1]):
        print(__doc__, file=sys.stderr)
        return 2
    name, source = sys.argv[1], sys.argv[2]
    path = os.path.join(ROOT, sys.argv[3]) if len(sys.argv) == 4 else PATH
    body = sys.stdin.read() if source == "-" else open(source).read()
    doc = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    with open(path, "w") as f:
        f.write(replace_section(doc, name, body))
    print(f"{os.path.basename(path)}: section {name} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
