"""Architecture rules. Each public module here registers one model family with
:func:`spikingjelly_mbe.conversion.registry.register`; modules starting with ``_`` hold shared pieces."""
