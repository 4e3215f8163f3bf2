"""What every benchmark writes with its figures: the machine, the source revision, and
its own section of BENCHMARKS.md (between `<!-- bench:NAME:start -->` and
`<!-- bench:NAME:end -->`), leaving the other sections alone.

    python -c "from benchmarks.report import machine_description; print(machine_description())"
"""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_FILE = REPO_ROOT / "BENCHMARKS.md"
BENCHMARKS_HEADER = """# Benchmarks

Measured by the benchmarks in `benchmarks/` (`make bench` runs them all); each one
rewrites only its own section below. The machines are shared and noisy, so every figure
comes with a ceiling measured in the same run, on the same data, on the same core: the
cheapest loop that does the unavoidable part of the work. The ratio to that ceiling is
the figure to compare between runs and machines; the absolute figure says what this
machine did.
"""


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def source_revision() -> str:
    """The commit measured, marked `+changes` when the working tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def measured_line(command: str) -> str:
    """`Command: ... · date · machine · source`, the line under every section's title."""
    return (f"Command: `{command}` · {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · "
            f"{machine_description()} · source {source_revision()}")


def section_markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def write_section(name: str, body: str, path: Path = BENCHMARKS_FILE) -> None:
    """Replace section `name` of `path` with `body` (markers added here), or append it."""
    start_marker, end_marker = section_markers(name)
    section = f"{start_marker}\n{body.strip()}\n{end_marker}"
    text = path.read_text(encoding="utf-8") if path.exists() else BENCHMARKS_HEADER
    start, end = text.find(start_marker), text.find(end_marker)
    if start != -1 and end != -1 and start < end:
        text = text[:start] + section + text[end + len(end_marker):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")
