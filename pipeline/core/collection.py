"""Initial weights for a collection: a fit of one of its images starts from weights learned on a
few others (the ``collection`` warm start of ``pipeline.core.warm``).

``learn_initial`` is Reptile (Nichol, Achiam, Schulman 2018): from the network seeded by the
options, fit each image for a few iterations and move the weights a step towards the fitted ones,
over a few passes. Networks fitted from one start stay in one basin, so their weights can be
averaged, which independently initialised ones cannot. All the fits share one input z (of the
seed's): a network's weights are fitted to map its input, and from another input they start as far
off as a random network (measured: 16 against 29.8 dB at the first check on a 32x32 image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import Tensor

from .fit import fit
from .prepare import prepare
from .warm import Start, weights_of

REPTILE_ROUNDS, REPTILE_ITERATIONS, REPTILE_STEP = 3, 100, 0.5  # passes over the images, fit length, step


def learn_initial(observations: Sequence, options, *, rounds: int = REPTILE_ROUNDS,
                  iterations: int = REPTILE_ITERATIONS, step: float = REPTILE_STEP) -> dict[str, Tensor]:
    """Initial weights for a collection, by Reptile (Nichol et al. 2018) over ``observations``
    (``Picture``s of the collection, as its fits will see them): start from the network seeded by
    ``options.seed``; ``rounds`` times, for each image, fit ``iterations`` iterations from the
    current weights (the preset's fit, no early stopping, the input of ``options.seed`` and a jitter
    of its own) and move the weights ``step`` of the way towards the fitted ones. Returns the weights
    (``weights_of``); a fit starts from them with the input of ``options.seed`` (fitted weights belong
    with their input: from another one a fit starts as far off as a cold one)."""
    if not observations:
        raise ValueError("learn_initial needs at least one image of the collection")
    if rounds < 1 or iterations < 1 or not 0 < step <= 1:
        raise ValueError(f"learn_initial: need rounds >= 1, iterations >= 1, 0 < step <= 1; got {rounds}, "
                         f"{iterations}, {step}")
    base = replace(options, warm_start="none", early_stop=False, iterations=iterations)
    weights = weights_of(prepare(observations[0], base).net)  # the network seeded by options.seed
    for r in range(rounds):
        for k, observed in enumerate(observations):
            seeded = replace(base, seed=options.seed + 1000 * r + k + 1)  # each fit's own jitter
            job = prepare(observed, seeded, start=Start(weights, input_seed=options.seed))
            fit(job.net, job.z, job.operator, job.y, replace(job.preset.fit, early_stop=None), seed=seeded.seed,
                device=options.device)
            fitted = weights_of(job.net)
            weights = {name: value + step * (fitted[name] - value) if value.is_floating_point() else fitted[name]
                       for name, value in weights.items()}
    return weights


