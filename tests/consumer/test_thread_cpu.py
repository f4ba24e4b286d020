"""CPU time per thread role: real /proc for this process's threads, a fabricated one for the
bookkeeping (threads ending, ids reused, roles changing)."""

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from digitmatch.consumer.thread_cpu import ROLES, ThreadCpuCollector, library_role
from digitmatch.procfs import read_stat

TICKS = 100  # proc(5) clock ticks per second on Linux


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def write_task(tasks, tid: int, comm: str, cpu_s: float) -> None:
    ticks = int(round(cpu_s * TICKS))
    fields = ["S"] + ["0"] * 10 + [str(ticks), "0"] + ["0"] * 8  # utime, stime = fields 14, 15
    (tasks / str(tid)).mkdir(exist_ok=True)
    (tasks / str(tid) / "stat").write_text(f"{tid} ({comm}) {' '.join(fields)}\n")


@pytest.fixture
def fake_tasks(tmp_path, monkeypatch):
    monkeypatch.setattr("digitmatch.procfs._TICKS", TICKS)
    return tmp_path


def test_read_stat_takes_the_name_in_parentheses(fake_tasks):
    write_task(fake_tasks, 7, "rdk:broker 1 (x)", 2.5)
    assert read_stat(fake_tasks / "7" / "stat") == ("rdk:broker 1 (x)", 2.5)
    assert read_stat(fake_tasks / "8" / "stat") is None


@pytest.mark.parametrize("python_name, comm, role", [
    (None, "tf_Compute", "tensorflow"),
    (None, "rdk:broker1", "kafka_client"),
    ("kafka-io-digitmatch", "python", "kafka_client"),
    ("kafka-python-producer-1-network-thread", "python", "kafka_client"),
    ("librdkafka-deliveries", "python", "kafka_client"),
    ("model-watcher", "python", "other"),
    (None, "python", "other"),
])
def test_library_threads_by_name(python_name, comm, role):
    assert library_role(python_name, comm) == role


def test_a_real_thread_is_counted_in_the_role_it_assigned_itself():
    collector = ThreadCpuCollector()
    before = collector.totals()
    if not before:
        pytest.skip("no /proc here")

    burnt, read = threading.Event(), threading.Event()

    def work():
        collector.assign("inference")
        burn(0.3)
        burnt.set()
        read.wait(30)

    worker = threading.Thread(target=work)
    worker.start()
    burnt.wait(30)
    after = collector.totals()
    read.set()
    worker.join()
    assert collector.totals()["inference"] >= after["inference"]  # an ended thread's time stays
    assert after["inference"] - before.get("inference", 0.0) >= 0.25
    assert set(after) == set(ROLES)
    assert all(after[role] >= before.get(role, 0.0) for role in ROLES)


def test_exposed_as_a_counter_per_role():
    registry = CollectorRegistry()
    collector = ThreadCpuCollector()
    registry.register(collector)
    collector.assign("poll_loop")
    burn(0.05)
    value = registry.get_sample_value("digitmatch_thread_cpu_seconds_total", {"thread": "poll_loop"})
    if value is None:
        pytest.skip("no /proc here")
    assert value >= 0.0
    assert registry.get_sample_value("digitmatch_thread_cpu_seconds_total", {"thread": "tensorflow"}) is not None


def test_without_proc_there_are_no_samples(tmp_path):
    registry = CollectorRegistry()
    collector = ThreadCpuCollector(tmp_path / "missing")
    registry.register(collector)
    collector.assign("poll_loop")
    assert collector.totals() == {}
    assert registry.get_sample_value("digitmatch_thread_cpu_seconds_total", {"thread": "poll_loop"}) is None


def test_unknown_role():
    with pytest.raises(ValueError, match="unknown thread role"):
        ThreadCpuCollector().assign("decode")


def test_totals_never_go_back_when_threads_end_or_ids_are_reused(fake_tasks):
    collector = ThreadCpuCollector(fake_tasks)
    write_task(fake_tasks, 11, "tf_Compute", 4.0)
    write_task(fake_tasks, 12, "rdk:main", 1.0)
    assert collector.totals()["tensorflow"] == pytest.approx(4.0)
    write_task(fake_tasks, 11, "tf_Compute", 6.0)
    (fake_tasks / "12" / "stat").unlink()
    (fake_tasks / "12").rmdir()
    totals = collector.totals()
    assert totals["tensorflow"] == pytest.approx(6.0)
    assert totals["kafka_client"] == pytest.approx(1.0)  # ended: kept at its last reading
    write_task(fake_tasks, 11, "tf_Compute", 0.5)  # a new thread with the same id
    assert collector.totals()["tensorflow"] == pytest.approx(6.5)


@pytest.mark.parametrize("read_before, at_assign, after, role", [
    (3.0, 5.0, 9.0, "poll_loop"),  # read once as "other" (e.g. while loading the model), then assigned
    (None, 2.0, 2.5, "inference"),  # assigned before any reading
])
def test_a_role_change_keeps_the_cpu_used_before_with_the_old_role(fake_tasks, read_before, at_assign, after, role):
    collector = ThreadCpuCollector(fake_tasks)
    me = threading.current_thread()
    if read_before is not None:
        write_task(fake_tasks, me.native_id, "python", read_before)
        assert collector.totals()["other"] == pytest.approx(read_before)
    write_task(fake_tasks, me.native_id, "python", at_assign)
    collector.assign(role)
    write_task(fake_tasks, me.native_id, "python", after)
    totals = collector.totals()
    assert totals["other"] == pytest.approx(at_assign)
    assert totals[role] == pytest.approx(after - at_assign)
