"""The HTTP API service (ARCHITECTURE §7): ``create_app(config)`` builds the FastAPI app.

``shared.api.app`` holds the endpoints and the best-model watcher, ``schemas`` the
pydantic request/response models, ``inference`` the served model, the observation
builders and the batched inference thread, ``bench`` the ``/v1/act`` load test.
"""

from shared.api.app import RedisKeys, create_app

__all__ = ["RedisKeys", "create_app"]
