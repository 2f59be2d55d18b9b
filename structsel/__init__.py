"""structsel: model structure selection for deep learning in JAX.

DARTS-style supernets (`family`, `basis`), distributions and relaxations over structure
(`distributions`, `structure`), variational inference with ARD priors (`variational`,
`pruning`), the generalised bilevel objective (`objective`), hypergradients
(`hypergradient`) and the bilevel trainer (`bilevel`). See docs/method.md for the maths.
"""

from structsel import basis as basis
from structsel import data as data
from structsel import family as family
from structsel.distributions import (
    dirichlet as dirichlet,
    gumbel_softmax as gumbel_softmax,
    kl_divergence as kl_divergence,
    logit_normal as logit_normal,
)
from structsel.family import (
    Edge as Edge,
    Family as Family,
    darts_cell as darts_cell,
    discrete_model as discrete_model,
    export_structure as export_structure,
    glm_family as glm_family,
    two_layer_net as two_layer_net,
)
from structsel.hypergradient import (
    METHODS as HYPERGRADIENT_METHODS,
    Darts as Darts,
    Exact as Exact,
    Greedy as Greedy,
    Implicit as Implicit,
    Unrolled as Unrolled,
    get_method as get_method,
    hvp as hvp,
    hypergradient as hypergradient,
)
from structsel.structure import (
    Dirichlet as Dirichlet,
    GumbelSoftmax as GumbelSoftmax,
    LogitNormal as LogitNormal,
    Sigmoid as Sigmoid,
    Softmax as Softmax,
    argmax_vertex as argmax_vertex,
    darts_topk as darts_topk,
    mean_structure as mean_structure,
    sample_structure as sample_structure,
    threshold_vertex as threshold_vertex,
)

__version__ = "0.1.0"

__all__ = [
    "basis", "data", "family",
    "dirichlet", "gumbel_softmax", "kl_divergence", "logit_normal",
    "Edge", "Family", "darts_cell", "discrete_model", "export_structure", "glm_family",
    "two_layer_net",
    "HYPERGRADIENT_METHODS", "Darts", "Exact", "Greedy", "Implicit", "Unrolled", "get_method",
    "hvp", "hypergradient",
    "Dirichlet", "GumbelSoftmax", "LogitNormal", "Sigmoid", "Softmax", "argmax_vertex",
    "darts_topk", "mean_structure", "sample_structure", "threshold_vertex",
]
