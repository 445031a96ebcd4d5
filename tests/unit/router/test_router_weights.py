"""Weight sources: validation, last good value on bad input, file changes picked up by polling."""

import asyncio
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.client import V1ConfigMap, V1ObjectMeta

from backtest_engine.router.weights import (
    ConfigMapWeightSource,
    FileWeightSource,
    InvalidWeightError,
    WeightState,
    parse_configmap_ref,
    parse_weight,
    weight_from_configmap,
)


@given(st.integers(min_value=0, max_value=100), st.sampled_from(["", " ", "\n", "\t"]))
def test_weight_parses_when_integer_in_range(value, pad):
    assert parse_weight(f"{pad}{value}{pad}") == value
    assert parse_weight(f"{value}\n".encode()) == value


@pytest.mark.parametrize("raw", [None, "", "  ", "-1", "101", "50.5", "fifty", "1e2", "5 0", "١٠", "0x10"])
def test_weight_is_rejected_when_not_an_integer_0_to_100(raw):
    with pytest.raises(InvalidWeightError):
        parse_weight(raw)


@given(st.integers().filter(lambda v: not 0 <= v <= 100))
def test_weight_is_rejected_when_out_of_range(value):
    with pytest.raises(InvalidWeightError, match="outside 0-100"):
        parse_weight(str(value))


def test_state_notifies_listeners_when_weight_applied():
    seen: list[int] = []
    state = WeightState(initial=0)
    state.subscribe(seen.append)
    state.apply(30, "test")
    assert seen == [0, 30]
    assert state.value == 30
    assert state.updated_at is not None


def _write(path, text, mtime_ns):
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_file_weight_applies_when_file_changes(tmp_path):
    path = tmp_path / "weight"
    _write(path, "10\n", 1_000_000_000)
    source, state = FileWeightSource(path), WeightState()
    source.poll_once(state)
    assert state.value == 10
    _write(path, "25\n", 2_000_000_000)
    source.poll_once(state)
    assert state.value == 25


def test_file_weight_keeps_last_good_value_when_content_is_bad(tmp_path, caplog):
    path = tmp_path / "weight"
    _write(path, "40", 1_000_000_000)
    source, state = FileWeightSource(path), WeightState()
    source.poll_once(state)
    _write(path, "400", 2_000_000_000)
    source.poll_once(state)
    assert state.value == 40
    assert "outside 0-100" in caplog.text
    _write(path, "", 3_000_000_000)
    source.poll_once(state)
    assert state.value == 40


def test_file_weight_keeps_last_good_value_when_file_disappears(tmp_path):
    path = tmp_path / "weight"
    _write(path, "70", 1_000_000_000)
    source, state = FileWeightSource(path), WeightState()
    source.poll_once(state)
    path.unlink()
    source.poll_once(state)
    assert state.value == 70


def test_file_weight_applies_when_file_is_atomically_replaced_with_same_mtime(tmp_path):
    path = tmp_path / "weight"
    _write(path, "5", 1_000_000_000)
    source, state = FileWeightSource(path), WeightState()
    source.poll_once(state)
    replacement = tmp_path / "weight.tmp"
    _write(replacement, "55", 1_000_000_000)
    replacement.replace(path)
    source.poll_once(state)
    assert state.value == 55


def test_weight_is_zero_when_file_missing_at_start(tmp_path):
    source, state = FileWeightSource(tmp_path / "absent"), WeightState()
    source.poll_once(state)
    assert state.value == 0


async def test_file_weight_applies_within_a_second_when_source_is_running(tmp_path):
    path = tmp_path / "weight"
    path.write_text("0")
    source, state = FileWeightSource(path, poll_seconds=0.05), WeightState()
    await source.start(state)
    try:
        path.write_text("90")
        for _ in range(20):
            if state.value == 90:
                break
            await asyncio.sleep(0.05)
        assert state.value == 90
    finally:
        await source.stop()


def test_configmap_weight_is_read_when_key_weight_present():
    model = V1ConfigMap(metadata=V1ObjectMeta(name="w", resource_version="7"), data={"weight": "12"})
    assert weight_from_configmap(model) == 12
    assert weight_from_configmap({"data": {"weight": " 3\n"}}) == 3


@pytest.mark.parametrize("data", [None, {}, {"other": "5"}, {"weight": "abc"}, {"weight": "-3"}])
def test_configmap_weight_is_rejected_when_key_missing_or_invalid(data):
    with pytest.raises(InvalidWeightError):
        weight_from_configmap(V1ConfigMap(data=data))


def test_configmap_source_keeps_last_good_value_when_bad_or_deleted():
    source, state = ConfigMapWeightSource("ns", "w", api_factory=lambda: None), WeightState()
    source.handle(state, V1ConfigMap(data={"weight": "20"}), "ADDED")
    source.handle(state, V1ConfigMap(data={"weight": "200"}), "MODIFIED")
    assert state.value == 20
    source.handle(state, V1ConfigMap(data={"weight": "35"}), "MODIFIED")
    source.handle(state, V1ConfigMap(data={"weight": "35"}), "DELETED")
    assert state.value == 35


def test_configmap_ref_splits_when_namespace_and_name_given():
    assert parse_configmap_ref("prod/engine-router-weight") == ("prod", "engine-router-weight")


@pytest.mark.parametrize("ref", ["name-only", "/name", "ns/", "a/b/c"])
def test_configmap_ref_is_rejected_when_malformed(ref):
    with pytest.raises(ValueError, match="NAMESPACE/NAME"):
        parse_configmap_ref(ref)
