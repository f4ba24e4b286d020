"""The matcher (``digitmatch serve``): joins the two halves of each pair from ``pairs.in``,
micro-batches them through the SavedModel and publishes one verdict per pair to ``matches.out``.

``matcher.Matcher`` ties together ``join`` (halves by pair ID), ``batcher`` (dynamic batching),
``inference`` (model versions, the inference thread), ``offsets`` (what is safe to commit),
``dead_letter``, ``metrics`` and ``health``; ``config.MatcherConfig`` holds its settings.
"""
