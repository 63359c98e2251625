"""Replayable randomness for the whole suite (the `seed` fixture and `--seed`), and RTL checks.

A random test takes the `seed` fixture. Without `--seed` every run draws a
fresh seed (so repeated runs explore new stimulus); the seed is printed, kept
in the test report's properties and, when the test fails, the report ends
with the one command that replays exactly that test with that seed.

Every design the suite elaborates carries its simulation invariants
(`rtl.checks`): Amaranth simulations raise on a broken one, Verilator
builds stop on it (`--assert`), formal proofs must prove them too. Designs
for synthesis and export never carry them (the flow switches them off).
"""

from __future__ import annotations

import secrets
import shlex
import sys
from collections.abc import Generator

import pytest

from rtl.checks import simulation_checks


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--seed",
        type=int,
        default=None,
        help="seed for the random tests (default: a fresh one per test, printed on failure)",
    )


@pytest.fixture(scope="session", autouse=True)
def rtl_invariants() -> Generator[None, None, None]:
    """The whole session elaborates designs with their invariants (`rtl.checks`)."""
    with simulation_checks():
        yield


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """This test's seed: `--seed` when given, else a fresh 32-bit one."""
    chosen = request.config.getoption("--seed")
    value = secrets.randbits(32) if chosen is None else int(chosen)
    request.node.user_properties.append(("seed", value))
    print(f"seed = {value}")
    return value


def replay_command(nodeid: str, seed: int) -> str:
    """The command line that reruns test `nodeid` with `seed`."""
    return shlex.join([sys.executable, "-m", "pytest", nodeid, "--seed", str(seed), "-m", ""])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    seeds = [value for key, value in item.user_properties if key == "seed"]
    if report.failed and seeds:
        report.sections.append(("replay", replay_command(item.nodeid, seeds[-1])))
    return report
