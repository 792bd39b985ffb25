"""Print the installed Debian packages that ROOTS need and BASE does not: the .debs a Caffe build
bundle carries (tools/install_caffe.sh --bundle).

Walks the Depends and Pre-Depends of the packages dpkg has installed (an alternative resolves to
the one installed), and leaves out everything BASE needs (the compiler, Python's headers) and
every Essential, required or important package: a machine that can build has those.

    python3 tools/deb_closure.py "libprotobuf-dev libhdf5-dev ..." "build-essential python3-dev"
"""

from __future__ import annotations

import re
import subprocess
import sys

FIELDS = "${Package}\t${Status}\t${Essential}\t${Priority}\t${Depends}, ${Pre-Depends}\t${Provides}\n"


def installed() -> tuple[dict[str, tuple[bool, str]], dict[str, str]]:
    """Installed package -> (part of every system, its dependency field); virtual name -> provider."""
    out = subprocess.run(["dpkg-query", "-W", f"-f={FIELDS}"], capture_output=True, text=True, check=True).stdout
    packages, provides = {}, {}
    for line in out.splitlines():
        name, status, essential, priority, depends, provided = line.split("\t")
        if status.endswith(" installed"):
            packages[name] = (essential == "yes" or priority in ("required", "important"), depends)
            for virtual in filter(None, (p.strip().split(" ")[0] for p in provided.split(","))):
                provides.setdefault(virtual, name)
    return packages, provides


def closure(roots: list[str], packages: dict, provides: dict) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in packages:
            continue
        seen.add(name)
        for group in filter(str.strip, packages[name][1].split(",")):
            for alternative in group.split("|"):
                dep = re.sub(r"\(.*?\)|\[.*?\]", "", alternative).strip().split(":")[0]
                dep = dep if dep in packages else provides.get(dep)
                if dep:
                    todo.append(dep)
                    break
    return seen


def main(roots: str, base: str) -> None:
    packages, provides = installed()
    missing = [r for r in roots.split() if r not in packages]
    if missing:
        sys.exit(f"deb_closure: {', '.join(missing)} not installed: install the build dependencies first")
    keep = closure(roots.split(), packages, provides) - closure(base.split(), packages, provides)
    print("\n".join(sorted(n for n in keep if not packages[n][0])))


if __name__ == "__main__":
    main(*sys.argv[1:])
