"""Java jars Orion runs beside its Python code, fetched from Maven Central once and kept in
a cache: the Apache Kafka broker the tests start (`kafka`), Flink's Kafka connector for
PyFlink (`flink-kafka`), and standalone Apache HBase with its Thrift server, which the
hbase:// store's tests start (`hbase`, orion/testing/hbase.py), and Beam's expansion service
with KafkaIO and Beam's Java SDK harness, for the Beam graph's Kafka intake (`beam-kafka`).
Beside the jars it keeps Beam's Prism runner, built once from Beam's Go module of the
pinned release (`prism_binary`, `orion jars prism`; it needs Go), which runs that intake.

Each bundle is a pinned Maven project, java/BUNDLE/pom.xml in this repository, whose only
job is to copy its jars into a directory. The cache ($ORION_JAR_CACHE, by default
~/.cache/orion/jars) holds one directory per bundle and pom, BUNDLE-HASH, the hash being
that of the pom: a changed version fetches anew, an unchanged one never runs Maven
again. A fetch writes into a temporary directory and renames it into place, so an
interrupted fetch leaves no half bundle behind. No engine is imported here.

    orion jars fetch                       # every bundle (Maven's first run takes a minute)
    orion jars path flink-kafka            # the connector jar, for --jars
    orion jars prism                       # Beam's Prism runner, built with Go once
    python -m orion.jars path kafka --classpath
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE_ENV = "ORION_JAR_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "orion" / "jars"
# The poms live in the repository beside the package (an editable install, as `make`
# sets up); a wheel does not carry them.
JAVA_DIR = Path(__file__).resolve().parent.parent / "java"

# Prism, Beam's portable local runner, from the Go module of the Beam release the Python
# SDK is (apache-beam 2.61.0): the runner and the SDK must speak the same Beam model.
PRISM_VERSION = "v2.61.0"
PRISM_PACKAGE = "github.com/apache/beam/sdks/v2/go/cmd/prism"
# Where Go's own installer puts it, often not on a service's PATH.
GO_ELSEWHERE = (Path("/usr/local/go/bin/go"),)
GO_MISSING = ("install Go 1.22 or newer (https://go.dev/dl; Debian 12's golang-go is 1.19, too old), "
              f"which builds Beam's Prism runner {PRISM_VERSION} from Beam's Go module once")
MAVEN_MISSING = ("install Maven (apt-get install maven; it needs a JDK, e.g. openjdk-17-jdk-headless), "
                 "which fetches Orion's jars from Maven Central once")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DOWNLOADED = re.compile(r"Downloaded from \S+: (\S+\.jar) \(([^,)]+)")


class JarFetchError(RuntimeError):
    """A bundle's jars are not cached and could not be fetched; the message says why."""


class MavenMissing(JarFetchError):
    pass


class UnknownBundle(JarFetchError, ValueError):
    pass


class GoMissing(JarFetchError):
    pass


def cache_dir() -> Path:
    """Where fetched bundles are kept: $ORION_JAR_CACHE, or ~/.cache/orion/jars."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_CACHE


def bundle_names(java_dir: Path | None = None) -> list[str]:
    """Every bundle: each directory of java/ with a pom.xml."""
    java_dir = java_dir or JAVA_DIR
    if not java_dir.is_dir():
        return []
    return sorted(path.parent.name for path in java_dir.glob("*/pom.xml"))


def bundle_pom(name: str, java_dir: Path | None = None) -> Path:
    java_dir = java_dir or JAVA_DIR
    pom = java_dir / name / "pom.xml"
    if not pom.is_file():
        known = ", ".join(bundle_names(java_dir)) or f"none: {java_dir} has no */pom.xml"
        raise UnknownBundle(f"no jar bundle named {name!r} (no {pom}); the bundles are: {known}")
    return pom


def bundle_dir(name: str, java_dir: Path | None = None, cache: Path | None = None) -> Path:
    """Where the bundle's jars are (or will be) cached: BUNDLE-HASH of its pom."""
    digest = hashlib.sha256(bundle_pom(name, java_dir).read_bytes()).hexdigest()[:16]
    return (cache or cache_dir()) / f"{name}-{digest}"


def is_cached(name: str, java_dir: Path | None = None, cache: Path | None = None) -> bool:
    return bundle_dir(name, java_dir, cache).is_dir()


