"""Spec fields of the shadow comparison and of the silent-corruption fault, and what they become in pods."""

import pytest
from pydantic import ValidationError

from backtest_engine.router.cli import build_parser, config_from_args
from backtest_operator.crd import render_crd
from backtest_operator.desired import desired_manifests
from backtest_operator.workloads import engine_deployment

from .rollouts import make_spec, started
from .test_workloads import DEFAULTS, OWNER, by_kind_name


def router_args(spec) -> list[str]:
    driver = started(**spec)
    manifests = by_kind_name(desired_manifests(OWNER, driver.spec, driver.status, DEFAULTS))
    args: list[str] = manifests[("Deployment", "quant-router")]["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_router_shadows_the_spec_fraction_when_traffic_shadow_is_set():
    args = router_args({"traffic": {"shadow": {"fraction": 0.1, "maxInFlight": 8}}})
    assert args[:2] == ["backtest-engine", "router"]
    config = config_from_args(build_parser().parse_args(args[2:]))  # the router itself accepts them
    assert (config.shadow_fraction, config.shadow_max_in_flight) == (0.1, 8)


def test_router_args_are_unchanged_when_shadowing_is_off():
    args = router_args({})
    assert not any(arg.startswith("--shadow") for arg in args)
    assert config_from_args(build_parser().parse_args(args[2:])).shadow_fraction == 0.0


def test_engine_pods_get_the_result_bias_when_the_fault_is_set():
    spec = make_spec(engine={"faultInjection": {"resultBias": 0.02}})
    container = engine_deployment(OWNER, spec.pod(), spec.revision(), "canary", 1)["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["ENGINE_FAULT_RESULT_BIAS"] == "0.02"
    assert spec.revision() != make_spec().revision()  # a faulty build is a new release: it rolls out
    plain = make_spec()
    plain_env = engine_deployment(OWNER, plain.pod(), plain.revision(), "canary", 1)["spec"]["template"]["spec"][
        "containers"
    ][0]["env"]
    assert "ENGINE_FAULT_RESULT_BIAS" not in {item["name"] for item in plain_env}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"traffic": {"shadow": {"fraction": 1.5}}}, "fraction"),
        ({"traffic": {"shadow": {"fraction": -0.1}}}, "fraction"),
        ({"traffic": {"shadow": {"maxInFlight": 0}}}, "maxInFlight"),
        ({"engine": {"faultInjection": {"resultBias": 0.9}}}, "resultBias"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_field_when_validated(overrides, field):
    with pytest.raises(ValidationError, match=field):
        make_spec(**overrides)


def test_crd_bounds_the_shadow_fraction_and_the_bias_when_generated():
    spec = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    shadow = spec["traffic"]["properties"]["shadow"]["properties"]
    assert (shadow["fraction"]["minimum"], shadow["fraction"]["maximum"]) == (0.0, 1.0)
    assert shadow["maxInFlight"]["minimum"] == 1
    bias = spec["engine"]["properties"]["faultInjection"]["properties"]["resultBias"]
    assert (bias["minimum"], bias["maximum"]) == (-0.5, 0.5)
