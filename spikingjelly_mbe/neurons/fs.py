"""Few-Spikes neuron (Stöckl & Maass 2021; paper Eqs. 1-3) and its bridge to SpikingJelly."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from spikingjelly.activation_based.neuron import FewSpikeTable

from .multibasis import Domain, MultiBasisNode


class FSNode(MultiBasisNode):
    """FS neuron: one basis with free per-step ``Vth[t]``, ``r[t]``, ``d[t]`` (Eqs. 1-3).

    ``offset`` shifts the initial potential (``u[0] = x + offset``) and ``bias`` is added to the
    output; both default to 0, which is the plain FS neuron of Eq. 3. ``backend`` and
    ``surrogate_function``: see :mod:`spikingjelly_mbe.neurons.multibasis`.
    """

    def __init__(self, vth, reset, intensity, offset: float = 0.0, bias: float = 0.0,
                 domain: Domain = None, step_mode: str = "s", backend: str = "torch",
                 surrogate_function: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        super().__init__(torch.as_tensor(vth)[None], torch.as_tensor(reset)[None],
                         torch.as_tensor(intensity)[None], [1.0], [float(offset)], [1.0],
                         bias, domain, step_mode, backend, surrogate_function)

    @classmethod
    def from_table(cls, table: FewSpikeTable, step_mode: str = "s") -> "FSNode":
        """Build from SpikingJelly's ``FewSpikeTable`` (``theta -> Vth``, ``h -> r``, ``d -> d``)."""
        return cls(table.theta, table.h, table.d, step_mode=step_mode)

    def to_table(self) -> FewSpikeTable:
        """Export as a ``FewSpikeTable``; only a plain FS neuron (no offset, no bias) has one."""
        if float(self.offset[0]) != 0.0 or float(self.bias) != 0.0:
            raise ValueError("this FSNode has an input offset or output bias, which "
                             "FewSpikeTable cannot express")
        return FewSpikeTable(self.vth[0], self.reset_value[0], self.intensity[0])