def bundle_jars(name: str, java_dir: Path | None = None, cache: Path | None = None) -> list[Path]:
    """The jars of bundle `name`, sorted by file name; fetched with Maven first when they
    are not cached yet (progress on stderr). Raises UnknownBundle, MavenMissing or
    JarFetchError (with Maven's own words)."""
    target = bundle_dir(name, java_dir, cache)
    if not target.is_dir():
        _fetch(name, bundle_pom(name, java_dir), target)
    return sorted(target.glob("*.jar"))


def bundle_jar(name: str, prefix: str | None = None, java_dir: Path | None = None,
               cache: Path | None = None) -> Path:
    """The one jar of bundle `name` whose file name starts with `prefix` (or its only jar
    when no prefix is given), e.g. bundle_jar("flink-kafka", "flink-sql-connector-kafka")."""
    jars = bundle_jars(name, java_dir, cache)
    found = [jar for jar in jars if prefix is None or jar.name.startswith(prefix)]
    if len(found) != 1:
        wanted = f"starting with {prefix!r}" if prefix else "in all"
        raise JarFetchError(f"bundle {name!r} has {len(found)} jar(s) {wanted}, not one: "
                            + (", ".join(jar.name for jar in jars) or "(empty)"))
    return found[0]


def classpath(name: str, java_dir: Path | None = None, cache: Path | None = None) -> str:
    """The bundle's jars as a `java -cp` class path."""
    return os.pathsep.join(str(jar) for jar in bundle_jars(name, java_dir, cache))


