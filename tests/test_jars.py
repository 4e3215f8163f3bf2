"""The jar cache (orion/jars.py): a bundle is fetched by its pinned Maven project once and
then reused without Maven, a changed pom fetches anew, a failed fetch leaves nothing half
done, and a missing bundle or a missing Maven is a clear error. The fetches are real
(Maven Central, through ~/.m2), into a cache of the test's own.

    .venv/bin/python -m pytest -q tests/test_jars.py
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from orion import jars
from orion.cli import main as orion_main
from orion.jars import JAVA_DIR, JarFetchError, MavenMissing, UnknownBundle, bundle_dir, bundle_jar, bundle_jars


@pytest.fixture(scope="module")
def fetched_cache(tmp_path_factory) -> Path:
    """A cache into which the small flink-kafka bundle (one jar) has been fetched."""
    if shutil.which("mvn") is None:
        pytest.fail(f"the jar tests fetch with Maven: {jars.MAVEN_MISSING}", pytrace=False)
    cache = tmp_path_factory.mktemp("jar-cache")
    bundle_jars("flink-kafka", cache=cache)
    return cache


def without_maven(monkeypatch, tmp_path) -> None:
    """PATH holds no mvn from here on: any call that ran Maven would fail."""
    empty = tmp_path / "no-maven-here"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))


def test_a_cached_bundle_is_reused_without_running_maven(fetched_cache, monkeypatch, tmp_path):
    first = bundle_jars("flink-kafka", cache=fetched_cache)
    directory = bundle_dir("flink-kafka", cache=fetched_cache)
    stamp = directory.stat().st_mtime_ns
    without_maven(monkeypatch, tmp_path)

    again = bundle_jars("flink-kafka", cache=fetched_cache)

    assert again == first
    assert directory.stat().st_mtime_ns == stamp
    assert [path.name for path in fetched_cache.iterdir() if not path.name.startswith(".")] == [directory.name]


def test_the_flink_kafka_bundle_is_the_one_shaded_connector_jar(fetched_cache):
    jar = bundle_jar("flink-kafka", "flink-sql-connector-kafka", cache=fetched_cache)

    assert bundle_jars("flink-kafka", cache=fetched_cache) == [jar]
    assert jar.name.startswith("flink-sql-connector-kafka-") and jar.name.endswith("-2.2.jar")
    names = set(zipfile.ZipFile(jar).namelist())
    assert "org/apache/flink/connector/kafka/source/KafkaSource.class" in names
    # Shaded: the Kafka client is inside it, relocated.
    assert any(name.endswith("/clients/producer/KafkaProducer.class") for name in names)


def test_bundle_jar_refuses_a_prefix_that_names_no_jar(fetched_cache):
    with pytest.raises(JarFetchError, match="0 jar.*flink-sql-connector-kafka-5"):
        bundle_jar("flink-kafka", "kafka-clients", cache=fetched_cache)


def test_orion_jars_path_prints_the_jar_for_a_command_line(fetched_cache, monkeypatch, capsys):
    monkeypatch.setenv(jars.CACHE_ENV, str(fetched_cache))

    assert orion_main(["jars", "path", "flink-kafka"]) == 0

    printed = capsys.readouterr().out.strip()
    assert printed == str(bundle_jar("flink-kafka", cache=fetched_cache)) and Path(printed).is_file()


def test_a_changed_pom_fetches_the_bundle_anew(fetched_cache, tmp_path, capfd):
    java_dir = tmp_path / "java"
    shutil.copytree(JAVA_DIR / "flink-kafka", java_dir / "flink-kafka")
    assert bundle_dir("flink-kafka", java_dir, fetched_cache) == bundle_dir("flink-kafka", cache=fetched_cache)
    pom = java_dir / "flink-kafka" / "pom.xml"
    pom.write_text(pom.read_text() + "<!-- changed -->\n")
    changed = bundle_dir("flink-kafka", java_dir, fetched_cache)
    assert changed != bundle_dir("flink-kafka", cache=fetched_cache) and not changed.exists()

    found = bundle_jars("flink-kafka", java_dir, fetched_cache)

    assert changed.is_dir() and [jar.parent for jar in found] == [changed]
    assert "fetching the 'flink-kafka' jars from Maven Central" in capfd.readouterr().err


def test_a_failed_fetch_leaves_no_half_bundle(tmp_path):
    java_dir, cache = tmp_path / "java", tmp_path / "cache"
    (java_dir / "broken").mkdir(parents=True)
    (java_dir / "broken" / "pom.xml").write_text("<project><modelVersion>4.0.0</modelVersion>")

    with pytest.raises(JarFetchError, match=r"Maven could not fetch the 'broken' jars[\s\S]*\[ERROR\]"):
        bundle_jars("broken", java_dir, cache)

    assert [path.name for path in cache.iterdir() if not path.name.endswith(".lock")] == []


def test_an_unknown_bundle_names_the_known_ones(tmp_path):
    with pytest.raises(UnknownBundle, match=r"no jar bundle named 'kafak'.*flink-kafka.*kafka"):
        bundle_jars("kafak", cache=tmp_path)
    assert not any(tmp_path.iterdir())


def test_without_maven_an_uncached_bundle_says_to_install_it(monkeypatch, tmp_path):
    without_maven(monkeypatch, tmp_path)

    with pytest.raises(MavenMissing, match=r"apt-get install maven"):
        bundle_jars("flink-kafka", cache=tmp_path / "empty-cache")


def test_the_kafka_bundle_is_one_kafka_release_with_a_log_binding():
    names = [jar.name for jar in bundle_jars("kafka")]

    kafka_jars = [name for name in names if name.startswith(("kafka_2.13-", "kafka-clients-", "kafka-server-",
                                                             "kafka-storage-", "kafka-raft-", "kafka-metadata-"))]
    assert len(kafka_jars) >= 6, names
    versions = {name.rsplit("-", 1)[1].removesuffix(".jar") for name in kafka_jars}
    assert len(versions) == 1 and next(iter(versions)).startswith("4."), versions
    assert any(name.startswith("log4j-slf4j-impl-") for name in names), names
    assert any(name.startswith("slf4j-api-1.7") for name in names), names


def test_the_beam_kafka_bundle_has_kafkaio_the_expansion_service_and_the_harness_of_one_beam_release():
    names = [jar.name for jar in bundle_jars("beam-kafka")]

    beam = {name for name in names if name.startswith("beam-sdks-java-")}
    for part in ("io-kafka", "expansion-service", "harness", "core"):
        assert f"beam-sdks-java-{part}-2.61.0.jar" in beam, names
    assert not any(name.startswith(("kafka-avro-serializer", "kafka-schema-registry")) for name in names), \
        "io.confluent (not on Maven Central) is left out"
    assert any(name.startswith("kafka-clients-3.") for name in names), names
    assert any(name.startswith("jamm-") for name in names), "the harness sizes its caches with jamm"


def test_prism_is_built_once_and_then_found_without_go(monkeypatch, tmp_path):
    if shutil.which("go") is None:
        pytest.fail(f"the Prism test builds it with Go: {jars.GO_MISSING}", pytrace=False)
    built = jars.prism_binary()  # the shared cache: built there once, a minute the first time
    assert built.name == "prism" and built.parent.name == f"prism-{jars.PRISM_VERSION}"
    monkeypatch.setenv("PATH", str(tmp_path))  # no go from here on
    assert jars.prism_binary() == built


def test_without_go_an_unbuilt_prism_says_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    # This machine has Go in /usr/local/go: hidden too, as on a machine without it.
    monkeypatch.setattr(jars, "GO_ELSEWHERE", (tmp_path / "go" / "bin" / "go",))

    with pytest.raises(jars.GoMissing, match=r"install Go"):
        jars.prism_binary(cache=tmp_path / "empty-cache")
    assert not (tmp_path / "empty-cache" / f"prism-{jars.PRISM_VERSION}").exists()
