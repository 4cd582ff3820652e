"""Every option of the memory and Avalanche entry points is in their signatures: a method's own
options travel as one ``options`` mapping, never through ``**kwargs``."""

from __future__ import annotations

import inspect

import pytest

from replay_lcmat.continual import memory_only_run
from replay_lcmat.memory import (
    CondensationPolicy,
    SelectionPolicy,
    build_memory,
    condense_exemplars,
    select_exemplars,
)
from replay_lcmat.selection import SelectionModelConfig
from replay_lcmat.selection.extract import DEFAULT_STATS
from replay_lcmat.strategies import (
    CondensedClassBuffer,
    LCMatReplayPlugin,
    MemoryOnlyRetrainPlugin,
    SelectionBuffer,
    SelectorExemplarsStrategy,
    make_storage_policy,
    run_continual,
)

PUBLIC = [
    build_memory,
    select_exemplars,
    condense_exemplars,
    SelectionPolicy.build,
    CondensationPolicy.build,
    memory_only_run,
    make_storage_policy,
    LCMatReplayPlugin,
    MemoryOnlyRetrainPlugin,
    SelectionBuffer,
    CondensedClassBuffer,
    SelectorExemplarsStrategy,
    run_continual,
]


@pytest.mark.parametrize("entry", PUBLIC, ids=lambda f: f.__qualname__)
def test_no_keyword_relay_in_public_signatures(entry):
    parameters = inspect.signature(entry).parameters.values()
    relayed = [p.name for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
    assert not relayed, f"{entry.__qualname__} takes **{relayed[0]}"


def test_options_reach_the_selector_and_the_condenser():
    plugin = LCMatReplayPlugin(3, "lcmat-s", options={"eps": 0.05}, seed=2, stats="running")
    strategy = plugin.storage_policy.selection_strategy
    assert strategy._selector.eps == 0.05 and strategy._selector.seed == 2
    assert strategy.stats == "running"
    assert LCMatReplayPlugin(3, "uniform").storage_policy.selection_strategy.stats == DEFAULT_STATS
    buffer = make_storage_policy("dm", 3, options={"iterations": 4}, progress=False)
    assert buffer.options == {"iterations": 4} and not buffer.progress
    with pytest.raises(ValueError, match="options must be a mapping"):
        LCMatReplayPlugin(3, "lcmat-s", options=[("eps", 0.05)])


def test_selection_model_config_checks_its_statistics():
    assert SelectionModelConfig().stats == DEFAULT_STATS
    with pytest.raises(ValueError, match="unknown stats 'eval'"):
        SelectionModelConfig(stats="eval")
