"""Tier configuration: schema, layering of defaults < YAML < ``KICI_*`` env, validation, reload plans.

Pure: callers read the file and the environment and pass them in (``kici.adapters.config_file``,
``kici.services.config_reload``).
"""

from kici.domain.config.datadir import HostFacts, resolve_data_dir
from kici.domain.config.layering import Tier
from kici.domain.config.location import ConfigLocation, locate_config
from kici.domain.config.problems import ConfigError, Problem, YamlSource
from kici.domain.config.reload import ReloadPlan, plan_reload
from kici.domain.config.schema import AgentConfig, OrchestratorConfig
from kici.domain.config.validate import Loaded, load_agent_config, load_orchestrator_config

__all__ = [
    "AgentConfig",
    "ConfigError",
    "ConfigLocation",
    "HostFacts",
    "Loaded",
    "OrchestratorConfig",
    "Problem",
    "ReloadPlan",
    "Tier",
    "YamlSource",
    "load_agent_config",
    "load_orchestrator_config",
    "locate_config",
    "plan_reload",
    "resolve_data_dir",
]