def _fetch(name: str, pom: Path, target: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise MavenMissing(f"the {name!r} jars are not in {target.parent} yet and `mvn` is not on PATH: "
                           f"{MAVEN_MISSING}")
    target.parent.mkdir(parents=True, exist_ok=True)
    # One fetch per bundle at a time, also across processes (parallel test runs): the
    # second waits and then finds the bundle in place.
    with _locked(target.parent / f".{target.name}.lock"):
        if target.is_dir():
            return
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            started = time.monotonic()
            print(f"orion: fetching the {name!r} jars from Maven Central into {target} "
                  f"(once; Maven keeps its downloads in ~/.m2) ...", file=sys.stderr, flush=True)
            _run_maven(mvn, name, pom, partial)
            jars = sorted(partial.glob("*.jar"))
            if not jars:
                raise JarFetchError(f"Maven copied no jar for bundle {name!r} ({pom})")
            size = sum(jar.stat().st_size for jar in jars)
            partial.chmod(0o755)  # mkdtemp made it private; the cache is shared like ~/.m2
            os.rename(partial, target)
            print(f"orion: {name!r}: {len(jars)} jar(s), {size / 1e6:.1f} MB, in "
                  f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(partial, ignore_errors=True)


def _run_maven(mvn: str, name: str, pom: Path, output: Path) -> None:
    # -U: Maven remembers a failed download and would not retry it for a day; a fetch only
    # runs when the bundle is missing, so it should always ask Maven Central again.
    command = [mvn, "-B", "-U", "-Dstyle.color=never", "-f", str(pom), "package", f"-Dorion.jars.dir={output}"]
    lines: list[str] = []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=pom.parent, stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    for raw in process.stdout:
        line = _ANSI.sub("", raw.rstrip("\n"))
        lines.append(line)
        downloaded = _DOWNLOADED.search(line)
        if downloaded:  # progress: each jar Maven downloads (poms and checksums are noise)
            print(f"  {downloaded.group(1).rsplit('/', 1)[-1]} ({downloaded.group(2)})", file=sys.stderr,
                  flush=True)
    if process.wait() != 0:
        # Maven's own words, without the generic advice it appends to every failure.
        said = [line for line in lines if line.startswith(("[ERROR]", "[WARNING]"))
                and line.strip() != "[ERROR]"]
        advice = next((i for i, line in enumerate(said) if "To see the full stack trace" in line), len(said))
        said = said[:advice] or lines[-30:]
        raise JarFetchError(f"Maven could not fetch the {name!r} jars (`{' '.join(command)}` exited with "
                            f"{process.returncode}):\n" + "\n".join(said[:30]))


def prism_binary(cache: Path | None = None) -> Path:
    """Beam's Prism runner of PRISM_VERSION, built with `go install` into the cache
    (prism-VERSION/prism) the first time (a minute; progress on stderr). Raises GoMissing
    or JarFetchError (with Go's own words)."""
    target = (cache or cache_dir()) / f"prism-{PRISM_VERSION}"
    binary = target / "prism"
    if binary.is_file():
        return binary
    go = shutil.which("go") or next((str(path) for path in GO_ELSEWHERE if path.is_file()), None)
    if go is None:
        raise GoMissing(f"Beam's Prism runner is not in {target.parent} yet and `go` is not on PATH: {GO_MISSING}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock"):
        if binary.is_file():
            return binary
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            started = time.monotonic()
            print(f"orion: building Beam's Prism runner {PRISM_VERSION} with Go into {target} (once) ...",
                  file=sys.stderr, flush=True)
            # Outside any module (GOFLAGS=-mod=mod): `go install PKG@VERSION` resolves
            # Beam's own go.mod through the module proxy.
            environment = {**os.environ, "GOBIN": str(partial), "GOFLAGS": "-mod=mod"}
            command = [go, "install", f"{PRISM_PACKAGE}@{PRISM_VERSION}"]
            done = subprocess.run(command, cwd=partial, env=environment, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True)
            if done.returncode != 0 or not (partial / "prism").is_file():
                said = (done.stderr or done.stdout).strip().splitlines()[-30:]
                raise JarFetchError(f"Go could not build Beam's Prism runner (`{' '.join(command)}` exited with "
                                    f"{done.returncode}):\n" + "\n".join(said))
            partial.chmod(0o755)
            os.rename(partial, target)
            print(f"orion: Prism {PRISM_VERSION}: {binary.stat().st_size / 1e6:.1f} MB, in "
                  f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return binary


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def add_jars_command(subparsers) -> None:
    """Register `jars fetch [BUNDLE ...]` and `jars path BUNDLE` on an argparse subparsers
    object (the `orion` parser's); each sets `handler`, which returns the exit code."""
    jars = subparsers.add_parser(
        "jars", help="fetch and locate the Java jars (Kafka broker, Flink Kafka connector, ...)",
        description=f"Java jars from Maven Central, fetched once by the pinned Maven projects in "
        f"{JAVA_DIR} into ${CACHE_ENV} (default {DEFAULT_CACHE}).",
    )
    commands = jars.add_subparsers(dest="jars_command", required=True, metavar="COMMAND")
    fetch = commands.add_parser("fetch", help="fetch bundles not cached yet (all when none is named)",
                                description="Fetch the named bundles (every bundle when none is named) "
                                "unless cached, and print where each one is.")
    fetch.add_argument("bundles", nargs="*", metavar="BUNDLE", help="one of: " + ", ".join(bundle_names()))
    fetch.set_defaults(handler=_fetch_command)
    path = commands.add_parser("path", help="print the paths of a bundle's jars, one per line",
                               description="Print the jars of BUNDLE, one per line (fetching them first "
                               "if needed), e.g. --jars \"$(orion jars path flink-kafka)\".")
    path.add_argument("bundle", metavar="BUNDLE", help="one of: " + ", ".join(bundle_names()))
    path.add_argument("--classpath", action="store_true",
                      help=f"print them on one line joined by {os.pathsep!r}, for java -cp")
    path.set_defaults(handler=_path_command)
    prism = commands.add_parser("prism", help="print the path of Beam's Prism runner (built with Go once)",
                                description=f"Build Beam's Prism runner {PRISM_VERSION} with Go into "
                                f"${CACHE_ENV} unless it is there, and print its path (the Beam graph's "
                                "Kafka intake runs on it).")
    prism.set_defaults(handler=_prism_command)


def _fetch_command(args: argparse.Namespace) -> int:
    failed = 0
    for name in args.bundles or bundle_names():
        try:
            jars = bundle_jars(name)
        except JarFetchError as error:
            print(f"orion: {error}", file=sys.stderr)
            failed += 1
            continue
        size = sum(jar.stat().st_size for jar in jars)
        print(f"{name}\t{bundle_dir(name)}\t{len(jars)} jar(s), {size / 1e6:.1f} MB")
    return 1 if failed else 0


def _path_command(args: argparse.Namespace) -> int:
    try:
        jars = bundle_jars(args.bundle)
    except JarFetchError as error:
        print(f"orion: {error}", file=sys.stderr)
        return 1
    print(os.pathsep.join(map(str, jars)) if args.classpath else "\n".join(map(str, jars)))
    return 0


def _prism_command(args: argparse.Namespace) -> int:
    try:
        print(prism_binary())
    except JarFetchError as error:
        print(f"orion: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orion.jars")
    add_jars_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["jars", *(sys.argv[1:] if argv is None else argv)])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
