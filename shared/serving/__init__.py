"""Serving: what a trading decision is made of, shared by :class:`shared.agent.Agent`
(in-process, e.g. a notebook) and the HTTP API (``services/api``), so both answer with
the same code.

* ``observation.py``: raw OHLC bars (or a ready window) + a position -> the ``[W, 15]``
  observation the agent saw in training;
* ``model.py``: a verified checkpoint loaded for greedy search (:class:`ServedModel`);
* ``decide.py``: one batched greedy search over many observations -> :class:`Decision`;
* ``frames.py``: bars from a pandas DataFrame or plain records;
* ``schemas.py``: the JSON wire models of ``/v1/act`` and the sessions (the API and
  :mod:`shared.client` both use them);
* ``session.py``: a streaming session's state (rolling bars + position) and its Redis store.
"""
