"""The daemon's configuration: pydantic models loaded from YAML, merged with CLI flags.

One package, one module per responsibility:

- ``schema``: every key a config may hold, with its title, description and its one default
  (``runtime``: the inference backend's section, a union on ``type``);
- ``errors``: ``ConfigError`` and validation errors rendered with the key path, the YAML
  line and the allowed keys or values;
- ``loading``: YAML file -> ``AppConfig`` and back (``config check``);
- ``flags``: ``listen``/``calibrate`` command line flags merged over a file.

Import from here: ``from edge_asd.config import AppConfig, load_config``.
"""

from __future__ import annotations

from edge_asd.config.base import (
    DEFAULT_STATE_DIR,
    ConfigModel,
    ConfigPath,
    SafeName,
    default_node_id,
    default_state_dir,
    sanitize_id,
)
from edge_asd.config.errors import ConfigError
from edge_asd.config.flags import config_from_cli, parse_source_flag
from edge_asd.config.loading import (
    MASK,
    effective_config_dict,
    effective_config_yaml,
    load_config,
    validate_config,
    validate_runtime_config,
)
from edge_asd.config.runtime import (
    RUNTIME_TYPES,
    AutoRuntimeConfig,
    ConcreteRuntimeConfig,
    OnnxRuntimeConfig,
    RuntimeConfig,
    RuntimeType,
    TensorRTRuntimeConfig,
    TorchRuntimeConfig,
)
from edge_asd.config.schema import (
    AnomalyInterval,
    AppConfig,
    ConsoleConfig,
    DecisionConfig,
    DeviceSourceConfig,
    DiscoveryConfig,
    EvidenceConfig,
    FileSourceConfig,
    LevelsConfig,
    LoggingConfig,
    MqttConfig,
    SiteConfig,
    SourceConfig,
    StreamConfig,
    SynthSourceConfig,
    TlsConfig,
)

__all__ = [
    "DEFAULT_STATE_DIR",
    "MASK",
    "RUNTIME_TYPES",
    "AnomalyInterval",
    "AppConfig",
    "AutoRuntimeConfig",
    "ConcreteRuntimeConfig",
    "ConfigError",
    "ConfigModel",
    "ConfigPath",
    "DecisionConfig",
    "DeviceSourceConfig",
    "DiscoveryConfig",
    "EvidenceConfig",
    "FileSourceConfig",
    "LevelsConfig",
    "LoggingConfig",
    "SiteConfig",
    "ConsoleConfig",
    "MqttConfig",
    "OnnxRuntimeConfig",
    "RuntimeConfig",
    "RuntimeType",
    "SafeName",
    "SourceConfig",
    "StreamConfig",
    "SynthSourceConfig",
    "TensorRTRuntimeConfig",
    "TlsConfig",
    "TorchRuntimeConfig",
    "config_from_cli",
    "default_node_id",
    "default_state_dir",
    "effective_config_dict",
    "effective_config_yaml",
    "load_config",
    "parse_source_flag",
    "sanitize_id",
    "validate_config",
    "validate_runtime_config",
]
