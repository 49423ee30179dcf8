"""Tests for pruning.timing: statistics order, known durations, thread/gc restoration, batch scaling,
interleaved (paired) timing."""

from __future__ import annotations

import gc
import time

import pytest
import timm
import torch

from pruning.timing import LatencyStats, measure_latency, paired_latency, time_callable, torch_threads


def assert_ordered(stats: LatencyStats) -> None:
    assert 0.0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.ms <= stats.p90_ms
    assert stats.spread_ms == pytest.approx(stats.p90_ms - stats.p10_ms)


def test_sleep_of_5ms_is_measured() -> None:
    stats = time_callable(lambda: time.sleep(0.005), warmup=1, rounds=3, iters=5)
    assert 4.5 <= stats.ms <= 50.0
    assert_ordered(stats)
    assert (stats.rounds, stats.iters_per_round, stats.batch_size) == (3, 5, None)


def test_thread_count_is_used_and_restored() -> None:
    before = torch.get_num_threads()
    seen: list[int] = []
    stats = time_callable(lambda: seen.append(torch.get_num_threads()), warmup=0, rounds=1, iters=2, threads=1)
    assert seen == [1, 1] and stats.threads == 1
    assert torch.get_num_threads() == before


def test_threads_and_gc_restored_on_exception() -> None:
    before = torch.get_num_threads()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before

    def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        time_callable(fail, warmup=0, threads=1)
    assert torch.get_num_threads() == before
    assert gc.isenabled()


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        time_callable(lambda: None, rounds=0)
    with pytest.raises(ValueError), torch_threads(0):
        pass


def test_to_dict_round_trips() -> None:
    stats = time_callable(lambda: None, warmup=0, rounds=2, iters=3)
    assert LatencyStats(**stats.to_dict()) == stats


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    # Weights do not matter for latency; a randomly initialised real timm ViT has the real cost.
    return timm.create_model("deit_tiny_patch16_224", pretrained=False)


def test_bigger_batch_is_not_faster(vit: torch.nn.Module) -> None:
    vit.train()
    one = measure_latency(vit, batch_size=1, threads=1, warmup=1, rounds=3, iters=3)
    four = measure_latency(vit, batch_size=4, threads=1, warmup=1, rounds=3, iters=3)
    assert vit.training, "measure_latency must leave the caller's mode alone"
    assert (one.batch_size, four.batch_size) == (1, 4)
    assert_ordered(one)
    assert_ordered(four)
    assert four.ms >= one.ms


def test_given_inputs_set_the_batch(vit: torch.nn.Module) -> None:
    stats = measure_latency(vit, inputs=torch.randn(2, 3, 224, 224), warmup=0, rounds=1, iters=1)
    assert stats.batch_size == 2


class Sleeper(torch.nn.Module):
    """A model whose forward takes a known time and logs its calls."""

    def __init__(self, name: str, seconds: float, calls: list[str]) -> None:
        super().__init__()
        self.name, self.seconds, self.calls = name, seconds, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(self.name)
        time.sleep(self.seconds)
        return x


def test_paired_latency_interleaves_rounds_and_measures_each_model() -> None:
    calls: list[str] = []
    models = {"fast": Sleeper("fast", 0.0, calls), "slow": Sleeper("slow", 0.004, calls)}
    ms = paired_latency(models, batch_size=1, rounds=3, iters=2)
    # Every round times each model in turn (one warm-up call and two timed): a drift hits both alike.
    assert calls == ["fast"] * 3 + ["slow"] * 3 + ["fast"] * 3 + ["slow"] * 3 + ["fast"] * 3 + ["slow"] * 3
    assert set(ms) == {"fast", "slow"}
    assert ms["slow"] >= 3.5 and ms["fast"] < ms["slow"]
    with pytest.raises(ValueError):
        paired_latency(models, batch_size=1, rounds=0)
