"""The size rule of saekit/: no file over 400 lines, no function over 60 (part of `make lint`)."""

import ast
import sys
from pathlib import Path

MAX_FILE, MAX_FUNCTION = 400, 60


def offences(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.count("\n")
        if lines > MAX_FILE:
            found.append(f"{path}: {lines} lines (at most {MAX_FILE})")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION:
                    found.append(f"{path}:{node.lineno}: {node.name} is {length} lines (at most {MAX_FUNCTION})")
    return found


if __name__ == "__main__":
    problems = offences(Path(sys.argv[1] if len(sys.argv) > 1 else "saekit"))
    print("\n".join(problems) or "sizes: every file and function within the limits")
    sys.exit(1 if problems else 0)
