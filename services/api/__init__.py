"""The HTTP API service: ``create_app(config)`` in :mod:`services.api.app`."""
