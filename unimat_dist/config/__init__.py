"""Typed configuration trees loaded from YAML (see ``loader``)."""
from .loader import ConfigError, apply_overrides, config_yaml, from_dict, load_config, save_config, to_dict

__all__ = ["ConfigError", "apply_overrides", "config_yaml", "from_dict", "load_config", "save_config", "to_dict"]
