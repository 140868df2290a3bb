"""Herwa: Kubernetes-native analytics for Discord communities.

The shared core (configuration, schema, stores, telemetry, CLI) lives here; the deployable roles
are mapped into this namespace from the top-level folders: ``herwa.bot`` is ``bot/``,
``herwa.etl`` is ``etl/`` and ``herwa.operator`` is ``operator/``.
"""

__version__ = "0.1.0"
