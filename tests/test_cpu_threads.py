"""The CPU thread policy (unimat_dist/cpu_threads.py): cgroup files in their real formats, affinity,
/proc/stat load, the policy, the environment it exports and the dispatcher hook."""
from __future__ import annotations

import logging
import os

import pytest

from unimat_dist import cpu_threads as ct


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in (*ct.THREAD_ENV_VARS, ct.AUTO_MARK, ct.USER_ENV, ct.LOAD_ENV):
        monkeypatch.delenv(var, raising=False)


def test_parse_cgroup_v2_cpu_max():
    assert ct.parse_cgroup_v2_cpu_max("max 100000\n") is None
    assert ct.parse_cgroup_v2_cpu_max("200000 100000\n") == 2.0
    assert ct.parse_cgroup_v2_cpu_max("150000 100000") == 1.5
    assert ct.parse_cgroup_v2_cpu_max("50000\n") == 0.5  # period omitted: the kernel default


def test_parse_cgroup_v1_quota():
    assert ct.parse_cgroup_v1_quota("-1\n", "100000\n") is None
    assert ct.parse_cgroup_v1_quota("300000\n", "100000\n") == 3.0


def _v2_tree(tmp_path, own: str, parent: str | None):
    root = tmp_path / "cg"
    (root / "kubepods" / "pod1").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "kubepods" / "pod1" / "cpu.max").write_text(own)
    if parent is not None:
        (root / "kubepods" / "cpu.max").write_text(parent)
    self_cg = tmp_path / "self_cgroup"
    self_cg.write_text("0::/kubepods/pod1\n")
    return root, self_cg


def test_cgroup_v2_own_group_and_ancestors(tmp_path):
    root, self_cg = _v2_tree(tmp_path, "max 100000\n", "250000 100000\n")
    assert ct.cgroup_cpu_limit(root, self_cg) == 2.5  # the parent's quota binds
    root, self_cg = _v2_tree(tmp_path / "b", "100000 100000\n", "400000 100000\n")
    assert ct.cgroup_cpu_limit(root, self_cg) == 1.0
    root, self_cg = _v2_tree(tmp_path / "c", "max 100000\n", None)
    assert ct.cgroup_cpu_limit(root, self_cg) is None


def test_cgroup_v2_namespaced_root(tmp_path):
    """Inside a container's cgroup namespace /proc/self/cgroup says 0::/ and cpu.max sits at the root."""
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (root / "cpu.max").write_text("200000 100000\n")
    (tmp_path / "self").write_text("0::/\n")
    assert ct.cgroup_cpu_limit(root, tmp_path / "self") == 2.0


