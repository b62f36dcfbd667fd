"""NFM couplings: a small TarFlow normalizing flow trained by maximum likelihood, then used as the
coupling of flow matching (each data sample paired with its own noise).

- :class:`TarFlow`: the flow (x -> z in one parallel pass, z -> x with a key/value cache);
- :class:`TarFlowObjective`: its noise-augmented MLE as a :class:`~flowfast.train.Trainer` objective;
- :class:`NFMCoupling`: ``z = f_NF(x + eta eps') / sigma_f`` as a :class:`flowfast.couplings.Coupling`;
- :func:`load_flow`: the (EMA) flow of a ``python -m flowfast train-nf`` checkpoint.
"""

from flowfast.nfm.coupling import NFMCoupling
from flowfast.nfm.objective import TarFlowObjective
from flowfast.nfm.tarflow import TarFlow
from flowfast.nfm.teacher import load_flow, nfm_coupling

__all__ = ["NFMCoupling", "TarFlow", "TarFlowObjective", "load_flow", "nfm_coupling"]
