"""structsel: model structure selection for deep learning in JAX.

DARTS-style supernets (`family`, `basis`), distributions and relaxations over structure
(`distributions`, `structure`), variational inference with ARD priors (`variational`,
`pruning`), the generalised bilevel objective (`objective`), hypergradients
(`hypergradient`) and the bilevel trainer (`bilevel`). See docs/method.md for the maths.

Note: `structsel.hypergradient` is the function; its module is reached with
`from structsel.hypergradient import Implicit, get_method, ...` (the strategies are also
re-exported here).
"""

from structsel import basis as basis
from structsel import data as data
from structsel import evidence as evidence
from structsel import family as family
from structsel import pruning as pruning
from structsel import variational as variational
from structsel.bilevel import (
    BilevelState as BilevelState,
    BilevelTrainer as BilevelTrainer,
    DivergenceError as DivergenceError,
    check_divergence as check_divergence,
)
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
from structsel.objective import (
    Coefficients as Coefficients,
    Context as Context,
    GaussianWeights as GaussianWeights,
    Objective as Objective,
    PointWeights as PointWeights,
    coefficient_batch as coefficient_batch,
    darts as darts,
    elbo as elbo,
    max_likelihood as max_likelihood,
    single_level as single_level,
)
from structsel.pruning import (
    parametric_complexity as parametric_complexity,
    prune as prune,
    relative_density as relative_density,
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
    "basis", "data", "evidence", "family", "pruning", "variational",
    "BilevelState", "BilevelTrainer", "DivergenceError", "check_divergence",
    "Coefficients", "Context", "GaussianWeights", "Objective", "PointWeights",
    "coefficient_batch", "darts", "elbo", "max_likelihood", "single_level",
    "parametric_complexity", "prune", "relative_density",
    "dirichlet", "gumbel_softmax", "kl_divergence", "logit_normal",
    "Edge", "Family", "darts_cell", "discrete_model", "export_structure", "glm_family",
    "two_layer_net",
    "HYPERGRADIENT_METHODS", "Darts", "Exact", "Greedy", "Implicit", "Unrolled", "get_method",
    "hvp", "hypergradient",
    "Dirichlet", "GumbelSoftmax", "LogitNormal", "Sigmoid", "Softmax", "argmax_vertex",
    "darts_topk", "mean_structure", "sample_structure", "threshold_vertex",
]