def test_cgroup_v1(tmp_path):
    root = tmp_path / "cg"
    d = root / "cpu,cpuacct" / "docker" / "abc"
    d.mkdir(parents=True)
    (d / "cpu.cfs_quota_us").write_text("150000\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    self_cg = tmp_path / "self"
    self_cg.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n")
    assert ct.cgroup_cpu_limit(root, self_cg) == 1.5
    (d / "cpu.cfs_quota_us").write_text("-1\n")
    assert ct.cgroup_cpu_limit(root, self_cg) is None
    assert ct.cgroup_cpu_limit(tmp_path / "missing", tmp_path / "missing_self") is None


def test_usable_cpus_takes_the_smallest(monkeypatch):
    monkeypatch.setattr(ct, "affinity_cpus", lambda: 8)
    monkeypatch.setattr(ct, "cgroup_cpu_limit", lambda: 2.5)
    monkeypatch.setattr(ct, "ray_cpus", lambda: None)
    assert ct.usable_cpus() == 2
    monkeypatch.setattr(ct, "ray_cpus", lambda: 1.0)
    assert ct.usable_cpus() == 1
    monkeypatch.setattr(ct, "cgroup_cpu_limit", lambda: 0.5)
    monkeypatch.setattr(ct, "ray_cpus", lambda: None)
    assert ct.usable_cpus() == 1  # never 0


def test_affinity_matches_the_os():
    assert ct.affinity_cpus() == len(os.sched_getaffinity(0))


def test_proc_stat_and_busy():
    a = ct.parse_proc_stat("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0 0 0\n")
    b = ct.parse_proc_stat("cpu  200 0 100 900 0 0 0 0 0 0\n")
    assert a == (200, 1000) and b == (300, 1200)
    assert ct.busy_between(a, b, 2) == pytest.approx(1.0)  # half of 2 CPUs busy
    with pytest.raises(ValueError):
        ct.parse_proc_stat("intr 1 2 3\n")


@pytest.mark.parametrize("usable,busy,procs,req,want", [
    (2, 0.0, 1, None, 2),     # idle 2-core machine: both
    (2, 1.0, 1, None, 1),     # one competing CPU-bound process: one thread
    (2, 6.0, 1, None, 1),     # heavily loaded: still one, never 0
    (2, 0.3, 1, None, 2),     # background noise
    (16, 0.0, 4, None, 4),    # a 4-process pool shares 16 CPUs
    (2, 0.0, 4, None, 1),
    (2, None, 1, 1, 1),       # explicit
])
def test_plan_threads(usable, busy, procs, req, want):
    threads, warning = ct.plan_threads(usable, busy, procs, req)
    assert threads == want and warning is None


def test_plan_threads_warns_when_explicit_oversubscribes():
    threads, warning = ct.plan_threads(2, 0.0, 1, 8)
    assert threads == 8 and "8 threads > 2 usable" in warning
    threads, warning = ct.plan_threads(4, 0.0, 4, 2)
    assert threads == 2 and "2 threads x 4 processes > 4 usable" in warning


def test_configure_exports_env_and_warns(monkeypatch, caplog):
    monkeypatch.setattr(ct, "usable_cpus", lambda: 2)
    monkeypatch.setattr(ct, "busy_elsewhere", lambda usable, interval=0.15: 1.0)
    assert ct.configure(what="t") == 1
    assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ[ct.AUTO_MARK] == "1"
    # The policy's own export is not mistaken for a user setting by a child process.
    assert ct.explicit_setting() is None
    with caplog.at_level(logging.WARNING, logger="unimat_dist.cpu_threads"):
        assert ct.configure(6, what="unimat sample") == 6
    assert "unimat sample: 6 threads > 2 usable" in caplog.text
    assert os.environ[ct.AUTO_MARK] == "0"


def test_user_environment_is_an_explicit_setting(monkeypatch):
    monkeypatch.setattr(ct, "usable_cpus", lambda: 4)
    monkeypatch.setattr(ct, "busy_elsewhere", lambda usable, interval=0.15: 3.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert ct.configure(export_env=False) == 3
    monkeypatch.setenv(ct.USER_ENV, "2")
    assert ct.configure(export_env=False) == 2
    monkeypatch.setenv(ct.USER_ENV, "auto")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert ct.configure(export_env=False) == 1


def test_without_auto_env_hides_only_the_policys_variables(monkeypatch):
    monkeypatch.setattr(ct, "usable_cpus", lambda: 2)
    monkeypatch.setenv(ct.LOAD_ENV, "0")
    ct.configure()
    with ct.without_auto_env():
        assert "OMP_NUM_THREADS" not in os.environ
    assert os.environ["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv(ct.AUTO_MARK, "0")  # the user's: kept
    with ct.without_auto_env():
        assert os.environ["OMP_NUM_THREADS"] == "2"


def test_ray_cpus_outside_ray_is_none():
    assert ct.ray_cpus() is None or "ray" in __import__("sys").modules


def test_dispatcher_applies_the_policy(monkeypatch):
    """`unimat` sets the thread variables before a command's handler runs (and torch if imported); an
    explicit --threads is used and warned about when it oversubscribes."""
    import argparse

    import torch

    from unimat_dist import cli

    seen = []

    def handler(a):
        seen.append((os.environ["OMP_NUM_THREADS"], torch.get_num_threads()))

    class Parser:
        def __init__(self, threads):
            self.threads = threads

        def parse_args(self, argv):
            return argparse.Namespace(command="x", log_level="INFO", func=handler, threads=self.threads)

    monkeypatch.setattr(ct, "usable_cpus", lambda: 2)
    monkeypatch.setattr(ct, "busy_elsewhere", lambda usable, interval=0.15: 1.2)
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(cli, "build_parser", lambda: Parser(None))
        assert cli.main([]) == 0
        monkeypatch.setattr(cli, "build_parser", lambda: Parser(2))
        assert cli.main([]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [("1", 1), ("2", 2)]


def test_evaluation_pool_size_follows_usable_cpus(monkeypatch, caplog):
    from unimat_dist import parallel

    monkeypatch.delenv("UNIMAT_EVAL_WORKERS", raising=False)
    monkeypatch.setattr(ct, "usable_cpus", lambda: 3)
    assert parallel.default_workers() == 3
    monkeypatch.setenv("UNIMAT_EVAL_WORKERS", "8")
    with caplog.at_level(logging.WARNING, logger="unimat_dist.parallel"):
        assert parallel.default_workers() == 8
    assert "UNIMAT_EVAL_WORKERS=8 > 3 usable CPU(s)" in caplog.text
