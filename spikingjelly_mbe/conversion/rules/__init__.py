"""Override rules. Each public module here may register overrides for one model family with
:func:`spikingjelly_mbe.conversion.registry.register`; conversion covers models without any (it
decides by what their modules compute and what runs)."""
