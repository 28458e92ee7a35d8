"""Configuration: the YAML file and environment, validated into typed settings.

Receives a file path (and ``AUDIT_FORWARDER_*`` variables); hands on an
immutable :class:`~forwarder.config.settings.Settings` or a ConfigError
listing every problem with its YAML path. ``reload`` watches the file and
its secrets and applies a new, fully validated configuration to the daemon.
"""
