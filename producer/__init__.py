"""Publishing pairs to ``pairs.in``: :mod:`.producer` (the halves), :mod:`.load` (``digitmatch produce``)."""
